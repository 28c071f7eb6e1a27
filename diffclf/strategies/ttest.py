"""Paired t-test pruning (Clark & Jaini): stop scoring a class once it is significantly worse
than the best."""

from __future__ import annotations

import math
from typing import Literal

import torch
from scipy import stats
from torch import Tensor

from diffclf.diffusion.scoring import Scorer
from diffclf.strategies.base import (
    Classification,
    Strategy,
    antithetic_units,
    check_antithetic,
    check_pair_counts,
    check_pooling,
    check_spread,
    from_table,
    pooled_rival_variance,
    successive_difference_variance,
)

_CHUNK_ELEMENTS = 1 << 24
ALTERNATIVES = ("one-sided", "two-sided")


def paired_moments(a: Tensor, b: Tensor, timesteps: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Mean and ``ddof=1`` variance of ``a - b`` over the last dimension, in float64; with ``timesteps``
    ``(B, n)`` the variance is the successive-difference one in timestep order
    (:func:`~diffclf.strategies.base.successive_difference_variance`)."""
    d = a.double() - b.double()
    if timesteps is not None:
        return d.mean(dim=-1), successive_difference_variance(d, timesteps)
    return d.mean(dim=-1), d.var(dim=-1, correction=1)


def paired_t_statistic(a: Tensor, b: Tensor) -> Tensor:
    """Paired t statistic of ``a - b`` over the last dimension, as ``scipy.stats.ttest_rel`` computes it.

    ``t = mean(d) / sqrt(var(d, ddof=1) / n)`` in float64: ``+inf`` for a constant positive
    difference, NaN for identical draws (0/0; scipy's p-value is then NaN and nothing is dropped).
    """
    mean, var = paired_moments(a, b)
    return mean / torch.sqrt(var / a.shape[-1])


def critical_t(alpha: float, n: int, alternative: str = "two-sided") -> float:
    """Critical value of a paired t-test on ``n`` pairs (``n - 1`` dof) for a class worse than the best.

    ``one-sided`` (``H1``: mean difference > 0): ``p < alpha`` exactly when ``t > t.isf(alpha)``.
    ``two-sided`` (``H1``: mean difference != 0, ``p = 2 sf(|t|)``): ``p < alpha`` exactly when
    ``|t| > t.isf(alpha / 2)``; only ``t > t.isf(alpha / 2)`` drops a class (see :class:`PairedTTest`).
    ``t.isf(a)`` is ``t.ppf(1 - a)`` without the rounding of ``1 - a``; computed on the host once per
    round so the statistics themselves stay on the device.
    """
    if alternative not in ALTERNATIVES:
        raise ValueError(f"alternative must be one of {', '.join(ALTERNATIVES)}; got {alternative!r}")
    return float(stats.t.isf(alpha if alternative == "one-sided" else alpha / 2, n - 1))


class PairedTTest(Strategy):
    """Rounds of ``round_size`` draws for every remaining class, pruning with paired t-tests.

    Once the remaining classes have ``>= min_trials`` draws, each is tested against the current best
    (lowest mean error) on their shared draws; a class whose errors are larger with ``p < alpha`` is
    dropped. An image stops at one class or at ``max_trials`` draws. The number of forwards spent is
    itself a confidence signal.

    ``alternative`` is the p-value's: ``two-sided`` (the default) is the standard paired t-test,
    ``scipy.stats.ttest_rel``'s default, and what Clark & Jaini's "we run a paired t-test ... and drop
    classes with p < 0.002" reads as: they name no one-sided alternative, so their p is the usual two-sided
    one. It drops a class when ``t > t.isf(alpha / 2)`` (3.396 for 30 draws at 0.002), never for being
    significantly *better* than the best (its mean difference to the best is >= 0, so ``t >= 0``): the
    drops of ``one-sided`` at ``alpha / 2``. ``one-sided`` (``H1``: its errors are larger) drops when
    ``t > t.isf(alpha)`` (3.127 for 30 draws at 0.002), so it prunes sooner; it is what diffclf did before
    the option existed (the recorded ``benchmarks/results/strategies_*`` and ``bench_cpu_*`` t-test runs).

    ``variance="pooled"`` replaces each pair's own variance by the image's (lower) median over its remaining
    rivals of the best (:func:`~diffclf.strategies.base.pooled_rival_variance`; why, in
    :class:`~diffclf.strategies.Racing`), still tested against the ``n - 1`` degrees-of-freedom critical
    value: high while few draws are in, so early drops stay safe, and near 2 once many are. ``trial_cap``
    stops every image at that many draws (the lowest mean then decides) while the grid, and so every
    draw, stays that of ``max_trials``.

    Args:
        alpha: significance level of each test.
        min_trials: draws before the first test (>= 2).
        max_trials: most draws any class gets (the grid size).
        round_size: draws added per round.
        alternative: ``two-sided`` or ``one-sided`` p-values, as above.
        variance: ``pair`` (each class's own paired variance, the standard test) or ``pooled``.
        trial_cap: most draws any class gets, below the grid (None: ``max_trials``).
        standard_error: ``iid`` (the sample variance, the standard test) or ``stratified`` (the
            successive-difference variance in timestep order; why, in :class:`~diffclf.strategies.Racing`).
        antithetic: score the draws in antithetic pairs (the task builds its scorer so).

    On an antithetic scorer the test's units are the pairs ``(eps, -eps)``
    (:func:`~diffclf.strategies.base.antithetic_units`): ``min_trials`` (>= 4), ``round_size`` and the cap must be
    even.
    """

    def __init__(
        self,
        alpha: float = 0.002,
        min_trials: int = 20,
        max_trials: int = 2000,
        round_size: int = 10,
        alternative: Literal["one-sided", "two-sided"] = "two-sided",
        variance: Literal["pair", "pooled"] = "pair",
        trial_cap: int | None = None,
        standard_error: Literal["iid", "stratified"] = "iid",
        antithetic: bool = False,
    ) -> None:
        if not 0.0 < alpha < 0.5:
            raise ValueError(f"PairedTTest alpha must be in (0, 0.5), got {alpha}")
        if min_trials < 2:
            raise ValueError(
                f"PairedTTest min_trials must be >= 2 (a t-test needs two draws), got {min_trials}"
            )
        if max_trials < min_trials:
            raise ValueError(f"PairedTTest max_trials must be >= min_trials={min_trials}, got {max_trials}")
        if round_size < 1:
            raise ValueError(f"PairedTTest round_size must be >= 1, got {round_size}")
        if alternative not in ALTERNATIVES:
            raise ValueError(
                f"PairedTTest alternative must be one of {', '.join(ALTERNATIVES)}; got {alternative!r}"
            )
        check_pooling("PairedTTest", variance, trial_cap, min_trials, max_trials, standard_error)
        self.alpha = float(alpha)
        self.min_trials = int(min_trials)
        self.max_trials = int(max_trials)
        self.round_size = int(round_size)
        self.alternative = alternative
        self.variance = variance
        self.trial_cap = None if trial_cap is None else int(trial_cap)
        self.standard_error = standard_error
        self.antithetic = bool(antithetic)
        if self.antithetic:
            check_pair_counts("PairedTTest", self.min_trials, self.round_size, self.trial_cap or self.max_trials)

    @property
    def max_draws(self) -> int:
        return self.max_trials

    def _drop(
        self, errors: Tensor, remaining: Tensor, n: int, timesteps: Tensor | None = None, pairs: bool = False
    ) -> Tensor:
        """``(B, M)``: classes of ``remaining`` significantly worse than their image's best on ``[0, n)``
        (``timesteps`` ``(B, >= n)``: the draws' timesteps, given for the ``stratified`` standard error;
        ``pairs``: draws ``2m, 2m + 1`` are antithetic partners, and the test's units are the pairs)."""
        errs = errors[:, :, :n]
        ts = None if timesteps is None else timesteps[:, :n]
        if pairs:  # the units of the test are the antithetic pairs
            errs, ts = antithetic_units(errs, ts)
            n = errs.shape[-1]
        mean = errs.mean(dim=-1).masked_fill(~remaining, math.inf)
        best = mean.argmin(dim=1)
        b_err = errs.gather(1, best.view(-1, 1, 1).expand(-1, 1, n))
        crit = critical_t(self.alpha, n, self.alternative)
        B, M = remaining.shape
        step = max(1, _CHUNK_ELEMENTS // max(1, B * n))
        mean = torch.empty(B, M, dtype=torch.float64, device=errors.device)
        var = torch.empty_like(mean)
        for m0 in range(0, M, step):  # chunked over classes to bound the float64 differences' memory
            mean[:, m0 : m0 + step], var[:, m0 : m0 + step] = paired_moments(errs[:, m0 : m0 + step], b_err, ts)
        if self.variance == "pooled":
            var = pooled_rival_variance(var, remaining.scatter(1, best.view(-1, 1), False))
        return remaining & (mean / torch.sqrt(var / n) > crit)

    def classify(
        self,
        scorer: Scorer,
        x: Tensor,
        index: Tensor,
        candidates: Tensor | None = None,
        images: Tensor | None = None,
    ) -> Classification:
        """Rounds until every image is down to one class or at ``trial_cap``; ``stage`` = rounds survived."""
        self._check_scorer(scorer)
        check_spread("PairedTTest", self.standard_error, scorer)
        cap = self.max_trials if self.trial_cap is None else self.trial_cap
        check_antithetic("PairedTTest", scorer, self.min_trials, self.round_size, cap)
        pairs = scorer.antithetic
        table = scorer.new_table(x, candidates)
        B, M = table.candidates.shape
        remaining = torch.ones(B, M, dtype=torch.bool, device=x.device)
        finished = remaining.sum(dim=1) <= 1
        stage = torch.zeros(B, M, device=x.device)
        n, rounds = 0, 0
        steps = scorer.timesteps(index, 0, cap).to(x.device) if self.standard_error == "stratified" else None
        while n < cap:
            stop = min(n + self.round_size, cap)
            active = remaining & ~finished.unsqueeze(1)
            if scorer.score(table, x, index, n, stop, active) == 0:  # its one host sync: all images done
                break
            n, rounds = stop, rounds + 1
            stage = torch.where(active, float(rounds), stage)
            if n >= self.min_trials:
                remaining &= ~self._drop(table.errors, active, n, steps, pairs)
            finished = finished | (remaining.sum(dim=1) <= 1)
        return from_table(table, stage + remaining.float())
