"""Where the per-draw noise of the decisive class pair comes from, and what the near-ties cost (issue 20, item 2).

    # from exhaustive tables (`error_control.py record`): the share of the decisive pair's spread over draws that is
    # the gap's smooth change with t (what `standard_error: stratified` removes), and the accuracy near-ties gain
    # from more draws
    python benchmarks/variance_sources.py tables --table benchmarks/results/error_control/tables/fashion_test.pt \\
        --table benchmarks/results/error_control/tables/digits_test.pt \\
        --out benchmarks/results/error_control/variance_sources
    # antithetic noise: every class's error at (t, eps) and at (t, -eps), on training images
    python benchmarks/variance_sources.py antithetic --ckpt_path checkpoints/fashion_mnist_dit_t4_stage3.ckpt \\
        --data fashion_mnist --data_arg image_size=28 --limit 300 --draws 32 --t_max 700 --threads 1 \\
        --out benchmarks/results/error_control/antithetic_fashion

    # where a strategy's forwards and its accuracy loss go, by the decisive pair's per-draw SNR (replayed, no model)
    python benchmarks/variance_sources.py costs --table benchmarks/results/error_control/tables/fashion_test.pt \
        --strategy racing_pooled_t_fashion --out benchmarks/results/error_control/costs_fashion

The decisive pair of an image is its exhaustive winner and runner-up; ``d`` is the runner-up's error minus the
winner's, per draw. Both commands write ``OUT.json`` and ``OUT.md``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import torch

from diffclf.configs import load_preset
from diffclf.metrics.provenance import command_line, git, machine, utc_now, working_tree_dirty
from diffclf.strategies import Strategy
from diffclf.strategies.base import antithetic_units, successive_difference_variance
from diffclf.strategies.replay import ReplayScorer
from diffclf.tasks.analysis import load_diffusion_task, parse_overrides, split_batches

SNR_EDGES = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, float("inf"))
FIXED_DRAWS = (25, 50, 100)


def provenance(argv: list[str]) -> dict:
    return {
        "date": utc_now(),
        "device": machine(),
        "commit": git("rev-parse", "--short", "HEAD"),
        "dirty": working_tree_dirty(),
        "command": command_line(["benchmarks/variance_sources.py", *argv]),
    }


def decisive_differences(errors: torch.Tensor) -> torch.Tensor:
    """``(N, D)`` runner-up minus winner error per draw, the pair ranked by the mean over all ``D`` draws."""
    e = errors.double()
    rank = e.mean(dim=-1).argsort(dim=1)
    rows = torch.arange(e.shape[0])
    return e[rows, rank[:, 1]] - e[rows, rank[:, 0]]


def table_summary(path: str) -> dict:
    """The spread share and the near-tie table of one exhaustive table."""
    table = torch.load(path, weights_only=False)
    errors, target, times = table["errors"], table["target"], table["timesteps"]
    n, k, draws = errors.shape
    d = decisive_differences(errors)
    ts = times.expand(n, draws)
    ratio = successive_difference_variance(d.unsqueeze(1), ts).squeeze(1) / d.var(dim=-1)
    snr = d.mean(dim=-1) / d.std(dim=-1)
    exhaustive = errors.double().mean(dim=-1).argmin(dim=1)
    pairs = None
    if table["meta"].get("scoring", {}).get("antithetic"):
        # Partners 2m, 2m + 1 sit at neighbouring grid positions, so in t order the draws run a, a', b, b', ...: the
        # local variance of a pair's mean against half that of one draw, the latter from the differences *between*
        # pairs (a' to b: independent neighbours; the partners' own differences carry their anticorrelation).
        units, unit_t = antithetic_units(d, ts)
        by_t = d.gather(-1, ts.argsort(dim=-1, stable=True))
        between = (by_t[:, 2::2] - by_t[:, 1:-1:2]).square().mean(dim=-1) / 2
        pair_ratio = successive_difference_variance(units.unsqueeze(1), unit_t).squeeze(1) / (between / 2)
        pairs = {q: float(pair_ratio.quantile(p)) for q, p in (("q10", 0.1), ("median", 0.5), ("q90", 0.9))}
    rows = []
    for lo, hi in itertools.pairwise(SNR_EDGES):
        sel = (snr >= lo) & (snr < hi)
        if not sel.any():
            continue
        row = {"snr_low": lo, "snr_high": hi, "images": int(sel.sum()),
               "exhaustive_accuracy": float((exhaustive[sel] == target[sel]).double().mean())}
        for m in (m for m in FIXED_DRAWS if m < draws):
            pred = errors[sel][:, :, :m].double().mean(dim=-1).argmin(dim=1)
            row[f"accuracy_first_{m}"] = float((pred == target[sel]).double().mean())
        rows.append(row)
    return {
        "table": path, "data": table["meta"]["data"], "split": table["meta"]["split"], "images": n,
        "classes": k, "draws": draws,
        "stratified_over_iid_variance": {q: float(ratio.quantile(p)) for q, p in (("q10", 0.1), ("median", 0.5),
                                                                                 ("q90", 0.9))},
        "per_draw_snr": {"q10": float(snr.quantile(0.1)), "median": float(snr.median())},
        "antithetic_pair_over_independent_local_variance": pairs,
        "near_ties": rows,
    }


def tables(args: argparse.Namespace, argv: list[str]) -> dict:
    result = {"meta": provenance(argv), "tables": [table_summary(p) for p in args.table]}
    lines = ["# Where the decisive pair's per-draw spread comes from", "",
             f"- date {result['meta']['date']}, commit {result['meta']['commit']}; command `{result['meta']['command']}`",
             ("- d = runner-up minus winner error per draw (the exhaustive pair); the ratio is its successive-difference "
              "variance in timestep order over its sample variance: 1 - ratio is the share of the spread that is the "
              "gap's smooth change with t"), ""]
    for s in result["tables"]:
        r = s["stratified_over_iid_variance"]
        lines += [f"## {s['data']} {s['split']} ({s['images']} images, {s['draws']} draws per class)", "",
                  (f"variance ratio median {r['median']:.2f} (q10 {r['q10']:.2f}, q90 {r['q90']:.2f}); per-draw SNR "
                   f"of the pair median {s['per_draw_snr']['median']:.2f} (q10 {s['per_draw_snr']['q10']:.2f})"
                   + (f"; antithetic draws: a pair's local variance over two independent draws' median "
                      f"{s['antithetic_pair_over_independent_local_variance']['median']:.2f}"
                      if s["antithetic_pair_over_independent_local_variance"] else "")), "",
                  "| per-draw SNR | images | exhaustive acc. | " + " | ".join(f"first {m} draws" for m in FIXED_DRAWS
                                                                           if m < s["draws"]) + " |",
                  "|---|---|---|" + "---|" * sum(m < s["draws"] for m in FIXED_DRAWS)]
        for row in s["near_ties"]:
            cells = [f"{100 * row[f'accuracy_first_{m}']:.0f}%" for m in FIXED_DRAWS if m < s["draws"]]
            lines.append(f"| [{row['snr_low']}, {row['snr_high']}) | {row['images']} | "
                         f"{100 * row['exhaustive_accuracy']:.0f}% | " + " | ".join(cells) + " |")
        lines.append("")
    write(args.out, result, lines)
    return result


@torch.no_grad()
def antithetic(args: argparse.Namespace, argv: list[str]) -> dict:
    """Every class's error at ``draws`` evenly jittered timesteps in ``[0, t_max)`` with noise ``eps`` and ``-eps``."""
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        dm, batches = split_batches(args.data, parse_overrides(args.data_arg), args.limit, split="train")
        task = load_diffusion_task(args.ckpt_path, dm)
    except (FileNotFoundError, TypeError, ValueError) as err:
        raise SystemExit(f"error: {err}") from None
    scorer, schedule, k, n = task.scorer(), task.schedule, task.num_model_classes, args.draws
    a, b = schedule.sqrt_alphas_cumprod.float(), schedule.sqrt_one_minus_alphas_cumprod.float()
    halves, steps = [], []
    for images, _, index in batches:
        x = task.encode(images, sample=False).float()
        for x0, i in zip(x, index.tolist()):
            g = torch.Generator().manual_seed(args.seed * 1_000_003 + int(i))
            t = ((torch.arange(n) + torch.rand(n, generator=g)) * args.t_max / n).long()
            steps.append(t)
            eps = torch.randn(n, *x0.shape, generator=g)
            both = []
            for e in (eps, -eps):
                x_t = a[t].view(-1, 1, 1, 1) * x0 + b[t].view(-1, 1, 1, 1) * e
                out = scorer.denoise(x_t.repeat(k, 1, 1, 1), t.repeat(k), torch.arange(k).repeat_interleave(n))
                both.append((out[:, : x0.shape[0]] - e.repeat(k, 1, 1, 1)).square().mean(dim=(1, 2, 3)).view(k, n))
            halves.append(torch.stack(both))
    err = torch.stack(halves).double()  # (N, 2, K, n)
    rows = torch.arange(err.shape[0])
    rank = err.mean(dim=(1, 3)).argsort(dim=1)
    d = err[rows, :, rank[:, 1]] - err[rows, :, rank[:, 0]]  # (N, 2, n)
    plus, minus = d[:, 0], d[:, 1]
    centred = (plus - plus.mean(-1, keepdim=True)) * (minus - minus.mean(-1, keepdim=True))
    corr = centred.mean(-1) / (plus.std(-1, correction=0) * minus.std(-1, correction=0))
    ratio = ((plus + minus) / 2).var(dim=-1) / (torch.cat([plus, minus], dim=-1).var(dim=-1) / 2)
    # The same within a neighbourhood of t (successive differences in t order): both halves share each draw's t, so
    # the gap's change with t correlates them, and a spread (stratified) design cancels that part anyway.
    ts = torch.stack(steps)
    local = [successive_difference_variance(h.unsqueeze(1), ts).squeeze(1) for h in (plus, minus, (plus + minus) / 2)]
    v_plus, v_minus, v_pair = local
    local_corr = (4 * v_pair - v_plus - v_minus) / 2 / (v_plus * v_minus).sqrt()
    local_ratio = v_pair / ((v_plus + v_minus) / 4)
    result = {
        "meta": {**provenance(argv), "ckpt_path": args.ckpt_path, "data": args.data, "split": "train",
                 "images": int(err.shape[0]), "draws": n, "t_max": args.t_max},
        "correlation_plus_minus": {"median": float(corr.median()), "mean": float(corr.mean())},
        "antithetic_over_independent_variance": {"median": float(ratio.median())},
        "local_correlation_plus_minus": {"median": float(local_corr.median()), "mean": float(local_corr.mean())},
        "local_antithetic_over_independent_variance": {"median": float(local_ratio.median())},
    }
    lines = ["# Antithetic noise on the decisive pair", "",
             (f"- date {result['meta']['date']}, commit {result['meta']['commit']}, device "
              f"{result['meta']['device']['device']} (cpu family/model {result['meta']['device']['cpu_family_model']})"),
             f"- command `{result['meta']['command']}`", "",
             (f"{err.shape[0]} training images, {n} draws at t in [0, {args.t_max}), each with eps and -eps (medians "
              "over images). Below 1 the antithetic pair pays:"), "",
             "| | correlation of the halves | antithetic pair's variance / two independent draws' |",
             "|---|---|---|",
             (f"| over all draws (includes the gap's change with t) | {result['correlation_plus_minus']['median']:+.3f} "
              f"| {result['antithetic_over_independent_variance']['median']:.3f} |"),
             (f"| within a neighbourhood of t (successive differences; what a spread design's mean sees) "
              f"| {result['local_correlation_plus_minus']['median']:+.3f} "
              f"| {result['local_antithetic_over_independent_variance']['median']:.3f} |")]
    write(args.out, result, lines)
    return result


def costs(args: argparse.Namespace, argv: list[str]) -> dict:
    """Each strategy replayed on a table (``Strategy.classify`` on a replay scorer, no model): its forwards and its
    accuracy against the table's exhaustive answer, per bin of the decisive pair's per-draw SNR."""
    table = torch.load(args.table, weights_only=False)
    errors, target, index = table["errors"], table["target"], table["index"]
    n, k, draws = errors.shape
    d = decisive_differences(errors)
    snr = d.mean(dim=-1) / d.std(dim=-1)
    anti = bool(table["meta"].get("scoring", {}).get("antithetic", False))
    scorer = ReplayScorer.from_run(errors, index, k, antithetic=anti)
    exhaustive = errors.double().mean(dim=-1).argmin(dim=1)
    result = {"meta": {**provenance(argv), "table": args.table, "images": n, "draws": draws}, "strategies": []}
    lines = ["# Where a strategy's forwards and accuracy loss go", "",
             f"- date {result['meta']['date']}, commit {result['meta']['commit']}; command `{result['meta']['command']}`",
             (f"- {n} images of `{args.table}` ({draws} draws per class), binned by the decisive pair's per-draw SNR; "
              "loss = exhaustive accuracy minus the strategy's, in points of the whole set"), ""]
    for spec in args.strategy:
        try:
            strategy = load_preset("strategy", spec, Strategy, "--strategy")
        except (FileNotFoundError, TypeError, ValueError) as err:
            raise SystemExit(f"error: {err}") from None
        preds, fwd = [], []
        for s in range(0, n, 250):
            out = strategy.classify(scorer, torch.zeros(len(index[s : s + 250]), 1, 1, 1), index[s : s + 250])
            preds.append(out.pred)
            fwd.append(out.forwards)
        pred, forwards = torch.cat(preds), torch.cat(fwd).double()
        rows = []
        for lo, hi in itertools.pairwise(SNR_EDGES):
            sel = (snr >= lo) & (snr < hi)
            if sel.any():
                rows.append({"snr_low": lo, "snr_high": hi, "images": int(sel.sum()),
                             "forwards_share": float(forwards[sel].sum() / forwards.sum()),
                             "forwards_per_image": float(forwards[sel].mean()),
                             "loss_points": 100 * float(((exhaustive[sel] == target[sel]).double().sum()
                                                         - (pred[sel] == target[sel]).double().sum()) / n)})
        result["strategies"].append({"strategy": spec, "forwards_per_image": float(forwards.mean()),
                                     "accuracy": float((pred == target).double().mean()), "bins": rows})
        lines += [f"## `{spec}`: {forwards.mean():.1f} forwards/image", "",
                  "| per-draw SNR | images | forwards/image | share of forwards | loss (pts) |", "|---|---|---|---|---|"]
        lines += [f"| [{r['snr_low']}, {r['snr_high']}) | {r['images']} | {r['forwards_per_image']:.1f} | "
                  f"{100 * r['forwards_share']:.1f}% | {r['loss_points']:+.2f} |" for r in rows]
        lines.append("")
    write(args.out, result, lines)
    return result


def write(out: str, result: dict, lines: list[str]) -> None:
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".json").write_text(json.dumps(result, indent=1))
    path.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    tab = sub.add_parser("tables", help="spread shares and near-ties from exhaustive tables")
    tab.add_argument("--table", action="append", required=True, help="an `error_control.py record` table")
    tab.add_argument("--out", required=True, help="output prefix: OUT.json, OUT.md")
    anti = sub.add_parser("antithetic", help="errors at (t, eps) and (t, -eps) on training images")
    anti.add_argument("--ckpt_path", required=True)
    anti.add_argument("--data", default="digits", help="data preset or YAML")
    anti.add_argument("--data_arg", action="append", default=[], help="KEY=VALUE data init_arg override")
    anti.add_argument("--limit", type=int, default=300, help="the first N training images")
    anti.add_argument("--draws", type=int, default=32, help="timesteps per image (each scored with eps and -eps)")
    anti.add_argument("--t_max", type=int, default=700, help="timesteps drawn from [0, t_max)")
    anti.add_argument("--seed", type=int, default=0)
    anti.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    anti.add_argument("--out", required=True, help="output prefix: OUT.json, OUT.md")
    cost = sub.add_parser("costs", help="a strategy's forwards and accuracy loss by the decisive pair's SNR")
    cost.add_argument("--table", required=True, help="an `error_control.py record` table")
    cost.add_argument("--strategy", action="append", required=True, help="a strategy preset name or YAML file")
    cost.add_argument("--out", required=True, help="output prefix: OUT.json, OUT.md")
    args = ap.parse_args(argv)
    return {"tables": tables, "antithetic": antithetic, "costs": costs}[args.command](args, argv)


if __name__ == "__main__":
    main()
