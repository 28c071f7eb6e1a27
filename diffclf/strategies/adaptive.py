"""Successive elimination (Algorithm 2 of Li et al.): score many classes cheaply, the best ones longer."""

from __future__ import annotations

from itertools import pairwise

import torch
from torch import Tensor

from diffclf.diffusion.scoring import Scorer
from diffclf.strategies.base import Classification, Strategy, from_table


class Adaptive(Strategy):
    """Stages of (cumulative draws, classes kept).

    Stage ``i`` scores the surviving classes of each image up to ``trials[i]`` draws in total,
    then keeps the ``keep[i]`` with the lowest mean error over all their draws. ``keep`` clamps
    to the number of candidates (ImageNet-A's 200 classes with a 500-class first stage). A stage
    that starts with a single survivor is skipped: it could not change the prediction.

    Args:
        keep: classes kept after each stage, strictly decreasing, ending at >= 1.
        trials: cumulative draws per surviving class at each stage, strictly increasing, >= 1.
    """

    def __init__(self, keep: list[int], trials: list[int]) -> None:
        keep, trials = [int(k) for k in keep], [int(n) for n in trials]
        if not keep or len(keep) != len(trials):
            raise ValueError(
                f"Adaptive keep and trials need the same non-zero length, got keep={keep} and trials={trials}"
            )
        if any(a <= b for a, b in pairwise(keep)) or keep[-1] < 1:
            raise ValueError(f"Adaptive keep must be strictly decreasing and end at >= 1, got {keep}")
        if any(a >= b for a, b in pairwise(trials)) or trials[0] < 1:
            raise ValueError(f"Adaptive trials must be strictly increasing and >= 1, got {trials}")
        self.keep = keep
        self.trials = trials

    @property
    def max_draws(self) -> int:
        return self.trials[-1]

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
        for i, (keep, trials) in enumerate(zip(self.keep, self.trials)):
            if n_alive > 1 or i == 0:
                scorer.score(table, x, index, done, trials, alive)
                done = trials
            n_keep = min(keep, n_alive)
            err = table.mean_error().masked_fill(~alive, torch.inf)
            best = err.topk(n_keep, dim=1, largest=False).indices
            alive = torch.zeros_like(alive).scatter_(1, best, True)
            stage = torch.where(alive, float(i + 1), stage)
            n_alive = n_keep
        return from_table(table, stage)
