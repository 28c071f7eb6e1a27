"""Racing: sequential elimination on paired, per-timestep standardised error differences.

Why it beats the paired t-test at a tenth of the calls: the raw per-draw error differences between two
classes differ in scale by three orders of magnitude across timesteps (digits: about 0.09 at t = 100-300,
1e-4 at t = 800-900), so a t-test on the raw draws mixes a few large, noisy small-t differences with many
negligible ones and needs tens of draws per class before its variance estimate settles. Dividing each
draw's error by the typical size of a class difference *at its timestep* makes the draws comparable
(variance reduction by standardisation), and scoring the timesteps whose differences carry most signal
per draw first (a fitted priority over the grid) lets most classes go after two or three draws. Both
profiles are fitted on training images (:func:`fit_timestep_profile`); the elimination threshold is
fitted there too (``benchmarks/error_control.py``), so the error rate it controls is an empirical one,
measured on training images, not an anytime-valid guarantee.

Two more levers, for models whose per-draw signal is weak at every timestep (Fashion-MNIST's decisive pairs carry
a third of digits' signal per draw, flat over t, so standardising and reordering buy nothing there):

- **Pooled variance** (``variance="pooled"``). A pair's own variance from 3 draws has 2 degrees of freedom: its
  ratio to the truth is heavy tailed, so a threshold that keeps the winner safe must be high and most classes
  survive the first rounds. All rival differences of one image share its draws and its noise level, so the
  image's (lower) median over its remaining rivals' variances is a far steadier standard error (the median, not the
  mean, so a few far classes with large, noisy differences do not inflate it; their large mean gaps drop them
  anyway). A pair still near the leader once the far classes are gone is tested on its own variance, pooled
  over itself alone.
- **A draw cap** (``trial_cap``). Images whose two best classes stay within the noise after tens of draws are
  near-ties, right about as often as wrong whichever way they go; scoring them to the full grid buys little
  accuracy per forward. ``trial_cap`` stops every image there and lets the lowest mean decide.
- **A stratified standard error** (``standard_error="stratified"``). Every prefix of the scoring order is spread
  over ``t``, so the mean of the scored draws is a systematic sample: the smooth change of a class gap with ``t``
  (a third of the spread of Fashion-MNIST's decisive differences, 60% of digits') cancels in it, yet the sample
  variance counts it as noise. The successive-difference variance in timestep order leaves it out.
- **Two tiers of timesteps** (``timestep_snr`` as a 0/1 priority on raw errors): bins whose class differences are
  a tenth of the largest hardly move the raw mean, so scoring them last changes few answers and spends the early
  draws where the sum is decided. Within a tier the spread order is kept.
- **Antithetic draws** (a scorer with ``antithetic``): partners ``(eps, -eps)`` at neighbouring timesteps are scored
  together and the standard error counts pairs (:func:`~diffclf.strategies.base.antithetic_units`). A pair's mean
  has 0.63x the local variance of two independent draws' on Fashion-MNIST (0.44x on digits), yet the fitted cost
  does not fall there: counting pairs halves the tests' early degrees of freedom and needs four draws before the
  first (``benchmarks/results/error_control/fashion.md``).
- **The t rule** (``critical="t"``): the threshold is the Student-t quantile with ``n - 1`` degrees of freedom at
  ``threshold``'s tail probability, strict while few draws are in; pooled, it is the pooled paired t-test's rule.
- **A known-scale screen** (``screen``, ``screen_scale``): the t rule's critical value after two draws is 12.7 (one
  degree of freedom), so far classes wait three to five draws for their first test: on Fashion-MNIST they took
  half of the pooled t rule's forwards. The screen tests every class from the first draw against a standard
  deviation it does not estimate: the fitted typical size of the decisive class difference at each draw's
  timestep (:func:`fit_timestep_profile`'s scale, from training images). Each draw's difference to the leader is
  divided by it, and a class goes once ``sqrt(n)`` times their mean exceeds ``screen``: a z-test whose variance
  is known, so it needs no degrees of freedom. The scale is a root mean square over decisive pairs, mean
  included, so it overstates the noise of a close pair and the screen leaves close calls to the t rule. On
  Fashion-MNIST's test images (``benchmarks/results/error_control/fashion.md``) it cut the t-rule rows'
  forwards by 8-31% (more at lower ``screen``; alpha 0.02, screen 2.5: 5.66% of exhaustive-250's to 4.79%,
  the same accuracy).

Racing on paired differences with common random numbers follows Maron & Moore's Hoeffding races and the
successive-elimination bandits (Even-Dar, Mannor & Mansour 2006), with the diffusion classifier's shared
(t, eps) draws as the common random numbers (Li et al. 2023; Clark & Jaini 2023's paired t-test).
"""

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
    slot_runs,
    successive_difference_variance,
)


def _bins(timesteps: Tensor, num_bins: int, num_timesteps: int) -> Tensor:
    """Bin ``j`` of each timestep: ``t`` in ``[j T / J, (j + 1) T / J)``."""
    return (timesteps.double() * num_bins / num_timesteps).long().clamp(0, num_bins - 1)


def fit_timestep_profile(
    errors: Tensor, timesteps: Tensor, num_bins: int = 10, num_timesteps: int = 1000
) -> tuple[list[float], list[float]]:
    """Per-timestep-bin scale and signal-to-noise ratio of the decisive class difference, from an
    exhaustive table of *training* images.

    ``errors`` ``(N, M, D)``: every per-draw error of ``N`` images over ``M`` candidates (no NaN);
    ``timesteps`` ``(D,)`` or ``(N, D)``: the timestep of each draw. For each image the decisive pair is its
    exhaustive winner and runner-up; ``d`` = runner-up error - winner error per draw. Returns, per bin,
    the root mean square of ``d`` (its scale: the divisor that standardises a draw) and ``mean(d) / std(d)``
    pooled over the bin's draws (the signal one draw carries: the scoring priority). Bins without draws
    get scale 1 and SNR 0 (scored last).
    """
    if errors.dim() != 3 or errors.shape[1] < 2:
        raise ValueError(f"errors must be (N, M >= 2, D), got shape {tuple(errors.shape)}")
    if torch.isnan(errors).any():
        raise ValueError("fit_timestep_profile needs an exhaustive table (every class on every draw, no NaN)")
    N, _, D = errors.shape
    ts = timesteps.expand(N, D) if timesteps.dim() == 1 else timesteps
    e = errors.double()
    rank = e.mean(dim=-1).argsort(dim=1)
    rows = torch.arange(N)
    d = e[rows, rank[:, 1]] - e[rows, rank[:, 0]]  # (N, D)
    bins = _bins(ts, num_bins, num_timesteps)
    scale, snr = [], []
    for j in range(num_bins):
        dj = d[bins == j]
        if dj.numel() < 2:
            scale.append(1.0)
            snr.append(0.0)
            continue
        rms = float(dj.square().mean().sqrt())
        std = float(dj.std())
        scale.append(rms if rms > 0 else 1.0)
        snr.append(float(dj.mean()) / std if std > 0 else 0.0)
    return scale, snr


class Racing(Strategy):
    """Rounds of draws for every remaining class; a class goes once its standardised paired difference
    to the leader is ``threshold`` standard errors above zero.

    After ``n >= min_trials`` draws, each draw's error is divided by ``timestep_scale`` at its timestep
    (none: raw errors), the leader is the remaining class with the lowest mean standardised error, and a
    class ``c`` is dropped when ``mean(d) / (std(d) / sqrt(n)) > threshold`` for its paired differences
    ``d`` to the leader on the ``n`` shared draws (``variance="pooled"``: ``std(d)`` is the median of
    ``std(d)`` over the image's remaining rivals of the leader). Draws are scored in order of ``timestep_snr``
    at their timestep, highest first, ties in the scorer's spread order (none: the spread order itself). An
    image stops at one class or ``trial_cap`` draws (default ``max_trials``); then the lowest mean standardised
    error decides, so at ``max_trials`` equal to the grid, no cap and no scale it is
    :class:`~diffclf.strategies.Exhaustive`'s answer.

    Args:
        threshold: standard errors above zero that drop a class (fitted on training images).
        min_trials: draws of every class before the first test (>= 2).
        max_trials: most draws any class gets (the grid size; the reference's draws for a replay).
        round_size: draws added per round.
        timestep_scale: per timestep bin (``len`` bins evenly over ``[0, num_timesteps)``) the typical
            size of a class difference (:func:`fit_timestep_profile`); None for raw errors.
        timestep_snr: per bin the signal one draw carries, the scoring priority; None for the spread order.
        num_timesteps: the diffusion's ``T``, which the bins divide.
        variance: ``pair`` (each rival's own paired variance) or ``pooled`` (the image's median over its
            remaining rivals), as above.
        trial_cap: most draws any class gets, below the grid ``max_trials`` (None: ``max_trials``); the
            grid, and so every draw's ``(t, eps)``, stays that of ``max_trials``.
        critical: ``z`` (drop above ``threshold`` at every round) or ``t`` (above the Student-t quantile with
            ``n - 1`` degrees of freedom at ``threshold``'s normal tail probability: strict while few draws are in,
            ``threshold`` once many are; with ``variance="pooled"`` this is the pooled paired t-test's rule, here
            with Racing's scoring order).
        standard_error: ``iid`` (the sample variance of the paired differences) or ``stratified`` (their
            successive-difference variance in timestep order,
            :func:`~diffclf.strategies.base.successive_difference_variance`): the variance of a mean over draws
            spread evenly over ``t``, without the gap's smooth change with ``t`` that the spread cancels.
        antithetic: score the draws in antithetic pairs (the task builds its scorer so; ``min_trials`` >= 4,
            ``round_size`` and the cap even). On an antithetic scorer the standard error counts pairs either way.
        screen: with ``screen_scale``, also drop a class once its paired difference to the leader, each draw's
            divided by ``screen_scale`` at its timestep, has a mean ``screen / sqrt(n)`` or more above zero;
            tested after every round from the first (``round_size`` draws), while the rule above waits for
            ``min_trials``. None: no screen.
        screen_scale: per timestep bin the typical size of a decisive class difference in raw errors
            (:func:`fit_timestep_profile`'s scale, fitted on training images); given with ``screen``.
    """

    def __init__(
        self,
        threshold: float = 2.0,
        min_trials: int = 3,
        max_trials: int = 250,
        round_size: int = 1,
        timestep_scale: list[float] | None = None,
        timestep_snr: list[float] | None = None,
        num_timesteps: int = 1000,
        variance: Literal["pair", "pooled"] = "pair",
        trial_cap: int | None = None,
        critical: Literal["z", "t"] = "z",
        standard_error: Literal["iid", "stratified"] = "iid",
        antithetic: bool = False,
        screen: float | None = None,
        screen_scale: list[float] | None = None,
    ) -> None:
        if not threshold > 0:
            raise ValueError(f"Racing threshold must be > 0 (standard errors), got {threshold}")
        if min_trials < 2:
            raise ValueError(f"Racing min_trials must be >= 2 (a standard error needs two draws), got {min_trials}")
        if max_trials < min_trials:
            raise ValueError(f"Racing max_trials must be >= min_trials={min_trials}, got {max_trials}")
        if round_size < 1:
            raise ValueError(f"Racing round_size must be >= 1, got {round_size}")
        if timestep_scale is not None and (not timestep_scale or any(not s > 0 for s in timestep_scale)):
            raise ValueError(f"Racing timestep_scale must be positive numbers, one per timestep bin; got {timestep_scale}")
        if timestep_snr is not None and not timestep_snr:
            raise ValueError("Racing timestep_snr must have one number per timestep bin (or be null)")
        if num_timesteps < 1:
            raise ValueError(f"Racing num_timesteps must be >= 1, got {num_timesteps}")
        if critical not in ("z", "t"):
            raise ValueError(f"Racing critical must be z or t, got {critical!r}")
        check_pooling("Racing", variance, trial_cap, min_trials, max_trials, standard_error)
        if (screen is None) != (screen_scale is None):
            raise ValueError("Racing screen and screen_scale come together (a threshold and the scale it divides by)")
        if screen is not None and not screen > 0:
            raise ValueError(f"Racing screen must be > 0 (standard deviations), got {screen}")
        if screen_scale is not None and (not screen_scale or any(not s > 0 for s in screen_scale)):
            raise ValueError(f"Racing screen_scale must be positive numbers, one per timestep bin; got {screen_scale}")
        self.threshold = float(threshold)
        self.min_trials = int(min_trials)
        self.max_trials = int(max_trials)
        self.round_size = int(round_size)
        self.timestep_scale = None if timestep_scale is None else [float(s) for s in timestep_scale]
        self.timestep_snr = None if timestep_snr is None else [float(s) for s in timestep_snr]
        self.num_timesteps = int(num_timesteps)
        self.variance = variance
        self.trial_cap = None if trial_cap is None else int(trial_cap)
        self.critical = critical
        self.standard_error = standard_error
        self.antithetic = bool(antithetic)
        self.screen = None if screen is None else float(screen)
        self.screen_scale = None if screen_scale is None else [float(v) for v in screen_scale]
        if self.antithetic:
            check_pair_counts("Racing", self.min_trials, self.round_size, self.trial_cap or self.max_trials)

    @property
    def max_draws(self) -> int:
        return self.max_trials

    def slot_order(self, timesteps: Tensor, antithetic: bool = False) -> list[int]:
        """Draw indices ``0..max_trials-1`` in scoring order, from the draws' timesteps ``(max_trials,)``
        (``antithetic``: partners ``2m, 2m + 1`` take the higher priority of the two, so they stay together)."""
        if self.timestep_snr is None:
            return list(range(self.max_trials))
        snr = torch.tensor(self.timestep_snr, dtype=torch.float64)
        key = snr[_bins(timesteps, len(self.timestep_snr), self.num_timesteps)]
        if antithetic:
            pairs = key[: len(key) // 2 * 2].view(-1, 2).amax(dim=1)
            key = torch.cat([pairs.repeat_interleave(2), key[len(pairs) * 2 :]])
        return torch.sort(-key, stable=True).indices.tolist()

    def draw_weights(self, timesteps: Tensor) -> Tensor:
        """``1 / timestep_scale`` at each timestep (ones without a scale), fp32."""
        if self.timestep_scale is None:
            return torch.ones(timesteps.shape, dtype=torch.float32)
        scale = torch.tensor(self.timestep_scale, dtype=torch.float64)
        return (1.0 / scale[_bins(timesteps, len(self.timestep_scale), self.num_timesteps)]).float()

    def screen_weights(self, timesteps: Tensor) -> Tensor | None:
        """``1 / (screen_scale * draw weight)`` at each timestep, fp64: what turns a draw's difference of
        (standardised) errors into standard deviations of the screen; None without a screen."""
        if self.screen_scale is None:
            return None
        scale = torch.tensor(self.screen_scale, dtype=torch.float64)
        sd = scale[_bins(timesteps, len(self.screen_scale), self.num_timesteps)]
        return 1.0 / (sd * self.draw_weights(timesteps).double())

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
        check_spread("Racing", self.standard_error, scorer)
        cap = self.max_trials if self.trial_cap is None else self.trial_cap
        check_antithetic("Racing", scorer, self.min_trials, self.round_size, cap)
        pairs = scorer.antithetic
        table = scorer.new_table(x, candidates)
        B, M = table.candidates.shape
        device = x.device
        steps = scorer.timesteps(index, 0, self.max_trials)  # (B, D): a stratified design jitters per image
        order = self.slot_order(steps[0], pairs)
        weights = self.draw_weights(steps).to(device)
        screen_w = self.screen_weights(steps)
        screen_w = None if screen_w is None else screen_w.to(device)
        # on the device once, and only where the standard error reads them
        spread = steps.to(device) if self.standard_error == "stratified" else None
        remaining = torch.ones(B, M, dtype=torch.bool, device=device)
        finished = remaining.sum(dim=1) <= 1
        stage = torch.zeros(B, M, device=device)
        n, rounds = 0, 0
        first = self.round_size if self.screen is not None else self.min_trials  # the screen tests from draw one
        while n < cap:
            stop = min(max(n + self.round_size, first), cap)
            active = remaining & ~finished.unsqueeze(1)
            spent = sum(scorer.score(table, x, index, a, b, active) for a, b in slot_runs(order[n:stop]))
            if spent == 0:  # every image is done
                break
            n, rounds = stop, rounds + 1
            stage = torch.where(active, float(rounds), stage)
            z = self._standardised(table.errors, weights, order[:n])
            sw = None if screen_w is None else screen_w[:, order[:n]]
            remaining &= ~self._drop(z, active, None if spread is None else spread[:, order[:n]], pairs, sw)
            finished = finished | (remaining.sum(dim=1) <= 1)
        z = self._standardised(table.errors, weights, order[: max(n, 1)])
        return from_table(table, stage + remaining.float(), tiebreak=-torch.nanmean(z, dim=-1))

    def critical_value(self, n: int) -> float:
        """The drop threshold after ``n`` draws (see ``critical``)."""
        if self.critical == "z":
            return self.threshold
        return float(stats.t.isf(stats.norm.sf(self.threshold), n - 1))

    @staticmethod
    def _standardised(errors: Tensor, weights: Tensor, slots: list[int]) -> Tensor:
        """``(B, M, n)`` errors of the scored ``slots`` times their draw weights ``(B, D)``."""
        idx = torch.tensor(slots, dtype=torch.long, device=errors.device)
        return errors.index_select(2, idx) * weights.index_select(1, idx).unsqueeze(1)

    def _drop(
        self,
        z: Tensor,
        active: Tensor,
        timesteps: Tensor | None = None,
        pairs: bool = False,
        screen_weights: Tensor | None = None,
    ) -> Tensor:
        """``(B, M)``: active classes ``threshold`` standard errors worse than their image's leader
        (``timesteps`` ``(B, n)``: those of ``z``'s draws, given for the ``stratified`` standard error), or
        failing the screen (``screen_weights`` ``(B, n)``: :meth:`screen_weights` of ``z``'s draws). On
        antithetic draws (partners adjacent in ``z``) the units of the standard error are the pairs."""
        n = z.shape[-1]
        d = z.double()
        mean = d.mean(dim=-1)
        lead = mean.masked_fill(~active, math.inf).argmin(dim=1)
        diff = d - d.gather(1, lead.view(-1, 1, 1).expand(-1, 1, n))
        screened = torch.zeros_like(active)
        if screen_weights is not None:
            known = (diff * screen_weights.unsqueeze(1)).mean(dim=-1) * math.sqrt(n)
            screened = active & (known > self.screen)
        if n < self.min_trials:
            return screened
        if pairs:
            diff, timesteps = antithetic_units(diff, timesteps)
            n = diff.shape[-1]
        if timesteps is not None:
            var = successive_difference_variance(diff, timesteps)
        else:
            var = diff.var(dim=-1, correction=1)
        if self.variance == "pooled":
            var = pooled_rival_variance(var, active.scatter(1, lead.view(-1, 1), False))
        stat = diff.mean(dim=-1) / torch.sqrt(var / n)
        return screened | (active & (stat > self.critical_value(n)))  # NaN (the leader, identical draws) never drops
