#!/usr/bin/env bash
# The small-scale test of the compositional claims with models diffclf trains here (issue 19): the
# text-conditional DiT and the contrastive model of configs/scenes_*.yaml, trained on the same images and
# captions for the same images seen (2,700 steps of 128 = 345,600, one CPU core each), then every
# attribute-binding task, the Winoground-style word-order pairs and the texture cue-conflict shape bias on
# held-out data of the same build, then the summary (README table source) and the figure.
#   bash benchmarks/compositional_small.sh [STEPS] [EXAMPLES] [DRAWS] [PHASES]
# PHASES: any of "train evaluate report" (default all three). Writes runs/compositional/<model>/
# (checkpoints, logs) and benchmarks/results/compositional/<model>/*.json, summary.{md,json}, figure.png.
set -euo pipefail
cd "$(dirname "$0")/.."
steps="${1:-2700}"; examples="${2:-100}"; draws="${3:-50}"; phases="${4:-train evaluate report}"
export OMP_NUM_THREADS=1
models="scenes_text_dit scenes_contrastive"
[ -f data/scenes/meta.json ] || python cli.py build-scenes --out data/scenes --seed 0 --size 32 --train 20000 \
  --test 2000 --winoground 200 --cue_conflict 300 --cue_train 2000
if [[ " $phases " == *" train "* ]]; then
  core=0
  for cfg in $models; do
    taskset -c "$core" python cli.py fit --config configs/$cfg.yaml --trainer.max_steps "$steps" \
      --trainer.default_root_dir runs/compositional/$cfg --trainer.val_check_interval 900 \
      --trainer.enable_progress_bar false > "runs/compositional/$cfg.log" 2>&1 &
    core=$(( (core + 1) % $(nproc) ))
  done
  wait
fi
if [[ " $phases " == *" evaluate "* ]]; then
  core=0
  for cfg in $models; do
    ckpt=runs/compositional/$cfg/checkpoints/last.ckpt
    out=benchmarks/results/compositional/$cfg
    eval_args=(--ckpt_path "$ckpt" --draws "$draws" --image_size 32 --batch_size 50 --out "$out")
    (taskset -c "$core" python cli.py compositional "${eval_args[@]}" --evaluation winoground \
       --root data/scenes/winoground
     taskset -c "$core" python cli.py compositional "${eval_args[@]}" --evaluation cue_conflict \
       --root data/scenes/cue_conflict --templates scenes
     taskset -c "$core" python cli.py compositional "${eval_args[@]}" --evaluation binding --root data/scenes \
       --split test --num_examples "$examples") > "$out.log" 2>&1 &
    core=$(( (core + 1) % $(nproc) ))
  done
  wait
fi
if [[ " $phases " == *" report "* ]]; then
  python benchmarks/compositional_report.py --results benchmarks/results/compositional --models $models \
    --command "bash benchmarks/compositional_small.sh $steps $examples $draws"
fi
