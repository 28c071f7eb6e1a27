"""Summarise the compositional records of ``benchmarks/compositional_small.sh`` into one table and a figure.

Reads ``<results>/<model>/{binding,winoground,cue_conflict}.json`` (written by ``diffclf compositional``) and
writes ``<results>/summary.md``, ``summary.json`` and ``figure.png``: every binding task with its exact
interval and binomial test, the Winoground-style text / image / group scores per tag, and the cue-conflict
shape bias, side by side per model. It recomputes nothing the records hold; it adds only the Winoground
diagnostics that explain a low image score (how often both captions prefer the same image, and both images
the same caption), computed from the records' raw score matrices, and, where a denoising model's record has it,
the scores with each image's unconditional error subtracted (``summary_normalised``).

    python benchmarks/compositional_report.py --results benchmarks/results/compositional \
        --models scenes_text_dit scenes_contrastive --command "bash benchmarks/compositional_small.sh"
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from diffclf.metrics.provenance import provenance

EVALUATIONS = ("binding", "winoground", "cue_conflict")
#: Clark & Jaini Table 3 (Imagen / SD / CLIP) where they report the task, for the summary's comparison column.
PAPER_BINDING = {"Shape|Color": "66 / 65 / 52", "Shape,Color": "100 / 85 / 54"}


def load(results: Path, model: str) -> dict[str, dict[str, Any]]:
    """The records of one model; a missing or unreadable record is one clear error naming the file."""
    out = {}
    for name in EVALUATIONS:
        path = results / model / f"{name}.json"
        try:
            out[name] = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise SystemExit(f"error: {path}: {err} (run the evaluate phase of compositional_small.sh first)") from None
    return out


def winoground_diagnostics(scores: list[list[list[float]]]) -> dict[str, float]:
    """Fractions of pairs where both captions prefer the same image (the image score's failure mode: an
    image's own denoising difficulty outweighs the caption) and where both images prefer the same caption
    (a caption's own bias outweighs the image). ``scores[i][j][k]``: image ``j`` with caption ``k``."""
    s = np.asarray(scores, dtype=np.float64)
    same_image = (s[:, 0, 0] > s[:, 1, 0]) == (s[:, 0, 1] > s[:, 1, 1])
    same_caption = (s[:, 0, 0] > s[:, 0, 1]) == (s[:, 1, 0] > s[:, 1, 1])
    return {"both_captions_same_image": float(same_image.mean()), "both_images_same_caption": float(same_caption.mean())}


def rate(r: dict[str, Any]) -> str:
    return f"{100 * r['accuracy']:.1f} [{100 * r['low']:.1f}, {100 * r['high']:.1f}]"


def binding_cell(r: dict[str, Any]) -> str:
    mark = ""
    if r["significant"]:
        mark = " *" if r["accuracy"] > 0.5 else " * (below chance)"
    return rate(r) + mark


def summarise(records: dict[str, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """The figures of every model in one JSON-able dict."""
    out: dict[str, Any] = {}
    for model, rec in records.items():
        wino = rec["winoground"]
        cue = rec["cue_conflict"]
        out[model] = {
            "model": rec["binding"]["model"],
            "binding": {k: {f: v[f] for f in ("correct", "total", "accuracy", "low", "high", "p_value", "significant")}
                        for k, v in rec["binding"]["tasks"].items()},
            "winoground": wino["summary"],
            "winoground_normalised": wino.get("summary_normalised"),  # denoising models since the DiffusionITM rows
            "winoground_diagnostics": winoground_diagnostics(wino["scores"]),
            "cue_conflict": {k: cue[k] for k in ("n", "shape_correct", "texture_correct", "shape_accuracy",
                                                 "texture_accuracy", "shape_bias", "bias_low", "bias_high", "p_value")},
            "draws": rec["binding"]["draws"],
            "provenance": {k: rec["binding"].get(k) for k in ("device", "cpu", "cpu_family_model", "date", "commit",
                                                                "checkpoint")},
        }
    return out


def markdown(summary: dict[str, Any], command: str, prov: dict[str, Any]) -> str:
    models = list(summary)
    head = "| " + " | ".join(["task", *models]) + " |"
    rule = "|" + "---|" * (len(models) + 1)
    lines = ["# Compositional evaluations: summary", "",
             f"Command: `{command}`; summary written {prov['date']} on {prov['device']} (CPU {prov['cpu']} "
             f"{prov.get('cpu_family_model', '')}), commit {prov['commit']}. Each model's records: "
             + "; ".join(f"{m}: {summary[m]['provenance']['checkpoint']} ({summary[m]['provenance']['date']}, "
                         f"commit {summary[m]['provenance']['commit']})" for m in models) + ".", "",
             "## Attribute binding (two-sided binomial test against 0.5, * = p < 0.01; 95% exact intervals)", "",
             head, rule]
    tasks = list(summary[models[0]]["binding"])
    for task in tasks:
        lines.append("| " + " | ".join([task.replace("|", "\\|")] + [binding_cell(summary[m]["binding"][task])
                                                                      for m in models]) + " |")
    lines += ["", "## Winoground-style word order (text / image / group, %)", "", head, rule]
    for tag in summary[models[0]]["winoground"]:
        lines.append("| " + " | ".join([tag] + [" / ".join(f"{100 * summary[m]['winoground'][tag][k]['accuracy']:.1f}"
                                                          for k in ("text", "image", "group")) for m in models]) + " |")
    lines.append("| all, minus the unconditional error (DiffusionITM) | " + " | ".join(
        " / ".join(f"{100 * summary[m]['winoground_normalised']['all'][k]['accuracy']:.1f}" for k in ("text", "image", "group"))
        if summary[m]["winoground_normalised"] else "—" for m in models) + " |")
    lines.append("| both captions prefer the same image | " + " | ".join(
        f"{100 * summary[m]['winoground_diagnostics']['both_captions_same_image']:.1f}%" for m in models) + " |")
    lines.append("| both images prefer the same caption | " + " | ".join(
        f"{100 * summary[m]['winoground_diagnostics']['both_images_same_caption']:.1f}%" for m in models) + " |")
    lines += ["", "## Cue conflict (shape bias = shape / (shape + texture) decisions; test against 0.5)", "", head, rule]
    for key, label in (("shape_accuracy", "shape accuracy"), ("texture_accuracy", "texture accuracy")):
        lines.append(f"| {label} | " + " | ".join(f"{100 * summary[m]['cue_conflict'][key]:.1f}%" for m in models) + " |")
    lines.append("| shape bias [95% CI], p | " + " | ".join(
        "{:.3f} [{:.3f}, {:.3f}], p = {:.1e}".format(*(summary[m]["cue_conflict"][k] for k in
                                                      ("shape_bias", "bias_low", "bias_high", "p_value")))
        for m in models) + " |")
    return "\n".join(lines) + "\n"


def figure(summary: dict[str, Any], path: Path) -> None:
    """Binding accuracies with their intervals per model, the Winoground scores and the shape bias."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(summary)
    tasks = list(summary[models[0]]["binding"])
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8), gridspec_kw={"width_ratios": [4, 1.6, 1]})
    width = 0.8 / len(models)
    for k, m in enumerate(models):
        rows = [summary[m]["binding"][t] for t in tasks]
        acc = np.array([r["accuracy"] for r in rows]) * 100
        err = np.array([[r["accuracy"] - r["low"], r["high"] - r["accuracy"]] for r in rows]).T * 100
        axes[0].bar(np.arange(len(tasks)) + k * width, acc, width, yerr=err, capsize=2, label=m)
    axes[0].axhline(50, color="k", ls="--", lw=0.8)
    axes[0].set_xticks(np.arange(len(tasks)) + width * (len(models) - 1) / 2, tasks, rotation=60, ha="right", fontsize=8)
    axes[0].set_ylabel("accuracy (%)")
    axes[0].set_title("attribute binding (dashed: chance)")
    axes[0].legend(fontsize=8)
    scores = ("text", "image", "group")
    for k, m in enumerate(models):
        rates = [summary[m]["winoground"]["all"][s] for s in scores]
        acc = np.array([r["accuracy"] for r in rates]) * 100
        err = np.array([[r["accuracy"] - r["low"], r["high"] - r["accuracy"]] for r in rates]).T * 100
        axes[1].bar(np.arange(3) + k * width, acc, width, yerr=err, capsize=2)
    axes[1].axhline(25, color="k", ls="--", lw=0.8)
    axes[1].set_xticks(np.arange(3) + width * (len(models) - 1) / 2, scores)
    axes[1].set_title("Winoground-style (dashed: text/image chance)")
    for k, m in enumerate(models):
        c = summary[m]["cue_conflict"]
        axes[2].bar(k, c["shape_bias"], 0.6, yerr=[[c["shape_bias"] - c["bias_low"]], [c["bias_high"] - c["shape_bias"]]],
                    capsize=3, color=f"C{k}")
    axes[2].axhline(0.5, color="k", ls="--", lw=0.8)
    axes[2].set_xticks(range(len(models)), models, fontsize=7, rotation=25, ha="right")
    axes[2].set_ylim(0, 1)
    axes[2].set_title("cue-conflict shape bias")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", default="benchmarks/results/compositional")
    parser.add_argument("--models", nargs="+", default=["scenes_text_dit", "scenes_contrastive"])
    parser.add_argument("--command", default="bash benchmarks/compositional_small.sh")
    parser.add_argument("--no_figure", action="store_true", help="skip the PNG (matplotlib absent)")
    args = parser.parse_args(argv)
    results = Path(args.results)
    records = {m: load(results, m) for m in args.models}
    summary = summarise(records)
    prov = provenance("cpu")
    (results / "summary.json").write_text(json.dumps({"command": args.command, "provenance": prov,
                                                      "models": summary}, indent=1))
    text = markdown(summary, args.command, prov)
    (results / "summary.md").write_text(text)
    if not args.no_figure:
        figure(summary, results / "figure.png")
    print(text)
    return summary


if __name__ == "__main__":
    main()
