"""Accuracy per corruption and severity on a built corruption shift (``fashion_mnist_c``), per model.

    python benchmarks/corruption_breakdown.py --shift data/shifts/fashion_mnist_c \
        --preds DiT-T/4=runs/robustness_fashion/preds/dit.jsonl --preds resnet18_3ep=... \
        --out benchmarks/results/robustness_fashion/corruptions

The robustness report gives one accuracy per shift; this says *which* corruptions a model loses on. It
reads the shift's ``shift.npz`` (corruption and severity of every dataset index) and prediction files
written by ``cli.py predict ... --trainer.callbacks+=diffclf.tasks.callbacks.PredictionWriter`` (``.jsonl`` or
``.parquet``, read by ``diffclf.metrics.predictions.read_predictions``; one row per image: ``index``,
``target``, ``pred``), and writes ``OUT.json`` and ``OUT.md``: accuracy with its exact 95%
Clopper-Pearson interval per corruption (all severities) and per severity.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from diffclf.metrics.accuracy import clopper_pearson
from diffclf.metrics.predictions import read_predictions
from diffclf.metrics.provenance import command_line


def target_and_pred(path: Path) -> dict[int, tuple[int, int]]:
    """``index → (target, pred)`` of a merged prediction file, or a one-line error naming ``--preds``.

    The package's reader gives the rows; an index seen twice or a row without a target is refused here,
    since either would turn into a plausible-looking but wrong count.
    """
    try:
        rows = read_predictions(path)
    except FileNotFoundError:
        raise SystemExit(
            f"error: --preds {path}: no such file (write it with cli.py predict and PredictionWriter)"
        ) from None
    except ValueError as err:
        raise SystemExit(f"error: --preds {err}") from None
    out: dict[int, tuple[int, int]] = {}
    for row in rows:
        i = int(row["index"])
        if "target" not in row:
            raise SystemExit(f"error: --preds {path}: index {i} has no target")
        if i in out:
            raise SystemExit(f"error: --preds {path}: index {i} appears twice")
        out[i] = (int(row["target"]), int(row["pred"]))
    return out


def breakdown(shift: dict[str, np.ndarray], preds: dict[int, tuple[int, int]], name: str) -> dict[str, dict]:
    """``{"corruption" or "corruption@severity": {"n", "correct", "accuracy", "ci_low", "ci_high"}}``.

    Every index of the shift must be predicted once, with the shift's own label: a prediction file of
    another dataset (or a partial run) must not turn into a plausible-looking table.
    """
    labels = shift["labels"]
    missing = sorted(set(range(len(labels))) - set(preds))
    if missing:
        raise SystemExit(f"error: predictions of {name}: {len(missing)} shift images missing (first: {missing[:5]})")
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for i, (target, pred) in preds.items():
        if i >= len(labels) or target != int(labels[i]):
            raise SystemExit(f"error: predictions of {name}: index {i} does not match the shift's labels")
        c, s = str(shift["corruption"][i]), int(shift["severity"][i])
        for key in (c, f"{c}@{s}", "all"):
            counts[key][0] += 1
            counts[key][1] += int(pred == target)
    out = {}
    for key, (n, k) in sorted(counts.items()):
        low, high = clopper_pearson(k, n, 0.95)
        out[key] = {"n": n, "correct": k, "accuracy": k / n, "ci_low": low, "ci_high": high}
    return out


def markdown(tables: dict[str, dict[str, dict]], corruptions: list[str], severities: list[int], command: str) -> str:
    models = list(tables)
    n_cell = tables[models[0]][corruptions[0]]["n"]
    lines = [
        "# Accuracy per corruption",
        "",
        f"- command: `{command}`",
        f"- {n_cell} images per corruption ({len(severities)} severities), accuracy % with exact 95% intervals",
        "",
        "| corruption | " + " | ".join(models) + " |",
        "|---|" + "---|" * len(models),
    ]

    def cell(r: dict) -> str:
        return f"{100 * r['accuracy']:.1f} [{100 * r['ci_low']:.0f}, {100 * r['ci_high']:.0f}]"

    for c in [*corruptions, "all"]:
        lines.append(f"| {c} | " + " | ".join(cell(tables[m][c]) for m in models) + " |")
    lines += ["", "By severity (accuracy %):", "", "| corruption | " + " | ".join(
        f"{m} s{s}" for m in models for s in severities) + " |", "|---|" + "---|" * (len(models) * len(severities))]
    for c in corruptions:
        lines.append(f"| {c} | " + " | ".join(
            f"{100 * tables[m][f'{c}@{s}']['accuracy']:.0f}" for m in models for s in severities) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shift", required=True, help="a built corruption shift folder (shift.npz)")
    ap.add_argument("--preds", action="append", required=True, metavar="NAME=FILE.jsonl",
                    help="a model's name and its merged prediction file (.jsonl or .parquet); repeat per model")
    ap.add_argument("--out", required=True, help="output prefix: writes OUT.json and OUT.md")
    args = ap.parse_args(argv)
    npz = Path(args.shift) / "shift.npz"
    if not npz.is_file():
        raise SystemExit(f"error: --shift {args.shift}: no shift.npz (build it with cli.py build-shift)")
    shift = dict(np.load(npz))
    if "corruption" not in shift or "severity" not in shift:
        raise SystemExit(f"error: {npz}: not a corruption shift (no corruption/severity arrays)")
    tables = {}
    for pair in args.preds:
        name, sep, path = pair.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"error: --preds {pair!r}: expected NAME=FILE.jsonl")
        tables[name] = breakdown(shift, target_and_pred(Path(path)), name)
    corruptions = list(dict.fromkeys(str(c) for c in shift["corruption"]))
    severities = sorted({int(s) for s in shift["severity"]})
    command = command_line(["benchmarks/corruption_breakdown.py", *(argv if argv is not None else sys.argv[1:])])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"command": command, "shift": str(args.shift), "tables": tables}
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    text = markdown(tables, corruptions, severities, command)
    out.with_suffix(".md").write_text(text)
    print(text)
    return result


if __name__ == "__main__":
    main()
