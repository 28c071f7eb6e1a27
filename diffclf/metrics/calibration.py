"""Calibration of ``p(c|x)``: ECE, NLL and Brier score, and the two fits that make probabilities honest.

A diffusion classifier's logits are ELBO gaps (``-(err_c - err_pred)`` in nats, see
``DiffusionClassifier``): a bound, estimated on a few hundred draws, so its probabilities are far
from calibrated as they stand. Two post-hoc fits, both on images that are not the test split:

- **temperature** (Guo et al. 2017): ``p = softmax(logits / T)`` with ``T`` minimising the NLL.
- **calls** (Clark & Jaini, for the paired t-test): the number of denoiser calls an image needed is
  itself a confidence signal (an easy image is decided after few rounds). Platt scaling (Platt 1999,
  with his smoothed targets) of ``log(calls)`` gives the probability that the prediction is right; the
  rest of the mass goes to the other classes in proportion to their temperature-scaled probabilities.

Metrics follow the usual definitions: top-label ECE over 15 equal-width confidence bins (Guo et al.),
NLL of the target (probabilities floored at 1e-12, so a class a prefilter never proposed, p = 0, costs
27.6 nats instead of infinity), and the multi-class Brier score ``sum_k (p_k - y_k)^2`` (0 to 2).
Plain torch, numpy and scipy; sums over images are kept so ranks can add them.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric

ECE_BINS = 15
LOG_FLOOR = math.log(1e-12)
METHODS = ("temperature", "calls")
CALIBRATION_VERSION = 1


class CalibrationStats(Metric):
    """Sum-reduced per-bin counts, confidences and hits, plus NLL and Brier sums, over images."""

    full_state_update = False

    def __init__(self, num_bins: int = ECE_BINS) -> None:
        super().__init__()
        self.num_bins = num_bins
        self.add_state("bin_count", torch.zeros(num_bins, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("bin_confidence", torch.zeros(num_bins, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("bin_correct", torch.zeros(num_bins, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("nll", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("brier", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("n", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, log_probs: Tensor, target: Tensor, pred: Tensor) -> None:
        """``log_probs`` ``(B, K)`` of ``p(c|x)``; ``pred`` ``(B,)`` the classifier's prediction (its
        confidence is the probability it gives that class)."""
        lp = log_probs.detach().double()
        target, pred = target.to(lp.device).long(), pred.to(lp.device).long()
        probs = lp.exp()
        conf = probs.gather(1, pred.view(-1, 1)).squeeze(1)
        bins = (conf * self.num_bins).long().clamp(0, self.num_bins - 1)
        self.bin_count += torch.bincount(bins, minlength=self.num_bins)
        self.bin_confidence += torch.zeros(self.num_bins, dtype=torch.float64, device=lp.device).index_add_(0, bins, conf)
        self.bin_correct += torch.bincount(bins[pred == target], minlength=self.num_bins)
        self.nll += -lp.gather(1, target.view(-1, 1)).clamp(min=LOG_FLOOR).sum()
        onehot = torch.nn.functional.one_hot(target, lp.shape[1]).double()
        self.brier += (probs - onehot).square().sum()
        self.n += target.numel()

    def compute(self) -> dict[str, Any]:
        return summarize(self.bin_count.cpu(), self.bin_confidence.cpu(), self.bin_correct.cpu(),
                         float(self.nll), float(self.brier), int(self.n))


def summarize(bin_count: Tensor, bin_confidence: Tensor, bin_correct: Tensor, nll: float, brier: float,
              n: int) -> dict[str, Any]:
    """``ece``, ``nll`` and ``brier`` (means over the ``n`` images) and the reliability ``bins`` behind the ECE."""
    if n == 0:
        return {"ece": math.nan, "nll": math.nan, "brier": math.nan, "bins": [], "n": 0}
    count = bin_count.double()
    gaps = (bin_confidence - bin_correct.double()).abs()
    bins = [
        {"low": i / len(count), "high": (i + 1) / len(count), "count": int(c),
         "confidence": float(conf / c) if c else None, "accuracy": float(hit / c) if c else None}
        for i, (c, conf, hit) in enumerate(zip(count.tolist(), bin_confidence.tolist(), bin_correct.tolist()))
    ]
    return {"ece": float(gaps.sum()) / n, "nll": nll / n, "brier": brier / n, "bins": bins, "n": n}


def evaluate(log_probs: Tensor, target: Tensor, pred: Tensor | None = None) -> dict[str, Any]:
    """ECE, NLL, Brier and bins of one set of probabilities (``pred`` defaults to their argmax)."""
    stats = CalibrationStats()
    stats.update(log_probs, target, log_probs.argmax(dim=1) if pred is None else pred)
    return stats.compute()


# ---------------------------------------------------------------------------------------- the fits
@dataclass(frozen=True)
class Calibration:
    """A fitted map from a classifier's logits (and calls) to ``p(c|x)``, with what it was fitted on.

    Attributes:
        method: ``temperature`` or ``calls`` (Platt scaling of ``log(calls)`` for the prediction).
        temperature: divides the logits (also spreads the rest of the mass under ``calls``).
        platt: ``(a, b)`` of ``sigmoid(a * log(calls) + b)``; None unless fitted.
        fitted_on: provenance of the fit: the run it came from (model, checkpoint, strategy, scoring,
            dataset, split), the number of images and the metrics before and after on them.
    """

    method: Literal["temperature", "calls"] = "temperature"
    temperature: float = 1.0
    platt: tuple[float, float] | None = None
    fitted_on: dict[str, Any] = field(default_factory=dict)
    version: int = CALIBRATION_VERSION

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"calibration method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if not self.temperature > 0:
            raise ValueError(f"calibration temperature must be > 0, got {self.temperature}")
        if self.method == "calls" and self.platt is None:
            raise ValueError("calibration method 'calls' needs the Platt coefficients (platt: [a, b])")

    def log_probs(self, logits: Tensor, calls: Tensor | None = None, pred: Tensor | None = None) -> Tensor:
        """``(B, K)`` calibrated ``log p(c|x)`` from label-space logits and per-image calls.

        ``calls`` puts its Platt probability on the classifier's prediction ``pred`` ``(B,)`` (default: the
        logits' argmax). Give the prediction where a strategy ranks by another statistic than the logits'
        (Racing's standardised errors): the fit estimated how often *that* class is right. The rest of the
        mass goes to the other classes by their tempered logits, evenly where none of them has a finite one.
        """
        logits = logits.double()
        scaled = torch.log_softmax(logits / self.temperature, dim=1)
        if self.method == "temperature":
            return scaled.float()
        if calls is None:
            raise ValueError("calibration method 'calls' needs the number of calls per image")
        if logits.shape[1] == 1:
            return torch.zeros_like(logits).float()
        a, b = self.platt
        z = a * torch.log(calls.double().clamp(min=1)).to(logits.device) + b
        pred = logits.argmax(dim=1, keepdim=True) if pred is None else pred.view(-1, 1).to(logits.device)
        log_right = torch.nn.functional.logsigmoid(z).unsqueeze(1)
        log_wrong = torch.nn.functional.logsigmoid(-z).unsqueeze(1)
        others = (logits / self.temperature).scatter(1, pred, -math.inf)
        # a row whose other classes were never scored (a prefilter's one proposal): share the rest evenly
        unscored = torch.isneginf(others).all(dim=1, keepdim=True)
        others = torch.where(unscored, torch.zeros_like(others), others).scatter(1, pred, -math.inf)
        rest = log_wrong + torch.log_softmax(others, dim=1)
        return rest.scatter(1, pred, log_right).float()

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def fit_temperature(logits: Tensor, target: Tensor) -> float:
    """The ``T`` minimising the mean NLL of ``softmax(logits / T)`` (bounded search over log T).

    Images whose target has logit ``-inf`` (never scored, e.g. outside a prefilter's proposals) cost
    the same at every ``T`` and are left out of the fit.
    """
    from scipy.optimize import minimize_scalar

    logits = logits.double()
    target = target.long()
    keep = torch.isfinite(logits.gather(1, target.view(-1, 1)).squeeze(1))
    logits, target = logits[keep], target[keep]
    if len(target) == 0:
        raise ValueError("fit_temperature: no image whose target class was scored")

    def nll(log_t: float) -> float:
        lp = torch.log_softmax(logits / math.exp(log_t), dim=1)
        return float(-lp.gather(1, target.view(-1, 1)).clamp(min=LOG_FLOOR).mean())

    # Logit gaps span from about 1e-3 nats (a timm net's near ties) to 1e5 (ELBO gaps of a large image).
    res = minimize_scalar(nll, bounds=(-12.0, 16.0), method="bounded", options={"xatol": 1e-6})
    return float(math.exp(res.x))


def fit_platt(feature: Tensor, correct: Tensor) -> tuple[float, float]:
    """``(a, b)`` of ``P(correct) = sigmoid(a * feature + b)`` by Platt's method (1999): maximum likelihood
    on the smoothed targets ``(N+ + 1) / (N+ + 2)`` and ``1 / (N- + 2)``, which keeps the fit finite when
    every image is right."""
    from scipy.optimize import minimize

    x = feature.double().cpu().numpy()
    y = correct.bool().cpu().numpy()
    if len(x) < 2 or np.ptp(x) == 0:
        raise ValueError(
            "fit_platt: the calls per image do not vary on the calibration images, so they carry no "
            "confidence signal (use a pruning strategy such as PairedTTest, or method temperature)"
        )
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    t = np.where(y, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))
    mu, sd = x.mean(), x.std()
    z = (x - mu) / sd

    def loss(p: np.ndarray) -> tuple[float, np.ndarray]:
        s = p[0] * z + p[1]
        ls_pos, ls_neg = -np.logaddexp(0, -s), -np.logaddexp(0, s)
        value = -(t * ls_pos + (1 - t) * ls_neg).sum()
        d = 1 / (1 + np.exp(-s)) - t
        return float(value), np.array([(d * z).sum(), d.sum()])

    res = minimize(loss, np.zeros(2), jac=True, method="BFGS")
    a_z, b_z = res.x
    return float(a_z / sd), float(b_z - a_z * mu / sd)


# ---------------------------------------------------------------------------------------- files
def read_calibration(path: str | Path, option: str = "model.init_args.calibration") -> Calibration:
    """A calibration file written by ``diffclf calibrate``; one clear line when it is not one."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{option} {p}: no such calibration file (write one with `diffclf calibrate`)")
    try:
        data = json.loads(p.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{option} {p}: not a JSON file ({err.msg})") from None
    if not isinstance(data, dict) or data.get("version") != CALIBRATION_VERSION or "temperature" not in data:
        raise ValueError(f"{option} {p}: not a diffclf calibration file (version {CALIBRATION_VERSION})")
    platt = data.get("platt")
    return Calibration(
        method=data.get("method", "temperature"), temperature=float(data["temperature"]),
        platt=tuple(platt) if platt is not None else None, fitted_on=dict(data.get("fitted_on") or {}),
    )


def write_reliability_diagram(bins: list[dict[str, Any]], path: str | Path, title: str) -> Path:
    """Accuracy against confidence per bin (the gap to the diagonal is the ECE's), counts beneath."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(4.5, 5.5), sharex=True,
                                      gridspec_kw={"height_ratios": [3, 1]})
    width = 1.0 / max(len(bins), 1)
    used = [b for b in bins if b["count"]]
    top.bar([b["low"] for b in used], [b["accuracy"] for b in used], width=width, align="edge",
            edgecolor="black", color="#4c72b0", label="accuracy")
    top.bar([b["low"] for b in used], [abs(b["confidence"] - b["accuracy"]) for b in used], width=width,
            bottom=[min(b["confidence"], b["accuracy"]) for b in used], align="edge", color="#dd8452",
            alpha=0.5, hatch="//", edgecolor="#c44e52", label="gap to confidence")
    top.plot([0, 1], [0, 1], "k--", lw=1)
    top.set(ylabel="accuracy", xlim=(0, 1), ylim=(0, 1), title=title)
    top.legend(loc="upper left", fontsize=8)
    bottom.bar([b["low"] for b in bins], [b["count"] for b in bins], width=width, align="edge", color="gray")
    bottom.set(xlabel="confidence of the prediction", ylabel="images")
    bottom.set_yscale("symlog")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
