"""``diffclf calibrate``: fit how logits become ``p(c|x)``, on predictions of images that are not the test split.

Two steps, so that the expensive one is an ordinary, resumable ``predict``::

    diffclf predict --config digits --ckpt_path checkpoints/digits_dit_t2.ckpt --data.init_args.predict_split train \\
        --trainer.callbacks+=diffclf.tasks.callbacks.PredictionWriter --trainer.callbacks.output train.jsonl
    diffclf calibrate --predictions train.jsonl --output digits_calibration.json
    diffclf test --config digits --ckpt_path checkpoints/digits_dit_t2.ckpt \\
        --model.init_args.calibration digits_calibration.json

The predictions' manifest (written beside them by ``PredictionWriter``) says which checkpoint, strategy,
scoring and split they came from; predictions of the test split are refused, and ``test`` refuses a
calibration fitted for another checkpoint, strategy or scoring.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal

import torch

from diffclf.metrics.calibration import (
    Calibration,
    evaluate,
    fit_platt,
    fit_temperature,
    write_reliability_diagram,
)
from diffclf.metrics.predictions import atomic_write_text, manifest_path, read_predictions
from diffclf.metrics.provenance import provenance

# Manifest fields that must agree across the prediction files one calibration is fitted on.
SAME_RUN = ("checkpoint", "model", "strategy", "scoring", "seed", "dataset")


def _read(path: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    manifest = manifest_path(path)
    if not manifest.is_file():
        raise FileNotFoundError(
            f"{path}: no manifest {manifest.name} beside it; calibrate reads predictions written by "
            "diffclf.tasks.callbacks.PredictionWriter"
        )
    meta = json.loads(manifest.read_text())
    split = meta.get("split", "test")
    if split == "test":
        raise ValueError(
            f"{path}: these predictions are of the test split; fit a calibration on other images "
            "(predict with --data.init_args.predict_split train or val)"
        )
    rows = read_predictions(path)
    if rows and "logits" not in rows[0]:
        raise ValueError(f"{path}: rows have no 'logits' column (written by an older diffclf); predict again")
    return rows, meta


def _logits(rows: list[dict[str, Any]]) -> torch.Tensor:
    return torch.tensor([[-math.inf if v is None else v for v in r["logits"]] for r in rows], dtype=torch.float64)


def _summary(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: metrics[k] for k in ("ece", "nll", "brier")}


def calibrate(
    predictions: str | list[str],
    output: str,
    method: Literal["temperature", "calls"] = "temperature",
    diagram: str | None = None,
) -> Calibration:
    """Fit a calibration on predictions of non-test images and write it as JSON.

    Args:
        predictions: a prediction file, or a list of them (``.jsonl``/``.parquet``) of one checkpoint, strategy and scoring,
            made with ``--data.init_args.predict_split train`` (or ``val``).
        output: the calibration file to write (give it to ``test`` as ``--model.init_args.calibration``).
        method: ``temperature`` (one temperature minimising the NLL) or ``calls`` (Platt scaling of
            ``log(calls)`` for the prediction's probability, Clark & Jaini: for pruning strategies whose
            calls per image vary).
        diagram: a reliability diagram PNG of the calibration images after the fit (default: beside ``output``).
    """
    paths = [Path(p) for p in ([predictions] if isinstance(predictions, str) else predictions)]
    if not paths:
        raise ValueError("--predictions: give at least one prediction file")
    rows: list[dict[str, Any]] = []
    metas = []
    for path in paths:
        r, meta = _read(path)
        rows += r
        metas.append(meta)
    for key in SAME_RUN:
        values = {json.dumps(m.get(key), sort_keys=True) for m in metas}
        if len(values) > 1:
            raise ValueError(f"--predictions: the files come from different runs ({key} differs: {sorted(values)})")
    if not rows:
        raise ValueError(f"--predictions {', '.join(map(str, paths))}: no rows")
    logits = _logits(rows)
    target = torch.tensor([int(r["target"]) for r in rows])
    pred = torch.tensor([int(r["pred"]) for r in rows])
    calls = torch.tensor([int(r["forwards"]) for r in rows])
    before = evaluate(torch.log_softmax(logits, dim=1), target, pred)
    temperature = fit_temperature(logits, target)
    platt = fit_platt(torch.log(calls.double()), pred == target) if method == "calls" else None
    fitted_on = {k: v for k, v in metas[0].items() if k != "n"}
    fitted_on.update({
        "predictions": [str(p) for p in paths], "n": len(rows), "accuracy": float((pred == target).double().mean()),
        "before": _summary(before), "provenance": provenance(),
    })
    cal = Calibration(method=method, temperature=temperature, platt=platt, fitted_on=fitted_on)
    after = evaluate(cal.log_probs(logits, calls, pred), target, pred)
    fitted_on["after"] = _summary(after)
    out = Path(output)
    atomic_write_text(out, json.dumps(cal.to_json(), indent=1, sort_keys=True) + "\n")
    png = Path(diagram) if diagram else out.with_suffix(".png")
    write_reliability_diagram(
        after["bins"], png, f"{fitted_on.get('model')} on {len(rows)} {fitted_on.get('split')} images\n"
        f"{method}: ECE {before['ece']:.4f} -> {after['ece']:.4f}",
    )
    how = f"T = {temperature:.6g}" + (f", Platt a = {platt[0]:.4g}, b = {platt[1]:.4g}" if platt else "")
    print(f"calibration ({method}) fitted on {len(rows)} {fitted_on.get('split')} images: {how}")
    for name in ("ece", "nll", "brier"):
        print(f"  {name:5s} {before[name]:.4f} -> {after[name]:.4f}")
    print(f"calibration written to {out}; reliability diagram {png}")
    return cal
