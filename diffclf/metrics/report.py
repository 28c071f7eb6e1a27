"""``python cli.py report``: the paper's Table 4 and Figure 6 from results records.

Reads records of many ``test`` runs (results files or folders), refuses sets that cannot be compared,
and writes into ``out``: ``report.md`` (accuracy table models × datasets with Clopper-Pearson
intervals, effective-robustness table), ``report.json`` (the same, machine-readable) and
``effective_robustness.png``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from diffclf.metrics.accuracy import clopper_pearson
from diffclf.metrics.results import ResultsError, load_records, to_jsonable
from diffclf.metrics.robustness import (
    DEFAULT_ID_FOR,
    EPS,
    LinearFit,
    plot_effective_robustness,
    robustness_points,
)

# Record fields that must agree for two runs to be "the same configuration" (re-runs): the scoring group
# (design, noise, error, weighting, t_range, flip views, precision, temperature, ...) included, since two
# runs that differ only in, say, the error norm are different classifiers.
CONFIG_FIELDS = ("checkpoint", "strategy", "seed", "label_space_size", "scoring", "n")


def _as_text(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "None"
    if isinstance(v, Mapping):  # key order differs between results.json (sorted) and results files
        return json.dumps(v, sort_keys=True)
    return str(v)


def _text(values: pd.Series) -> pd.Series:
    """Values as text, missing ones as ``None`` (``astype(str)`` keeps NaN, which nunique ignores)."""
    return values.map(_as_text)


def _sources(g: pd.DataFrame, col: str) -> str:
    return "; ".join(f"{v} ({s})" for v, s in zip(_text(g[col]), g["source"]))


def _names(df: pd.DataFrame) -> pd.Series:
    """The row name of a record: its ``label`` when set, else its ``model``."""
    label = _text(df["label"]) if "label" in df else pd.Series("None", index=df.index)
    return label.where(~label.isin(["None", ""]), _text(df["model"]))


def select_records(df: pd.DataFrame, level: float | None) -> tuple[pd.DataFrame, float, list[str]]:
    """One comparable record per (model name, dataset), intervals at one level, or a ResultsError.

    Re-runs of the same configuration keep the latest (noted); records that differ in
    checkpoint, strategy, seed or label space under one name and dataset, a dataset scored over
    different label-space sizes, a name that is both generative and discriminative, or mixed
    ``ci_level`` without ``level`` are refused.
    """
    notes: list[str] = []
    df = df.copy()
    df["name"] = _names(df)
    for name, g in df.groupby("name"):
        if g["kind"].nunique() > 1:
            raise ResultsError(f"model {name!r} is recorded as both kinds: {_sources(g, 'kind')}")
    for dataset, g in df.groupby("dataset"):
        if g["label_space_size"].nunique() > 1:
            raise ResultsError(
                f"dataset {dataset!r} was scored over different label-space sizes, which do not compare: "
                f"{_sources(g, 'label_space_size')}"
            )
    keep = []
    for (name, dataset), g in df.groupby(["name", "dataset"], sort=False):
        for col in (c for c in CONFIG_FIELDS if c in g):
            if _text(g[col]).nunique() > 1:
                raise ResultsError(
                    f"model {name!r} on {dataset!r} has runs with different {col}: {_sources(g, col)}; "
                    "give them distinct 'label' fields or pass only the files to compare"
                )
        g = g.sort_values("timestamp", na_position="first", kind="stable")
        keep.append(g.index[-1])
        if len(g) > 1:
            notes.append(
                f"{name} on {dataset}: {len(g)} runs of the same configuration, kept the latest "
                f"({g['source'].iloc[-1]})"
            )
    df = df.loc[sorted(keep)].reset_index(drop=True)
    if level is None:
        levels = sorted(df["ci_level"].unique())
        if len(levels) > 1:
            raise ResultsError(
                f"records mix ci_level {', '.join(f'{x:g}' for x in levels)} ({_sources(df, 'ci_level')}); "
                "pass --level to recompute every interval at one level"
            )
        level = float(levels[0])
    if not 0.0 < level < 1.0:
        raise ResultsError(f"--level must be in (0, 1), got {level}")
    bounds = [clopper_pearson(k, n, level) for k, n in zip(df["correct"], df["n"])]
    df["ci_low"] = [b[0] for b in bounds]
    df["ci_high"] = [b[1] for b in bounds]
    df["ci_level"] = level
    return df, level, notes


def _pct(acc: float, lo: float, hi: float) -> str:
    return f"{100 * acc:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"


def _signed(er: float, lo: float, hi: float) -> str:
    def fmt(x: float) -> str:
        return f"{round(x, 1) + 0.0:+.1f}"  # + 0.0 turns a rounded -0.0 into +0.0

    return "—" if not np.isfinite(er) else f"{fmt(er)} [{fmt(lo)}, {fmt(hi)}]"


def _markdown(table: pd.DataFrame, index_name: str) -> str:
    cols = [index_name, *table.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join(["---"] * len(cols)) + "|"]
    for name, row in table.iterrows():
        lines.append("| " + " | ".join([str(name), *row.astype(str)]) + " |")
    return "\n".join(lines)


def _plain(table: pd.DataFrame, index_name: str) -> str:
    rows = [[index_name, *table.columns]] + [[str(i), *map(str, r)] for i, r in table.iterrows()]
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    return "\n".join("  ".join(x.ljust(w) for x, w in zip(r, widths)).rstrip() for r in rows)


def _dataset_order(datasets: Sequence[str], id_dataset: str, id_for: dict[str, str]) -> list[str]:
    ids = [id_dataset] + sorted({id_for[d] for d in datasets if d in id_for} - {id_dataset})
    return [d for d in ids if d in datasets] + sorted(set(datasets) - set(ids))


def _render_markdown(
    acc: pd.DataFrame,
    er: pd.DataFrame,
    fits: Mapping[str, LinearFit | None],
    notes: list[str],
    id_dataset: str,
    level: float,
) -> str:
    """``report.md``: the accuracy table, the fitted lines, the effective-robustness table, notes, figure."""
    pct_level = f"{100 * level:g}%"
    md = [
        "# diffclf report",
        "",
        f"Top-1 accuracy (%) with exact Clopper-Pearson {pct_level} intervals. ID dataset: `{id_dataset}`.",
        "",
        _markdown(acc, "model"),
        "",
        "## Effective robustness",
        "",
        (
            "OOD accuracy minus the prediction of a least-squares line through (logit ID, logit OOD) "
            "accuracy of the discriminative models, in points; intervals: the OOD "
            f"{pct_level} Clopper-Pearson interval shifted by the line's prediction "
            "(the fit and the ID accuracy held fixed)."
        ),
        "",
    ]
    for d, f in fits.items():
        if f is not None:
            line = f"{f.slope:.3f} · logit(ID) {'+' if f.intercept >= 0 else '-'} {abs(f.intercept):.3f}"
            md.append(
                f"- `{d}` vs `{f.id_dataset}`: logit(OOD) = {line} over {len(f.models)} models "
                f"({', '.join(f.models)})"
            )
    md += [
        "",
        _markdown(er, "model") if len(er.columns) else "No OOD dataset could be paired with ID records.",
        "",
    ]
    if notes:
        md += ["## Notes", "", *[f"- {n}" for n in notes], ""]
    md += ["![effective robustness](effective_robustness.png)", ""]
    return "\n".join(md)


def _exclusions(df: pd.DataFrame, always: Sequence[str]) -> dict[str, list[str]]:
    """Per dataset, the models its records ask to keep out of the fit, plus ``always``."""
    out: dict[str, set[str]] = {d: set(always) for d in df["dataset"].unique()}
    if "exclude_from_fit" in df:
        for d, names in zip(df["dataset"], df["exclude_from_fit"]):
            if isinstance(names, (list, tuple)):
                out[d].update(str(n) for n in names)
    return {d: sorted(v) for d, v in out.items()}


def run_report(
    results: str | list[str],
    out: str,
    id_dataset: str,
    level: float | None = None,
    id_for: dict[str, str] | None = None,
    exclude_from_fit: list[str] | None = None,
) -> dict[str, Any]:
    """Accuracy and effective-robustness tables plus the figure, from results records.

    Args:
        results: a results file (``.jsonl`` / ``results.json``) or folder to search, or a list of them.
        out: folder for ``report.md``, ``report.json`` and ``effective_robustness.png``.
        id_dataset: the in-distribution dataset (e.g. ``imagenet``); every other dataset is OOD.
        level: Clopper-Pearson level of every interval, recomputed from each record's counts
            (default: the records' own ``ci_level``, which must then agree). The paper plots 0.995.
        id_for: ID dataset of particular OOD datasets, on top of
            ``{"imagenet_a": "imagenet_200", "fashion_mnist_hard": "fashion_mnist"}``.
        exclude_from_fit: models kept out of every baseline fit, on top of those a dataset's own
            records name (``fashion_mnist_hard`` names the reference model it was filtered against).
    """
    if isinstance(results, str):
        results = [results]
    id_map = {**DEFAULT_ID_FOR, **(id_for or {})}
    try:
        df, level, notes = select_records(load_records(results), level)
    except ResultsError as err:
        raise SystemExit(f"error: report refused: {err}") from None
    datasets = _dataset_order(list(df["dataset"].unique()), id_dataset, id_map)
    if id_dataset not in datasets:
        notes.append(f"no records on the ID dataset {id_dataset!r}")
    kinds = df.groupby("name")["kind"].first()
    models = sorted(kinds.index, key=lambda m: (kinds[m] != "discriminative", m))

    acc = pd.DataFrame("—", index=pd.Index(models, name="model"), columns=datasets)
    for r in df.itertuples():
        acc.at[r.name, r.dataset] = _pct(r.accuracy, r.ci_low, r.ci_high)

    table = df.rename(columns={"model": "model_field", "name": "model"})
    points, fits, er_notes = robustness_points(
        table, id_dataset, id_map, EPS, _exclusions(df, exclude_from_fit or [])
    )
    notes += er_notes
    ood = sorted(points["ood_dataset"].unique()) if len(points) else []
    er = pd.DataFrame("—", index=pd.Index(models, name="model"), columns=ood)
    for p in points.itertuples():
        er.at[p.model, p.ood_dataset] = _signed(p.er, p.er_low, p.er_high)
    er = er.loc[[m for m in models if m in set(points["model"])]]

    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    figure = plot_effective_robustness(points, fits, out_dir / "effective_robustness.png", level, EPS)
    fit_rows = {
        d: None
        if f is None
        else {
            "id_dataset": f.id_dataset,
            "slope": f.slope,
            "intercept": f.intercept,
            "models": list(f.models),
        }
        for d, f in fits.items()
    }
    record_cols = [
        "name",
        "kind",
        "dataset",
        "label_space_size",
        "n",
        "correct",
        "accuracy",
        "ci_low",
        "ci_high",
        "top5_accuracy",
        "mean_per_class_accuracy",
        "forwards_per_image",
        "seconds_per_image",
        "strategy",
        "checkpoint",
        "source",
    ]
    report: dict[str, Any] = {
        "level": level,
        "id_dataset": id_dataset,
        "id_for": {d: id_map[d] for d in ood if d in id_map},
        "datasets": datasets,
        "models": [{"name": m, "kind": kinds[m]} for m in models],
        "accuracy": df[record_cols].rename(columns={"name": "model"}).to_dict(orient="records"),
        "fits": fit_rows,
        "effective_robustness": points.to_dict(orient="records"),
        "notes": notes,
        "files": {
            "markdown": str(out_dir / "report.md"),
            "json": str(out_dir / "report.json"),
            "figure": str(figure),
        },
    }
    report = to_jsonable(report)

    pct_level = f"{100 * level:g}%"
    (out_dir / "report.md").write_text(_render_markdown(acc, er, fits, notes, id_dataset, level))
    (out_dir / "report.json").write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")

    print(f"accuracy (%), Clopper-Pearson {pct_level}:")
    print(_plain(acc, "model"))
    if len(ood):
        print(f"\neffective robustness (points), OOD Clopper-Pearson {pct_level}:")
        print(_plain(er, "model"))
    for n in notes:
        print(f"note: {n}")
    print(f"report written to {out_dir / 'report.md'}, {out_dir / 'report.json'}, {figure}")
    return report
