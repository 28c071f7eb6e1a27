"""The learning-rate schedule: warm-up, then constant (DiT) or a cosine that ends where it says."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from lightning.pytorch import Trainer, seed_everything

from diffclf.data import DigitsDataModule
from diffclf.diffusion.scoring import ScoringOptions
from diffclf.strategies import Exhaustive
from diffclf.tasks import DiffusionClassifier
from diffclf.tasks.optim import lr_factor


def test_warmup_is_linear_then_constant() -> None:
    assert [lr_factor(s, 4, 100, "constant", 0.0) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert lr_factor(10_000, 0, 0, "constant", 0.0) == 1.0


def test_cosine_falls_from_one_to_the_final_ratio_and_stays() -> None:
    f = [lr_factor(s, 10, 110, "cosine", 0.1) for s in range(150)]
    assert f[9] == 1.0 and f[10] == 1.0
    assert math.isclose(f[60], 0.55, rel_tol=1e-12)  # halfway: midpoint of 1 and 0.1
    assert all(a >= b for a, b in zip(f[10:], f[11:]))
    assert f[110] == pytest.approx(0.1) and f[149] == pytest.approx(0.1)


@pytest.mark.parametrize(
    ("schedule", "ratio", "match"), [("linear", 0.0, "lr_schedule"), ("cosine", 1.5, "lr_final_ratio")]
)
def test_bad_options_name_themselves(schedule: str, ratio: float, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        lr_factor(0, 0, 10, schedule, ratio)  # type: ignore[arg-type]


def _module(**kwargs: object) -> DiffusionClassifier:
    return DiffusionClassifier(
        model="DiT-T/2", input_size=8, in_channels=1, num_classes=10, learn_sigma=False, lr=1e-3,
        scoring=ScoringOptions(batch_size=500), results_dir=None, strategy=Exhaustive(trials=2), **kwargs,
    )


def test_cosine_reaches_its_final_rate_at_the_trainers_last_step(tmp_path: Path) -> None:
    seed_everything(0)
    module = _module(warmup_steps=3, lr_schedule="cosine", lr_final_ratio=0.05)
    trainer = Trainer(
        accelerator="cpu", max_steps=12, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, default_root_dir=tmp_path,
    )
    trainer.fit(module, datamodule=DigitsDataModule(batch_size=128))
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(1e-3 * 0.05)


def test_cosine_without_an_end_is_refused(tmp_path: Path) -> None:
    module = _module(lr_schedule="cosine")
    trainer = Trainer(
        accelerator="cpu", max_epochs=-1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, default_root_dir=tmp_path,
    )
    with pytest.raises(ValueError, match="max_steps"):
        trainer.fit(module, datamodule=DigitsDataModule(batch_size=128))
