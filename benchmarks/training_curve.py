"""Classification accuracy and held-out eps-loss against training images seen, for one training run.

    python benchmarks/training_curve.py --run_dir runs/fashion_mnist --data fashion_mnist \
        --data_arg image_size=28 --limit 500 --keep 2 1 --trials 10 50 \
        --out benchmarks/results/fashion_mnist_dit_t4_curve

Reads the run's ``metrics.csv`` (CSVLogger: ``val/loss``, the EMA eps-loss at fixed timesteps and
noise on held-out images) and classifies the first ``--limit`` test images with every
``checkpoints/*step=N*.ckpt`` through ``DiffusionClassifier.classify`` (the path ``cli.py test``
uses). The generative loss alone does not show when the class conditioning is learned; the
accuracy column does. Writes ``OUT.json``, ``OUT.md`` and ``OUT.png``.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from pathlib import Path

import torch

from diffclf.cli.allocator import keep_freed_memory
from diffclf.metrics.accuracy import clopper_pearson
from diffclf.metrics.provenance import command_line, git, machine, utc_now
from diffclf.strategies import Adaptive
from diffclf.tasks.analysis import load_diffusion_task, parse_overrides, pct, run_live, split_batches
from diffclf.tasks.diffusion import describe_strategy

STEP = re.compile(r"step=(\d+)")


def val_losses(metrics: Path) -> dict[int, float]:
    """``{global step: val/loss}`` from a CSVLogger file (the last row of a step wins)."""
    out: dict[int, float] = {}
    with metrics.open() as f:
        for row in csv.DictReader(f):
            if row.get("val/loss"):
                out[int(row["step"])] = float(row["val/loss"])
    return out


def plot(rows: list[dict], path: Path, title: str) -> None:
    """Accuracy (with its interval) and held-out eps-loss against images seen, on two axes: the loss alone
    does not show when the class conditioning is learned."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 3.6))
    ax = fig.add_subplot(1, 1, 1)
    seen = [r["images_seen"] / 1e6 for r in rows]
    acc = [100 * r["accuracy"] for r in rows]
    err = [[100 * (r["accuracy"] - r["ci_low"]) for r in rows], [100 * (r["ci_high"] - r["accuracy"]) for r in rows]]
    ax.errorbar(seen, acc, yerr=err, marker="o", capsize=3, color="C0")
    ax.set_xlabel("training images seen (millions)")
    ax.set_ylabel("top-1 accuracy % (95% CP)", color="C0")
    losses = [(s, r["val_loss"]) for s, r in zip(seen, rows) if r["val_loss"] is not None]
    if losses:
        ax2 = ax.twinx()
        ax2.plot([s for s, _ in losses], [v for _, v in losses], marker="s", color="C1")
        ax2.set_ylabel("held-out eps-loss (EMA)", color="C1")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run_dir", required=True, help="holds metrics.csv and checkpoints/")
    ap.add_argument("--data", default="fashion_mnist", help="data preset or YAML (its test split is classified)")
    ap.add_argument("--data_arg", action="append", default=[], help="KEY=VALUE data init_arg override")
    ap.add_argument("--limit", type=int, default=500, help="the first N test images")
    ap.add_argument("--keep", type=int, nargs="+", default=[2, 1])
    ap.add_argument("--trials", type=int, nargs="+", default=[10, 50])
    ap.add_argument("--batch_size", type=int, default=128, help="the run's training batch (images seen = step x this)")
    ap.add_argument("--init_ckpt", default=None,
                    help="the checkpoint the run started from (model.init_from): measured as step 0")
    ap.add_argument("--step_offset", type=int, default=0,
                    help="steps of the earlier stage(s) the run continued, added to every step (images seen)")
    ap.add_argument("--precision", choices=["32", "bf16"], default="32")
    ap.add_argument("--compile", action="store_true", help="score with torch.compile (model scoring.compile)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", required=True, help="output prefix: OUT.json, OUT.md, OUT.png")
    ap.add_argument("--resume", action="store_true",
                    help="keep the rows of an existing OUT.json (same data, limit and strategy) and measure only new steps")
    args = ap.parse_args(argv)
    keep_freed_memory()
    if args.threads:
        torch.set_num_threads(args.threads)
    run = Path(args.run_dir)
    ckpts = sorted(
        (int(m.group(1)), p) for p in (run / "checkpoints").glob("*.ckpt") if (m := STEP.search(p.name))
    )
    if not ckpts:
        raise SystemExit(f"error: --run_dir {run}: no checkpoints/*step=N*.ckpt files")
    if args.init_ckpt:
        ckpts.insert(0, (0, Path(args.init_ckpt)))
    metrics = run / "metrics.csv"
    losses = val_losses(metrics) if metrics.is_file() else {}
    try:
        data_args = parse_overrides(args.data_arg)
        dm, batches = split_batches(args.data, data_args, args.limit)
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"error: {err}") from None
    strategy = Adaptive(keep=args.keep, trials=args.trials)
    rows = []
    out = Path(args.out)
    if args.resume and out.with_suffix(".json").is_file():
        earlier = json.loads(out.with_suffix(".json").read_text())
        same = {"data": args.data, "data_args": data_args,
                "strategy": describe_strategy(strategy), "precision": args.precision}
        if any(earlier["meta"].get(k) != v for k, v in same.items()) or earlier["rows"][0]["images"] != len(
            torch.cat([b[2] for b in batches])
        ):
            raise SystemExit(f"error: --resume: {out.with_suffix('.json')} was measured with other settings")
        rows = earlier["rows"]
        done = {r["step"] for r in rows}
        ckpts = [(step, path) for step, path in ckpts if step not in done]
    command = command_line(["benchmarks/training_curve.py", *(argv if argv is not None else sys.argv[1:])])
    result = {"meta": {}, "rows": rows}
    for step, path in ckpts:
        try:
            task = load_diffusion_task(path, dm, option="checkpoint")
        except (FileNotFoundError, TypeError, ValueError) as err:
            raise SystemExit(f"error: {err}") from None
        task.set_scoring(precision=args.precision, compile=args.compile)
        res = run_live(task, strategy, batches, keep_table=False)
        n, k = int(res["target"].numel()), int((res["pred"] == res["target"]).sum())
        low, high = clopper_pearson(k, n, 0.95)
        rows.append({
            "step": step, "images_seen": (args.step_offset + step) * args.batch_size, "checkpoint": str(path),
            "val_loss": losses.get(step - 1, losses.get(step)), "images": n, "correct": k, "accuracy": k / n,
            "ci_low": low, "ci_high": high, "forwards_per_image": float(res["forwards"].double().mean()),
            "seconds_per_image": res["seconds"] / n,
        })
        print(f"step {step}: {pct(k / n)}% [{pct(low)}, {pct(high)}] val/loss {rows[-1]['val_loss']}", flush=True)
        # Written after every checkpoint, so an interrupted measurement resumes with --resume.
        result = write(out, run, args, strategy, command, rows)
    print(out.with_suffix(".md").read_text())
    return result


def write(out: Path, run: Path, args: argparse.Namespace, strategy: Adaptive, command: str, rows: list[dict]) -> dict:
    """``OUT.json``, ``OUT.md`` and ``OUT.png`` from the rows measured so far."""
    rows = sorted(rows, key=lambda r: r["step"])
    meta = {
        "date": utc_now(),
        "device": machine(), "torch": torch.__version__, "commit": git("rev-parse", "--short", "HEAD"),
        "command": command, "run_dir": str(run), "data": args.data, "data_args": parse_overrides(args.data_arg),
        "strategy": describe_strategy(strategy), "precision": args.precision,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    lines = [
        f"# Training curve: `{run}`",
        "",
        f"- date: {meta['date']}; device: {meta['device']['device']}; torch {meta['torch']}; commit {meta['commit']}",
        f"- accuracy: first {rows[0]['images']} test images of `{args.data}`, {meta['strategy']}, precision {args.precision}",
        "- val/loss: EMA eps-loss on held-out images at fixed timesteps and noise (the run's CSV log)",
        f"- command: `{command}`",
        "",
        "| step | images seen | val/loss | accuracy % [95% CP] | forwards/image | s/image |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        vl = "-" if r["val_loss"] is None else f"{r['val_loss']:.4f}"
        lines.append(
            f"| {r['step']} | {r['images_seen']:,} | {vl} | {pct(r['accuracy'])} [{pct(r['ci_low'])}, "
            f"{pct(r['ci_high'])}] | {r['forwards_per_image']:.0f} | {r['seconds_per_image']:.3f} |"
        )
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    plot(rows, out.with_suffix(".png"), f"{run.name}: {meta['strategy']}, first {rows[0]['images']} test images")
    return {"meta": meta, "rows": rows}


if __name__ == "__main__":
    main()
