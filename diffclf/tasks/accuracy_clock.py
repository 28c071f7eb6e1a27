"""Accuracy against training wall time: the curve a user deciding between recipes needs.

The held-out eps-loss does not say when a diffusion classifier's class conditioning is learned, and a
step count does not compare a DiT with a ResNet. :class:`AccuracyClock` classifies the same held-out
images at marks of *training* wall time (the time spent in evaluation is not charged to training), with
the task's own ``classify`` (the path ``cli.py test`` takes), and stops the run at its budget. Any
:class:`~diffclf.tasks.base.ClassifierTask` works; a diffusion task is measured with a cheap fixed
``strategy`` so that points along the curve compare.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch.utils.data import DataLoader, Subset

from diffclf.metrics.accuracy import clopper_pearson
from diffclf.strategies import Strategy
from diffclf.tasks.base import synchronize


def marked_indices(n: int, limit: int, seed: int) -> list[int]:
    """The positions of the ``limit`` test images a seeded clock measures, in order: a recipe chosen on
    them is reported again on the others (``benchmarks/time_to_accuracy.sh`` lists those)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=gen)[:limit].sort().values.tolist()


def clock_marks(budget_s: float, evals: int, marks_s: list[float] | None) -> list[float]:
    """The training seconds at which to classify: ``marks_s`` as given, else ``evals`` even marks ending at the
    budget (the last point is the budget's)."""
    if budget_s <= 0:
        raise ValueError(f"AccuracyClock budget_s must be > 0, got {budget_s}")
    if marks_s:
        marks = sorted(float(m) for m in marks_s)
        if marks[0] <= 0 or marks[-1] > budget_s:
            raise ValueError(f"AccuracyClock marks_s must lie in (0, budget_s={budget_s}], got {marks_s}")
        return marks
    if evals < 1:
        raise ValueError(f"AccuracyClock evals must be >= 1, got {evals}")
    return [budget_s * (i + 1) / evals for i in range(evals)]


class AccuracyClock(Callback):
    """Classify the first ``limit`` test images at marks of training wall time; stop at ``budget_s``.

    Args:
        budget_s: training seconds after which the run stops (a recipe that ends sooner is measured at its end).
        evals: number of evenly spaced marks ending at the budget (ignored when ``marks_s`` is given).
        marks_s: explicit marks in training seconds.
        limit: how many images of the data's test split to classify, the same at every mark and for every recipe.
        sample_seed: None: the first ``limit`` test images (a split stored in random order: digits, Fashion-MNIST);
            a seed: ``limit`` test images drawn at random with it (a class-folder tree lists its images class by
            class, so its first images are a few classes only).
        strategy: the strategy a diffusion task classifies with along the curve (the task's own otherwise).
        out: JSON Lines file; one record per mark, appended as soon as it is measured.
        label: the recipe's name in the records.
    """

    def __init__(
        self,
        budget_s: float,
        evals: int = 8,
        marks_s: list[float] | None = None,
        limit: int = 500,
        sample_seed: int | None = None,
        strategy: Strategy | None = None,
        out: str = "accuracy_clock.jsonl",
        label: str | None = None,
    ) -> None:
        self.marks = clock_marks(budget_s, evals, marks_s)
        self.budget_s = float(budget_s)
        if limit < 1:
            raise ValueError(f"AccuracyClock limit must be >= 1, got {limit}")
        self.limit = limit
        self.sample_seed = sample_seed
        self.strategy = strategy
        self.out = Path(out)
        self.label = label
        self.train_s = 0.0
        self.images_seen = 0
        self._last = 0.0
        self._next = 0
        self._measured_step = -1
        self._batches: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None = None

    # ------------------------------------------------------------------ the clock
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self._last = time.perf_counter()

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        synchronize(pl_module.device)
        now = time.perf_counter()
        self.train_s += now - self._last
        self.images_seen += int(batch[0].shape[0]) * trainer.world_size
        if self._next < len(self.marks) and self.train_s >= self.marks[self._next]:
            while self._next < len(self.marks) and self.train_s >= self.marks[self._next]:
                self._next += 1
            self.measure(trainer, pl_module)
            if self.train_s >= self.budget_s:
                trainer.should_stop = True
        self._last = time.perf_counter()  # evaluation time is not training time

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._measured_step != trainer.global_step:
            self.measure(trainer, pl_module)

    # ------------------------------------------------------------------ one point of the curve
    def held_out(self, trainer: Trainer) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """The ``limit`` test images (the first ones, or a seeded sample) as ``(images, targets, index)`` batches,
        read once."""
        if self._batches is None:
            dm = trainer.datamodule
            dm.setup("test")
            loader = dm.test_dataloader()
            if self.sample_seed is not None:
                dataset = loader.dataset
                pick = marked_indices(len(dataset), self.limit, self.sample_seed)
                loader = DataLoader(Subset(dataset, pick), batch_size=loader.batch_size or 100, shuffle=False)
            batches, seen = [], 0
            for images, target, index in loader:
                take = min(len(index), self.limit - seen)
                batches.append((images[:take], target[:take], index[:take]))
                seen += take
                if seen >= self.limit:
                    break
            self._batches = batches
        return self._batches

    @torch.no_grad()
    def measure(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, Any]:
        """Classify the held-out images now; every module's train/eval mode is restored afterwards (the EMA
        copy of a DiT stays in eval mode, the trained network in train mode)."""
        modes = {m: m.training for m in pl_module.modules()}
        kept = getattr(pl_module, "strategy", None)
        if self.strategy is not None and isinstance(kept, Strategy):
            pl_module.strategy = self.strategy
        pl_module.eval()
        start = time.perf_counter()
        correct = total = 0
        forwards = 0.0
        try:
            for images, target, index in self.held_out(trainer):
                images, target, index = (a.to(pl_module.device) for a in (images, target, index))
                scored = pl_module.classify(images, index)
                correct += int((scored.ranked().argmax(dim=1) == target).sum())
                total += len(target)
                forwards += float(scored.forwards.double().sum())
            synchronize(pl_module.device)
        finally:
            for module, mode in modes.items():
                module.train(mode)
            if self.strategy is not None and isinstance(kept, Strategy):
                pl_module.strategy = kept
        low, high = clopper_pearson(correct, total, 0.95)
        record = {
            "label": self.label, "sample_seed": self.sample_seed, "step": trainer.global_step, "train_seconds": round(self.train_s, 3),
            "images_seen": self.images_seen, "images": total, "correct": correct, "accuracy": correct / total,
            "ci_low": low, "ci_high": high, "forwards_per_image": forwards / total,
            "eval_seconds": round(time.perf_counter() - start, 3), "threads": torch.get_num_threads(),
            "machine": platform.processor() or platform.machine(), "loadavg_1min": round(os.getloadavg()[0], 2),
        }
        self._measured_step = trainer.global_step
        if trainer.is_global_zero:
            with self.out.open("a") as f:
                f.write(json.dumps(record) + "\n")
        return record
