"""Discriminative prefilter (Li et al., appendix B): a cheap classifier proposes, the diffusion
model decides."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from diffclf.diffusion.scoring import Scorer
from diffclf.strategies.base import Classification, Strategy


class Prefilter(Strategy):
    """The classifier's top-``top_k`` candidates per image go to ``inner``; the rest are not scored.

    The result covers *all* the original candidates: non-proposed ones have NaN error and 0 draws
    and rank below every proposed class, among themselves by the classifier's logits.

    Args:
        classifier: a diffclf ``TimmClassifier`` checkpoint path (loaded lazily, on first use, with
            ``diffclf.models.classifiers.load_classifier``), or a built module mapping [-1, 1]
            images to logits over the model's classes (with a ``num_classes`` attribute).
        top_k: classes proposed per image.
        inner: the strategy that chooses among the proposals.
    """

    def __init__(self, classifier: str | nn.Module, top_k: int, inner: Strategy) -> None:
        if top_k < 1:
            raise ValueError(f"Prefilter top_k must be >= 1, got {top_k}")
        self.classifier = classifier
        self.top_k = int(top_k)
        self.inner = inner
        self._model: nn.Module | None = classifier if isinstance(classifier, nn.Module) else None

    @property
    def max_draws(self) -> int:
        return self.inner.max_draws

    @property
    def draw_order(self) -> list[int] | None:
        return self.inner.draw_order

    @property
    def antithetic(self) -> bool:
        return self.inner.antithetic

    def _load(self, num_classes: int, device: torch.device) -> nn.Module:
        if self._model is None:
            from diffclf.models.classifiers import load_classifier

            self._model = load_classifier(self.classifier)
        got = getattr(self._model, "num_classes", None)
        if got is not None and int(got) != num_classes:
            name = self.classifier if isinstance(self.classifier, str) else type(self._model).__name__
            raise ValueError(f"classifier {name} has {got} classes but the diffusion model has {num_classes}")
        return self._model.to(device).eval()

    def classify(
        self,
        scorer: Scorer,
        x: Tensor,
        index: Tensor,
        candidates: Tensor | None = None,
        images: Tensor | None = None,
    ) -> Classification:
        """Propose with the classifier's logits over the candidates, decide with ``inner``."""
        images = x if images is None else images
        cand = scorer.check_candidates(candidates, x.shape[0], x.device)
        B, M = cand.shape
        if self.top_k > M:
            raise ValueError(f"Prefilter top_k={self.top_k} exceeds the {M} candidate classes")
        model = self._load(scorer.num_classes, images.device)
        with torch.no_grad():
            logits = model(images).float()
        if logits.shape != (B, scorer.num_classes):
            raise ValueError(
                f"the classifier returned logits of shape {tuple(logits.shape)}, "
                f"expected ({B}, {scorer.num_classes})"
            )
        cand_logits = logits.to(x.device).gather(1, cand)
        pos = cand_logits.topk(self.top_k, dim=1).indices
        inner = self.inner.classify(scorer, x, index, cand.gather(1, pos), images)
        mean_error = torch.full((B, M), math.nan, device=x.device).scatter(1, pos, inner.mean_error.float())
        num_draws = torch.zeros(B, M, dtype=torch.long, device=x.device).scatter(
            1, pos, inner.num_draws.long()
        )
        # Proposed classes keep the inner ranking; the others form one lower stage ordered by logits.
        inner_rank = inner.rank_scores()
        stage = torch.full((B, M), -1.0, device=x.device).scatter(
            1, pos, torch.where(torch.isneginf(inner_rank), -math.inf, 0.0)
        )
        tiebreak = cand_logits.scatter(1, pos, inner_rank)
        errors = None
        if inner.errors is not None:
            D = inner.errors.shape[2]
            errors = torch.full((B, M, D), math.nan, device=x.device).scatter(
                1, pos.unsqueeze(-1).expand(-1, -1, D), inner.errors.float()
            )
        return Classification(
            cand, mean_error, num_draws, inner.forwards, stage=stage, tiebreak=tiebreak, errors=errors
        )
