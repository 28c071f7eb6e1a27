"""Does the scoring precision change predictions? fp32 against bf16 autocast on the same images and draws.

    python benchmarks/precision.py --ckpt_path checkpoints/fashion_mnist_dit_t4_stage3.ckpt --data fashion_mnist \
        --limit 1000 --threads 1 --out benchmarks/results/precision/fashion_stage3

Classifies the first ``--limit`` test images through ``DiffusionClassifier.classify`` (the path
``cli.py test`` takes), once per ``--precisions`` entry (``+compile``: with ``scoring.compile``, the
compiling included in its time), with one strategy (default ``Exhaustive(--draws)``,
which isolates the precision from a strategy's path through its stages; ``--strategy`` takes a preset or
YAML instead). The draws depend only on (seed, index), so both runs see the same (t, eps): a changed
prediction is the precision's doing. Reports the changed predictions per thousand with their exact
interval, both accuracies, s/image and the speed ratio, the largest change of a class's mean error, and
for every changed image its fp32 margin (runner-up minus winner mean error, relative to the winner) and
that margin's rank among all images: changes at near-ties are rounding, changes at wide margins a bug.
Also records what ``precision: auto`` picks on this machine and why. Writes ``OUT.json`` and ``OUT.md``.

``+recheck`` rows (``bf16+recheck``, ``bf16+compile+recheck``) run with ``scoring.recheck``: the two best classes
of every close call are scored again in fp32 on the same draws. Its margin is fitted on the first
``--fit_limit`` *training* images (the largest change of the decisive relative margin between fp32 and that
precision there: a call can only flip when its margin is below the rounding of it), or given as ``--recheck``.

    python benchmarks/precision.py ... --precisions 32 bf16+compile bf16+compile+recheck --fit_limit 500
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from diffclf.cli.allocator import keep_freed_memory
from diffclf.configs import load_preset
from diffclf.diffusion.precision import cpu_flags, resolve_precision
from diffclf.metrics.accuracy import clopper_pearson
from diffclf.metrics.provenance import command_line, git, machine, utc_now, working_tree_dirty
from diffclf.strategies import Exhaustive, Strategy
from diffclf.tasks.analysis import load_diffusion_task, parse_overrides, pct, run_live, split_batches
from diffclf.tasks.diffusion import describe_strategy


def mean_errors(run: dict) -> torch.Tensor:
    """``(N, M)`` mean error per image and candidate over the draws the strategy scored (NaN: none)."""
    return run["errors"].nanmean(dim=2)


def relative_margin(err: torch.Tensor) -> torch.Tensor:
    """Per image, (runner-up - winner) / winner of the mean errors: how near a tie the decision was."""
    finite = torch.where(torch.isnan(err), torch.full_like(err, float("inf")), err)
    two = finite.topk(2, dim=1, largest=False).values
    return (two[:, 1] - two[:, 0]) / two[:, 0]


def fit_recheck(ref: dict, low: dict) -> dict:
    """The recheck margin from fp32 (``ref``) and reduced-precision (``low``) runs of the same images and draws:
    the largest change of the low run's decisive relative margin (its two best classes) between the two. A call
    flips only if its low-precision margin is below that change, so on images like these a margin this large
    catches every flip."""
    le, fe = mean_errors(low).double(), mean_errors(ref).double()
    if torch.isnan(le).any() or torch.isnan(fe).any():
        raise SystemExit("error: --fit_limit needs every class scored on every draw (the default Exhaustive strategy)")
    two = le.topk(2, dim=1, largest=False).indices
    rows = torch.arange(le.shape[0])
    m_low = (le[rows, two[:, 1]] - le[rows, two[:, 0]]) / le[rows, two[:, 0]]
    m_ref = (fe[rows, two[:, 1]] - fe[rows, two[:, 0]]) / fe[rows, two[:, 0]]
    change = (m_low - m_ref).abs()
    return {
        "images": int(le.shape[0]),
        "margin": float(change.max()),
        "median_change": float(change.median()),
        "changed_predictions": int((low["pred"] != ref["pred"]).sum()),
        "rechecked_share": float((m_low.abs() < change.max()).double().mean()),
    }


def compare(runs: dict[str, dict], level: float = 0.95) -> dict:
    """The change between the first precision's run (the reference) and each other one."""
    (ref_name, ref), *others = runs.items()
    n = int(ref["target"].numel())
    ref_err = mean_errors(ref)
    margin = relative_margin(ref_err)
    ranks = margin.argsort().argsort()  # 0 = the closest call
    rows = []
    for name, run in [(ref_name, ref), *others]:
        k = int((run["pred"] == run["target"]).sum())
        low, high = clopper_pearson(k, n, level)
        changed = (run["pred"] != ref["pred"]).nonzero().flatten()
        c_low, c_high = clopper_pearson(len(changed), n, level)
        err = mean_errors(run)
        both = ~(torch.isnan(err) | torch.isnan(ref_err))
        rel = ((err - ref_err).abs() / ref_err)[both]
        rows.append({
            "precision": name,
            "accuracy": k / n, "ci_low": low, "ci_high": high,
            "seconds_per_image": run["seconds"] / n,
            "speedup_vs_reference": ref["seconds"] / run["seconds"],
            "forwards_per_image": float(run["forwards"].double().mean()),
            "changed": len(changed),
            "changed_per_1000": 1000 * len(changed) / n,
            "changed_per_1000_ci": [1000 * c_low, 1000 * c_high],
            "max_relative_mean_error_change": float(rel.max()) if rel.numel() else None,
            "median_relative_mean_error_change": float(rel.median()) if rel.numel() else None,
            "recheck": run.get("recheck", 0.0),
            "changed_images": [
                {"index": int(run["index"][i]), "target": int(run["target"][i]), "reference_pred": int(ref["pred"][i]),
                 "pred": int(run["pred"][i]), "reference_relative_margin": float(margin[i]),
                 "margin_rank": int(ranks[i])}
                for i in changed.tolist()
            ],
            "loadavg_1min_before_after": run["loadavg_1min"],
        })
    return {"images": n, "reference": ref_name, "median_relative_margin": float(margin.median()), "rows": rows}


def markdown(result: dict) -> str:
    m = result["meta"]
    d = m["device"]
    lines = [
        f"# Scoring precision on `{m['data']}` ({result['images']} test images, `{m['ckpt_path']}`)",
        "",
        f"- date: {m['date']}; commit {m['commit']}{' (dirty)' if m['dirty'] else ''}; torch {m['torch']}",
        (f"- device: {d['device']} (cpu family/model {d.get('cpu_family_model')}, {d.get('logical_cpus')} logical CPUs); "
         f"CPU bf16 flags: {', '.join(m['cpu_bf16_flags']) or 'none'}"),
        f"- `precision: auto` here: {m['auto']}",
        f"- strategy: `{m['strategy']}`, the same draws in every run (they depend only on seed and image index)",
        f"- command: `{m['command']}`",
    ]
    for base, fit in m.get("recheck_fits", {}).items():
        lines.append(
            f"- `{base}+recheck` margin {fit['margin']:.3g}, fitted on the first {fit['images']} training images: the "
            f"largest change of the decisive relative margin between fp32 and {base} there (median "
            f"{fit['median_change']:.2g}; {fit['changed_predictions']} training predictions changed; "
            f"{100 * fit['rechecked_share']:.1f}% of the training images fall under it)"
        )
    lines += [
        "",
        ("| precision | accuracy % [95% CP] | changed predictions vs "
         f"{result['reference']} (per 1,000, 95% CP) | forwards/image | s/image | speed-up "
         "| mean error change (median / max, relative) |"),
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lo, hi = r["changed_per_1000_ci"]
        med, mx = r["median_relative_mean_error_change"], r["max_relative_mean_error_change"]
        lines.append(
            f"| {r['precision']} | {pct(r['accuracy'])} [{pct(r['ci_low'])}, {pct(r['ci_high'])}] | "
            f"{r['changed']} ({r['changed_per_1000']:.1f} [{lo:.1f}, {hi:.1f}]) | {r['forwards_per_image']:.1f} | "
            f"{r['seconds_per_image']:.4f} | "
            f"{r['speedup_vs_reference']:.2f}x | {med:.2e} / {mx:.2e} |"
        )
    changed = [(r["precision"], c) for r in result["rows"] for c in r["changed_images"]]
    if changed:
        lines += [
            "",
            (f"Changed images: their fp32 decision margin (runner-up minus winner mean error, relative to the winner; "
             f"median over all images {result['median_relative_margin']:.3g}) and its rank among the "
             f"{result['images']} images (0 = the closest call)."),
            "",
            "| precision | index | target | reference pred | pred | reference margin | margin rank |",
            "|---|---|---|---|---|---|---|",
        ]
        lines += [f"| {p} | {c['index']} | {c['target']} | {c['reference_pred']} | {c['pred']} | "
                  f"{c['reference_relative_margin']:.2e} | {c['margin_rank']} |" for p, c in changed]
    return "\n".join(lines) + "\n"


PRECISIONS = ("32", "bf16", "32+compile", "bf16+compile", "bf16+recheck", "bf16+compile+recheck")


def parse_precision(name: str) -> dict:
    """``set_scoring`` changes of a ``--precisions`` entry, less the recheck margin: ``bf16+compile+recheck`` ->
    ``{"precision": "bf16", "compile": True}``."""
    dtype, *flags = name.split("+")
    return {"precision": dtype, "compile": "compile" in flags}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ckpt_path", required=True, help="the diffusion checkpoint to classify with")
    ap.add_argument("--data", default="digits", help="data preset or YAML (its test split is classified)")
    ap.add_argument("--data_arg", action="append", default=[], help="KEY=VALUE data init_arg override")
    ap.add_argument("--limit", type=int, default=None, help="the first N test images (default all)")
    ap.add_argument("--draws", type=int, default=50, help="draws per class of the default Exhaustive strategy")
    ap.add_argument("--strategy", default=None, help="a strategy preset or YAML instead of Exhaustive(--draws)")
    ap.add_argument("--precisions", nargs="+", default=["32", "bf16"], choices=PRECISIONS,
                    help="the first is the reference the others are compared with")
    ap.add_argument("--recheck", type=float, default=None, help="the +recheck rows' margin (instead of --fit_limit)")
    ap.add_argument("--fit_limit", type=int, default=None,
                    help="fit each +recheck row's margin on the first N training images")
    ap.add_argument("--batch_size", type=int, default=None, help="scoring batch (default: the checkpoint's)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", required=True, help="output prefix: writes OUT.json and OUT.md")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    keep_freed_memory()
    try:
        dm, batches = split_batches(args.data, parse_overrides(args.data_arg), args.limit)
        task = load_diffusion_task(args.ckpt_path, dm)
        strategy = (load_preset("strategy", args.strategy, Strategy, "--strategy") if args.strategy
                    else Exhaustive(trials=args.draws))
    except (FileNotFoundError, TypeError, ValueError) as err:
        raise SystemExit(f"error: {err}") from None
    rechecked = [p for p in args.precisions if p.endswith("+recheck")]
    if rechecked and (args.recheck is None) == (args.fit_limit is None):
        raise SystemExit(f"error: --precisions {' '.join(rechecked)}: give the margin as --recheck or fit it with --fit_limit")
    if args.fit_limit is not None and args.strategy:
        raise SystemExit("error: --fit_limit fits on the default Exhaustive strategy's draws; leave --strategy out")
    batch = {"batch_size": args.batch_size} if args.batch_size else {}

    def live(changes: dict, on: list) -> dict:
        task.set_scoring(**changes, **batch)
        try:
            return run_live(task, strategy, on, keep_table=True)
        except ValueError as err:  # e.g. the data's image size is not the model's
            raise SystemExit(f"error: {err}") from None

    fits: dict[str, dict] = {}
    if rechecked and args.fit_limit is not None:
        _, train = split_batches(args.data, parse_overrides(args.data_arg), args.fit_limit, split="train")
        fp32 = live({"precision": "32", "compile": False, "recheck": 0.0}, train)
        for name in rechecked:
            base = name.removesuffix("+recheck")
            if base not in fits:
                fits[base] = fit_recheck(fp32, live({**parse_precision(base), "recheck": 0.0}, train))
                print(f"recheck margin for {base}, fitted on {args.fit_limit} training images: "
                      f"{fits[base]['margin']:.3g}", flush=True)
    runs = {}
    for precision in args.precisions:
        margin = 0.0
        if precision.endswith("+recheck"):
            base = precision.removesuffix("+recheck")
            margin = fits[base]["margin"] if base in fits else args.recheck
        runs[precision] = live({**parse_precision(precision), "recheck": margin}, batches)
        runs[precision]["recheck"] = margin
        n = len(runs[precision]["target"])
        acc = float((runs[precision]["pred"] == runs[precision]["target"]).double().mean())
        print(f"{precision}: {pct(acc)}% on {n} images, {runs[precision]['seconds'] / n:.4f} s/image", flush=True)
    result = compare(runs)
    _, why = resolve_precision("auto", task.device)
    result["meta"] = {
        "date": utc_now(), "device": machine(), "torch": str(torch.__version__),
        "commit": git("rev-parse", "--short", "HEAD"),
        "dirty": working_tree_dirty(),
        "command": command_line(["benchmarks/precision.py", *(argv if argv is not None else sys.argv[1:])]),
        "ckpt_path": args.ckpt_path, "data": args.data, "strategy": describe_strategy(strategy),
        "seed": task.hparams.seed, "auto": why,
        "cpu_bf16_flags": sorted(f for f in cpu_flags() if "bf16" in f),
        "recheck_fits": {base: {"split": "train", **fit} for base, fit in fits.items()},
    }
    for r in result["rows"][1:]:
        print(f"{r['precision']}: {r['changed']} of {result['images']} predictions changed "
              f"({r['changed_per_1000']:.1f} per 1,000), {r['speedup_vs_reference']:.2f}x the {result['reference']} speed")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    out.with_suffix(".md").write_text(markdown(result))
    print(f"written {out.with_suffix('.json')} and {out.with_suffix('.md')}")
    return result


if __name__ == "__main__":
    main()
