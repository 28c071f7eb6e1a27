"""GPU-hours to classify the 10,000-image ImageNet subset with DiT-XL/2-256, per strategy preset.

    python benchmarks/cost_model.py --bench_json benchmarks/results/device_check/<run>/bench_bf16.json \
        --out benchmarks/results/cost_model/imagenet_dit_xl2

A preset's cost is its denoiser forwards per image (counted from the strategy itself: ``Adaptive.stage_draws``
and the classes each stage keeps; the paired t-test only as its floor, the draws every class pays before the
first test, since how soon it prunes depends on the model) times the images, over a forwards/s figure:
the best DiT-XL/2 batch of a ``bench`` record (``--bench_json``; ``benchmarks/device_check.sh`` writes one on a
GPU), else an *estimate* from ``--peak_tflops`` at ``--mfu`` and the model's counted FLOPs, marked as such in
every output. A prefilter (a discriminative model's top-k feeding a strategy over k classes) can only be right
where the true class is among its k: its top-k recall bounds the accuracy. The recall comes from
``--recall K=PCT`` (defaults: torchvision's published ResNet-50 IMAGENET1K_V2 top-5, 95.434%, the weights timm
names ``resnet50.tv2_in1k``; recall only grows with k, so top-10 and top-20 are given as at least that).
The ResNet-50's own 4.1 GMACs per image are left out: under 0.01% of one preset's forwards.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from diffclf.configs import load_preset
from diffclf.metrics.provenance import command_line, git, utc_now
from diffclf.models.dit import DIT_PRESETS, dit_flops
from diffclf.strategies import Adaptive, Exhaustive, PairedTTest, Strategy

CLASSES = 1000
IMAGES = 10_000
DIT_XL2_256 = {**DIT_PRESETS["DiT-XL/2"], "input_size": 32, "in_channels": 4, "num_classes": CLASSES, "learn_sigma": True}
RESNET50_TOP5 = 95.434  # torchvision ResNet50_Weights.IMAGENET1K_V2 meta (acc@1 80.858, acc@5 95.434)


def forwards_per_image(strategy: Strategy, classes: int) -> tuple[float, bool]:
    """``(forwards, exact)`` per image over ``classes`` candidates; ``exact`` False: a lower bound."""
    if isinstance(strategy, Exhaustive):
        return float(strategy.trials * classes), True
    if isinstance(strategy, Adaptive):
        total, survivors, done = 0, classes, 0
        for keep, draws in zip(strategy.keep, strategy.stage_draws):
            total += survivors * (draws - done)
            survivors, done = min(keep, survivors), draws
        return float(total), True
    if isinstance(strategy, PairedTTest):
        first = -(-strategy.min_trials // strategy.round_size) * strategy.round_size
        return float(min(first, strategy.max_trials) * classes), False
    raise ValueError(f"no forward count for {type(strategy).__name__}")


def presets(recall: dict[int, float]) -> list[dict]:
    """The rows: the paper's exhaustive, the official adaptive counts, the t-test preset, and prefilters."""
    rows = [
        {"name": "exhaustive, 250 draws per class (the DiT paper's setting, Li et al.)", "preset": "exhaustive_dit",
         "strategy": Exhaustive(trials=250), "classes": CLASSES},
        {"name": "adaptive_imagenet (Li et al.'s official schedule)", "preset": "adaptive_imagenet",
         "strategy": load_preset("strategy", "adaptive_imagenet", Strategy, "--preset"), "classes": CLASSES},
        {"name": "paired t-test (Clark & Jaini), floor only", "preset": "ttest",
         "strategy": load_preset("strategy", "ttest", Strategy, "--preset"), "classes": CLASSES},
    ]
    for k in (5, 10, 20):
        for inner_name, inner in (("exhaustive-250", Exhaustive(trials=250)),
                                  ("adaptive [3,1]x[50,250]", Adaptive(keep=[3, 1], trials=[50, 250]))):
            rows.append({"name": f"ResNet-50 top-{k} prefilter + {inner_name}", "preset": None,
                         "strategy": inner, "classes": k, "top_k": k})
    rows.append({"name": "ResNet-50 top-5 prefilter + adaptive [2,1]x[50,200]", "preset": "prefilter_imagenet",
                 "strategy": Adaptive(keep=[2, 1], trials=[50, 200]), "classes": 5, "top_k": 5})
    for row in rows:
        k = row.get("top_k")
        if k is None:
            row["recall_bound"] = None
        elif k in recall:
            row["recall_bound"] = {"pct": recall[k], "at_least": False}
        else:
            below = max((j for j in recall if j < k), default=None)
            row["recall_bound"] = None if below is None else {"pct": recall[below], "at_least": True, "from_top": below}
    return rows


def throughput(args: argparse.Namespace) -> dict:
    """forwards/s of DiT-XL/2-256: measured (a bench record) or estimated (peak x MFU / FLOPs per forward)."""
    flops = dit_flops(DIT_XL2_256)
    if args.bench_json:
        rec = json.loads(Path(args.bench_json).read_text())
        cfg = rec.get("config") or {}
        if cfg.get("hidden_size") != DIT_XL2_256["hidden_size"] or cfg.get("depth") != DIT_XL2_256["depth"]:
            raise SystemExit(f"error: --bench_json {args.bench_json}: not a DiT-XL/2 bench record (config {cfg})")
        return {"forwards_per_s": float(rec["best_forwards_per_s"]), "measured": True, "source": args.bench_json,
                "device": rec.get("device"), "precision": rec.get("precision"), "batch": rec.get("best_batch"),
                "gflops_per_forward": flops / 1e9}
    if not (args.peak_tflops and args.mfu):
        raise SystemExit("error: give --bench_json (a measured DiT-XL/2 bench record) or --peak_tflops and --mfu")
    return {"forwards_per_s": args.peak_tflops * 1e12 * args.mfu / flops, "measured": False,
            "source": f"estimate: {args.peak_tflops:g} TFLOP/s peak x {args.mfu:g} MFU / {flops / 1e9:.1f} GFLOP per forward",
            "device": args.device_name, "gflops_per_forward": flops / 1e9}


def markdown(result: dict) -> str:
    tp = result["throughput"]
    kind = "measured" if tp["measured"] else "**an estimate, not a measurement**"
    lines = [
        f"# GPU-hours for the {result['images']:,}-image ImageNet subset with DiT-XL/2-256",
        "",
        f"- throughput: {tp['forwards_per_s']:,.0f} forwards/s ({kind}; {tp['source']}; device {tp['device']})",
        f"- date {result['date']}, commit {result['commit']}; command: `{result['command']}`",
        ("- forwards are counted from the strategies; the t-test row is its floor (what every class pays before the "
         "first test), so its real cost is higher; a prefilter's accuracy is bounded by its top-k recall"),
        "",
        "| strategy | preset | forwards/image | GPU-hours | ≤ 1 GPU-hour | accuracy bound (top-k recall) |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        fwd = f"{'≥ ' if not r['exact'] else ''}{r['forwards_per_image']:,.0f}"
        hours = f"{'≥ ' if not r['exact'] else ''}{r['gpu_hours']:,.2f}"
        b = r["recall_bound"]
        bound = "-" if b is None else (f"≥ {b['pct']:.2f}% (its top-{b['from_top']})" if b["at_least"] else f"{b['pct']:.2f}%")
        ok = "yes" if r["exact"] and r["gpu_hours"] <= 1 else ("no" if r["gpu_hours"] > 1 else "-")
        lines.append(f"| {r['name']} | {r['preset'] or '-'} | {fwd} | {hours} | {ok} | {bound} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bench_json", default=None, help="a DiT-XL/2 `bench` record (its best batch's forwards/s)")
    ap.add_argument("--peak_tflops", type=float, default=None, help="without --bench_json: the device's peak")
    ap.add_argument("--mfu", type=float, default=None, help="without --bench_json: the assumed share of the peak")
    ap.add_argument("--device_name", default="unmeasured", help="the device the estimate is for")
    ap.add_argument("--images", type=int, default=IMAGES)
    ap.add_argument("--recall", action="append", default=[], help=f"K=PCT top-k recall (default 5={RESNET50_TOP5})")
    ap.add_argument("--out", required=True, help="output prefix: writes OUT.json and OUT.md")
    args = ap.parse_args(argv)
    recall = {5: RESNET50_TOP5}
    for pair in args.recall:
        k, sep, pct = pair.partition("=")
        if not sep or not k.isdigit():
            raise SystemExit(f"error: --recall {pair!r}: expected K=PCT, e.g. 10=97.5")
        recall[int(k)] = float(pct)
    tp = throughput(args)
    rows = []
    for row in presets(recall):
        fwd, exact = forwards_per_image(row["strategy"], row["classes"])
        rows.append({"name": row["name"], "preset": row["preset"], "forwards_per_image": fwd, "exact": exact,
                     "gpu_hours": args.images * fwd / tp["forwards_per_s"] / 3600, "recall_bound": row["recall_bound"]})
    result = {"images": args.images, "throughput": tp, "rows": rows, "date": utc_now(),
              "commit": git("rev-parse", "--short", "HEAD"),
              "command": command_line(["benchmarks/cost_model.py", *(argv if argv is not None else sys.argv[1:])])}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
