#!/usr/bin/env bash
# Throughput of the zero-shot engine on a tiny random SD-shaped pipeline (CPU), the figure issue 18 asks for.
# Builds the pipeline the tests use (tests/tiny_pipelines.py: UNet2DConditionModel 0.8M parameters, 32-px images
# -> 4x4x4 latents, CLIP text encoder), then times its denoiser and the CIFAR-10 preset through `diffclf bench`.
#   bash benchmarks/zero_shot_bench.sh [OUT_DIR]
# The real SD 2.0-base UNet on a GPU (a local folder; 512 px -> 64x64x4 latents):
#   python cli.py bench --pipeline /models/stable-diffusion-2-base --image_size 512 --precision bf16 \
#     --batch_sizes [8,32,64,128] --classes 10 --images 1 --strategies [adaptive_cifar10] --peak_tflops 989 \
#     --out benchmarks/results/zero_shot/bench_gpu_sd2_base_bf16.json
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-benchmarks/results/zero_shot}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
PYTHONPATH=tests python -c "import sys; from pathlib import Path; from tiny_pipelines import build_sd_pipeline; build_sd_pipeline(Path(sys.argv[1]))" "$work/sd"
python cli.py bench --pipeline "$work/sd" --image_size 32 --batch_sizes '[1,8,32,128]' --classes 10 --images 2 \
  --strategies '[exhaustive,adaptive_cifar10]' --threads 1 --out "$out/bench_cpu_tiny_sd.json"
