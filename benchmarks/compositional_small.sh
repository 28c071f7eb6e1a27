#!/usr/bin/env bash
# The small-scale test of the compositional claims with models diffclf trains here (issue 19): the
# text-conditional DiT and the contrastive model of configs/scenes_*.yaml, trained on the same images and
# captions (each config's steps of 128 images, one CPU core each: the TextDiT 1,500 steps with the hybrid
# caption cross-entropy, the contrastive model 2,700), then every attribute-binding task, the
# Winoground-style word-order pairs and the texture cue-conflict shape bias on held-out data of the same
# build, then the summary (README table source) and the figure.
#   bash benchmarks/compositional_small.sh [STEPS] [EXAMPLES] [DRAWS] [PHASES] [MODELS]
# STEPS: "config" (default: each config's max_steps) or a number for both. PHASES: any of "train evaluate
# report" (default all three). MODELS: the configs to train and evaluate (default both; the report always
# reads both). Writes runs/compositional/<model>/ (checkpoints, logs) and
# benchmarks/results/compositional/<model>/*.json, summary.{md,json}, figure.png.
set -euo pipefail
cd "$(dirname "$0")/.."
steps="${1:-config}"; examples="${2:-100}"; draws="${3:-50}"; phases="${4:-train evaluate report}"
export OMP_NUM_THREADS=1
report_models="scenes_text_dit scenes_contrastive"
models="${5:-$report_models}"
step_args=()
[ "$steps" = config ] || step_args=(--trainer.max_steps "$steps")
[ -f data/scenes/meta.json ] || python cli.py build-scenes --out data/scenes --seed 0 --size 32 --train 20000 \
  --test 2000 --winoground 200 --cue_conflict 300 --cue_train 2000
if [[ " $phases " == *" train "* ]]; then
  core=0
  for cfg in $models; do
    mkdir -p runs/compositional
    taskset -c "$core" python cli.py fit --config configs/$cfg.yaml "${step_args[@]}" \
      --trainer.default_root_dir runs/compositional/$cfg --trainer.enable_progress_bar false \
      > "runs/compositional/$cfg.log" 2>&1 &
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
  python benchmarks/compositional_report.py --results benchmarks/results/compositional --models $report_models \
    --command "bash benchmarks/compositional_small.sh $steps $examples $draws"
fi
