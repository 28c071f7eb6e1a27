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
        pred: ``(B,)`` long model id of the best-ranked class (computed).
    """

    candidates: Tensor
    mean_error: Tensor
    num_draws: Tensor
    forwards: Tensor
    stage: Tensor | None = None
    tiebreak: Tensor | None = None
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

    def probs(self, temperature: float = 1.0) -> Tensor:
        """``(B, M)`` ``softmax(-mean_error / temperature)`` over the scored classes, 0 for the others."""
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        logits = -self.mean_error.double() / temperature
        logits = torch.where(torch.isnan(logits), torch.full_like(logits, -math.inf), logits)
        return torch.nan_to_num(torch.softmax(logits, dim=1), nan=0.0).float()

    def top5(self) -> Tensor:
        """``(B, min(5, M))`` model ids of the best-ranked classes, best first."""
        k = min(5, self.candidates.shape[1])
        return self.candidates.gather(1, self.rank_scores().topk(k, dim=1).indices)


def from_table(table: ScoreTable, stage: Tensor | None = None) -> Classification:
    """A :class:`Classification` straight from a score table (``stage`` as in :class:`Classification`)."""
    counts = table.counts
    if stage is not None:
        stage = torch.where(counts > 0, stage.float(), torch.full_like(stage.float(), -math.inf))
    return Classification(table.candidates, table.mean_error(), counts, table.forwards.clone(), stage=stage)


class Strategy(ABC):
    """How to spend denoiser evaluations to classify a batch.

    Subclasses take plain typed constructor arguments so jsonargparse builds them from YAML
    (``class_path: diffclf.strategies.Adaptive``); public attributes are those arguments (they
    describe the strategy in results files), internal state starts with an underscore.
    """

    @property
    @abstractmethod
    def max_draws(self) -> int:
        """Most draws any class of an image can be scored on (sizes the scorer)."""

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
