"""Effective robustness (Taori et al. 2020): OOD accuracy beyond what ID accuracy predicts.

Discriminative models trained on the same data lie close to a line when both accuracies are
logit-transformed. A model's effective robustness is its OOD accuracy minus that line's prediction
at its ID accuracy, in accuracy points. The ID axis of an OOD set must use the same classes: for
ImageNet-A (200 classes) it is ImageNet accuracy restricted to those 200 classes, hence
:data:`DEFAULT_ID_FOR`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

DEFAULT_ID_FOR: dict[str, str] = {"imagenet_a": "imagenet_200", "fashion_mnist_hard": "fashion_mnist"}
EPS = 1e-4
ArrayLike = float | Sequence[float] | np.ndarray


def logit(p: ArrayLike, eps: float = EPS) -> np.ndarray:
    """``log(p / (1 - p))`` with ``p`` clipped to ``[eps, 1 - eps]`` so 0% and 100% stay finite."""
    q = np.clip(np.asarray(p, dtype=np.float64), eps, 1.0 - eps)
    return np.log(q) - np.log1p(-q)


def expit(z: ArrayLike) -> np.ndarray:
    """Inverse of :func:`logit`."""
    return 1.0 / (1.0 + np.exp(-np.asarray(z, dtype=np.float64)))


@dataclass(frozen=True)
class LinearFit:
    """``logit(OOD) = slope * logit(ID) + intercept``, fitted over ``models``."""

    slope: float
    intercept: float
    models: tuple[str, ...] = ()
    id_dataset: str = ""
    ood_dataset: str = ""
    eps: float = EPS
    residuals: tuple[float, ...] = field(default=(), compare=False)

    def predict(self, id_acc: ArrayLike) -> np.ndarray:
        """OOD accuracy (fraction) the line predicts at ID accuracy ``id_acc``."""
        return expit(self.slope * logit(id_acc, self.eps) + self.intercept)


def fit_linear(
    id_acc: ArrayLike,
    ood_acc: ArrayLike,
    models: Sequence[str] = (),
    id_dataset: str = "",
    ood_dataset: str = "",
    eps: float = EPS,
) -> LinearFit:
    """Least-squares line through ``(logit(ID), logit(OOD))``; needs two distinct ID accuracies."""
    x, y = logit(id_acc, eps), logit(ood_acc, eps)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"need two 1-D arrays of equal length, got shapes {x.shape} and {y.shape}")
    if len(x) < 2 or np.ptp(x) == 0:
        raise ValueError(
            f"a baseline line needs at least 2 models with different ID accuracies, got {len(x)}"
        )
    slope, intercept = np.polyfit(x, y, 1)
    residuals = y - (slope * x + intercept)
    return LinearFit(
        float(slope),
        float(intercept),
        tuple(models),
        id_dataset,
        ood_dataset,
        eps,
        tuple(float(r) for r in residuals),
    )


def effective_robustness(id_acc: ArrayLike, ood_acc: ArrayLike, fit: LinearFit) -> np.ndarray:
    """OOD accuracy minus the baseline's prediction at the same ID accuracy, in points (×100)."""
    return 100.0 * (np.asarray(ood_acc, dtype=np.float64) - fit.predict(id_acc))


def effective_robustness_interval(
    id_acc: ArrayLike, ood_low: ArrayLike, ood_high: ArrayLike, fit: LinearFit
) -> tuple[np.ndarray, np.ndarray]:
    """Interval for effective robustness from the OOD accuracy's Clopper-Pearson bounds, in points.

    Covers only the sampling error of the model's OOD accuracy (the finite OOD test set), at the
    level of the OOD interval: the baseline line and the model's ID accuracy are held fixed, so the
    uncertainty of the fit and of the ID accuracy is not included. Given the line, the shift is
    exact, so the interval keeps the Clopper-Pearson coverage.
    """
    pred = fit.predict(id_acc)
    low = 100.0 * (np.asarray(ood_low, dtype=np.float64) - pred)
    high = 100.0 * (np.asarray(ood_high, dtype=np.float64) - pred)
    return low, high


def ood_datasets(datasets: Sequence[str], id_dataset: str, id_for: Mapping[str, str]) -> list[str]:
    """The datasets that get a panel: all but the ID datasets (``id_dataset`` and mapped ones)."""
    present = set(datasets)
    id_sets = {id_dataset} | {id_for[d] for d in present if d in id_for}
    return sorted(present - id_sets)


def robustness_points(
    df: pd.DataFrame,
    id_dataset: str,
    id_for: Mapping[str, str] | None = None,
    eps: float = EPS,
    exclude_from_fit: Mapping[str, Sequence[str]] | None = None,
) -> tuple[pd.DataFrame, dict[str, LinearFit | None], list[str]]:
    """Pair every model's ID and OOD records, fit the baselines and compute effective robustness.

    ``df`` has one row per (model, dataset) with columns model, kind, dataset, accuracy, ci_low,
    ci_high. ``id_for`` names the ID dataset of an OOD dataset (default: ``id_dataset``).
    ``exclude_from_fit[ood]`` lists models kept out of that dataset's baseline fit (the reference
    model an adversarially filtered set was built against: its OOD accuracy is ~0 by construction,
    which would bend the line). Returns the
    points (one row per model and OOD dataset; ``er``, ``er_low``, ``er_high`` NaN without a fit;
    ``kept_out`` True for a discriminative model excluded from its dataset's fit),
    the fit per OOD dataset (None when fewer than 2 discriminative models) and notes to show.
    """
    id_for = dict(DEFAULT_ID_FOR if id_for is None else id_for)
    notes: list[str] = []
    rows = []
    fits: dict[str, LinearFit | None] = {}
    by_dataset = {d: g.set_index("model") for d, g in df.groupby("dataset")}
    for ood in ood_datasets(list(by_dataset), id_dataset, id_for):
        idd = id_for.get(ood, id_dataset)
        if idd not in by_dataset:
            notes.append(f"{ood}: no records on its ID dataset {idd}; no effective robustness for it")
            continue
        o, i = by_dataset[ood], by_dataset[idd]
        lone = sorted(set(o.index) - set(i.index))
        if lone:
            notes.append(f"{ood}: {', '.join(lone)} left out (no {idd} record)")
        for model in [m for m in o.index if m in i.index]:
            rows.append(
                {
                    "model": model,
                    "kind": o.at[model, "kind"],
                    "ood_dataset": ood,
                    "id_dataset": idd,
                    "id_acc": i.at[model, "accuracy"],
                    "id_low": i.at[model, "ci_low"],
                    "id_high": i.at[model, "ci_high"],
                    "ood_acc": o.at[model, "accuracy"],
                    "ood_low": o.at[model, "ci_low"],
                    "ood_high": o.at[model, "ci_high"],
                }
            )
    cols = [
        "model",
        "kind",
        "ood_dataset",
        "id_dataset",
        "id_acc",
        "id_low",
        "id_high",
        "ood_acc",
        "ood_low",
        "ood_high",
        "predicted",
        "er",
        "er_low",
        "er_high",
        "kept_out",
    ]
    points = pd.DataFrame(rows, columns=cols)
    points["kept_out"] = False
    for ood, g in points.groupby("ood_dataset", sort=True):
        excluded = set((exclude_from_fit or {}).get(ood, ()))
        disc = g[(g["kind"] == "discriminative") & ~g["model"].isin(excluded)]
        if excluded & set(g["model"]):
            notes.append(f"{ood}: {', '.join(sorted(excluded & set(g['model'])))} kept out of the baseline fit")
            points.loc[g.index, "kept_out"] = (g["kind"] == "discriminative") & g["model"].isin(excluded)
        try:
            fit = fit_linear(
                disc["id_acc"], disc["ood_acc"], tuple(disc["model"]), g["id_dataset"].iloc[0], ood, eps
            )
        except ValueError as err:
            fits[ood] = None
            notes.append(f"{ood}: no baseline fit ({len(disc)} discriminative model(s); {err})")
            continue
        fits[ood] = fit
        idx = g.index
        points.loc[idx, "predicted"] = fit.predict(g["id_acc"])
        points.loc[idx, "er"] = effective_robustness(g["id_acc"], g["ood_acc"], fit)
        low, high = effective_robustness_interval(g["id_acc"], g["ood_low"], g["ood_high"], fit)
        points.loc[idx, "er_low"], points.loc[idx, "er_high"] = low, high
    points[["predicted", "er", "er_low", "er_high"]] = points[
        ["predicted", "er", "er_low", "er_high"]
    ].astype(float)
    return points, fits, notes


TICKS = (
    0.0001,
    0.001,
    0.01,
    0.02,
    0.05,
    0.1,
    0.2,
    0.3,
    0.4,
    0.5,
    0.6,
    0.7,
    0.8,
    0.9,
    0.95,
    0.98,
    0.99,
    0.999,
)


def _axis_range(values: np.ndarray, eps: float) -> tuple[float, float]:
    z = logit(values[np.isfinite(values)], eps)
    lo, hi = float(z.min()), float(z.max())
    pad = max(0.3, 0.08 * (hi - lo))
    return float(expit(lo - pad)), float(expit(hi + pad))


def plot_effective_robustness(
    points: pd.DataFrame,
    fits: Mapping[str, LinearFit | None],
    path: str | Path,
    level: float,
    eps: float = EPS,
) -> Path:
    """Figure-6-style PNG: one panel per OOD dataset, OOD vs ID accuracy on logit axes.

    Drawn on a bare ``Figure`` (Agg canvas, no pyplot state), so it works headless and in threads.

    Accuracy tick labels on logit-scaled axes; the baseline fitted over discriminative models (solid),
    ``y = x`` (dashed), Clopper-Pearson error bars at ``level`` on both axes, generative models as
    labelled red stars, contrastive ones (zero-shot CLIP) as labelled green diamonds. Models kept out of a
    fit (``kept_out``, e.g. the reference of a filtered set at ~0% by construction) are named in the panel
    instead of drawn: plotted, they would set the axis range.
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter, NullLocator

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    panels = sorted(points["ood_dataset"].unique()) if len(points) else []
    fig = Figure(figsize=(5.0 * max(1, len(panels)), 4.6))
    axes = fig.subplots(1, max(1, len(panels)), squeeze=False)
    if not panels:
        axes[0, 0].text(0.5, 0.5, "no OOD dataset with matching ID records", ha="center", va="center")
        axes[0, 0].set_axis_off()
    pct = FuncFormatter(lambda v, _: f"{100 * v:.3g}%")
    for ax, ood in zip(axes[0], panels):
        g = points[points["ood_dataset"] == ood]
        kept_out = g[g["kept_out"].astype(bool)] if "kept_out" in g else g.iloc[:0]
        if len(kept_out) < len(g):
            g = g.drop(kept_out.index)
        else:
            kept_out = g.iloc[:0]
        xs = np.concatenate([g["id_low"], g["id_high"], g["id_acc"]])
        ys = np.concatenate([g["ood_low"], g["ood_high"], g["ood_acc"]])
        x0, x1 = _axis_range(xs, eps)
        y0, y1 = _axis_range(ys, eps)
        lo, hi = min(x0, y0), max(x1, y1)
        ax.set_xscale("logit")
        ax.set_yscale("logit")
        grid = expit(np.linspace(logit(x0, eps), logit(x1, eps), 200))
        diag = expit(np.linspace(logit(lo, eps), logit(hi, eps), 200))
        ax.plot(diag, diag, "--", color="0.55", lw=1, label="y = x")
        fit = fits.get(ood)
        if fit is not None:
            ax.plot(
                grid,
                fit.predict(grid),
                "-",
                color="tab:blue",
                lw=1.5,
                label=f"baseline fit ({len(fit.models)} models)",
            )
        for kind, style in (
            ("discriminative", {"fmt": "o", "color": "tab:blue", "ms": 5}),
            ("generative", {"fmt": "*", "color": "tab:red", "ms": 13}),
            ("contrastive", {"fmt": "D", "color": "tab:green", "ms": 7}),
        ):
            k = g[g["kind"] == kind]
            if not len(k):
                continue
            cx = np.clip(k["id_acc"].to_numpy(float), eps, 1 - eps)
            cy = np.clip(k["ood_acc"].to_numpy(float), eps, 1 - eps)
            xerr = np.stack(
                [cx - np.clip(k["id_low"], eps, 1 - eps), np.clip(k["id_high"], eps, 1 - eps) - cx]
            )
            yerr = np.stack(
                [cy - np.clip(k["ood_low"], eps, 1 - eps), np.clip(k["ood_high"], eps, 1 - eps) - cy]
            )
            ax.errorbar(
                cx,
                cy,
                xerr=np.maximum(xerr, 0),
                yerr=np.maximum(yerr, 0),
                linestyle="none",
                capsize=2,
                elinewidth=0.8,
                label=kind,
                **style,
            )
            if kind != "discriminative":
                for name, px, py in zip(k["model"], cx, cy):
                    ax.annotate(
                        str(name),
                        (px, py),
                        textcoords="offset points",
                        xytext=(6, -10),
                        fontsize=8,
                        color=style["color"],
                    )
        ax.set_xlim(x0, x1)
        ax.set_ylim(y0, y1)
        for axis, (a, b) in ((ax.xaxis, (x0, x1)), (ax.yaxis, (y0, y1))):
            axis.set_major_locator(FixedLocator([t for t in TICKS if a <= t <= b] or [a, b]))
            axis.set_major_formatter(pct)
            axis.set_minor_locator(NullLocator())
            axis.set_minor_formatter(NullFormatter())
        if len(kept_out):
            ax.text(
                0.02, 0.98,
                "kept out of the fit, not drawn: " + ", ".join(
                    f"{m} ({100 * a:.3g}% / {100 * o:.3g}%)"
                    for m, a, o in zip(kept_out["model"], kept_out["id_acc"], kept_out["ood_acc"])
                ),
                transform=ax.transAxes, fontsize=7, va="top", color="0.35",
            )
        idd = g["id_dataset"].iloc[0]
        ax.set_xlabel(f"{idd} accuracy (logit axis)")
        ax.set_ylabel(f"{ood} accuracy (logit axis)")
        ax.set_title(f"{ood} vs {idd}")
        ax.grid(True, color="0.9", lw=0.6)
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(f"Effective robustness (error bars: Clopper-Pearson {100 * level:g}%)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    return path
