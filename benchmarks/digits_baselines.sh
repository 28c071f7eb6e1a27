#!/usr/bin/env bash
# Five timm classifiers trained from scratch on scikit-learn digits (the DiT's training split, no
# augmentation), tested on the 360-image test split, and the published diffusion classifier beside them.
#   bash benchmarks/digits_baselines.sh [DIT_CKPT] [OUT]     (about 10 minutes on 2 CPU cores)
# Writes OUT/results.jsonl and OUT/report/report.md (99.5% Clopper-Pearson intervals).
set -euo pipefail
cd "$(dirname "$0")/.."
DIT=${1:-checkpoints/digits_dit_t2.ckpt}
OUT=${2:-runs/digits_baselines}
RESULTS=$OUT/results.jsonl
mkdir -p "$OUT"
rm -f "$RESULTS"
common=(--trainer.enable_progress_bar=false --trainer.enable_model_summary=false)
# 8x8 inputs: ConvNeXt's stride-4 stem and ViT's 16-pixel patches would leave nothing to downsample.
declare -A KWARGS=([convnext_atto]='{patch_size: 1}' [vit_tiny_patch16_224]='{patch_size: 2}')
for m in resnet18 resnet34 resnet50 convnext_atto vit_tiny_patch16_224; do
  d=$OUT/$m
  extra=(--model.init_args.model_name="$m" --model.init_args.label="$m" --model.init_args.results_dir="$d"
         --model.init_args.results_file="$RESULTS" --model.init_args.model_kwargs="${KWARGS[$m]:-{\}}")
  [ -f "$d/checkpoints/last.ckpt" ] || python cli.py fit --config configs/baselines/digits_resnet18.yaml \
    "${common[@]}" "${extra[@]}" --trainer.logger.init_args.save_dir="$d" \
    --trainer.callbacks.init_args.dirpath="$d/checkpoints"
  python cli.py test --config configs/baselines/digits_resnet18.yaml "${common[@]}" "${extra[@]}" \
    --trainer.logger=false --ckpt_path="$d/checkpoints/last.ckpt"
done
python cli.py test --config configs/digits.yaml "${common[@]}" --trainer.logger=false \
  --model.init_args.results_dir="$OUT/dit" --model.init_args.results_file="$RESULTS" \
  --model.init_args.label=DiT-T/2 --model.init_args.ci_level=0.995 --ckpt_path="$DIT"
python cli.py report --results "$RESULTS" --out "$OUT/report" --id_dataset digits --level 0.995
