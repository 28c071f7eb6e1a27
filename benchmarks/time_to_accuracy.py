"""Accuracy against training wall time for several recipes on one data set, in one run on one machine.

    python benchmarks/time_to_accuracy.py --dataset digits --budget 300 --evals 6 --limit 360 --trials 10 \
        --recipe old=configs/digits.yaml --recipe new=configs/digits_fast.yaml \
        --recipe resnet18=configs/baselines/digits_resnet18.yaml \
        --out benchmarks/results/time_to_accuracy/digits

Every recipe is trained by ``cli.py fit`` in its own process with the recipe's config plus an overlay
that adds :class:`diffclf.tasks.accuracy_clock.AccuracyClock` (the first ``--limit`` test images
classified at ``--evals`` marks of training wall time, evaluation time not charged; a diffusion model
with ``Exhaustive(trials=--trials)`` at every mark, so points compare) and stops it at ``--budget``
seconds (a recipe whose own schedule ends sooner is measured at its end). ``--arg LABEL=FLAG=VALUE``
passes a further option to one recipe's ``fit`` (e.g. a data root). Writes ``OUT.json`` (every point,
provenance), ``OUT.md`` and ``OUT.png``; ``--report_only`` rebuilds them from ``OUT.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from diffclf.metrics.provenance import command_line, machine, repo_commit, utc_now

ROOT = Path(__file__).resolve().parent.parent


def overlay(path: Path, label: str, budget: float, evals: int, limit: int, trials: int, records: Path,
            sample_seed: int | None) -> None:
    """The clock and a final checkpoint in place of the recipe's callbacks; no validation (it is not training)."""
    path.write_text(f"""trainer:
  limit_val_batches: 0
  num_sanity_val_steps: 0
  enable_progress_bar: false
  enable_model_summary: false
  callbacks:
    - class_path: diffclf.tasks.callbacks.ModelCheckpoint
      init_args:
        dirpath: null
        save_last: true
        save_top_k: 0
        enable_version_counter: false
    - class_path: diffclf.tasks.accuracy_clock.AccuracyClock
      init_args:
        budget_s: {budget}
        evals: {evals}
        limit: {limit}
        sample_seed: {"null" if sample_seed is None else sample_seed}
        out: {records}
        label: {label}
        strategy:
          class_path: diffclf.strategies.Exhaustive
          init_args:
            trials: {trials}
""")


def run_recipe(label: str, config: str, extra: list[str], args: argparse.Namespace, work: Path) -> list[dict]:
    records = work / f"{label}.jsonl"
    records.unlink(missing_ok=True)
    over = work / f"{label}_clock.yaml"
    overlay(over, label, args.budget, args.evals, args.limit, args.trials, records, args.sample_seed)
    run_dir = Path(args.runs) / args.dataset / label
    cmd = [sys.executable, str(ROOT / "cli.py"), "fit", "--config", config, "--config", str(over),
           "--trainer.default_root_dir", str(run_dir), *extra]
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    log = work / f"{label}.log"
    print(f"[{label}] {' '.join(cmd[1:])}", flush=True)
    with log.open("w") as f:
        done = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT, check=False)
    if done.returncode != 0:
        raise SystemExit(f"error: recipe {label} failed (exit {done.returncode}); see {log}")
    rows = [json.loads(line) for line in records.read_text().splitlines() if line.strip()]
    for r in rows:
        r["checkpoint"] = str(run_dir / "checkpoints" / "last.ckpt")
        print(f"[{label}] {r['train_seconds']:7.1f} s  step {r['step']:6d}  "
              f"{100 * r['accuracy']:.1f}% [{100 * r['ci_low']:.1f}, {100 * r['ci_high']:.1f}]", flush=True)
    return rows


def within(rows: dict[str, list[dict]], baseline: str, points: float, factor: float, plateau: float = 1.0) -> dict[str, dict]:
    """For every other recipe: the first training time at which it is within ``points`` of the baseline's
    final accuracy, and whether that is within ``factor`` x the baseline's training time, taken as the first
    mark where the baseline is within ``plateau`` points of its own final accuracy (a baseline that
    plateaued early is not charged the rest of the budget)."""
    final = rows[baseline][-1]
    base = next(r for r in rows[baseline] if r["accuracy"] >= final["accuracy"] - plateau / 100)
    goal = final["accuracy"] - points / 100
    out = {}
    for label, curve in rows.items():
        if label == baseline:
            continue
        hit = next((r for r in curve if r["accuracy"] >= goal), None)
        out[label] = {
            "baseline_accuracy": final["accuracy"], "baseline_seconds": base["train_seconds"], "goal": goal,
            "reached_at_seconds": hit["train_seconds"] if hit else None,
            "ratio": hit["train_seconds"] / base["train_seconds"] if hit else None,
            "met": bool(hit and hit["train_seconds"] <= factor * base["train_seconds"]),
            # Not reached, but trained for less than the time allowed: the run does not decide the target.
            "open": bool(not hit and curve[-1]["train_seconds"] < factor * base["train_seconds"]),
            "allowed_seconds": factor * base["train_seconds"],
            # The looser reading (the "10x its training time" as the baseline's whole run), for the record.
            "baseline_run_seconds": rows[baseline][-1]["train_seconds"],
            "ratio_to_run": hit["train_seconds"] / rows[baseline][-1]["train_seconds"] if hit else None,
            "best_accuracy": max(r["accuracy"] for r in curve), "trained_seconds": curve[-1]["train_seconds"],
        }
    return out


def plot(result: dict, path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 3.8))
    ax = fig.add_subplot(1, 1, 1)
    for i, (label, curve) in enumerate(result["curves"].items()):
        xs = [r["train_seconds"] / 60 for r in curve]
        ys = [100 * r["accuracy"] for r in curve]
        err = [[100 * (r["accuracy"] - r["ci_low"]) for r in curve], [100 * (r["ci_high"] - r["accuracy"]) for r in curve]]
        ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=label, color=f"C{i}")
    ax.set_xlabel("training wall time (minutes, evaluation excluded)")
    ax.set_ylabel("top-1 accuracy % (95% CP)")
    meta = result["meta"]
    which = f"first {meta['limit']}" if meta.get("sample_seed") is None else f"{meta['limit']} random (seed {meta['sample_seed']})"
    ax.set_title(f"{meta['dataset']}: {which} test images; {meta['machine']['cpu']}, "
                 f"{meta['machine']['torch_threads']} threads", fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def markdown(result: dict) -> str:
    meta = result["meta"]
    which = (f"first {meta['limit']}" if meta.get("sample_seed") is None
             else f"{meta['limit']} random (seed {meta['sample_seed']})")
    machine_line = (f"- date: {meta['date']}; commit {meta['commit']}; CPU {meta['machine']['cpu']} "
                    f"(family/model {meta['machine']['cpu_family_model']}), {meta['machine']['torch_threads']} torch threads")
    accuracy_line = (f"- accuracy: {which} test images; diffusion models with Exhaustive(trials={meta['trials']}) "
                     "at every mark; training time excludes evaluation")
    lines = [
        f"# Time to accuracy: `{meta['dataset']}`", "", machine_line, accuracy_line,
        f"- command: `{meta['command']}`",
        *[f"  - part {i + 1} ({part['date']}, budget {part.get('budget_s', '?')} s): `{part['command']}`"
          for i, part in enumerate(meta.get("parts", []))],
        *([f"- note: {meta['note']}"] if meta.get("note") else []),
        "",
        "| recipe | config | training s | step | images seen | accuracy % [95% CP] |", "|---|---|---|---|---|---|",
    ]
    for label, curve in result["curves"].items():
        for r in curve:
            extra = " ".join(meta.get("extra_args", {}).get(label, []))
            lines.append(f"| {label} | `{meta['recipes'][label]}{' ' + extra if extra else ''}` | {r['train_seconds']:.0f} | {r['step']} | "
                         f"{r['images_seen']:,} | {100 * r['accuracy']:.2f} [{100 * r['ci_low']:.2f}, "
                         f"{100 * r['ci_high']:.2f}] |")
    if result.get("targets"):
        first = next(iter(result["targets"].values()))
        target = (f"Target: within {meta['points']} points of `{meta['baseline']}`'s final accuracy "
                  f"({100 * first['baseline_accuracy']:.1f}%) at <= {meta['factor']}x its training time, taken as "
                  f"its first mark within 1 point of that ({first['baseline_seconds']:.0f} s):")
        lines += ["", target, ""]
        for label, t in result["targets"].items():
            when = f"reached at {t['reached_at_seconds']:.0f} s ({t['ratio']:.1f}x)" if t["reached_at_seconds"] else (
                f"not reached in {t['trained_seconds']:.0f} s (best {100 * t['best_accuracy']:.1f}%)")
            verdict = "met" if t["met"] else (
                f"open (trained {t['trained_seconds']:.0f} of the {t['allowed_seconds']:.0f} s allowed)"
                if t.get("open") else "missed")
            run = (f"; {t['ratio_to_run']:.1f}x the baseline's whole {t['baseline_run_seconds']:.0f} s run"
                   if t.get("ratio_to_run") else "")
            lines.append(f"- {label}: goal {100 * t['goal']:.1f}%, {when}{run}: {verdict}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", required=True, help="a name for the records (the configs choose the data)")
    ap.add_argument("--recipe", action="append", default=[], help="LABEL=CONFIG, in the order to run")
    ap.add_argument("--arg", action="append", default=[], help="LABEL=FLAG=VALUE: an extra fit option of one recipe")
    ap.add_argument("--budget", type=float, default=300.0, help="training seconds per recipe")
    ap.add_argument("--evals", type=int, default=6, help="evenly spaced marks ending at the budget")
    ap.add_argument("--limit", type=int, default=500, help="the first N test images")
    ap.add_argument("--sample_seed", type=int, default=None,
                    help="N test images drawn at random with this seed instead of the first N (class-sorted folders)")
    ap.add_argument("--trials", type=int, default=10, help="draws per class of the diffusion models' Exhaustive")
    ap.add_argument("--baseline", default=None, help="recipe the targets are measured against")
    ap.add_argument("--points", type=float, default=5.0)
    ap.add_argument("--factor", type=float, default=10.0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--runs", default="runs/time_to_accuracy", help="run folders: RUNS/DATASET/LABEL")
    ap.add_argument("--out", required=True, help="output prefix: OUT.json, OUT.md, OUT.png")
    ap.add_argument("--report_only", action="store_true", help="rebuild OUT.md/OUT.png from OUT.json")
    ap.add_argument("--note", default=None, help="a line for the record (e.g. what shared the machine)")
    ap.add_argument("--merge", nargs="+", default=None,
                    help="JSON files of earlier runs of this script (recipes run on other cores at the same time): "
                         "their curves become OUT's, in the order given")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.report_only:
        result = json.loads(out.with_suffix(".json").read_text())
    elif args.merge:
        parts = [json.loads(Path(p).read_text()) for p in args.merge]
        command = command_line(["benchmarks/time_to_accuracy.py", *(argv if argv is not None else sys.argv[1:])])
        result = {"meta": {**parts[0]["meta"], "parts": [p["meta"] for p in parts], "recipes": {}, "extra_args": {},
                           "date": utc_now(), "command": command}, "curves": {}}
        for part in parts:
            result["meta"]["recipes"].update(part["meta"]["recipes"])
            result["meta"]["extra_args"].update(part["meta"].get("extra_args", {}))
            result["curves"].update(part["curves"])
    else:
        recipes = dict(r.split("=", 1) for r in args.recipe)
        if not recipes or any(not c for c in recipes.values()):
            raise SystemExit("error: --recipe LABEL=CONFIG is required (at least one)")
        extras: dict[str, list[str]] = {k: [] for k in recipes}
        for a in args.arg:
            label, _, flag = a.partition("=")
            if label not in extras or not flag:
                raise SystemExit(f"error: --arg {a!r}: expected LABEL=FLAG=VALUE with LABEL one of {list(recipes)}")
            key, _, value = flag.partition("=")
            extras[label] += [key, value] if value else [key]
        work = out.parent / f"{out.name}_work"
        work.mkdir(exist_ok=True)
        curves = {label: run_recipe(label, cfg, extras[label], args, work) for label, cfg in recipes.items()}
        result = {
            "meta": {"dataset": args.dataset, "recipes": recipes, "extra_args": extras, "budget_s": args.budget,
                     "evals": args.evals, "limit": args.limit, "sample_seed": args.sample_seed, "trials": args.trials, "baseline": args.baseline,
                     "points": args.points, "factor": args.factor, "date": utc_now(), "commit": repo_commit(),
                     "machine": machine(), "command": command_line(["benchmarks/time_to_accuracy.py",
                                                                    *(argv if argv is not None else sys.argv[1:])])},
            "curves": curves,
        }
    if args.note:
        result["meta"]["note"] = args.note
    base = args.baseline or result["meta"].get("baseline")
    if base and base not in result["curves"]:
        print(f"note: --baseline {base} is not among the recipes {list(result['curves'])}: no targets", flush=True)
        base = result["meta"]["baseline"] = None
    if base:
        result["meta"]["baseline"] = base
        result["targets"] = within(result["curves"], base, result["meta"]["points"], result["meta"]["factor"])
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    out.with_suffix(".md").write_text(markdown(result))
    plot(result, out.with_suffix(".png"))
    print(out.with_suffix(".md").read_text())
    return result


if __name__ == "__main__":
    main()
