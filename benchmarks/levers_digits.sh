#!/usr/bin/env bash
# The lever screen of issue 17: each short-budget training lever alone (and two combinations) on the digits
# DiT-T/2 recipe, every variant trained for the same 150 s of training wall time at a constant rate
# (after 50 warm-up steps), then the 360 test images classified with Exhaustive(trials=10) by
# diffclf.tasks.accuracy_clock.AccuracyClock. Writes benchmarks/results/time_to_accuracy/levers_digits.{jsonl,md}.
#   bash benchmarks/levers_digits.sh
set -euo pipefail
cd "$(dirname "$0")/.."
out=benchmarks/results/time_to_accuracy
work=$out/levers_digits_work
mkdir -p "$work"
rm -f "$out/levers_digits.jsonl"

variant() {  # NAME [fit options...]
  local name=$1
  shift
  cat > "$work/$name.yaml" <<YAML
trainer:
  limit_val_batches: 0
  enable_progress_bar: false
  enable_model_summary: false
  callbacks:
    - class_path: diffclf.tasks.accuracy_clock.AccuracyClock
      init_args:
        budget_s: 150
        evals: 1
        limit: 360
        out: $out/levers_digits.jsonl
        label: $name
        strategy:
          class_path: diffclf.strategies.Exhaustive
          init_args:
            trials: 10
YAML
  python cli.py fit --config configs/digits_eps.yaml --config "$work/$name.yaml" \
    --trainer.default_root_dir "runs/levers_digits/$name" --trainer.max_epochs -1 --trainer.max_steps 100000 \
    --model.init_args.lr_schedule constant --model.init_args.warmup_steps 50 "$@" > "$work/$name.log" 2>&1
  tail -1 "$out/levers_digits.jsonl"
}

H=(--model.init_args.hybrid_weight 1)
variant eps
variant hyb8 "${H[@]}" --model.init_args.hybrid_images 8
variant hyb32 "${H[@]}" --model.init_args.hybrid_images 32
variant hyb32_ln "${H[@]}" --model.init_args.hybrid_images 32 --model.init_args.timestep_density logit_normal
variant eps_ln --model.init_args.timestep_density logit_normal
variant eps_cond10 --model.init_args.cond_lr_mult 10
variant eps_drop0 --model.init_args.class_dropout_prob 0
variant hyb32_cond10 "${H[@]}" --model.init_args.hybrid_images 32 --model.init_args.cond_lr_mult 10

python - "$out/levers_digits.jsonl" "$out/levers_digits.md" <<'PY'
import json, sys
from diffclf.metrics.provenance import machine, repo_commit, utc_now
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
m = machine()
lines = ["# Training levers on digits at equal training time (150 s each)", "",
         f"- {utc_now()}, commit {repo_commit()}, CPU {m['cpu']} (family/model {m['cpu_family_model']}), "
         f"{m['torch_threads']} torch threads; command: `bash benchmarks/levers_digits.sh`",
         "- DiT-T/2, batch 128, AdamW 1e-3 constant after 50 warm-up steps, EMA 0.999; accuracy on the 360 test "
         "images with Exhaustive(trials=10) (100 forwards/image)", "",
         "| variant | steps in 150 s | images seen | accuracy % [95% CP] |", "|---|---|---|---|"]
for r in rows:
    lines.append(f"| {r['label']} | {r['step']} | {r['images_seen']:,} | {100*r['accuracy']:.1f} "
                 f"[{100*r['ci_low']:.1f}, {100*r['ci_high']:.1f}] |")
open(sys.argv[2], "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
