#!/usr/bin/env bash
# Every GPU figure in one run, for a session lent one H100/H200 for 15 minutes: about 6-7 minutes of steps
# under an 8-minute budget (DEVICE_CHECK_BUDGET, default 450 s of steps), each step under `timeout`, each
# writing its JSON into $OUT as soon as it ends, so a run killed half-way still returns what it measured.
#
#   bench_bf16.json          DiT-XL/2-256 (random weights, 4x32x32 latents, learned sigma, 1000 classes) forwards/s
#                            at batch 64..2048 under bf16 autocast (cli.py bench), TFLOP/s, MFU of 989 (dense bf16)
#   bench_fp32.json          the same in fp32 at batch 32, 256: MFU of 67 (fp32 without tensor cores: torch's
#                            default 'highest' matmul precision does not use TF32, whose peak is 494)
#   bench_bf16_compile.json  bf16 + torch.compile at one batch size (1000: the engine's 8 batches are then full,
#                            so nothing recompiles), MFU of 989; last, as its warm-up is the longest
#   official_loop.json       the official eval_prob_adaptive loop (fp32, batch 32, a host sync per batch) vs
#                            diffclf's engine on the same XL/2, schedule, noise and weights (benchmarks/official_loop.py)
#   train_dit_xl2.json       DiT-XL/2 training images/s through cli.py fit, bf16-mixed, batch 128, synthetic
#                            4x32x32 latent cache (benchmarks/train_throughput.py), MFU of 989 at 3x forward FLOPs
#   fashion_train.json       configs/fashion_mnist_stage3.yaml training images/s (batch 128, one GPU)
#   fashion_test.json        cli.py test of checkpoints/fashion_mnist_dit_t4_stage3.ckpt on the first 1,000 test
#                            images: s/image and accuracy (894/1,000 on CPU, benchmarks/results/refactor_parity)
#   device_check.log         everything printed
# Each JSON holds the peak GPU memory of its step and, added by the summary, "provenance" (device, CPU,
# date, command, commit: diffclf.metrics.provenance) and "step" (exit code, wall and limit seconds).
#
# Preparation, once, here (no GPU needed): the GPU image lacks jsonargparse and its signature extras.
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
#     --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
#     jsonargparse==4.53.0 docstring-parser==0.18.0 typeshed-client==2.15.0
#   mkdir -p data/fashion-mnist && cp /usr/share/datasets/fashion-mnist/t10k-*.gz data/fashion-mnist/   # data/ is ignored
#   python3 -c "import gzip, struct; src = '/usr/share/datasets/fashion-mnist/'
#   for name, row, hdr in (('train-images-idx3-ubyte', 784, 16), ('train-labels-idx1-ubyte', 1, 8)):
#       b = gzip.open(src + name + '.gz').read()
#       gzip.open('data/fashion-mnist/' + name + '.gz', 'wb').write(b[:4] + struct.pack('>I', 10000) + b[8:hdr] + b[hdr:hdr + 10000 * row])"
# (the first 10,000 training images, a valid IDX file: the training-throughput step needs 7,680; 8.4 MB in all
# instead of 30, so the carried tree stays under the device's 64 MiB beside the published checkpoints)
# Then one device `run` call (carry: [".whl", "data/fashion-mnist"], timeout_s: 540), COMMIT = `git describe
# --always --dirty` here (the device copy has no .git):
#   DEVICE_CHECK_COMMIT=COMMIT PYTHONUNBUFFERED=1 bash benchmarks/device_check.sh --fashion data/fashion-mnist
# The script installs the carried wheels itself when jsonargparse is missing (pip --target /tmp/site, no index).
#
#   bash benchmarks/device_check.sh --dry-run     # DEVICE_CHECK_TINY=1: the same steps on CPU, tiny sizes
set -uo pipefail
cd "$(dirname "$0")/.."
TINY=${DEVICE_CHECK_TINY:-0}
FASHION=""
BUDGET=${DEVICE_CHECK_BUDGET:-}
while [ $# -gt 0 ]; do
  case $1 in
    --dry-run) TINY=1 ;;
    --fashion) FASHION=$2; shift ;;
    --budget) BUDGET=$2; shift ;;
    *) echo "device_check.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
[ "$TINY" = 1 ] && [ -z "$FASHION" ] && FASHION=/usr/share/datasets/fashion-mnist
[ -z "$FASHION" ] && FASHION=data/fashion-mnist
SCALE=1
[ "$TINY" = 1 ] && SCALE=4  # a shared 2-core CPU starts Python and Lightning slowly: give every limit room
BUDGET=${BUDGET:-$(( 450 * SCALE ))}
OUT=${OUT:-benchmarks/results/device_check/$(date -u +%Y-%m-%d)}
mkdir -p "$OUT"
WORK=$(mktemp -d /tmp/device_check.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
exec > >(tee -a "$OUT/device_check.log") 2>&1
START=$(date +%s)
PY=${PYTHON:-python3}

if ! $PY -c "import jsonargparse, docstring_parser, typeshed_client" 2>/dev/null; then
  ls .whl/*.whl >/dev/null 2>&1 || { echo "jsonargparse is missing and no wheels were carried in .whl/"; exit 1; }
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}  # diffclf from this tree (the device copy is not pip-installed)

if [ "$TINY" = 1 ]; then
  export OMP_NUM_THREADS=1 CUDA_VISIBLE_DEVICES=""
  # Dynamo still traces the model, but graphs run eagerly: inductor's C++ build takes minutes on a small CPU.
  export TORCH_COMPILE_OVERRIDE_BACKENDS=">=0:eager"
  DEV=cpu ACC=cpu
  DIT=(--model DiT-T/2 --input_size 8 --in_channels 4 --num_classes 10)
  BENCH=(--classes 10 --min_seconds 0.2 --threads 1)
  SWEEP_BF16="[16,64]" SWEEP_FP32="[16,64]" COMPILE_BATCH="[20]" ENGINE_TRIALS=2
  OFFICIAL=(--classes 10 --keep 3 1 --trials 4 8 --engine_batch_sizes 32 64 --threads 1)
  TRAIN=(--batch_size 8 --steps 5 --warmup 2 --num_workers 0 --threads 1)
  FASHION_TRAIN=(--steps 4 --warmup 1 --threads 1 -- --data.init_args.batch_size 16)
  FASHION_TEST=(--data.init_args.eval_limit 2 --data.init_args.eval_batch_size 2)
else
  DEV=cuda ACC=gpu
  DIT=(--model DiT-XL/2 --input_size 32 --in_channels 4 --num_classes 1000)
  BENCH=(--classes 1000 --min_seconds 2)
  SWEEP_BF16="[64,256,1024,2048]" SWEEP_FP32="[32,256]" COMPILE_BATCH="[1000]" ENGINE_TRIALS=8
  OFFICIAL=(--classes 50 --keep 5 1 --trials 10 20 --engine_batch_sizes 32 256)
  TRAIN=(--batch_size 128 --steps 30 --warmup 10)  # 256 would need ~120 GB of activations and states
  FASHION_TRAIN=(--steps 60 --warmup 20 -- --data.init_args.batch_size 128)
  FASHION_TEST=(--data.init_args.eval_limit 1000)
fi

# step NAME LIMIT CMD...: run CMD under `timeout` (LIMIT x SCALE seconds, capped by what is left of the budget);
# record its exit code and seconds.
step() {
  local name=$1 limit=$(( $2 * SCALE )); shift 2
  local left=$(( START + BUDGET - $(date +%s) ))
  (( left < limit )) && limit=$left
  if (( limit < 20 )); then
    echo "== $name: skipped, ${left}s of the budget left"
    printf '%s\t%s\t%s\t%s\t%s\n' "$name" skipped 0 "$limit" "$*" >> "$WORK/steps.tsv"
    return
  fi
  echo "== $name (limit ${limit}s): $*"
  local t0=$SECONDS
  timeout -k 10 "$limit" "$@"
  local rc=$?
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$rc" "$(( SECONDS - t0 ))" "$limit" "$*" >> "$WORK/steps.tsv"
  echo "== $name: exit $rc after $(( SECONDS - t0 ))s"
}

# cli.py test in-process, so that its peak GPU memory and provenance can join its results record.
cat > "$WORK/fashion_test.py" <<'EOF'
import json, sys
import torch
from diffclf.cli import main
from diffclf.metrics.provenance import provenance

run, out, *argv = sys.argv[1:]
main(["test", *argv, "--trainer.default_root_dir", run])
record = json.loads(open(f"{run}/results.json").read())
record["peak_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
record["provenance"] = provenance("cuda" if torch.cuda.is_available() else "cpu", argv=["cli.py", "test", *argv])
open(out, "w").write(json.dumps(record, indent=1))
print(f"fashion test: {record['correct']}/{record['n']} correct, {record['seconds_per_image']:.4f} s/image")
EOF

BENCH_COMMON=(cli.py bench "${DIT[@]}" --learn_sigma true --strategies "[]" --images 1 --device $DEV "${BENCH[@]}")
step bench_bf16 100 $PY "${BENCH_COMMON[@]}" --batch_sizes "$SWEEP_BF16" --precision bf16 --peak_tflops 989 \
  --engine_trials 4 --out "$OUT/bench_bf16.json"
step official_loop 80 $PY benchmarks/official_loop.py "${DIT[@]}" --device $DEV --images 2 "${OFFICIAL[@]}" \
  --out "$OUT/official_loop.json"
step bench_fp32 90 $PY "${BENCH_COMMON[@]}" --batch_sizes "$SWEEP_FP32" --precision 32 --peak_tflops 67 \
  --engine_trials 2 --out "$OUT/bench_fp32.json"
step train_dit_xl2 100 $PY benchmarks/train_throughput.py "${DIT[@]}" --precision bf16-mixed --accelerator $ACC \
  --peak_tflops 989 "${TRAIN[@]}" --out "$OUT/train_dit_xl2.json"
if ls "$FASHION"/train-images-idx3-ubyte* >/dev/null 2>&1; then
  step fashion_train 60 $PY benchmarks/train_throughput.py --config configs/fashion_mnist_stage3.yaml \
    --accelerator $ACC --out "$OUT/fashion_train.json" "${FASHION_TRAIN[@]}" --data.init_args.root "$FASHION"
  step fashion_test 60 $PY "$WORK/fashion_test.py" "$WORK/fashion_test" "$OUT/fashion_test.json" \
    --config configs/fashion_mnist_stage3.yaml \
    --ckpt_path checkpoints/fashion_mnist_dit_t4_stage3.ckpt --trainer.accelerator $ACC --trainer.devices 1 \
    --trainer.strategy auto --trainer.logger false --trainer.enable_progress_bar false \
    --data.init_args.root "$FASHION" "${FASHION_TEST[@]}"
else
  echo "== fashion_train, fashion_test: skipped, no Fashion-MNIST in $FASHION (carry data/fashion-mnist)"
fi
step bench_bf16_compile 200 $PY "${BENCH_COMMON[@]}" --batch_sizes "$COMPILE_BATCH" --precision bf16 --compile true \
  --peak_tflops 989 --engine_trials $ENGINE_TRIALS --out "$OUT/bench_bf16_compile.json"

# Provenance and step records into every file, then one compact line per figure.
$PY - "$OUT" "$WORK/steps.tsv" "$DEV" <<'EOF'
import json, os, shlex, sys
from pathlib import Path
import torch
from diffclf.metrics.provenance import provenance

out, steps_file, dev = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
dev = dev if dev == "cpu" or torch.cuda.is_available() else "cpu"
PEAKS = {"bench_bf16": "989 TFLOP/s dense bf16 (H100 SXM / H200)", "bench_bf16_compile": "989 TFLOP/s dense bf16",
         "train_dit_xl2": "989 TFLOP/s dense bf16, 3 forwards per training image",
         "bench_fp32": "67 TFLOP/s fp32 without tensor cores (torch's default matmul precision; TF32 peak 494)"}
steps = [line.split("\t") for line in steps_file.read_text().splitlines()] if steps_file.exists() else []
print(f"== summary ({out})")
for name, rc, wall, limit, cmd in steps:
    path = out / f"{name}.json"
    if not path.exists():
        print(f"{name:20s} no figures (exit {rc} after {wall}s of {limit}s)")
        continue
    rec = json.loads(path.read_text())
    argv = shlex.split(cmd)
    rec.setdefault("provenance", provenance(dev, argv=argv[1:]))  # the bench files: python3 cli.py bench ...
    if rec["provenance"].get("commit") == "unknown" and os.environ.get("DEVICE_CHECK_COMMIT"):
        rec["provenance"]["commit"] = os.environ["DEVICE_CHECK_COMMIT"]
    rec["step"] = {"exit_code": int(rc) if rc.isdigit() else rc, "wall_s": int(wall), "limit_s": int(limit)}
    if name in PEAKS:
        rec["mfu_against"] = PEAKS[name]
    path.write_text(json.dumps(rec, indent=1))
    mem = rec.get("peak_memory_mb")
    mem = f", peak {mem / 1024:.1f} GiB" if mem else ""
    if name.startswith("bench"):
        sweep = " ".join(f"{r['batch']}:{r['forwards_per_s']:.0f}" for r in rec["sweep"])
        mfu = f"{100 * rec['mfu']:.1f}%" if rec.get("mfu") is not None else "-"
        print(f"{name:20s} fwd/s by batch {sweep}; best {rec['best_tflops']:.1f} TFLOP/s = MFU {mfu}; "
              f"engine {100 * rec['engine_efficiency']:.0f}% of raw{mem}")
    elif name == "official_loop":
        o = rec["official"]
        eng = "; ".join(f"engine b{e['batch_size']} {e['forwards_per_s']:.0f} fwd/s = {e['speedup_vs_official']:.2f}x"
                        f" ({e['agrees_with_official']}/{rec['images']} same)" for e in rec["engine"])
        print(f"{name:20s} official b{o['batch_size']} {o['forwards_per_s']:.0f} fwd/s, {o['seconds_per_image']:.2f} "
              f"s/image; {eng}{mem}")
    elif name in ("train_dit_xl2", "fashion_train"):
        mfu = f" = MFU {100 * rec['mfu']:.1f}%" if rec.get("mfu") is not None else ""
        print(f"{name:20s} {rec['images_per_s']:.1f} images/s at batch {rec['batch_size']} ({rec['precision']}), "
              f"{rec['train_tflops_3x_forward']:.1f} TFLOP/s{mfu}{mem}")
    elif name == "fashion_test":
        print(f"{name:20s} {rec['correct']}/{rec['n']} correct, {rec['seconds_per_image'] * 1000:.2f} ms/image, "
              f"{rec['forwards_per_image']:.0f} forwards/image{mem}")
print(f"== device {provenance(dev)['device']}, {sum(int(s[2]) for s in steps)}s of steps")
EOF
echo "== device check done in $(( $(date +%s) - START ))s; files in $OUT"
