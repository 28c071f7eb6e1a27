"""A scorer that replays recorded per-draw errors instead of calling a denoiser (plain torch).

The draws of an image depend only on ``(seed, dataset index, max_draws)`` and the draw order
(``diffclf.diffusion.scoring``), so any strategy whose ``max_draws`` and ``draw_order`` equal an exhaustive
run's sees exactly the errors that run recorded.
Reading them back through the :class:`~diffclf.diffusion.scoring.Scorer` interface lets the *real*
strategy code (elimination schedules, paired t-tests) be evaluated on hundreds of settings for the price
of one exhaustive run: predictions and forwards are those a live run would give, bit for bit (the
strategies benchmark checks this against live runs), but nothing is timed.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from diffclf.diffusion.schedule import NoiseSchedule
from diffclf.diffusion.scoring import Scorer, ScoreTable


class ReplayScorer(Scorer):
    """A :class:`Scorer` whose ``score`` copies errors from a finished exhaustive table.

    Args:
        reference: ``(N, M, D)`` fp32 per-draw errors of ``N`` images over the same ``M`` candidates, in
            the same order, that the replayed strategy is given; ``D`` is the ``max_draws`` replayed.
        row_of: dataset index → row of ``reference``.
        num_classes: classes of the model the errors came from (candidate ids are checked against it).
        order: the draw order of the recorded run (its scorer's ``order``; None = the default). Draw ``k``
            of a run is its ``k``-th grid position with the noise of ``(seed, index, k)``, so only a strategy
            with the same :attr:`~diffclf.strategies.Strategy.draw_order` sees the recorded errors: an
            ``Adaptive(schedule="official")`` needs a reference recorded in its order, and
            ``DiffusionClassifier.scorer()`` rebuilds (so ``run_replay`` refuses) a replay in another order.
        antithetic: the recorded run's draws were antithetic pairs (its scorer's ``antithetic``): the strategies
            then test whole pairs, as they would live.

    Forwards are counted exactly as :meth:`Scorer.score` counts them (active pairs × draws), so a
    replayed strategy reports the cost its live run would have had.
    """

    def __init__(
        self,
        reference: Tensor,
        row_of: Mapping[int, int],
        num_classes: int,
        order: list[int] | None = None,
        antithetic: bool = False,
    ) -> None:
        if reference.dim() != 3:
            raise ValueError(f"reference errors must be (N, M, D), got shape {tuple(reference.shape)}")
        # The denoiser is never called; schedule and channels only satisfy the base class.
        super().__init__(
            lambda x, t, y: x, NoiseSchedule(), 1, max_draws=reference.shape[-1], num_classes=num_classes,
            order=order, antithetic=antithetic,
        )
        self.reference = reference
        self.row_of = dict(row_of)

    @classmethod
    def from_run(
        cls, errors: Tensor, index: Tensor, num_classes: int, order: list[int] | None = None, antithetic: bool = False
    ) -> ReplayScorer:
        """A replay of a run's ``(N, M, D)`` errors whose rows follow the dataset indices ``index`` ``(N,)``
        (``order``, ``antithetic``: the run's draw order and noise, as above)."""
        return cls(
            errors, {int(i): r for r, i in enumerate(index.tolist())}, num_classes, order=order, antithetic=antithetic
        )

    def score(
        self, table: ScoreTable, x: Tensor, index: Tensor, start: int, stop: int, active: Tensor | None = None
    ) -> int:
        """Fill draws ``[start, stop)`` of the active pairs from the reference; returns the forwards."""
        self._check_range(start, stop)
        B, M = table.candidates.shape
        if M != self.reference.shape[1]:
            raise ValueError(
                f"the table has {M} candidates but the recorded errors {self.reference.shape[1]}; "
                "a replay needs the recorded run's candidates in its order"
            )
        device = table.errors.device
        if active is None:
            active = torch.ones(B, M, dtype=torch.bool, device=device)
        D = stop - start
        total = int(active.sum()) * D
        if total == 0:
            return 0
        missing = [int(i) for i in index.tolist() if int(i) not in self.row_of]
        if missing:
            raise KeyError(f"dataset indices {missing[:5]} have no recorded errors to replay")
        rows = torch.tensor([self.row_of[int(i)] for i in index.tolist()])
        ref = self.reference[rows, :, start:stop].to(device)
        block = table.errors[:, :, start:stop]
        table.errors[:, :, start:stop] = torch.where(active.unsqueeze(-1), ref, block)
        table.forwards += active.sum(dim=1) * D
        table.horizon = max(table.horizon, stop)
        return total
