#!/usr/bin/env bash
# A first small-scale measurement of the compositional claims with models diffclf trains here (issue 19):
# the text-conditional DiT and the contrastive model of configs/scenes_*.yaml, trained for the same images
# seen (1,300 steps of 128 = 166,400 scene images, one CPU thread each), then attribute binding and
# Winoground-style word order on held-out test scenes of the same build.
#   bash benchmarks/compositional_small.sh [STEPS] [EXAMPLES] [DRAWS]
# Writes runs/compositional/<model>/ (checkpoints, logs) and benchmarks/results/compositional/<model>/*.json.
set -euo pipefail
cd "$(dirname "$0")/.."
steps="${1:-1300}"; examples="${2:-200}"; draws="${3:-50}"
export OMP_NUM_THREADS=1
[ -f data/scenes/meta.json ] || python cli.py build-scenes --out data/scenes --seed 0 --size 32 --train 20000 \
  --test 2000 --winoground 200 --cue_conflict 300 --cue_train 2000
for cfg in scenes_text_dit scenes_contrastive; do
  python cli.py fit --config configs/$cfg.yaml --trainer.max_steps "$steps" \
    --trainer.default_root_dir runs/compositional/$cfg --trainer.val_check_interval 650 \
    --trainer.enable_progress_bar false &
done
wait
for cfg in scenes_text_dit scenes_contrastive; do
  ckpt=runs/compositional/$cfg/checkpoints/last.ckpt
  out=benchmarks/results/compositional/$cfg
  python cli.py compositional --ckpt_path "$ckpt" --evaluation binding --root data/scenes --split test \
    --num_examples "$examples" --draws "$draws" --image_size 32 --batch_size 50 --out "$out"
  python cli.py compositional --ckpt_path "$ckpt" --evaluation winoground --root data/scenes/winoground \
    --draws "$draws" --image_size 32 --batch_size 50 --out "$out"
done
