"""Error-controlled racing against exhaustive-250 (issue 20, item 2): record the reference, fit, replay.

    # 1. the exhaustive reference: every class x 250 draws, every per-draw error kept (live, timed)
    python benchmarks/error_control.py record --ckpt_path CKPT --data fashion_mnist --data_arg image_size=28 \\
        --split test --limit 1000 --out benchmarks/results/error_control/tables/fashion_test.pt
    python benchmarks/error_control.py record ... --split train --limit 500 --out .../fashion_train.pt
    # (optional) a longer table in parts, one per core, merged into one (the draws are those of one run)
    python benchmarks/error_control.py record ... --split train --skip 500 --limit 750 --out .../part1.pt
    python benchmarks/error_control.py merge --table .../fashion_train.pt --table .../part1.pt ... --out .../all.pt
    # (optional) the same images' antithetic draws, pairs (eps, -eps) at neighbouring t, for the `anti` rows
    python benchmarks/error_control.py record ... --antithetic --out .../fashion_test_antithetic.pt
    python benchmarks/error_control.py record ... --split train --limit 500 --antithetic --out .../fashion_train_antithetic.pt
    # 2. fit the racing knobs on the training table, replay every strategy on the test table, time the winner
    python benchmarks/error_control.py evaluate --train .../fashion_train.pt --test .../fashion_test.pt \\
        [--antithetic_train .../fashion_train_antithetic.pt --antithetic_test .../fashion_test_antithetic.pt] \\
        --ckpt_path CKPT --data fashion_mnist --data_arg image_size=28 --out benchmarks/results/error_control/fashion

The draws of an image depend only on (seed, dataset index, max_draws, draw order), so every strategy with
``max_draws`` 250 in the default order sees exactly the recorded errors when replayed through the real
strategy code (``diffclf.strategies.replay``): the whole comparison costs one exhaustive run per split.
Knobs are fitted on the *training* table only (the checkpoints trained on every training image, so
there is no unseen held-out split; that bias is stated in the report). Tables are large (N x K x 250
fp32) and are not committed: the commands above rebuild them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

from diffclf.cli.allocator import keep_freed_memory
from diffclf.metrics.accuracy import clopper_pearson
from diffclf.metrics.provenance import command_line, git, machine, utc_now, working_tree_dirty
from diffclf.models.checkpoints import read_checkpoint
from diffclf.strategies import Adaptive, Exhaustive, PairedTTest, Racing, Strategy, fit_timestep_profile
from diffclf.strategies.replay import ReplayScorer
from diffclf.tasks.analysis import (
    load_diffusion_task,
    mark_pareto,
    parse_overrides,
    pct,
    run_live,
    run_replay,
    split_batches,
    summarise,
)
from diffclf.tasks.diffusion import describe_strategy


def provenance(args: argparse.Namespace, argv: list[str]) -> dict:
    """Date, device, torch, commit and command of this run, and the checkpoint it read."""
    return {
        "date": utc_now(),
        "device": machine(),
        "torch": str(torch.__version__),
        "commit": git("rev-parse", "--short", "HEAD"),
        "dirty": working_tree_dirty(),
        "command": command_line(["benchmarks/error_control.py", *argv]),
        "ckpt_path": args.ckpt_path,
    }


def record(args: argparse.Namespace, argv: list[str]) -> None:
    """Exhaustive(``draws``) over the first ``limit`` images of a split, with every per-draw error."""
    if args.threads:
        torch.set_num_threads(args.threads)
    started = provenance(args, argv)  # the commit and tree the draws were made with, not those at the end
    try:
        dm, batches = split_batches(
            args.data, parse_overrides(args.data_arg), args.limit, split=args.split, skip=args.skip
        )
        task = load_diffusion_task(args.ckpt_path, dm)
    except (FileNotFoundError, TypeError, ValueError) as err:
        raise SystemExit(f"error: {err}") from None
    if not batches:
        raise SystemExit(f"error: --skip {args.skip}: the {args.split} split has no images after the first {args.skip}")
    task.set_scoring(compile=args.compile, antithetic=args.antithetic)
    strategy = Exhaustive(trials=args.draws)
    run = run_live(task, strategy, batches, keep_table=True)
    scorer = task.scorer()
    ckpt = read_checkpoint(args.ckpt_path, mmap=True).raw
    acc = float((run["pred"] == run["target"]).double().mean())
    meta = {
        **started,
        "global_step": ckpt.get("global_step"),
        "data": args.data,
        "split": args.split,
        "skip": args.skip,
        "draws": args.draws,
        "scoring": task.scoring.record(task.device),
        "seed": task.hparams.seed,
        "accuracy": acc,
        "seconds": run["seconds"],
        "loadavg_1min_before_after": run["loadavg_1min"],
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "meta": meta,
            "errors": run["errors"].float(),
            "index": run["index"],
            "target": run["target"],
            "pred": run["pred"],
            "forwards": run["forwards"],
            "candidates": run["candidates"],
            # the timestep of each draw slot (the `even` design is the same for every image)
            "timesteps": scorer.timesteps(run["index"][:1]).squeeze(0).cpu(),
        },
        out,
    )
    n = len(run["target"])
    print(
        f"{args.split}: {n} images, exhaustive-{args.draws} accuracy {pct(acc)}%, "
        f"{run['seconds'] / n:.3f} s/image; written {out}",
        flush=True,
    )


# what every part of one table must share: the same model, images' split, draws and scoring
SAME_IN_PARTS = ("ckpt_path", "global_step", "data", "split", "draws", "scoring", "seed")


def merge(args: argparse.Namespace, argv: list[str]) -> None:
    """Tables recorded in parts (``record --skip``) as one: the parts must share model, data, draws and
    scoring and together cover consecutive images, so that ``evaluate`` reads the merged table as one
    ``record`` over those images (from the split's first for ``--train`` / ``--test``, later ones for
    ``--holdout``)."""
    parts = sorted((load_table(path) | {"path": path} for path in args.table), key=lambda t: int(t["index"][0]))
    first = parts[0]
    for part in parts[1:]:
        for key in SAME_IN_PARTS:
            if part["meta"].get(key) != first["meta"].get(key):
                raise SystemExit(
                    f"error: {part['path']}: its {key} {part['meta'].get(key)!r} is not "
                    f"{first['path']}'s {first['meta'].get(key)!r}; parts of one table share it"
                )
        if not torch.equal(part["timesteps"], first["timesteps"]) or not torch.equal(
            part["candidates"], first["candidates"]
        ):
            raise SystemExit(f"error: {part['path']}: other timesteps or candidates than {first['path']}")
    index = torch.cat([t["index"] for t in parts])
    start = int(index[0])
    if not torch.equal(index, torch.arange(start, start + len(index))):
        raise SystemExit(
            "error: --table: the parts must cover consecutive images of the split once each "
            f"(they start at {[int(t['index'][0]) for t in parts]} with {[len(t['index']) for t in parts]} images)"
        )
    joined = {key: torch.cat([t[key] for t in parts]) for key in ("errors", "index", "target", "pred", "forwards")}
    meta = {
        **{key: first["meta"][key] for key in SAME_IN_PARTS},
        **provenance(argparse.Namespace(ckpt_path=first["meta"]["ckpt_path"]), argv),
        "accuracy": float((joined["pred"] == joined["target"]).double().mean()),
        "skip": start,
        "seconds": sum(t["meta"]["seconds"] for t in parts),
        "parts": [{"path": t["path"], **t["meta"]} for t in parts],
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"meta": meta, **joined, "candidates": first["candidates"], "timesteps": first["timesteps"]}, out)
    print(f"{meta['split']}: {len(index)} images from {len(parts)} parts, exhaustive-{meta['draws']} accuracy "
          f"{pct(meta['accuracy'])}%; written {out}", flush=True)


THRESHOLDS = (1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0)
MIN_TRIALS = (2, 3, 4)
ROUND_SIZES = (1, 2)
POOLED_THRESHOLDS = (1.5, 2.0, 2.5, 3.0, 4.0)
POOLED_ALPHAS = (0.02, 0.05, 0.1, 0.2)
TRIAL_CAPS = (None, 100, 50, 30)
STRATIFIED_THRESHOLDS = (2.0, 2.5, 3.0, 4.0)
STRATIFIED_ALPHAS = (0.1, 0.05, 0.02, 0.01, 0.002)
# timestep bins whose decisive class differences are at least this share of the largest bin's are scored first
TIER_SHARE = 0.1
# rows of the error-controlled family, among which the fit rule chooses (the rest are the peers it must beat)
CANDIDATES = ("racing", "ttest pooled")
# issue 20's target: within this many points of exhaustive-250's accuracy at <= this share of its forwards
TARGET_POINTS = 0.5
TARGET_PCT = 3.0


def met(row: dict) -> bool:
    """Whether a test row meets issue 20's target."""
    return abs(row["accuracy_diff_points"]) <= TARGET_POINTS and row["forwards_pct_of_exhaustive"] <= TARGET_PCT


def _caps(n0: int, draws: int) -> list[int | None]:
    return [c for c in TRIAL_CAPS if c is None or n0 <= c < draws]


def _capped(name: str, cap: int | None) -> str:
    return name if cap is None else f"{name} cap={cap}"


def racing_grid(scale: list[float], snr: list[float], draws: int) -> list[tuple[str, Strategy]]:
    """Racing on raw errors, on standardised errors, standardised with the fitted scoring order, and on raw
    errors with the image's pooled variance, with and without a draw cap."""
    out: list[tuple[str, Strategy]] = []
    for variant, kw in (
        ("raw", {}),
        ("std", {"timestep_scale": scale}),
        ("std+order", {"timestep_scale": scale, "timestep_snr": snr}),
    ):
        for thr in THRESHOLDS:
            for n0 in MIN_TRIALS:
                for r in ROUND_SIZES:
                    out.append(
                        (
                            f"racing {variant} z={thr} min={n0} round={r}",
                            Racing(threshold=thr, min_trials=n0, max_trials=draws, round_size=r, **kw),
                        )
                    )
    for thr in POOLED_THRESHOLDS:
        for n0 in MIN_TRIALS:
            for cap in _caps(n0, draws):
                out.append(
                    (
                        _capped(f"racing pooled z={thr} min={n0}", cap),
                        Racing(threshold=thr, min_trials=n0, max_trials=draws, variance="pooled", trial_cap=cap),
                    )
                )
    return out


def timestep_tiers(scale: list[float], share: float = TIER_SHARE) -> list[float]:
    """A two-tier scoring priority: 1 for bins whose decisive differences (their fitted ``scale``) are at least
    ``share`` of the largest, 0 for the rest. The raw mean error is a sum over timesteps, and bins whose class
    differences are a tenth of the largest hardly move it, so they are scored last; within a tier draws stay in
    the spread order, so every prefix is still spread over the bins that matter."""
    top = max(scale)
    return [1.0 if s >= share * top else 0.0 for s in scale]


def stratified_grid(scale: list[float], draws: int) -> list[tuple[str, Strategy]]:
    """Pooled racing with the stratified (successive-difference) standard error and the two-tier order, with the
    z rule (min 2-4 draws, with and without a cap of 100) and the t rule (the pooled t-test's thresholds at alpha,
    alpha >= 0.02 also with caps of 50 and 100); and each lever alone under the t rule."""
    tiers = timestep_tiers(scale)
    out: list[tuple[str, Strategy]] = []
    for thr in STRATIFIED_THRESHOLDS:
        for n0 in MIN_TRIALS:
            for cap in (c for c in (None, 100) if c is None or c < draws):
                out.append(
                    (
                        _capped(f"racing pooled+strat+tiers z={thr} min={n0}", cap),
                        Racing(threshold=thr, min_trials=n0, max_trials=draws, variance="pooled", trial_cap=cap,
                               timestep_snr=tiers, standard_error="stratified"),
                    )
                )
    for alpha in STRATIFIED_ALPHAS:
        z = statistics.NormalDist().inv_cdf(1 - alpha / 2)
        for label, kw in (
            ("pooled+strat+tiers", {"timestep_snr": tiers, "standard_error": "stratified"}),
            ("pooled+strat", {"standard_error": "stratified"}),
            ("pooled+tiers", {"timestep_snr": tiers}),
        ):
            out.append(
                (
                    f"racing {label} t a={alpha} min=2",
                    Racing(threshold=z, min_trials=2, max_trials=draws, variance="pooled", critical="t", **kw),
                )
            )
        for cap in (c for c in (50, 100) if c < draws and alpha >= 0.02):
            out.append(
                (
                    _capped(f"racing pooled+strat+tiers t a={alpha} min=2", cap),
                    Racing(threshold=z, min_trials=2, max_trials=draws, variance="pooled", critical="t",
                           timestep_snr=tiers, standard_error="stratified", trial_cap=cap),
                )
            )
    return out


SCREENS = (2.0, 2.5, 3.0)


def screened_grid(scale: list[float], draws: int) -> list[tuple[str, Strategy]]:
    """The t-rule rows of :func:`stratified_grid` (with and without the stratified standard error) with the
    known-scale screen at ``SCREENS`` standard deviations of the fitted ``scale``: every class tested from its first
    draw, so far classes go before the t rule's first useful test."""
    tiers = timestep_tiers(scale)
    out: list[tuple[str, Strategy]] = []
    for screen in SCREENS:
        for alpha in STRATIFIED_ALPHAS:
            z = statistics.NormalDist().inv_cdf(1 - alpha / 2)
            for label, kw in (("pooled+strat+tiers", {"standard_error": "stratified"}), ("pooled+tiers", {})):
                for cap in (None, 50, 100) if alpha >= 0.02 else (None,):
                    if cap is not None and cap >= draws:
                        continue
                    out.append(
                        (
                            _capped(f"racing {label}+screen s={screen} t a={alpha} min=2", cap),
                            Racing(threshold=z, min_trials=2, max_trials=draws, variance="pooled", critical="t",
                                   timestep_snr=tiers, trial_cap=cap, screen=screen, screen_scale=scale, **kw),
                        )
                    )
    return out


ANTITHETIC_MIN_TRIALS = (4, 6)


def antithetic_grid(scale: list[float], draws: int) -> list[tuple[str, Strategy]]:
    """The pooled racing rows of :func:`stratified_grid` on antithetic draws: whole pairs (min 4 or 6 draws, two
    per round), the pair means as the standard error's units; with the t rule, each of the stratified standard
    error and the tiers alone too, and caps of 50 and 100 for alpha >= 0.02; and the pooled t-test on pairs."""
    tiers = timestep_tiers(scale)
    both = {"timestep_snr": tiers, "standard_error": "stratified"}
    out: list[tuple[str, Strategy]] = []
    for thr in STRATIFIED_THRESHOLDS:
        for n0 in ANTITHETIC_MIN_TRIALS:
            out.append(
                (
                    f"racing anti pooled+strat+tiers z={thr} min={n0}",
                    Racing(threshold=thr, min_trials=n0, max_trials=draws, round_size=2, variance="pooled",
                           antithetic=True, **both),
                )
            )
    for alpha in STRATIFIED_ALPHAS:
        z = statistics.NormalDist().inv_cdf(1 - alpha / 2)
        for label, kw in (("pooled+strat+tiers", both), ("pooled+strat", {"standard_error": "stratified"}),
                          ("pooled+tiers", {"timestep_snr": tiers})):
            for cap in (None, 50, 100) if label == "pooled+strat+tiers" and alpha >= 0.02 else (None,):
                if cap is not None and cap >= draws:
                    continue
                out.append(
                    (
                        _capped(f"racing anti {label} t a={alpha} min=4", cap),
                        Racing(threshold=z, min_trials=4, max_trials=draws, round_size=2, variance="pooled",
                               critical="t", trial_cap=cap, antithetic=True, **kw),
                    )
                )
        out.append(
            (
                f"ttest pooled anti a={alpha} min=4",
                PairedTTest(alpha=alpha, min_trials=4, max_trials=draws, round_size=2, variance="pooled",
                            antithetic=True),
            )
        )
    return out


def pooled_ttest_grid(draws: int) -> list[tuple[str, Strategy]]:
    """The paired t-test on the image's pooled variance (its critical value still from ``n - 1`` dof: strict
    early, near 2 late), one draw per round, with and without a draw cap."""
    out: list[tuple[str, Strategy]] = []
    for alpha in POOLED_ALPHAS:
        for n0 in (2, 3):
            for cap in _caps(n0, draws):
                out.append(
                    (
                        _capped(f"ttest pooled a={alpha} min={n0}", cap),
                        PairedTTest(alpha=alpha, min_trials=n0, max_trials=draws, round_size=1, variance="pooled",
                                    trial_cap=cap),
                    )
                )
    return out


def peer_strategies(draws: int) -> list[tuple[str, Strategy]]:
    """The existing strategies at ``max_draws`` = the reference's, so every one replays exactly."""
    out: list[tuple[str, Strategy]] = []
    for keep in (2, 3, 5):
        for n1 in (n for n in (3, 5, 10, 20) if n < draws):
            out.append(
                (
                    f"adaptive [{keep},1]x[{n1},{draws}]",
                    Adaptive(keep=[keep, 1], trials=[n1, draws], schedule="nested"),
                )
            )
    for alpha in (0.002, 0.05, 0.1, 0.2):
        for n0, r in ((n0, r) for n0, r in ((20, 10), (10, 5), (5, 5), (3, 1)) if n0 <= draws):
            out.append(
                (
                    f"ttest a={alpha} min={n0} round={r}",
                    PairedTTest(alpha=alpha, min_trials=n0, max_trials=draws, round_size=r),
                )
            )
    return out


def load_table(path: str) -> dict:
    try:
        table = torch.load(path, weights_only=False)
    except FileNotFoundError:
        raise SystemExit(f"error: {path}: no such table; build it with `error_control.py record`") from None
    if not isinstance(table, dict) or "errors" not in table:
        raise SystemExit(f"error: {path}: not a table written by `error_control.py record`")
    return table


def is_antithetic(table: dict) -> bool:
    """Whether ``table`` was recorded with antithetic draws (``record --antithetic``)."""
    return bool(table["meta"]["scoring"].get("antithetic", False))


def replayed(
    task, batches, table: dict, strategies: list[tuple[str, Strategy]], reference: dict | None = None
) -> list[dict]:
    """Rows of every strategy replayed from ``table`` against the exhaustive reference (``reference``'s, default
    ``table``'s own: an antithetic table's strategies are judged against the plain exhaustive-250)."""
    index = torch.cat([b[2] for b in batches])
    if not torch.equal(index, table["index"]):
        raise SystemExit("error: the data's images are not the table's (other --data, --data_arg or --limit?)")
    reference = table if reference is None else reference
    ref = {k: reference[k] for k in ("pred", "target", "forwards", "index")}
    task.set_scoring(antithetic=is_antithetic(table))  # so that the task keeps the replay as its scorer
    scorer = ReplayScorer.from_run(
        table["errors"], table["index"], task.num_model_classes, antithetic=is_antithetic(table)
    )
    if not torch.equal(scorer.timesteps(index[:1])[0], table["timesteps"]):
        raise SystemExit("error: the table's timesteps are not the replay's (a design other than `even`?)")
    rows = []
    for name, strategy in strategies:
        run = run_replay(task, strategy, batches, scorer)
        row = summarise(name, strategy, run, ref)
        # what error control controls: how often it keeps the answer of all its own draws, and that answer's accuracy
        row["agreement_own"] = float((run["pred"] == table["pred"]).double().mean())
        own = float((table["pred"] == table["target"]).double().mean())
        row["accuracy_diff_own_points"] = 100 * (row["accuracy"] - own)
        rows.append(row)
    return rows


def choose(
    rows: list[dict], max_drop_points: float, min_agreement: float, candidates: tuple[str, ...] = CANDIDATES
) -> dict:
    """The cheapest candidate row (its name starts with one of ``candidates``) within ``max_drop_points`` of the
    accuracy of the exhaustive answer of its own draws and ``min_agreement`` with that answer. For an antithetic
    row that is the antithetic table's exhaustive: two exhaustive-250 runs on other noise differ on near-ties (on
    Fashion-MNIST's training images their accuracies differ by 1.2 points), which no stopping rule controls."""
    ok = [
        r for r in rows
        if r["name"].startswith(candidates)
        and r["accuracy_diff_own_points"] >= -max_drop_points
        and r["agreement_own"] >= min_agreement
    ]
    if not ok:
        raise SystemExit(
            f"error: no setting named {' or '.join(candidates)}... is within {max_drop_points} points and "
            f"{100 * min_agreement}% agreement on the training images; widen the grid"
        )
    return min(ok, key=lambda r: (r["forwards_per_image"], -r["accuracy"]))


def budget_rule(budget_pct: float, candidates: list[str]) -> str:
    """:func:`choose_at_budget`'s rule in words, for the reports and its preset file."""
    return (
        f"the most accurate setting named {' or '.join(candidates)}... against the exhaustive answer of its own "
        f"draws within {budget_pct}% of exhaustive's forwards on the training images (ties: agreement, then forwards)"
    )


def choose_at_budget(rows: list[dict], max_pct: float, candidates: tuple[str, ...] = CANDIDATES) -> dict | None:
    """The most accurate candidate row (against the exhaustive answer of its own draws; then the most in
    agreement with it, then the cheapest) within ``max_pct`` of exhaustive's forwards on the training images.

    The target's two bounds read the other way round from :func:`choose`: a row's share of forwards moves
    by a few percent from training to test images, while 1,000 images measure accuracy to about half a
    point, so the cheapest row within the accuracy bound sits where that noise put it, and the most
    accurate row within the forwards bound keeps the most room under the accuracy bound."""
    ok = [r for r in rows if r["name"].startswith(candidates) and r["forwards_pct_of_exhaustive"] <= max_pct]
    if not ok:
        return None
    return max(ok, key=lambda r: (r["accuracy_diff_own_points"], r["agreement_own"], -r["forwards_per_image"]))


def rule_outcome(rule: dict | None, test_rows: list[dict], live: dict | None = None) -> dict | None:
    """What a fit rule's training-image choice ``rule`` does on the test images (and live, when timed)."""
    if rule is None:
        return None
    row = next(r for r in test_rows if r["name"] == rule["name"])
    out = {
        "name": row["name"],
        "train": rule,
        "accuracy_diff_points": row["accuracy_diff_points"],
        "pct_of_exhaustive": row["forwards_pct_of_exhaustive"],
        "met": met(row),
    }
    return out if live is None else {**out, "live": live}


def pooled_rows(test_rows: list[dict], holdout_rows: list[dict]) -> list[dict]:
    """The holdout's strategies over the test and holdout images together (the first row is exhaustive): exact
    intervals and the difference to the pooled exhaustive, from the two replays' counts."""
    test = {r["name"]: r for r in test_rows}
    out = []
    for h in holdout_rows:
        t = test[h["name"]]
        n, correct = t["images"] + h["images"], t["correct"] + h["correct"]
        forwards = (t["forwards_per_image"] * t["images"] + h["forwards_per_image"] * h["images"]) / n
        low, high = clopper_pearson(correct, n)
        out.append({
            "name": h["name"], "images": n, "correct": correct, "accuracy": correct / n, "ci_low": low, "ci_high": high,
            "forwards_per_image": forwards,
            "agreement": (t["agreement"] * t["images"] + h["agreement"] * h["images"]) / n,
        })
    exh = out[0]
    for row in out:
        row["accuracy_diff_points"] = 100 * (row["accuracy"] - exh["accuracy"])
        row["forwards_pct_of_exhaustive"] = 100 * row["forwards_per_image"] / exh["forwards_per_image"]
        row["met"] = met(row)
    return out


def pool(args: argparse.Namespace, argv: list[str]) -> None:
    """:func:`pooled_rows` of an ``evaluate --holdout`` record, written as ``OUT.json`` and ``OUT.md``."""
    result = json.loads(Path(args.result).read_text())
    if "holdout" not in result:
        raise SystemExit(f"error: --result {args.result}: not an `evaluate --holdout` record (no holdout rows)")
    rows = pooled_rows(result["test"], result["holdout"])
    meta = {**provenance(argparse.Namespace(ckpt_path=result["meta"]["ckpt_path"]), argv), "result": args.result}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "pooled": rows}, indent=1))
    lines = [
        f"# The fitted choices of `{args.result}` over its test and holdout images together ({rows[0]['images']})",
        "",
        f"- date: {meta['date']}; commit {meta['commit']}" + (" (working tree dirty)" if meta["dirty"] else ""),
        f"- command: `{meta['command']}` (counts read from the record; no model runs)",
        "",
        *target_table(rows),
    ]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(target_table(rows)), flush=True)


def target_table(rows: list[dict]) -> list[str]:
    """Rows against exhaustive with the target's verdict, as a markdown table (holdout and pooled rows)."""
    return [
        "| strategy | accuracy % [95% CP] | Δ vs exh. (pts) | agreement % | forwards/image | % of exh. | target |",
        "|---|---|---|---|---|---|---|",
        *(f"| {r['name']} | {pct(r['accuracy'])} [{pct(r['ci_low'])}, {pct(r['ci_high'])}] "
          f"| {r['accuracy_diff_points']:+.2f} | {100 * r['agreement']:.2f} | {r['forwards_per_image']:.1f} "
          f"| {r['forwards_pct_of_exhaustive']:.2f} | {'met' if r['met'] else 'not met'} |" for r in rows),
    ]


def evaluate(args: argparse.Namespace, argv: list[str]) -> None:
    """Fit the profile and the racing / pooled t-test knobs on the training table; replay everything on the
    test table."""
    if args.threads:
        torch.set_num_threads(args.threads)
    train, test = load_table(args.train), load_table(args.test)
    if (args.antithetic_train is None) != (args.antithetic_test is None):
        raise SystemExit("error: --antithetic_train and --antithetic_test come together (fit on one, replay the other)")
    anti_train = None if args.antithetic_train is None else load_table(args.antithetic_train)
    anti_test = None if args.antithetic_test is None else load_table(args.antithetic_test)
    tables = [("--train", train, "train", False), ("--test", test, "test", False)]
    if anti_train is not None:
        tables += [("--antithetic_train", anti_train, "train", True), ("--antithetic_test", anti_test, "test", True)]
    for option, table, split, anti in tables:
        if is_antithetic(table) != anti:
            raise SystemExit(
                f"error: {option} {getattr(args, option[2:])}: expected a table recorded "
                f"{'with' if anti else 'without'} --antithetic"
            )
        if anti and not torch.equal(table["index"], (train if split == "train" else test)["index"]):
            raise SystemExit(f"error: {option} {getattr(args, option[2:])}: not the images of --{split}")
        if table["meta"]["split"] != split:
            raise SystemExit(
                f"error: {option} {getattr(args, option[2:])}: recorded on the {table['meta']['split']} split, "
                f"expected {split} (knobs are fitted on training images only)"
            )
    holdout = None if args.holdout is None else load_table(args.holdout)
    if holdout is not None:
        first = int(holdout["index"][0])
        if holdout["meta"]["split"] != "test" or is_antithetic(holdout):
            raise SystemExit(f"error: --holdout {args.holdout}: expected a plain table of the test split")
        if first < len(test["index"]) or not torch.equal(
            holdout["index"], torch.arange(first, first + len(holdout["index"]))
        ):
            raise SystemExit(
                f"error: --holdout {args.holdout}: expected consecutive test images after --test's "
                f"{len(test['index'])} (`record --skip {len(test['index'])}`), got images from {first}"
            )
        for key in SAME_IN_PARTS:
            if holdout["meta"].get(key) != test["meta"].get(key):
                raise SystemExit(
                    f"error: --holdout {args.holdout}: its {key} {holdout['meta'].get(key)!r} is not "
                    f"--test's {test['meta'].get(key)!r}"
                )
        tables.append(("--holdout", holdout, "test", False))
    draws = test["errors"].shape[-1]
    for option, table, _, _ in tables:
        if table["errors"].shape[-1] != draws:
            raise SystemExit(f"error: {option} has {table['errors'].shape[-1]} draws per class, --test {draws}")
    overrides = parse_overrides(args.data_arg)
    try:
        dm, test_batches = split_batches(args.data, overrides, len(test["index"]), split="test")
        _, train_batches = split_batches(args.data, overrides, len(train["index"]), split="train")
        task = load_diffusion_task(args.ckpt_path, dm)
    except (FileNotFoundError, TypeError, ValueError) as err:
        raise SystemExit(f"error: {err}") from None
    T = task.schedule.num_timesteps
    scale, snr = fit_timestep_profile(train["errors"], train["timesteps"], args.bins, T)
    grid = (
        racing_grid(scale, snr, draws) + pooled_ttest_grid(draws) + stratified_grid(scale, draws)
        + screened_grid(scale, draws)
    )
    print(f"fitted on {len(train['index'])} training images: scale {scale}, snr {snr}", flush=True)
    train_rows = replayed(task, train_batches, train, grid)
    anti_grid: list[tuple[str, Strategy]] = []
    if anti_train is not None:
        anti_scale, _ = fit_timestep_profile(anti_train["errors"], anti_train["timesteps"], args.bins, T)
        anti_grid = antithetic_grid(anti_scale, draws)
        train_rows += replayed(task, train_batches, anti_train, anti_grid, reference=train)
    chosen = choose(train_rows, args.max_drop_points, args.min_agreement, tuple(args.choose_from))
    try:  # the issue's own bound as the fit rule, no agreement floor: reported beside the chosen row, not timed
        at_bound = choose(train_rows, TARGET_POINTS, 0.0, tuple(args.choose_from))
    except SystemExit:
        at_bound = None
    at_budget = choose_at_budget(train_rows, args.budget_pct, tuple(args.choose_from))  # timed live, with its preset
    by_name = dict(grid + anti_grid)
    strategy = by_name[chosen["name"]]
    print(f"chosen on the training images: {chosen['name']} ({chosen['forwards_per_image']:.1f} forwards)", flush=True)

    peers = peer_strategies(draws)
    test_rows = replayed(task, test_batches, test, [("exhaustive", Exhaustive(trials=draws)), *peers, *grid])
    if anti_test is not None:
        anti_rows = [("exhaustive anti", Exhaustive(trials=draws)), *anti_grid]
        test_rows += replayed(task, test_batches, anti_test, anti_rows, reference=test)
    mark_pareto(test_rows)
    task.set_scoring(compile=args.compile, antithetic=False)  # the chosen strategy asks for pairs if it needs them
    live = run_live(task, strategy, test_batches)
    ref = {k: test[k] for k in ("pred", "target", "forwards", "index")}
    live_row = summarise(f"{chosen['name']} (live)", strategy, live, ref)
    rep_row = next(r for r in test_rows if r["name"] == chosen["name"])
    live_row["replay_matches_live"] = bool(
        live_row["correct"] == rep_row["correct"] and live_row["forwards_per_image"] == rep_row["forwards_per_image"]
    )
    budget_live = None
    if at_budget is not None:
        budget_strategy = by_name[at_budget["name"]]
        budget_rep = next(r for r in test_rows if r["name"] == at_budget["name"])
        budget_live = summarise(
            f"{at_budget['name']} (live)", budget_strategy, run_live(task, budget_strategy, test_batches), ref
        )
        budget_live["replay_matches_live"] = bool(
            budget_live["correct"] == budget_rep["correct"]
            and budget_live["forwards_per_image"] == budget_rep["forwards_per_image"]
        )
    holdout_rows = None
    if holdout is not None:  # the fitted choices once more, on test images the set does not include
        _, holdout_batches = split_batches(
            args.data, overrides, len(holdout["index"]), split="test", skip=int(holdout["index"][0])
        )
        fitted = {"exhaustive": Exhaustive(trials=draws), chosen["name"]: strategy}
        for rule in (at_bound, at_budget):
            if rule is not None:
                fitted[rule["name"]] = by_name[rule["name"]]
        holdout_rows = replayed(task, holdout_batches, holdout, list(fitted.items()))
        for row in holdout_rows:
            row["met"] = met(row)
    n = len(test["index"])
    exh_s = test["meta"]["seconds"] / n
    best_peer = [r for r in test_rows if not r["name"].startswith(CANDIDATES) and r["name"] != "exhaustive"]
    targets = {
        "within_points": TARGET_POINTS,
        "max_pct_of_exhaustive": TARGET_PCT,
        "budget_pct": args.budget_pct,
        "accuracy_diff_points": rep_row["accuracy_diff_points"],
        "accuracy_diff_own_points": rep_row["accuracy_diff_own_points"],
        "pct_of_exhaustive": rep_row["forwards_pct_of_exhaustive"],
        "met": met(rep_row),
        "at_bound": rule_outcome(at_bound, test_rows),
        "at_budget": rule_outcome(at_budget, test_rows, budget_live),
        "not_dominated_by_any_peer": all(
            r["forwards_per_image"] > rep_row["forwards_per_image"] or r["accuracy"] < rep_row["accuracy"]
            or (r["forwards_per_image"] == rep_row["forwards_per_image"] and r["accuracy"] == rep_row["accuracy"])
            for r in best_peer
        ),
    }
    meta = {
        **provenance(args, argv),
        "data": args.data,
        "train_table": {"path": args.train, **train["meta"]},
        "test_table": {"path": args.test, **test["meta"]},
        **(
            {"antithetic_train_table": {"path": args.antithetic_train, **anti_train["meta"]},
             "antithetic_test_table": {"path": args.antithetic_test, **anti_test["meta"]}}
            if anti_train is not None else {}
        ),
        **({"holdout_table": {"path": args.holdout, "index_first": int(holdout["index"][0]), **holdout["meta"]}}
           if holdout is not None else {}),
        "exhaustive_seconds_per_image": exh_s,
        "fit_rule": (
            f"cheapest setting named {' or '.join(args.choose_from)}... within {args.max_drop_points} points of "
            f"exhaustive-{draws} on its own draws and >= {100 * args.min_agreement}% agreement with that answer on "
            "the training images"
        ),
    }
    result = {
        "meta": meta,
        "profile": {"bins": args.bins, "num_timesteps": T, "timestep_scale": scale, "timestep_snr": snr},
        "chosen": {"name": chosen["name"], "strategy": describe_strategy(strategy), "train": chosen},
        "live": live_row,
        "targets": targets,
        "test": test_rows,
        "train": train_rows,
        **({"holdout": holdout_rows, "pooled": pooled_rows(test_rows, holdout_rows)}
           if holdout_rows is not None else {}),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    out.with_suffix(".md").write_text(markdown(result))
    out.with_name(out.name + "_preset.yaml").write_text(preset_yaml(strategy, meta))
    if at_budget is not None:
        out.with_name(out.name + "_budget_preset.yaml").write_text(
            preset_yaml(by_name[at_budget["name"]], meta, budget_rule(args.budget_pct, args.choose_from))
        )
    print(
        f"test: {rep_row['name']} {pct(rep_row['accuracy'])}% ({rep_row['accuracy_diff_points']:+.2f} vs exhaustive), "
        f"{rep_row['forwards_per_image']:.1f} forwards/image ({rep_row['forwards_pct_of_exhaustive']:.2f}%), "
        f"live {live_row['seconds_per_image']:.4f} s/image vs exhaustive {exh_s:.3f}; target met: {targets['met']}",
        flush=True,
    )


def preset_yaml(strategy: Strategy, meta: dict, rule: str | None = None) -> str:
    """A fitted strategy as a ``--model.init_args.strategy`` preset file: the rule that chose it (default the
    chosen row's, ``meta["fit_rule"]``), its class and every public argument."""
    lines = [
        (
            f"# {type(strategy).__name__} fitted by benchmarks/error_control.py on "
            f"{meta['train_table']['split']} images of {meta['data']}"
        ),
        f"# ({meta['ckpt_path']}, {meta['date'][:10]}): {rule or meta['fit_rule']}.",
        f"class_path: diffclf.strategies.{type(strategy).__name__}",
        "init_args:",
    ]
    for key, value in vars(strategy).items():
        if key.startswith("_"):
            continue
        if value is None:
            text = "null"
        elif isinstance(value, list):
            text = "[" + ", ".join(repr(v) for v in value) + "]"
        else:
            text = repr(value) if isinstance(value, float) else str(value)
        lines.append(f"  {key}: {text}")
    return "\n".join(lines) + "\n"


def recorded_by(table_meta: dict) -> str:
    """How a table was recorded: its command, or a merged table's parts' commands and the merge."""
    if "parts" not in table_meta:
        return f"`{table_meta['command']}`"
    parts = "; ".join(f"`{p['command']}`" for p in table_meta["parts"])
    return f"recorded in parts by {parts}, merged by `{table_meta['command']}`"


def markdown(result: dict) -> str:
    meta, live, tg = result["meta"], result["live"], result["targets"]
    test_meta = meta["test_table"]
    exh = result["test"][0]
    lines = [
        f"# Error-controlled racing on {meta['data']} ({exh['images']} test images)",
        "",
        f"- date: {meta['date']}; commit {meta['commit']}" + (" (working tree dirty)" if meta["dirty"] else ""),
        f"- device: {meta['device']['device']} (cpu family/model {meta['device']['cpu_family_model']})",
        f"- checkpoint: `{meta['ckpt_path']}`; scoring {test_meta['scoring']}",
        (f"- reference: exhaustive, {test_meta['draws']} draws per class, recorded live by "
        f"`{test_meta['command']}` ({meta['exhaustive_seconds_per_image']:.3f} s/image, "
        f"{test_meta['device']['device']})"),
        (f"- knobs fitted on {result['chosen']['train']['images']} training images ({recorded_by(meta['train_table'])}): "
        f"{meta['fit_rule']}. The checkpoint trained on those images, so the fit sees an easier problem than the test."),
        f"- command: `{meta['command']}`",
    ]
    if "antithetic_test_table" in meta:
        anti = meta["antithetic_test_table"]
        lines.append(
            f"- rows named `anti` (and `exhaustive anti`) replay the same images' antithetic draws (pairs (eps, -eps) "
            f"at neighbouring t), recorded by `{anti['command']}` and "
            f"`{meta['antithetic_train_table']['command']}`; they are judged against the plain exhaustive-250 above"
        )
    lines += [
        "",
        f"Chosen: **{result['chosen']['name']}** = `{result['chosen']['strategy']}`.",
        "",
        (f"Target (issue 20): within {tg['within_points']} points of exhaustive at <= {tg['max_pct_of_exhaustive']}% "
        f"of its forwards: {tg['accuracy_diff_points']:+.2f} points at {tg['pct_of_exhaustive']:.2f}% "
        f"({tg['accuracy_diff_own_points']:+.2f} against the exhaustive answer of its own draws), "
        f"**{'met' if tg['met'] else 'not met'}**; no existing strategy has both fewer forwards and higher accuracy: "
        f"{tg['not_dominated_by_any_peer']}."),
        "",
    ]
    rules = (
        ("at_bound", (f"the target's own bound as the fit rule instead (the cheapest row within "
                      f"{tg['within_points']} points of its own exhaustive on the training images, no agreement floor")),
        ("at_budget", (f"the target's forwards bound as the fit rule (the most accurate row against its own "
                       f"exhaustive within {tg['budget_pct']}% of exhaustive's forwards on the training "
                       "images")),
    )
    for key, rule in rules:
        row = tg.get(key)
        if row is None:
            continue
        live_row = row.get("live")
        timed = "replayed, not timed" if live_row is None else (
            f"live {live_row['seconds_per_image']:.4f} s/image, the live run reproduces its replay: "
            f"{live_row['replay_matches_live']}; its preset is the `*_budget_preset.yaml` beside this report")
        lines += [
            (f"With {rule}; {row['train']['accuracy_diff_own_points']:+.2f} points at "
             f"{row['train']['forwards_pct_of_exhaustive']:.2f}% there): **{row['name']}**, on the test images "
             f"{row['accuracy_diff_points']:+.2f} points at {row['pct_of_exhaustive']:.2f}%, "
             f"**{'met' if row['met'] else 'not met'}** ({timed})."),
            "",
        ]
    if "holdout" in result:
        first = result["meta"]["holdout_table"]["index_first"]
        rows = result["holdout"]
        lines += [
            (f"The fitted choices on {rows[0]['images']} further test images ({first} to {first + rows[0]['images'] - 1}, "
             f"not in the target's set; {recorded_by(result['meta']['holdout_table'])}), replayed against their "
             f"exhaustive-{result['meta']['test_table']['draws']} ({pct(rows[0]['accuracy'])}%):"),
            "",
            *target_table(rows[1:]),
            "",
        ]
    if "pooled" in result:
        lines += [f"Over the test and holdout images together ({result['pooled'][0]['images']}):", "",
                  *target_table(result["pooled"]), ""]
    lines += [
        "| strategy | accuracy % [95% CP] | Δ vs exh. (pts) | agreement % | forwards/image | % of exh. | s/image |",
        "|---|---|---|---|---|---|---|",
        (f"| exhaustive (live) | {pct(exh['accuracy'])} [{pct(exh['ci_low'])}, {pct(exh['ci_high'])}] | +0.00 | 100.00 "
        f"| {exh['forwards_per_image']:.1f} | 100.0 | {meta['exhaustive_seconds_per_image']:.4f} |"),
        (f"| {live['name']} | {pct(live['accuracy'])} [{pct(live['ci_low'])}, {pct(live['ci_high'])}] "
        f"| {live['accuracy_diff_points']:+.2f} | {100 * live['agreement']:.2f} | {live['forwards_per_image']:.1f} "
        f"| {live['forwards_pct_of_exhaustive']:.2f} | {live['seconds_per_image']:.4f} |"),
        "",
        f"The live run reproduces its replay (accuracy and forwards): {live['replay_matches_live']}.",
        "",
        "## Every strategy, replayed on the test images (knobs not chosen here; * = Pareto-optimal)",
        "",
        ("| strategy | accuracy % [95% CP] | Δ vs exh. (pts) | agreement % | Δ vs own exh. (pts) | own exh. agreement % "
         "| forwards/image | % of exh. |"),
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(result["test"], key=lambda r: r["forwards_per_image"]):
        mark = "*" if r.get("pareto") else ""
        bold = "**" if r["name"] == result["chosen"]["name"] else ""
        lines.append(
            f"| {mark}{bold}{r['name']}{bold} | {pct(r['accuracy'])} [{pct(r['ci_low'])}, {pct(r['ci_high'])}] "
            f"| {r['accuracy_diff_points']:+.2f} | {100 * r['agreement']:.2f} | {r['accuracy_diff_own_points']:+.2f} "
            f"| {100 * r['agreement_own']:.2f} "
            f"| {r['forwards_per_image']:.1f} | {r['forwards_pct_of_exhaustive']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record", help="the exhaustive reference table of one split")
    rec.add_argument("--ckpt_path", required=True)
    rec.add_argument("--data", default="digits", help="data preset or YAML")
    rec.add_argument("--data_arg", action="append", default=[], help="KEY=VALUE data init_arg override")
    rec.add_argument("--split", choices=["test", "train"], default="test")
    rec.add_argument("--limit", type=int, default=None, help="the first N images of the split (after --skip)")
    rec.add_argument("--skip", type=int, default=0, help="leave out the split's first N images (record in parts)")
    rec.add_argument("--draws", type=int, default=250, help="draws per class of the reference")
    rec.add_argument("--compile", action="store_true", help="score with torch.compile")
    rec.add_argument("--antithetic", action="store_true", help="draws in antithetic pairs (eps, -eps)")
    rec.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    rec.add_argument("--out", required=True, help="the table's .pt file")
    po = sub.add_parser("pool", help="an evaluate --holdout record's fitted choices over test and holdout together")
    po.add_argument("--result", required=True, help="the OUT.json of `evaluate --holdout`")
    po.add_argument("--out", required=True, help="output prefix: OUT.json, OUT.md")
    mg = sub.add_parser("merge", help="tables recorded in parts (record --skip) as one table")
    mg.add_argument("--table", action="append", required=True, help="a part's .pt file (repeat, any order)")
    mg.add_argument("--out", required=True, help="the merged table's .pt file")
    ev = sub.add_parser("evaluate", help="fit on the training table, replay on the test table, time the winner")
    ev.add_argument("--train", required=True, help="the training split's table (`record --split train`)")
    ev.add_argument("--test", required=True, help="the test split's table")
    ev.add_argument("--ckpt_path", required=True, help="the checkpoint the tables were recorded with")
    ev.add_argument("--data", default="digits", help="data preset or YAML (as recorded)")
    ev.add_argument("--data_arg", action="append", default=[], help="KEY=VALUE data init_arg override")
    ev.add_argument("--antithetic_train", default=None, help="the training table recorded with --antithetic")
    ev.add_argument("--antithetic_test", default=None, help="the test table recorded with --antithetic")
    ev.add_argument("--holdout", default=None,
                    help="a table of later test images (record --skip): the fitted choices replayed there too")
    ev.add_argument("--bins", type=int, default=10, help="timestep bins of the fitted profile")
    ev.add_argument("--max_drop_points", type=float, default=0.25, help="fit rule: accuracy points below exhaustive")
    ev.add_argument("--budget_pct", type=float, default=TARGET_PCT,
                    help="third fit rule (reported, timed): the most accurate row within this %% of exhaustive's forwards")
    ev.add_argument("--min_agreement", type=float, default=0.995, help="fit rule: agreement with exhaustive")
    ev.add_argument("--choose_from", action="append", default=None,
                    help="fit rule: only rows whose name starts with this (repeatable; default: racing, ttest pooled)")
    ev.add_argument("--compile", action="store_true", help="time the live run with torch.compile")
    ev.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ev.add_argument("--out", required=True, help="output prefix: OUT.json, OUT.md, OUT_preset.yaml")
    args = ap.parse_args(argv)
    if args.command == "evaluate" and args.choose_from is None:
        args.choose_from = list(CANDIDATES)
    keep_freed_memory()
    if args.command == "record":
        record(args, argv)
    elif args.command == "merge":
        merge(args, argv)
    elif args.command == "pool":
        pool(args, argv)
    else:
        evaluate(args, argv)


if __name__ == "__main__":
    main()
