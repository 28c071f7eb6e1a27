"""Classification counts over a label space, correct under DDP with uneven per-rank counts.

:class:`ClassificationMetrics` accumulates integer counts (summed across ranks, never averaged:
averaging per-rank means is wrong when ranks see different numbers of images) from which
top-1, top-5, mean per-class accuracy and the cost per image follow, and, when ``p(c|x)`` is given, the
calibration sums behind ECE, NLL and Brier (``diffclf.metrics.calibration``). torchmetrics only, no Lightning.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from diffclf.metrics.calibration import CalibrationStats


class _Counts(Metric):
    """Sum-reduced integer counts: every rank adds what it saw, nothing is averaged."""

    full_state_update = False

    def __init__(self, num_classes: int, top_k: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.top_k = top_k
        self.add_state("class_correct", torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("class_support", torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("topk_correct", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("forwards", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("forwards_images", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("seconds", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, scores: Tensor, target: Tensor, forwards: Tensor | None, seconds: float) -> None:
        scores = torch.nan_to_num(scores.detach().float(), nan=-torch.inf)
        target = target.detach().long().to(scores.device)
        pred = scores.argmax(dim=1)
        hit = pred == target
        self.class_support += torch.bincount(target, minlength=self.num_classes)
        self.class_correct += torch.bincount(target[hit], minlength=self.num_classes)
        topk = scores.topk(self.top_k, dim=1).indices
        self.topk_correct += (topk == target[:, None]).any(dim=1).sum()
        if forwards is not None:
            self.forwards += torch.as_tensor(forwards, device=scores.device).detach().double().sum()
            self.forwards_images += target.numel()
        self.seconds += float(seconds)

    def compute(self) -> dict[str, Tensor]:
        return {
            "class_correct": self.class_correct,
            "class_support": self.class_support,
            "topk_correct": self.topk_correct,
            "forwards": self.forwards,
            "forwards_images": self.forwards_images,
            "seconds": self.seconds,
        }


class ClassificationMetrics(torch.nn.Module):
    """Top-1 (micro), top-5, mean per-class accuracy, forwards and seconds per image over a label space.

    ``update`` takes label-space scores ``(B, K)`` (higher is better; NaN counts as worst), targets
    ``(B,)``, the denoiser/classifier forwards spent per image ``(B,)`` (or None when not counted) and
    this rank's wall time for the batch. ``compute`` sums over ranks, so it must be called on all.
    ``seconds_per_image`` is device-seconds per image (the sum of every rank's time over all images),
    the cost one device pays per image. With ``K < 5`` "top-5" is top-K.
    """

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"a label space needs at least one class, got {num_classes}")
        self.num_classes = num_classes
        self.top_k = min(5, num_classes)
        self.counts = _Counts(num_classes, self.top_k)
        self.calibration = CalibrationStats()

    def update(
        self, scores: Tensor, target: Tensor, forwards: Tensor | None = None, seconds: float = 0.0,
        log_probs: Tensor | None = None,
    ) -> None:
        """``log_probs`` ``(B, K)``: ``log p(c|x)`` of the images, for ECE, NLL and Brier."""
        if scores.ndim != 2 or scores.shape[1] != self.num_classes:
            raise ValueError(
                f"scores must have shape (B, {self.num_classes}) over the label space, "
                f"got {tuple(scores.shape)}"
            )
        if target.shape != scores.shape[:1]:
            raise ValueError(f"targets must have shape ({scores.shape[0]},), got {tuple(target.shape)}")
        if target.numel() and (int(target.min()) < 0 or int(target.max()) >= self.num_classes):
            raise ValueError(
                f"targets must be label-space indices in 0..{self.num_classes - 1}, "
                f"got values in {int(target.min())}..{int(target.max())}"
            )
        self.counts.update(scores, target, forwards, seconds)
        if log_probs is not None:
            if log_probs.shape != scores.shape:
                raise ValueError(f"log_probs must have the shape of scores {tuple(scores.shape)}, got {tuple(log_probs.shape)}")
            pred = torch.nan_to_num(scores.detach().float(), nan=-torch.inf).argmax(dim=1)
            self.calibration.update(log_probs, target, pred)

    def compute(self) -> dict[str, Any]:
        c = {k: v.detach().cpu() for k, v in self.counts.compute().items()}
        support, class_correct = c["class_support"], c["class_correct"]
        n, correct = int(support.sum()), int(class_correct.sum())
        present = support > 0
        nan = float("nan")
        per_class = class_correct[present].double() / support[present].double()
        fwd_images = int(c["forwards_images"])
        cal = self.calibration.compute()
        has_probs = cal["n"] == n and n > 0  # every image came with its probabilities
        return {
            "n": n,
            "correct": correct,
            "accuracy": correct / n if n else nan,
            "top5_accuracy": int(c["topk_correct"]) / n if n else nan,
            "mean_per_class_accuracy": float(per_class.mean()) if n else nan,
            "forwards_per_image": float(c["forwards"]) / fwd_images if fwd_images else None,
            "seconds_per_image": float(c["seconds"]) / n if n else nan,
            "ece": cal["ece"] if has_probs else None,
            "nll": cal["nll"] if has_probs else None,
            "brier": cal["brier"] if has_probs else None,
            "reliability_bins": cal["bins"] if has_probs else None,
        }

    def reset(self) -> None:
        self.counts.reset()
        self.calibration.reset()
