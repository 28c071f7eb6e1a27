"""Evaluation choices of the diffusion classifier, measured: timesteps, weighting, error, draws.

    python benchmarks/eval_choices.py --ckpt_path CKPT --data fashion_mnist --limit 1000 \
        --out benchmarks/results/eval_choices_fashion

Every row classifies the same test images exhaustively (all classes, the same shared draws for
every class of an image) through ``DiffusionClassifier.classify``, the path ``cli.py test`` uses,
with one scoring option changed from the reference (L2, even grid over [0, 1000), no weighting):
- ``t_range``: truncated timestep ranges (each row spends the same number of draws inside its range);
- ``design``: stratified random timesteps instead of the even grid;
- ``error``: L1 instead of L2;
- ``flip_views``: half of the draws see the mirrored image (for models trained with random flips);
- ``weighting``: Clark & Jaini's ``exp(-k t/T)`` (x0-space) for several rates ``k``. These rows
  reweight the reference's per-draw errors instead of calling the denoiser again: the weighted
  error is the mean over draws of ``w(t_k) e_k``, so only the weights change. One rate is also run
  live and the reweighted predictions are checked against it;
- draws: prefixes of the reference's draws (its order makes every prefix span the range).
``--split train`` classifies training images instead (in file order, unflipped) and ``--only`` runs a
subset of the live rows: choosing an option there and then testing it once keeps the test split out of
the choice. Every row records ``fixed``/``broken`` against the reference (images it gets right that the
reference gets wrong, and the reverse), the paired evidence for a difference.
Strategies (which classes get how many draws) are measured by ``benchmarks/strategies.py``.
Writes ``OUT.json`` and ``OUT.md``: accuracy with its exact 95% interval, forwards and seconds per image.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
from torch import Tensor

from diffclf.cli.allocator import keep_freed_memory
from diffclf.metrics.accuracy import clopper_pearson
from diffclf.metrics.provenance import command_line, git, machine, utc_now, working_tree_dirty
from diffclf.models.checkpoints import read_checkpoint
from diffclf.strategies import Exhaustive
from diffclf.tasks import DiffusionClassifier
from diffclf.tasks.analysis import load_diffusion_task, parse_overrides, pct, run_live, split_batches

REFERENCE = {
    "design": "even", "error": "l2", "weighting": "none", "weight_rate": 7.0, "t_range": None, "flip_views": False,
}
LIVE_ROWS: list[tuple[str, dict]] = [
    ("reference: L2, even grid, t in [0, 1000)", {}),
    ("t in [0, 500)", {"t_range": (0, 500)}),
    ("t in [100, 700)", {"t_range": (100, 700)}),
    ("t in [250, 750)", {"t_range": (250, 750)}),
    ("t in [500, 1000)", {"t_range": (500, 1000)}),
    ("t in [475, 525) (narrow band)", {"t_range": (475, 525)}),
    ("stratified random t", {"design": "stratified"}),
    ("L1 error", {"error": "l1"}),
    ("exp weighting k=7 (live)", {"weighting": "exp", "weight_rate": 7.0}),
    ("mirrored views (flip_views; models trained with flips only)", {"flip_views": True}),
]
REWEIGHT_RATES = (1.0, 3.0, 7.0, 15.0)


def accuracy_row(
    name: str, pred: Tensor, target: Tensor, forwards: float, seconds: float | None, ref_pred: Tensor | None = None
) -> dict:
    """One table row; ``fixed``/``broken`` count the images this choice gets right and the reference
    wrong, and the reverse: the paired comparison, which is what decides between choices."""
    n, k = int(target.numel()), int((pred == target).sum())
    low, high = clopper_pearson(k, n, 0.95)
    ref_right = (pred == target) if ref_pred is None else (ref_pred == target)
    return {
        "name": name, "images": n, "correct": k, "accuracy": k / n, "ci_low": low, "ci_high": high,
        "fixed": int(((pred == target) & ~ref_right).sum()), "broken": int((ref_right & (pred != target)).sum()),
        "forwards_per_image": forwards, "seconds_per_image": None if seconds is None else seconds / n,
    }


def exp_weights(task: DiffusionClassifier, rate: float) -> Tensor:
    """The scorer's own ``(T,)`` exp weights for ``rate``, so the reweighting uses one definition."""
    task.set_scoring(weighting="exp", weight_rate=rate)
    try:
        return task.scorer().weights()
    finally:
        task.set_scoring(weighting=REFERENCE["weighting"], weight_rate=REFERENCE["weight_rate"])


def paired(row: dict) -> str:
    """``fixed / broken`` against the reference (``-`` for files written before it was recorded)."""
    return f"{row['fixed']} / {row['broken']}" if "fixed" in row else "-"


def reweight_line(check: dict | None) -> list[str]:
    """The markdown line of the live-vs-reweighted check, when the live exp row ran."""
    if check is None:
        return []
    return [
        (
            f"- live reweighting check (k=7 reweighted vs live): predictions equal on "
            f"{check['agreement'] * 100:.2f}% of images, max |Δ mean error| {check['max_abs_diff']:.2e}"
        )
    ]


def markdown(meta: dict, rows: list[dict]) -> str:
    lines = [
        (
            f"# Evaluation choices on {meta['data']} ({meta['images']} {meta.get('split', 'test')} images, "
            f"exhaustive over {meta['classes']} classes)"
        ),
        "",
        f"- date: {meta['date']}",
        f"- device: {meta['device']['device']}; 1-min load average before/after in the JSON",
        f"- torch {meta['torch']}, git commit {meta['commit']}" + (" (working tree dirty)" if meta["dirty"] else ""),
        f"- checkpoint: `{meta['ckpt_path']}` (global step {meta['global_step']})",
        f"- draws per class: {meta['draws']}, scoring precision {meta['precision']}, seed {meta['seed']}",
        *reweight_line(meta.get("reweight_check")),
        f"- command: `{meta['command']}`",
        "",
        "| choice | accuracy % [95% CP] | Δ vs reference (pts) | fixed / broken | forwards/image | s/image |",
        "|---|---|---|---|---|---|",
    ]
    ref = rows[0]["accuracy"]
    for r in rows:
        sec = "-" if r["seconds_per_image"] is None else f"{r['seconds_per_image']:.3f}"
        lines.append(
            f"| {r['name']} | {pct(r['accuracy'])} [{pct(r['ci_low'])}, {pct(r['ci_high'])}] "
            f"| {100 * (r['accuracy'] - ref):+.2f} | {paired(r)} | {r['forwards_per_image']:.0f} | {sec} |"
        )
    lines += [
        "",
        (
            "Rows without seconds reuse the reference's per-draw errors (prefixes of its draws, or its errors "
            "reweighted by `exp(-k t/T)/SNR(t)`); they cost what their forwards say. `fixed / broken`: images "
            "the row gets right and the reference wrong, and the reverse."
        ),
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ckpt_path", required=True)
    ap.add_argument("--data", default="digits", help="data preset or YAML (its test split is classified)")
    ap.add_argument("--data_arg", action="append", default=[], help="KEY=VALUE data init_arg override")
    ap.add_argument("--out", required=True, help="output prefix: writes OUT.json and OUT.md")
    ap.add_argument("--limit", type=int, default=None, help="the first N images of --split")
    ap.add_argument(
        "--split", choices=["test", "train"], default="test",
        help="images to classify; 'train' (file order, no flips) chooses options without the test split",
    )
    ap.add_argument(
        "--only", nargs="+", default=None, metavar="TEXT",
        help="live rows whose name contains one of these (the reference always runs)",
    )
    ap.add_argument("--draws", type=int, default=100, help="draws per class of every live row")
    ap.add_argument("--prefixes", type=int, nargs="+", default=[5, 10, 20, 50])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--precision", choices=["32", "bf16"], default=None)
    ap.add_argument("--compile", action="store_true", help="score with torch.compile (model scoring.compile)")
    args = ap.parse_args(argv)
    keep_freed_memory()
    if args.threads:
        torch.set_num_threads(args.threads)
    command = command_line(["benchmarks/eval_choices.py", *(argv if argv is not None else sys.argv[1:])])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    unmatched = [text for text in args.only or [] if not any(text in name for name, _ in LIVE_ROWS)]
    if unmatched:
        raise SystemExit(f"error: --only {unmatched}: no row name contains it; rows: {[n for n, _ in LIVE_ROWS]}")
    live_rows = [
        row for i, row in enumerate(LIVE_ROWS)
        if i == 0 or args.only is None or any(text in row[0] for text in args.only)
    ]
    try:
        dm, batches = split_batches(args.data, parse_overrides(args.data_arg), args.limit, args.split)
        task = load_diffusion_task(args.ckpt_path, dm)
    except (FileNotFoundError, TypeError, ValueError) as err:
        raise SystemExit(f"error: {err}") from None
    task.set_scoring(**REFERENCE, compile=args.compile,
                     **({} if args.precision is None else {"precision": args.precision}))
    strategy = Exhaustive(trials=args.draws)

    rows, runs = [], {}
    for name, change in live_rows:
        task.set_scoring(**{**REFERENCE, **change})
        print(f"{name} ...", flush=True)
        run = run_live(task, strategy, batches, keep_table=True)
        runs[name] = run
        row = accuracy_row(
            name, run["pred"], run["target"], float(run["forwards"].double().mean()), run["seconds"],
            runs[live_rows[0][0]]["pred"],
        )
        row.update(change=change, loadavg_1min_before_after=run["loadavg_1min"])
        rows.append(row)
        print(
            f"    {pct(row['accuracy'])}% [{pct(row['ci_low'])}, {pct(row['ci_high'])}]  "
            f"fixed / broken vs reference: {paired(row)}",
            flush=True,
        )
    task.set_scoring(**REFERENCE)

    ref_name = LIVE_ROWS[0][0]
    ref = runs[ref_name]
    errors, target, cand = ref["errors"], ref["target"], ref["candidates"]  # (N, M, D), (M,)
    t = task.scorer().timesteps(ref["index"])  # (N, D): the reference's timesteps, draw order
    m = errors.shape[1]

    def predict(err: Tensor) -> Tensor:
        return cand[err.argmin(dim=1)]

    derived = []
    for d in args.prefixes:
        if d < args.draws:
            pred = predict(errors[:, :, :d].mean(dim=-1))
            derived.append(accuracy_row(f"{d} draws per class (prefix)", pred, target, float(m * d), None, ref["pred"]))
    for rate in REWEIGHT_RATES:
        w = exp_weights(task, rate)[t]  # (N, D)
        pred = predict((errors * w.unsqueeze(1)).mean(dim=-1))
        derived.append(
            accuracy_row(f"exp weighting k={rate:g} (reweighted)", pred, target, float(m * args.draws), None, ref["pred"])
        )
    check = None
    live = runs.get("exp weighting k=7 (live)")
    if live is not None:
        w7 = exp_weights(task, 7.0)[t]
        re7 = (errors * w7.unsqueeze(1)).mean(dim=-1)
        check = {
            "agreement": float((predict(re7) == live["pred"]).double().mean()),
            "max_abs_diff": float((re7 - live["errors"].mean(dim=-1)).abs().max()),
        }
    rows += derived

    ckpt = read_checkpoint(args.ckpt_path, mmap=True).raw
    meta = {
        "date": utc_now(),
        "device": machine(),
        "torch": torch.__version__,
        "commit": git("rev-parse", "--short", "HEAD"),
        "dirty": working_tree_dirty(),
        "command": command,
        "ckpt_path": args.ckpt_path,
        "global_step": ckpt.get("global_step"),
        "data": args.data,
        "split": args.split,
        "images": rows[0]["images"],
        "classes": m,
        "draws": args.draws,
        "precision": task.scoring.precision,
        "seed": task.hparams.seed,
        "reweight_check": check,
        "cpu_count": os.cpu_count(),
    }
    result = {"meta": meta, "rows": rows}
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    out.with_suffix(".md").write_text(markdown(meta, rows))
    print(markdown(meta, rows))
    return result


if __name__ == "__main__":
    main()
