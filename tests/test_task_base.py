"""What the task base does around a kind's scores: device-synchronised timing, p(c|x) from the logits."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import diffclf.tasks.base as base
from diffclf.metrics.classification import ClassificationMetrics
from diffclf.tasks.base import ClassifierTask, Scored


class _Fixed(ClassifierTask):
    """A kind whose scores are given: the base's bookkeeping is what is under test."""

    def __init__(self, events: list[str]) -> None:
        super().__init__()
        self.save_hyperparameters({"num_classes": 3, "calibration": None})
        self.events = events

    def classify(self, images: torch.Tensor, index: torch.Tensor) -> Scored:
        self.events.append("classify")
        logits = torch.tensor([[0.0, -1.0, -2.0]]).expand(len(index), -1)
        return Scored(scores=logits, logits=logits, forwards=torch.full((len(index),), 7))

    def result_context(self) -> dict[str, Any]:
        return {"model": "fixed", "strategy": "none", "seed": None}


def test_a_batch_is_timed_after_the_device_finished_it(monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[str] = []
    clock = iter([10.0, 12.5])
    monkeypatch.setattr(base, "synchronize", lambda device: events.append(f"sync:{device.type}"))
    monkeypatch.setattr(base.time, "perf_counter", lambda: events.append("clock") or next(clock))
    task = _Fixed(events)
    task.test_metrics = ClassificationMetrics(3)
    task.test_step((torch.zeros(2, 1, 4, 4), torch.tensor([0, 1]), torch.tensor([0, 1])), 0)
    # Asynchronous kernels: the clock may only stop once the device has finished the batch's work.
    assert events == ["clock", "classify", "sync:cpu", "clock"]
    values = task.test_metrics.compute()
    assert values["seconds_per_image"] == pytest.approx(2.5 / 2) and values["forwards_per_image"] == 7


def test_probabilities_are_the_softmax_of_the_logits_without_calibration() -> None:
    task = _Fixed([])
    scored = task.classify(torch.zeros(1, 1, 4, 4), torch.tensor([0]))
    want = torch.tensor([1.0, torch.e ** -1, torch.e ** -2])
    torch.testing.assert_close(task.log_probs(scored).exp()[0], want / want.sum())


def test_calibrated_probabilities_follow_the_kinds_prediction_not_the_logits_argmax() -> None:
    from diffclf.metrics.calibration import Calibration

    task = _Fixed([])
    task.hparams["calibration"] = "fitted.json"
    task._calibration = ("fitted.json", Calibration(method="calls", temperature=1.0, platt=(-1.0, 8.0)))
    # the ranking picks class 1 (NaN ranks last, not first); the raw logits favour class 0
    scored = Scored(scores=torch.tensor([[1.0, 3.0, float("nan")]]), logits=torch.tensor([[465.7, 0.0, -1.0]]),
                    forwards=torch.tensor([151]))
    p = task.log_probs(scored).exp()[0]
    assert int(p.argmax()) == 1 and float(p[1]) == pytest.approx(1 / (1 + 151 * torch.e ** -8.0), rel=1e-5)
