"""What every selection strategy takes and returns (plain torch, no Lightning).

A strategy decides how to spend denoiser evaluations: which candidate classes of each image get
scored on how many draws. It returns a :class:`Classification` over the candidates it was given,
so callers (the LightningModule, the bench, a prefilter around it) never need to know which
strategy ran.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch
from torch import Tensor

from diffclf.diffusion.scoring import Scorer, ScoreTable


@dataclass
class Classification:
    """A strategy's result for a batch, over each image's candidate classes.

    Attributes:
        candidates: ``(B, M)`` long model class ids.
        mean_error: ``(B, M)`` fp32 mean error over the draws a class got; NaN where never scored.
        num_draws: ``(B, M)`` long draws each class was scored on.
        forwards: ``(B,)`` long denoiser evaluations spent per image.
        stage: ``(B, M)`` float, how far a class got (higher survived longer); ``-inf`` for classes
            that are not ranked at all. Default: 0 for scored classes, ``-inf`` otherwise.
        tiebreak: ``(B, M)`` float order within a stage, higher is better. Default ``-mean_error``.
        errors: ``(B, M, D)`` fp32 per-draw errors (NaN where not scored), when the strategy kept them:
            :meth:`logits` then compares every class with the prediction on the draws they share.
        pred: ``(B,)`` long model id of the best-ranked class (computed).
    """

    candidates: Tensor
    mean_error: Tensor
    num_draws: Tensor
    forwards: Tensor
    stage: Tensor | None = None
    tiebreak: Tensor | None = None
    errors: Tensor | None = None
    pred: Tensor = field(init=False)

    def __post_init__(self) -> None:
        if self.stage is None:
            self.stage = torch.where(
                self.num_draws > 0,
                torch.zeros_like(self.mean_error),
                torch.full_like(self.mean_error, -math.inf),
            )
        if self.tiebreak is None:
            self.tiebreak = -self.mean_error
        self.pred = self.candidates.gather(1, self.rank_scores().argmax(dim=1, keepdim=True)).squeeze(1)

    def rank_scores(self) -> Tensor:
        """``(B, M)`` ranking scores, higher is better.

        A class that survived longer ranks above any class eliminated earlier (mean errors over
        different numbers of draws are not comparable across stages); within a stage the tiebreak
        (lower mean error) decides. Unranked classes get ``-inf``. The scores are ranks (``M`` for
        the best, ``1`` for the worst ranked), so they also combine by ``max`` across model ids.
        """
        stage = self.stage
        key = torch.where(
            torch.isnan(self.tiebreak), torch.full_like(self.tiebreak, -math.inf), self.tiebreak
        )
        order = torch.sort(key, dim=1, descending=True, stable=True).indices
        order = order.gather(
            1, torch.sort(stage.gather(1, order), dim=1, descending=True, stable=True).indices
        )
        M = order.shape[1]
        ranks = torch.arange(M, 0, -1, device=order.device, dtype=torch.float32).expand_as(order)
        scores = torch.empty_like(ranks).scatter_(1, order, ranks)
        return torch.where(torch.isneginf(stage), torch.full_like(scores, -math.inf), scores)

    def logits(self) -> Tensor:
        """``(B, M)`` fp32 ``-(err_c - err_pred)``: each class's mean error gap to the prediction, measured
        on the draws the two share; ``-inf`` for classes never scored, 0 for the prediction.

        Successive elimination and t-test pruning score survivors on more draws than the classes they
        dropped, so mean errors over different draw sets are not comparable (a class dropped after 50
        draws at small t would look as good as the winner's mean over 1000). The winner was scored on
        every draw any class got, so each class is compared with it on the draws they share: a paired
        estimate of the same expected gap, whatever the class's number of draws. Without per-draw
        errors (a hand-built result) it is ``-(mean_error - min mean_error)``.
        """
        if self.errors is None:
            gap = self.mean_error - torch.nan_to_num(self.mean_error, nan=math.inf).amin(dim=1, keepdim=True)
        else:
            pos = (self.candidates == self.pred.unsqueeze(1)).float().argmax(dim=1)
            ref = self.errors.gather(1, pos.view(-1, 1, 1).expand(-1, 1, self.errors.shape[2]))
            diff = self.errors - ref  # NaN wherever either was not scored
            shared = (~torch.isnan(diff)).sum(dim=-1)
            gap = torch.nansum(diff, dim=-1) / shared.clamp(min=1)
            gap = torch.where(shared > 0, gap, torch.full_like(gap, math.nan))
        return torch.where(torch.isnan(gap), torch.full_like(gap, -math.inf), -gap.float())

    def probs(self, temperature: float = 1.0) -> Tensor:
        """``(B, M)`` ``softmax(logits / temperature)`` (see :meth:`logits`); 0 for unscored classes."""
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        return torch.softmax(self.logits().double() / temperature, dim=1).float()

    def top5(self) -> Tensor:
        """``(B, min(5, M))`` model ids of the best-ranked classes, best first."""
        k = min(5, self.candidates.shape[1])
        return self.candidates.gather(1, self.rank_scores().topk(k, dim=1).indices)


def from_table(table: ScoreTable, stage: Tensor | None = None, tiebreak: Tensor | None = None) -> Classification:
    """A :class:`Classification` straight from a score table (``stage`` and ``tiebreak`` as in
    :class:`Classification`)."""
    counts = table.counts
    if stage is not None:
        stage = torch.where(counts > 0, stage.float(), torch.full_like(stage.float(), -math.inf))
    return Classification(
        table.candidates, table.mean_error(), counts, table.forwards.clone(), stage=stage, tiebreak=tiebreak,
        errors=table.errors[:, :, : max(table.horizon, 1)],
    )


def slot_runs(slots: list[int]) -> list[tuple[int, int]]:
    """``slots`` as ``[start, stop)`` runs of consecutive draws: one scorer call (and host sync) per run."""
    runs: list[tuple[int, int]] = []
    for k in slots:
        if runs and runs[-1][1] == k:
            runs[-1] = (runs[-1][0], k + 1)
        else:
            runs.append((k, k + 1))
    return runs


VARIANCES = ("pair", "pooled")


def pooled_rival_variance(var: Tensor, rivals: Tensor) -> Tensor:
    """``(B, M)``: every entry replaced by its image's (lower) median of ``var`` over ``rivals`` ``(B, M)``.

    The paired-difference variances of one image's rivals of its leader share that image's draws and noise
    level; their median is a steadier standard error than any one pair's few-draw variance (see
    :class:`~diffclf.strategies.Racing`). An image without rivals gets NaN, which drops nothing.
    """
    pooled = var.masked_fill(~rivals, math.nan).nanmedian(dim=1).values
    return pooled.unsqueeze(1).expand_as(var)


STANDARD_ERRORS = ("iid", "stratified")


def successive_difference_variance(diff: Tensor, timesteps: Tensor) -> Tensor:
    """``(B, M)`` per-draw variance of ``diff`` ``(B, M, n)`` from its successive differences in timestep order.

    Why: the draws of the ``even`` and ``stratified`` designs are spread over ``[0, T)`` (every prefix of the
    scoring order is), so their mean is a systematic sample whose error comes only from the variation *within*
    a neighbourhood of timesteps; the smooth change of the class gap with ``t`` cancels. The ordinary sample
    variance counts that change as noise (a third of it for Fashion-MNIST's decisive pairs, 60% for digits').
    Von Neumann's successive-difference estimator, ``sum (d_(i+1) - d_(i))^2 / (2 (n - 1))`` over the draws
    sorted by ``timesteps`` ``(B, n)``, estimates the local variance instead (Cochran, *Sampling Techniques*,
    1977, sec. 8.11; Wolter, *Introduction to Variance Estimation*, 2007, ch. 8). Two draws give the ordinary
    variance; ties in ``t`` keep their draw order.
    """
    n = diff.shape[-1]
    perm = timesteps.to(diff.device).argsort(dim=-1, stable=True)
    d = diff.gather(-1, perm.unsqueeze(1).expand_as(diff))
    return (d[..., 1:] - d[..., :-1]).square().sum(dim=-1) / (2 * (n - 1))


def antithetic_units(values: Tensor, timesteps: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """``values`` ``(..., n)`` (``n`` even) with antithetic partners ``2m, 2m + 1`` averaged into ``(..., n / 2)``
    units, and each unit's timestep (its first draw's; ``timesteps`` ``(B, n)``).

    Why: the halves of an antithetic pair (``eps``, ``-eps``) are negatively correlated, so the variance of a
    mean over pairs is the variance of the pair means over their number, not the per-draw variance over the
    draws (which overstates it; Hammersley & Morton 1956). The mean itself is unchanged.
    """
    n = values.shape[-1]
    if n % 2:
        raise ValueError(f"antithetic draws come in pairs; got an odd number of draws ({n})")
    units = values.unflatten(-1, (n // 2, 2)).mean(dim=-1)
    return units, None if timesteps is None else timesteps.unflatten(-1, (n // 2, 2))[..., 0]


def check_antithetic(owner: str, scorer: Scorer, min_trials: int, round_size: int, cap: int) -> None:
    """:func:`check_pair_counts` when ``scorer`` draws antithetic pairs."""
    if scorer.antithetic:
        check_pair_counts(owner, min_trials, round_size, cap)


def check_pair_counts(owner: str, min_trials: int, round_size: int, cap: int) -> None:
    """One line when a sequential test on antithetic draws would stop inside a pair: its tests count whole
    pairs, so ``min_trials`` (at least two pairs), ``round_size`` and the draw cap must be even."""
    if min_trials < 4 or min_trials % 2 or round_size % 2 or cap % 2:
        raise ValueError(
            f"{owner} on antithetic draws tests whole pairs: min_trials (>= 4), round_size and trial_cap (or "
            f"max_trials) must be even; got {min_trials}, {round_size} and {cap}"
        )


def check_pooling(
    owner: str, variance: str, trial_cap: int | None, min_trials: int, max_trials: int, standard_error: str = "iid"
) -> None:
    """One line naming ``owner``'s bad ``variance``, ``standard_error`` or ``trial_cap`` (the options shared by the
    sequential tests)."""
    if variance not in VARIANCES:
        raise ValueError(f"{owner} variance must be one of {', '.join(VARIANCES)}; got {variance!r}")
    if standard_error not in STANDARD_ERRORS:
        raise ValueError(
            f"{owner} standard_error must be one of {', '.join(STANDARD_ERRORS)}; got {standard_error!r}"
        )
    if trial_cap is not None and not min_trials <= trial_cap <= max_trials:
        raise ValueError(
            f"{owner} trial_cap must lie in [min_trials={min_trials}, max_trials={max_trials}] (or be null), "
            f"got {trial_cap}"
        )


def check_spread(owner: str, standard_error: str, scorer: Scorer) -> None:
    """One line when a ``stratified`` standard error meets i.i.d. timesteps (``uniform``), where the gap's spread
    over ``t`` is real noise and the successive-difference variance would be too small."""
    if standard_error == "stratified" and scorer.design == "uniform":
        raise ValueError(
            f"{owner} standard_error=stratified needs draws spread over t (scoring design even or stratified); "
            "with design uniform use standard_error=iid"
        )


class Strategy(ABC):
    """How to spend denoiser evaluations to classify a batch.

    Subclasses take plain typed constructor arguments so jsonargparse builds them from YAML
    (``class_path: diffclf.strategies.Adaptive``); public attributes are those arguments (they
    describe the strategy in results files), internal state starts with an underscore.
    """

    #: whether the strategy asks for its draws in antithetic pairs (the task then builds an antithetic scorer)
    antithetic: bool = False

    @property
    @abstractmethod
    def max_draws(self) -> int:
        """Most draws any class of an image can be scored on (sizes the scorer)."""

    @property
    def draw_order(self) -> list[int] | None:
        """Positions of the ``max_draws``-point grid in the order this strategy scores them (the scorer's
        ``order``), or None for the scorer's default bit-reversed order, whose every prefix is spread."""
        return None

    @abstractmethod
    def classify(
        self,
        scorer: Scorer,
        x: Tensor,
        index: Tensor,
        candidates: Tensor | None = None,
        images: Tensor | None = None,
    ) -> Classification:
        """Classify ``x`` ``(B, C, H, W)`` (what the denoiser sees) with dataset indices ``index`` ``(B,)``.

        ``candidates``: ``(M,)`` or ``(B, M)`` model class ids (None = all ``scorer.num_classes``);
        ``images``: the pixel images for a prefilter (default ``x``).
        """

    def _check_scorer(self, scorer: Scorer) -> None:
        if scorer.max_draws < self.max_draws:
            raise ValueError(
                f"{type(self).__name__} needs {self.max_draws} draws per image but the scorer has "
                f"max_draws={scorer.max_draws}"
            )
        if self.antithetic and not scorer.antithetic:
            raise ValueError(
                f"{type(self).__name__} was set for antithetic draws; build the scorer with antithetic=True"
            )
        order = self.draw_order
        if order is not None and not scorer.has_order(order):
            raise ValueError(
                f"{type(self).__name__} scores the grid in its own order (draw_order); build the scorer "
                "with order=strategy.draw_order"
            )
