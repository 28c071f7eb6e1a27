#!/usr/bin/env bash
# The Fashion-MNIST robustness study: timm baselines and a diffusion classifier, ID (fashion_mnist)
# and OOD (fashion_mnist_c, fashion_mnist_hard), 99.5% Clopper-Pearson intervals, effective robustness.
#   bash benchmarks/robustness_fashion.sh DIT_CKPT [OUT]        (CPU: about an hour on 2 cores; N and C_LIMIT set the sizes)
#   (LABEL names the DiT in the report, default DiT-T/4; IMAGE_SIZE is its input side, default 28;
#    STRATEGY is its strategy preset, default adaptive_fashion_top3)
# DIT_CKPT is a DiffusionClassifier checkpoint trained with configs/fashion_mnist.yaml.
set -euo pipefail
cd "$(dirname "$0")/.."
DIT=${1:?usage: robustness_fashion.sh DIT_CKPT [OUT]}
OUT=${2:-runs/robustness_fashion}
N=${N:-1000}           # images per dataset (the same first N for every model)
C_LIMIT=${C_LIMIT:-40} # fashion_mnist_c: the first C_LIMIT test images under each corruption x severity (8 x 3 x 40 = 960)
RESULTS=$OUT/results.jsonl
mkdir -p "$OUT"
rm -f "$RESULTS"   # every model is re-tested below; trained baselines are kept and reused
common=(--trainer.enable_progress_bar=false --data.init_args.num_workers=0)

# Discriminative baselines with different architectures and training budgets (epochs x steps of batch 128,
# the cosine rate spread over them), so that their ID accuracies span a range for the line fit.
# resnet18 (300 steps) is also the reference that builds fashion_mnist_hard.
declare -A CONFIG=([resnet18]=resnet18 [resnet34]=resnet34 [resnet50]=resnet50 [vit_tiny]=vit_tiny
                   [convnext_atto]=convnext_atto [resnet18_3ep]=resnet18)
declare -A EPOCHS=([resnet18]=1 [resnet34]=1 [resnet50]=1 [vit_tiny]=1 [convnext_atto]=1 [resnet18_3ep]=3)
declare -A STEPS=([resnet18]=300 [resnet34]=150 [resnet50]=100 [vit_tiny]=150 [convnext_atto]=150 [resnet18_3ep]=1.0)
MODELS=(resnet18 resnet34 resnet50 vit_tiny convnext_atto resnet18_3ep)
for m in "${MODELS[@]}"; do
  cfg=configs/baselines/fashion_mnist_${CONFIG[$m]}.yaml
  d=$OUT/baselines/$m
  [ -f "$d/ckpt/last.ckpt" ] || python cli.py fit --config "$cfg" "${common[@]}" --trainer.max_epochs="${EPOCHS[$m]}" \
    --trainer.limit_train_batches="${STEPS[$m]}" --trainer.default_root_dir="$d" \
    --trainer.logger.init_args.save_dir="$d" --trainer.callbacks.init_args.dirpath="$d/ckpt"
done

# The shifts: corruptions, and the test images the first baseline misclassifies (ImageNet-A's recipe).
[ -f data/shifts/fashion_mnist_c/meta.json ] || python cli.py build-shift --name fashion_mnist_c \
  --out data/shifts/fashion_mnist_c --limit "$C_LIMIT"
[ -f data/shifts/fashion_mnist_hard/meta.json ] || python cli.py build-shift --name fashion_mnist_hard \
  --out data/shifts/fashion_mnist_hard --reference "$OUT/baselines/resnet18/ckpt/last.ckpt"

for data in fashion_mnist fashion_mnist_c fashion_mnist_hard; do
  for m in "${MODELS[@]}"; do
    d=$OUT/baselines/$m
    python cli.py test --config "configs/baselines/fashion_mnist_${CONFIG[$m]}.yaml" --data "$data" "${common[@]}" \
      --data.init_args.eval_limit="$N" --trainer.default_root_dir="$d/$data" --trainer.logger=false \
      --model.init_args.results_dir="$d/$data" --model.init_args.results_file="$RESULTS" \
      --model.init_args.label="$m" --ckpt_path="$d/ckpt/last.ckpt"
  done
  python cli.py test --config configs/fashion_mnist.yaml --data "$data" "${common[@]}" \
    --data.init_args.eval_limit="$N" --data.init_args.eval_batch_size=100 --data.init_args.image_size="${IMAGE_SIZE:-28}" \
    --trainer.logger=false \
    --trainer.default_root_dir="$OUT/dit/$data" --model.init_args.results_dir="$OUT/dit/$data" \
    --model.init_args.results_file="$RESULTS" --model.init_args.label="${LABEL:-DiT-T/4}" --model.init_args.ci_level=0.995 \
    --model.strategy "${STRATEGY:-adaptive_fashion_top3}" --model.init_args.scoring.compile=true --ckpt_path="$DIT"
done

python cli.py report --results "$RESULTS" --out "$OUT/report" --id_dataset fashion_mnist --level 0.995

# Which corruptions each model loses on: per-image predictions on fashion_mnist_c, grouped by corruption x severity.
P=$OUT/preds
mkdir -p "$P"
rm -rf "$P"/*.jsonl "$P"/*.parts
preds=()
for m in "${MODELS[@]}"; do
  python cli.py predict --config "configs/baselines/fashion_mnist_${CONFIG[$m]}.yaml" --data fashion_mnist_c \
    "${common[@]}" --trainer.logger=false --trainer.default_root_dir="$OUT/baselines/$m/predict" \
    --ckpt_path="$OUT/baselines/$m/ckpt/last.ckpt" \
    --trainer.callbacks+=diffclf.tasks.callbacks.PredictionWriter --trainer.callbacks.output="$P/$m.jsonl"
  preds+=(--preds "$m=$P/$m.jsonl")
done
python cli.py predict --config configs/fashion_mnist.yaml --data fashion_mnist_c "${common[@]}" \
  --data.init_args.eval_batch_size=100 --data.init_args.image_size="${IMAGE_SIZE:-28}" --trainer.logger=false \
  --trainer.default_root_dir="$OUT/dit/predict" --model.strategy "${STRATEGY:-adaptive_fashion_top3}" \
  --model.init_args.scoring.compile=true --ckpt_path="$DIT" \
  --trainer.callbacks+=diffclf.tasks.callbacks.PredictionWriter --trainer.callbacks.output="$P/dit.jsonl"
python benchmarks/corruption_breakdown.py --shift data/shifts/fashion_mnist_c "${preds[@]}" \
  --preds "${LABEL:-DiT-T/4}=$P/dit.jsonl" --out "$OUT/report/corruptions"
