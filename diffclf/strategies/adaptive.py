"""Successive elimination (Algorithm 2 of Li et al.): score many classes cheaply, the best ones longer."""

from __future__ import annotations

from itertools import pairwise
from typing import Literal

import torch
from torch import Tensor

from diffclf.diffusion.scoring import Scorer
from diffclf.strategies.base import Classification, Strategy, from_table

SCHEDULES = ("official", "nested")


def official_stages(trials: list[int]) -> list[list[int]]:
    """The grid positions each stage of the official ``eval_prob_adaptive.py`` scores for the first time.

    The official code evaluates ``t_to_eval = range(T//n_max//2, T, T//n_max)[:n_max]``, the ``n_max =
    max(trials)``-point grid, and stage ``i`` the ``trials[i]``-point sub-grid
    ``t_to_eval[n_max//n//2 :: n_max//n][:n]`` of it, minus the positions already evaluated; as positions
    of the grid: ``range(n_max//n//2, n_max, n_max//n)[:n]``. Each list is ascending (the order the
    official code evaluates, and numbers the noise of, a stage's new timesteps).
    """
    n_max = max(trials)
    seen: set[int] = set()
    stages = []
    for n in trials:
        step = n_max // n
        new = [p for p in range(step // 2, n_max, step)[:n] if p not in seen]
        seen.update(new)
        stages.append(new)
    return stages


class Adaptive(Strategy):
    """Stages of (draws, classes kept).

    Stage ``i`` scores the surviving classes of each image on further draws (which ones is the
    ``schedule``, below), then keeps the ``keep[i]`` with the lowest mean error over all the draws they
    were scored on. ``keep`` clamps to the number of candidates (ImageNet-A's 200 classes with a
    500-class first stage). A stage that starts with a single survivor is skipped: it could not change
    the prediction.

    The two schedules differ in which draws a stage adds:

    - ``official`` is the released ``eval_prob_adaptive.py`` of Li et al. (the code behind the papers'
      numbers): stage ``i`` scores the even ``trials[i]``-point sub-grid of the ``max(trials)``-point
      grid, ``t_to_eval[n_max//n//2 :: n_max//n][:n]``, minus the timesteps scored already. These
      sub-grids need not nest (ImageNet's 50-point grid t = 10, 30, ... shares no timestep with the
      100-point t = 5, 15, ...), so a class surviving stage ``i`` can have more than ``trials[i]`` draws
      (:attr:`stage_draws`) and the cost is not ``keep[i-1] × (trials[i] - trials[i-1])``:
      ``keep [500, 50, 10, 1] × trials [50, 100, 500, 1000]`` is 124,500 forwards per 1000-class image
      (50 + 100 + 400 + 450 new timesteps per stage), 24.5% more than ``nested``. Draw ``k`` is the
      ``k``-th timestep in order of first evaluation, as the official noise index is, so this mode hands
      the scorer its own order (:attr:`draw_order`). When ``max(trials)`` divides ``T`` (500, 250, 1000
      of 1000 in the paper presets) the timesteps are exactly the official ones; otherwise the positions
      are, on the scorer's centred grid (:func:`~diffclf.diffusion.scoring.even_grid`).
    - ``nested`` is Algorithm 2 as printed (``TrialList_i - PrevTrials`` new draws per stage) on cumulative
      prefixes of the scorer's bit-reversed draws: stage ``i`` takes the survivors to exactly ``trials[i]``
      draws, costing ``keep[i-1] × (trials[i] - trials[i-1])`` (100,000 forwards for the ImageNet
      schedule). Every prefix is spread over the range, but stage ``i``'s draws are not an even
      ``trials[i]``-point grid. It is the default so that everything recorded before the option existed
      stays reproducible: the digits and Fashion-MNIST schedules and configs, and the strategies benchmark,
      whose replays of an exhaustive run need the default draw order. The paper presets
      (``configs/strategy/adaptive_{cifar10,pets,stl10,flowers,imagenet,objectnet}.yaml``) say ``official``.

    Args:
        keep: classes kept after each stage, strictly decreasing, ending at >= 1.
        trials: each stage's grid size (``official``) or cumulative draws per surviving class
            (``nested``), strictly increasing, >= 1; ``trials[-1]`` draws in all either way.
        schedule: ``official`` or ``nested``, as above.
    """

    def __init__(
        self, keep: list[int], trials: list[int], schedule: Literal["official", "nested"] = "nested"
    ) -> None:
        keep, trials = [int(k) for k in keep], [int(n) for n in trials]
        if not keep or len(keep) != len(trials):
            raise ValueError(
                f"Adaptive keep and trials need the same non-zero length, got keep={keep} and trials={trials}"
            )
        if any(a <= b for a, b in pairwise(keep)) or keep[-1] < 1:
            raise ValueError(f"Adaptive keep must be strictly decreasing and end at >= 1, got {keep}")
        if any(a >= b for a, b in pairwise(trials)) or trials[0] < 1:
            raise ValueError(f"Adaptive trials must be strictly increasing and >= 1, got {trials}")
        if schedule not in SCHEDULES:
            raise ValueError(f"Adaptive schedule must be one of {', '.join(SCHEDULES)}; got {schedule!r}")
        self.keep = keep
        self.trials = trials
        self.schedule = schedule
        if schedule == "official":
            stages = official_stages(trials)
            self._order: list[int] | None = [p for stage in stages for p in stage]
            self._ends = [sum(len(s) for s in stages[: i + 1]) for i in range(len(stages))]
            assert sorted(self._order) == list(range(trials[-1]))  # the last stage is the whole grid
        else:
            self._order, self._ends = None, list(trials)

    @property
    def max_draws(self) -> int:
        return self.trials[-1]

    @property
    def draw_order(self) -> list[int] | None:
        """``official``: each stage's new grid positions, stage after stage; ``nested``: None (default)."""
        return None if self._order is None else list(self._order)

    @property
    def stage_draws(self) -> list[int]:
        """Draws a class surviving into stage ``i`` has been scored on at its end (``trials`` when nested)."""
        return list(self._ends)

    def classify(
        self,
        scorer: Scorer,
        x: Tensor,
        index: Tensor,
        candidates: Tensor | None = None,
        images: Tensor | None = None,
    ) -> Classification:
        """Run the stages; ``stage`` in the result counts the stages a class survived."""
        self._check_scorer(scorer)
        table = scorer.new_table(x, candidates)
        B, M = table.candidates.shape
        alive = torch.ones(B, M, dtype=torch.bool, device=x.device)
        stage = torch.zeros(B, M, device=x.device)
        n_alive, done = M, 0
        for i, (keep, end) in enumerate(zip(self.keep, self._ends)):
            if n_alive > 1 or i == 0:
                scorer.score(table, x, index, done, end, alive)
                done = end
            n_keep = min(keep, n_alive)
            err = table.mean_error().masked_fill(~alive, torch.inf)
            best = err.topk(n_keep, dim=1, largest=False).indices
            alive = torch.zeros_like(alive).scatter_(1, best, True)
            stage = torch.where(alive, float(i + 1), stage)
            n_alive = n_keep
        return from_table(table, stage)
