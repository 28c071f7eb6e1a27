"""Metrics of the compositional evaluations: Winoground, attribute binding, cue-conflict shape bias.

Every decision here is strict: a model that gives two candidates the same score (or a NaN) has not
told them apart, so a tie counts as wrong. That matters for these tasks in particular: a model that
ignores word order gives Winoground's two captions identical scores, and with ``>=`` it would score
100% on them; a diffusion classifier on shared noise can tie exactly, too.

Sources of the definitions:
- Winoground text / image / group scores: Thrush et al. 2022, Sec. 3.3, and their dataset card's
  ``s(c_i, i_j)`` formulation (``huggingface.co/datasets/facebook/winoground``, README "Paper FAQ");
  reported per ``collapsed_tag`` (Object / Relation / Both) as Li et al. 2023, Table 4.
- Attribute binding: Clark & Jaini 2023, App. D (after Lewis et al. 2022): accuracy on a binary task
  and a two-sided binomial test against chance (0.5) at p < 0.01.
- Shape bias: Geirhos et al. 2019; computed as ``modelvshuman/plotting/analyses.py`` ``ShapeBias``
  (bethgelab/model-vs-human), the 16-class decision as ``modelvshuman/datasets/decision_mappings.py``
  ``ImageNetProbabilitiesTo16ClassesMapping`` (mean of a category's ImageNet-class probabilities).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from scipy.stats import binomtest
from torch import Tensor

from diffclf.metrics.accuracy import clopper_pearson

#: Winoground's three scores, in the order the papers report them.
WINOGROUND_SCORES = ("text", "image", "group")
#: Clark & Jaini's significance level for the binding tasks (two-sided binomial test against 0.5).
BINDING_ALPHA = 0.01


@dataclass(frozen=True)
class Rate:
    """``correct`` of ``total`` with its exact (Clopper-Pearson) interval at ``level``."""

    correct: int
    total: int
    accuracy: float
    low: float
    high: float
    level: float

    @classmethod
    def of(cls, correct: Tensor | np.ndarray, level: float = 0.95) -> Rate:
        """The rate of a boolean vector (one entry per example)."""
        flags = _as_bool(correct)
        k, n = int(flags.sum()), int(flags.size)
        low, high = clopper_pearson(k, n, level)
        return cls(k, n, k / n, low, high, level)

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def _as_bool(x: Tensor | np.ndarray | Sequence[bool]) -> np.ndarray:
    arr = x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)
    if arr.ndim != 1:
        raise ValueError(f"expected one flag per example (a 1-D array), got shape {arr.shape}")
    if arr.dtype != np.bool_:
        raise ValueError(f"expected booleans (correct or not), got dtype {arr.dtype}")
    return arr


# ---------------------------------------------------------------------------------------- Winoground
@dataclass(frozen=True)
class WinogroundCorrect:
    """Per example: is the text, image and group score 1 (boolean ``(N,)`` tensors)."""

    text: Tensor
    image: Tensor
    group: Tensor


def winoground_scores(s: Tensor) -> WinogroundCorrect:
    """Per-example Winoground decisions from ``s[n, i, j]`` = match of image ``i`` with caption ``j``.

    Thrush et al. 2022, Sec. 3.3 (their ``s(c_j, i_i)``): text correct iff each image prefers its own
    caption, ``s[0,0] > s[0,1]`` and ``s[1,1] > s[1,0]``; image correct iff each caption prefers its
    own image, ``s[0,0] > s[1,0]`` and ``s[1,1] > s[0,1]``; group correct iff both. Strict ``>``: ties
    and NaNs are wrong (module docstring). Higher means a better match (pass ``-error`` for a
    denoising error).
    """
    s = torch.as_tensor(s)
    if s.ndim != 3 or s.shape[1:] != (2, 2):
        raise ValueError(f"Winoground scores must have shape (N, 2, 2) [example, image, caption], got {tuple(s.shape)}")
    text = (s[:, 0, 0] > s[:, 0, 1]) & (s[:, 1, 1] > s[:, 1, 0])
    image = (s[:, 0, 0] > s[:, 1, 0]) & (s[:, 1, 1] > s[:, 0, 1])
    return WinogroundCorrect(text=text, image=image, group=text & image)


def winoground_summary(s: Tensor, tags: Sequence[str] | None = None,
                       level: float = 0.95) -> dict[str, dict[str, Rate]]:
    """Text / image / group rates over all examples (``"all"``) and per tag (Li et al. 2023 report
    Winoground per ``collapsed_tag``: Object, Relation, Both), each with its exact interval."""
    correct = winoground_scores(s)
    n = correct.text.shape[0]
    if n == 0:
        raise ValueError("Winoground summary of no examples")
    groups: dict[str, np.ndarray] = {"all": np.ones(n, dtype=bool)}
    if tags is not None:
        if len(tags) != n:
            raise ValueError(f"{len(tags)} tags for {n} examples")
        tag_arr = np.asarray([str(t) for t in tags])
        if "all" in set(tag_arr):
            raise ValueError("a tag may not be called 'all' (the summary's key for every example)")
        groups.update({t: tag_arr == t for t in sorted(set(tag_arr))})
    flags = {k: getattr(correct, k).cpu().numpy() for k in WINOGROUND_SCORES}
    return {g: {k: Rate.of(flags[k][mask], level) for k in WINOGROUND_SCORES} for g, mask in groups.items()}


# ----------------------------------------------------------------------------------- attribute binding
@dataclass(frozen=True)
class BindingSummary:
    """A binary task's accuracy, exact interval, and two-sided binomial test against chance."""

    rate: Rate
    p_value: float
    significant: bool
    alpha: float

    def as_dict(self) -> dict[str, float | int | bool]:
        return {**self.rate.as_dict(), "p_value": self.p_value, "significant": self.significant, "alpha": self.alpha}


def pairwise_correct(positive: Tensor, negative: Tensor) -> Tensor:
    """Per example: does the true description score strictly higher than the false one (ties wrong)."""
    positive, negative = torch.as_tensor(positive), torch.as_tensor(negative)
    if positive.shape != negative.shape or positive.ndim != 1:
        raise ValueError(f"positive and negative scores must be equal 1-D shapes, got {tuple(positive.shape)} "
                         f"and {tuple(negative.shape)}")
    return positive > negative


def binding_summary(correct: Tensor | np.ndarray, level: float = 0.95, alpha: float = BINDING_ALPHA) -> BindingSummary:
    """Accuracy of one binding task with Clark & Jaini's test (App. D): exact two-sided binomial test of
    ``k`` of ``n`` against p = 0.5, significant at ``p < alpha`` (0.01)."""
    rate = Rate.of(_as_bool(correct), level)
    p = float(binomtest(rate.correct, rate.total, 0.5, alternative="two-sided").pvalue)
    return BindingSummary(rate=rate, p_value=p, significant=p < alpha, alpha=alpha)


# ---------------------------------------------------------------------------------------- shape bias
@dataclass(frozen=True)
class ShapeBias:
    """Geirhos et al.'s cue-conflict result; ``shape_bias`` is NaN when no decision matched either cue.

    ``bias_low`` / ``bias_high``: the exact (Clopper-Pearson) interval of the shape bias, a rate of
    ``shape_correct`` among the ``shape_correct + texture_correct`` cue-matching decisions; ``p_value``: the
    two-sided binomial test of that rate against 0.5 (no preference for either cue)."""

    total: int
    shape_correct: int
    texture_correct: int
    shape_accuracy: float
    texture_accuracy: float
    shape_bias: float
    bias_low: float = math.nan
    bias_high: float = math.nan
    p_value: float = math.nan
    level: float = 0.95

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def strict_argmax(scores: Tensor) -> Tensor:
    """Row-wise argmax of ``(N, K)`` scores, ``-1`` where the maximum is shared or a row holds NaN: a
    tied decision names no class, so it matches neither cue in :func:`shape_bias`."""
    scores = torch.as_tensor(scores)
    if scores.ndim != 2:
        raise ValueError(f"scores must be (N, K), got shape {tuple(scores.shape)}")
    best = scores.amax(dim=1, keepdim=True)
    tied = (scores == best).sum(dim=1) != 1
    invalid = tied | torch.isnan(scores).any(dim=1)
    return torch.where(invalid, torch.full_like(scores[:, 0], -1, dtype=torch.long), scores.argmax(dim=1))


def mean_probability_scores(logits: Tensor, model_classes: Sequence[Sequence[int]]) -> Tensor:
    """``(N, M)`` model logits → ``(N, K)`` log of each class's *mean* softmax probability over its ids.

    model-vs-human's 16-class decision (``ImageNetProbabilitiesTo16ClassesMapping``, default
    ``aggregation_function=np.mean``) averages the softmax probabilities of a category's ImageNet
    classes. Not the sum that ``label_space_logits`` takes nor the max of ``label_space_scores``: with
    109 dog classes against 1 knife class the rules rank differently. Unscored model ids may be
    ``-inf`` (probability 0) provided each group has a finite one; the softmax's normaliser is common
    to a row, so the ranking equals that of a softmax over the 1000 classes.
    """
    logits = torch.as_tensor(logits)
    if logits.ndim != 2:
        raise ValueError(f"logits must be (N, M), got shape {tuple(logits.shape)}")
    logp = torch.log_softmax(logits.double(), dim=1)
    cols = []
    for ids in model_classes:
        index = torch.as_tensor(list(ids), dtype=torch.long, device=logits.device)
        if index.numel() == 0:
            raise ValueError("a class with no model ids has no mean probability")
        cols.append(torch.logsumexp(logp[:, index], dim=1) - math.log(index.numel()))
    return torch.stack(cols, dim=1)


def shape_bias(pred: Tensor, shape: Tensor, texture: Tensor, level: float = 0.95) -> ShapeBias:
    """Shape and texture accuracy and shape bias = shape-correct / (shape-correct + texture-correct).

    ``modelvshuman/plotting/analyses.py`` ``ShapeBias``. ``pred`` holds one decided class per image,
    ``-1`` for no decision (:func:`strict_argmax` of a tie), which counts for neither cue. Images whose
    shape equals their texture carry no conflict and are refused (the data set drops them: 1280 → 1200).
    Accuracies here divide by these images only; model-vs-human's ``fraction-correct-*`` divide by
    all 1280 rows, which leaves the shape bias itself unchanged.
    """
    pred, shape, texture = (torch.as_tensor(x).long().reshape(-1) for x in (pred, shape, texture))
    if not pred.shape == shape.shape == texture.shape:
        raise ValueError(f"pred, shape and texture must have one entry per image, got {tuple(pred.shape)}, "
                         f"{tuple(shape.shape)}, {tuple(texture.shape)}")
    if pred.numel() == 0:
        raise ValueError("shape bias of no images")
    same = int((shape == texture).sum())
    if same:
        raise ValueError(f"{same} image(s) have shape == texture (no cue conflict); drop them before scoring")
    n = pred.numel()
    k_shape, k_texture = int((pred == shape).sum()), int((pred == texture).sum())
    decided = k_shape + k_texture
    if not decided:
        return ShapeBias(n, k_shape, k_texture, k_shape / n, k_texture / n, math.nan, level=level)
    low, high = clopper_pearson(k_shape, decided, level)
    p = float(binomtest(k_shape, decided, 0.5, alternative="two-sided").pvalue)
    return ShapeBias(n, k_shape, k_texture, k_shape / n, k_texture / n, k_shape / decided, low, high, p, level)
