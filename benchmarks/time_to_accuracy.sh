#!/usr/bin/env bash
# Regenerates benchmarks/results/time_to_accuracy/: accuracy against training wall time for the eps-only
# DiT recipe ("eps", the published models' recipe), the class-table-rate recipe ("eps_cond10", digits' default
# now), the hybrid recipe ("hybrid", the fonts and Fashion-MNIST configs' default)
# and a timm ResNet-18, each trained through the same data module on the same machine in one run,
# classified at marks of training time on the same held-out test images (benchmarks/time_to_accuracy.py).
#
#   taskset -c 0 bash benchmarks/time_to_accuracy.sh digits      # THREADS=1 (default): one core per run
#   taskset -c 1 bash benchmarks/time_to_accuracy.sh fashion     # the other core, at the same time
#   taskset -c 0 bash benchmarks/time_to_accuracy.sh fonts
#
# fonts needs the folder of `diffclf build-fonts --out data/fonts` (built here when missing; its test fonts
# are font families training never saw). fashion needs Fashion-MNIST (Debian's dataset-fashion-mnist).
# Budgets of training wall time per recipe: digits 30 minutes with a mark every 2.5 (the ResNet's 10x is about
# 25), fonts 7.5, Fashion-MNIST 30 (the issue's target); the ResNets stop at their own schedule's end. "eps_cond10" is the eps-only recipe with the
# class-table rate alone (the cheapest lever of benchmarks/levers_digits.sh). Nothing here is fitted on the test images measured.
set -euo pipefail
cd "$(dirname "$0")/.."
which=${1:-all}
out=benchmarks/results/time_to_accuracy
mkdir -p "$out"

run() {  # dataset budget evals limit trials recipes...
  local ds=$1 budget=$2 evals=$3 limit=$4 trials=$5
  shift 5
  python benchmarks/time_to_accuracy.py --threads "${THREADS:-1}" --dataset "$ds" --budget "$budget" --evals "$evals" --limit "$limit" \
    --trials "$trials" --baseline resnet18 "$@" --out "$out/$ds"
}

if [[ $which == digits || $which == all ]]; then
  run digits 1800 12 360 10 \
    --recipe resnet18=configs/baselines/digits_resnet18.yaml \
    --recipe eps_cond10=configs/digits.yaml \
    --recipe eps=configs/digits_eps.yaml
fi

if [[ $which == fonts || $which == all ]]; then
  [[ -d data/fonts/train ]] || python cli.py build-fonts --out data/fonts
  # 500 of the class-sorted test images drawn at random (seed 0). The eps-only recipe (the issue's 35.2%
  # after 1,500 steps) was left out of the recorded run for time; add it with
  #   --recipe eps=configs/fonts.yaml --arg eps=--model.init_args.hybrid_weight=0 \
  #   --arg eps=--model.init_args.cond_lr_mult=1 --arg eps=--trainer.max_steps=1500
  run fonts 450 3 500 10 --sample_seed 0 \
    --recipe resnet18=configs/baselines/fonts_resnet18.yaml \
    --recipe hybrid=configs/fonts.yaml
fi

if [[ $which == fashion || $which == all ]]; then
  run fashion_mnist 1800 4 1000 10 \
    --recipe hybrid=configs/fashion_mnist.yaml
fi
