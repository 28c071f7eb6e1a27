#!/usr/bin/env bash
# Calibration of p(c|x) on the published models: fit on training images (predict_split=train), report on
# test images. Writes benchmarks/results/calibration/<run>/{train.jsonl.manifest.json,calibration.json,
# calibration.png,results.json,reliability.png} and, for comparison, the uncalibrated test run in <run>/raw/.
#   bash benchmarks/calibration.sh digits          # Exhaustive(50), all 1437 train / 360 test images (~4 min on 2 cores)
#   bash benchmarks/calibration.sh digits_ttest    # PairedTTest: temperature vs Platt scaling on the calls (~4 min)
#   bash benchmarks/calibration.sh fashion         # stage-3 model, 500 train / first 1000 test images (~15 min)
set -euo pipefail
cd "$(dirname "$0")/.."
run=${1:?usage: calibration.sh digits|digits_ttest|fashion}
out=benchmarks/results/calibration/$run
mkdir -p "$out"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
common="--trainer.enable_progress_bar=false"
case $run in
  digits)
    model="--config configs/digits.yaml --ckpt_path checkpoints/digits_dit_t2.ckpt"; fit_limit=""; test_limit=""; method=temperature ;;
  digits_ttest)
    model="--config configs/digits.yaml --ckpt_path checkpoints/digits_dit_t2.ckpt --model.strategy ttest"
    fit_limit=""; test_limit=""; method=calls ;;
  fashion)
    model="--config configs/fashion_mnist_stage3.yaml --ckpt_path checkpoints/fashion_mnist_dit_t4_stage3.ckpt --trainer.devices 1 --trainer.strategy auto"
    fit_limit="--data.init_args.eval_limit 500"; test_limit="--data.init_args.eval_limit 1000"; method=temperature ;;
  *) echo "unknown run $run" >&2; exit 2 ;;
esac
tmp=$(mktemp -d)
python cli.py predict $model $common $fit_limit --trainer.default_root_dir="$tmp/predict" \
  --data.init_args.predict_split train \
  --trainer.callbacks+=diffclf.tasks.callbacks.PredictionWriter --trainer.callbacks.output="$tmp/train.jsonl"
cp "$tmp/train.jsonl.manifest.json" "$out/"
python cli.py calibrate --predictions "$tmp/train.jsonl" --output "$out/calibration.json" --method $method
if [ "$method" = calls ]; then  # the same predictions, temperature only, for comparison
  python cli.py calibrate --predictions "$tmp/train.jsonl" --output "$out/temperature/calibration.json"
  python cli.py test $model $common $test_limit --trainer.default_root_dir="$out/temperature" \
    --model.init_args.calibration "$out/temperature/calibration.json"
fi
python cli.py test $model $common $test_limit --trainer.default_root_dir="$out" --model.init_args.calibration "$out/calibration.json"
python cli.py test $model $common $test_limit --trainer.default_root_dir="$out/raw"
rm -rf "$tmp" "$out"/test "$out"/raw/test "$out"/temperature/test
