"""``scoring.precision: auto``: bf16 where the device multiplies it natively, fp32 elsewhere, and said so."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer

import diffclf.diffusion.precision as precision
from diffclf.data import DigitsDataModule
from diffclf.diffusion.precision import cpu_flags, native_bf16, resolve_precision
from diffclf.diffusion.scoring import ScoringOptions
from diffclf.metrics.results import format_summary
from diffclf.strategies import Exhaustive
from diffclf.tasks import DiffusionClassifier


@pytest.fixture
def flags(monkeypatch: pytest.MonkeyPatch):
    """Pretend the CPU has the given feature flags."""

    def set_flags(*names: str) -> None:
        monkeypatch.setattr(precision, "cpu_flags", lambda: set(names))

    return set_flags


def test_explicit_precisions_are_kept_whatever_the_cpu(flags) -> None:
    flags("avx512_bf16")
    assert resolve_precision("32", "cpu") == ("32", None)
    flags()
    assert resolve_precision("bf16", "cpu") == ("bf16", None)


@pytest.mark.parametrize(
    ("cpu", "expected", "named"),
    [
        ({"avx2", "avx512f"}, "32", None),  # AVX-512 without BF16: emulated, slower
        ({"avx512f", "avx512_bf16"}, "bf16", "AVX-512 BF16"),  # Zen 4, Cooper Lake
        ({"amx_tile", "amx_bf16", "avx512_bf16"}, "bf16", "AMX-BF16"),  # Sapphire Rapids
    ],
)
def test_auto_picks_bf16_only_on_a_cpu_with_native_bf16(flags, cpu: set, expected: str, named: str | None) -> None:
    flags(*cpu)
    chosen, why = resolve_precision("auto", "cpu")
    assert chosen == expected
    assert why.startswith(f"auto: {'bf16' if expected == 'bf16' else 'fp32'} because")
    if named:
        assert named in why
    else:
        assert "no native bf16" in why


def test_auto_does_not_pick_bf16_on_other_devices() -> None:
    assert native_bf16("meta") is None
    assert resolve_precision("auto", "meta")[0] == "32"


def test_unknown_precision_is_refused_naming_the_option() -> None:
    with pytest.raises(ValueError, match=r"scoring\.precision must be '32', 'bf16' or 'auto', got 'fp16'"):
        ScoringOptions(precision="fp16")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="scoring.precision"):
        resolve_precision("half", "cpu")


def test_cpu_flags_fall_back_to_proc_cpuinfo(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Test CPU\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16\n\n"
                    "processor\t: 1\nflags\t\t: fpu\n")
    monkeypatch.delattr(torch.cpu, "get_capabilities", raising=False)
    monkeypatch.setattr(precision, "_CPUINFO", info)
    assert cpu_flags() == {"fpu", "sse2", "avx2", "avx512f", "avx512_bf16"}  # the first CPU's line
    monkeypatch.setattr(precision, "_CPUINFO", tmp_path / "missing")
    assert cpu_flags() == set()


def test_torch_probe_is_preferred_when_present(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"amx_bf16": True, "avx512_bf16": False, "l2": 2048},
                        raising=False)
    monkeypatch.setattr(precision, "_CPUINFO", tmp_path / "missing")
    assert cpu_flags() == {"amx_bf16"}


def test_options_record_what_ran_and_why(flags) -> None:
    options = ScoringOptions(precision="auto")
    flags("avx512_bf16")
    assert options.scorer_kwargs("cpu")["autocast_dtype"] is torch.bfloat16
    rec = options.record("cpu")
    assert rec["precision"] == "bf16" and "AVX-512 BF16" in rec["precision_auto"]
    flags()
    assert options.scorer_kwargs("cpu")["autocast_dtype"] is None
    assert options.record("cpu")["precision"] == "32"
    assert "precision_auto" not in ScoringOptions(precision="bf16").record("cpu")


def _summary_record(scoring: dict) -> dict:
    return {"dataset": "digits", "n": 10, "accuracy": 0.5, "ci_level": 0.95, "ci_low": 0.2, "ci_high": 0.8,
            "top5_accuracy": 1.0, "mean_per_class_accuracy": 0.5, "scoring": scoring}


def test_summary_names_the_precision_auto_chose() -> None:
    line = format_summary(_summary_record({"precision": "bf16", "precision_auto": "auto: bf16 because X"}))
    assert line.splitlines()[-1] == "scoring precision bf16 (auto: bf16 because X)"
    assert len(format_summary(_summary_record({"precision": "32"})).splitlines()) == 2


@pytest.mark.parametrize(("cpu", "dtype", "ran"), [({"amx_bf16"}, torch.bfloat16, "bf16"), ({"avx2"}, None, "32")])
def test_a_test_run_scores_and_records_in_the_precision_auto_chose(
    flags, tmp_path: Path, capsys: pytest.CaptureFixture, cpu: set, dtype, ran: str
) -> None:
    flags(*cpu)
    task = DiffusionClassifier(model="DiT-T/2", input_size=8, in_channels=1, num_classes=10, learn_sigma=False,
                               scoring=ScoringOptions(precision="auto", batch_size=500), strategy=Exhaustive(trials=2),
                               results_dir=str(tmp_path))
    trainer = Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=tmp_path, limit_test_batches=1)
    trainer.test(task, datamodule=DigitsDataModule(eval_batch_size=8), verbose=False)
    assert task.scorer().autocast_dtype == dtype
    assert task.test_record["scoring"]["precision"] == ran
    assert task.test_record["scoring"]["precision_auto"].startswith(f"auto: {'bf16' if dtype else 'fp32'}")
    assert f"scoring precision {ran} (auto: " in capsys.readouterr().out
