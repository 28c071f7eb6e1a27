"""AccuracyClock: accuracy at marks of training wall time, measured as ``test`` measures it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback, Trainer, seed_everything

from diffclf.data import DigitsDataModule
from diffclf.strategies import Adaptive, Exhaustive
from diffclf.tasks import DiffusionClassifier, TimmClassifier
from diffclf.tasks.accuracy_clock import AccuracyClock, clock_marks, marked_indices


def test_marks_are_even_up_to_the_budget_or_as_given() -> None:
    assert clock_marks(60, 3, None) == [20.0, 40.0, 60.0]
    assert clock_marks(60, 3, [50, 5]) == [5.0, 50.0]
    for bad in ((0, 3, None), (60, 0, None), (60, 3, [0, 10]), (60, 3, [70])):
        with pytest.raises(ValueError, match="AccuracyClock"):
            clock_marks(*bad)


class _Modes(Callback):
    """What train/eval mode every module was in at each step after the clock measured."""

    def __init__(self) -> None:
        self.seen: list[dict[str, bool]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.seen.append({name: m.training for name, m in pl_module.named_modules()})


def _fit(module, tmp: Path, clock: AccuracyClock, max_steps: int = 10_000) -> Trainer:
    seed_everything(0)
    modes = _Modes()
    trainer = Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp,
                      max_steps=max_steps, limit_val_batches=0, num_sanity_val_steps=0, callbacks=[clock, modes])
    trainer.fit(module, datamodule=DigitsDataModule(batch_size=32, eval_limit=None))
    trainer.modes = modes  # type: ignore[attr-defined]
    return trainer


@pytest.mark.usefixtures("one_thread")
def test_a_timm_run_stops_at_its_budget_and_its_last_point_is_what_test_reports(tmp_path: Path) -> None:
    """Mutation tried: measuring without ``eval()`` (BatchNorm on batch statistics, the running means
    updated by the held-out images) gives another accuracy than ``test``: fails."""
    out = tmp_path / "clock.jsonl"
    clock = AccuracyClock(budget_s=4.0, evals=2, limit=64, out=str(out), label="resnet")
    module = TimmClassifier("resnet18", num_classes=10, in_chans=1, img_size=8, lr=3e-3)
    trainer = _fit(module, tmp_path, clock)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    # A slow first step (a loaded machine) may pass both marks at once: then one point, at the budget.
    assert 1 <= len(rows) <= 2 and all(r["label"] == "resnet" and r["images"] == 64 for r in rows)
    assert rows[0]["train_seconds"] >= 2.0 and rows[-1]["train_seconds"] >= 4.0
    assert [r["step"] for r in rows] == sorted({r["step"] for r in rows})
    last = rows[-1]
    assert last["step"] == trainer.global_step < 10_000  # stopped by the clock, measured at the stop
    assert last["images_seen"] == 32 * trainer.global_step
    assert all(seen["model"] for seen in trainer.modes.seen)  # training resumed in train mode
    trainer.test(module, datamodule=DigitsDataModule(batch_size=32, eval_limit=64, eval_batch_size=50))
    assert module.test_record["n"] == 64
    assert last["accuracy"] == pytest.approx(module.test_record["accuracy"])


@pytest.mark.usefixtures("one_thread")
def test_a_diffusion_run_is_measured_with_the_clock_strategy_and_keeps_its_own(tmp_path: Path) -> None:
    own = Adaptive(keep=[2, 1], trials=[2, 4])
    module = DiffusionClassifier(model="DiT-T/2", input_size=8, in_channels=1, num_classes=10, learn_sigma=False,
                                 lr=2e-3, model_kwargs={"depth": 1}, strategy=own)
    out = tmp_path / "clock.jsonl"
    clock = AccuracyClock(budget_s=1000.0, marks_s=[0.01], limit=20, out=str(out),
                          strategy=Exhaustive(trials=3))
    trainer = _fit(module, tmp_path, clock, max_steps=4)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    # The mark after the first step, then the end of the recipe's own schedule (before the budget).
    assert [r["step"] for r in rows] == [1, 4]
    assert all(r["forwards_per_image"] == 30 for r in rows)  # Exhaustive(trials=3) over 10 classes
    assert module.strategy is own
    after = trainer.modes.seen[1]
    assert after["dit"] and not after["ema"]  # the EMA copy stays in eval mode: no label dropout in scoring


def test_a_sample_seed_draws_the_same_spread_of_test_images_every_time(tmp_path: Path) -> None:
    """A class-folder tree lists its test images class by class: its first images are one or two classes, a
    seeded sample spans them all. Mutation tried: ignoring ``sample_seed`` (the first 40 images): fails."""
    from types import SimpleNamespace

    class Sorted(DigitsDataModule):  # the test split in class order, as a folder tree lists it
        def setup(self, stage: str) -> None:
            super().setup(stage)
            ds = self.test_dataset
            self.test_dataset = torch.utils.data.Subset(ds, sorted(range(len(ds)), key=lambda i: int(ds[i][1])))

    trainer = SimpleNamespace(datamodule=Sorted(eval_batch_size=16))
    first = AccuracyClock(budget_s=1, limit=40, out=str(tmp_path / "a.jsonl")).held_out(trainer)
    assert torch.cat([b[1] for b in first]).unique().tolist() == [0, 1]
    picks = [torch.cat([b[1] for b in AccuracyClock(budget_s=1, limit=40, sample_seed=0,
                                                    out=str(tmp_path / "b.jsonl")).held_out(trainer)])
             for _ in range(2)]
    assert torch.equal(picks[0], picks[1]) and len(picks[0]) == 40 and len(picks[0].unique()) >= 8
    # marked_indices names the same images (benchmarks/time_to_accuracy.sh reports a recipe on the others).
    dm = trainer.datamodule
    labels = [int(dm.test_dataset[i][1]) for i in marked_indices(len(dm.test_dataset), 40, 0)]
    assert picks[0].tolist() == labels
