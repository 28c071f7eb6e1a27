"""Exhaustive scoring (Algorithm 1 of Li et al.): every candidate class on every draw."""

from __future__ import annotations

from torch import Tensor

from diffclf.diffusion.scoring import Scorer
from diffclf.strategies.base import Classification, Strategy, from_table


class Exhaustive(Strategy):
    """Score every candidate on the first ``trials`` draws and predict the lowest mean error.

    The reference: with ``trials = n`` and the ``even`` design these are exactly the grid
    ``t = T//n//2 + k*T//n``. Costs ``trials × candidates`` forwards per image.
    """

    def __init__(self, trials: int = 100) -> None:
        if trials < 1:
            raise ValueError(f"Exhaustive trials must be >= 1, got {trials}")
        self.trials = int(trials)

    @property
    def max_draws(self) -> int:
        return self.trials

    def classify(
        self,
        scorer: Scorer,
        x: Tensor,
        index: Tensor,
        candidates: Tensor | None = None,
        images: Tensor | None = None,
    ) -> Classification:
        """All candidates × draws ``[0, trials)`` in one engine call (full batches throughout)."""
        self._check_scorer(scorer)
        table = scorer.new_table(x, candidates)
        scorer.score(table, x, index, 0, self.trials)
        return from_table(table)
