"""Bad input is refused in one line naming the option, before the compute it would waste: each case here once
scored every image (or trained for epochs) and then failed, saved nothing, or reported a silently wrong number.
Where "before" matters, the expensive call is replaced by one that fails the test if it is reached."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import REPO
from PIL import Image

from diffclf.cli import main
from diffclf.cli.bench import bench
from diffclf.data import DigitsDataModule
from diffclf.data.folders import ImageFolderDataModule
from diffclf.data.winoground import parquet_engine_installed
from diffclf.diffusion.scoring import ScoringOptions
from diffclf.tasks import DiffusionClassifier
from diffclf.tasks.callbacks import PredictionWriter

DIGITS = [
    "--config", str(REPO / "configs" / "digits.yaml"), "--ckpt_path", str(REPO / "checkpoints" / "digits_dit_t2.ckpt"),
    "--data.init_args.eval_limit=2", "--trainer.enable_progress_bar=false",
]


def _never(*args: object, **kwargs: object) -> None:
    pytest.fail("the expensive step ran before the bad option was refused")


def test_predict_without_a_writer_is_refused_before_scoring(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(DiffusionClassifier, "classify", _never)
    with pytest.raises(ValueError, match=r"predict saves its rows only through a prediction writer: add "
                                         r"--trainer.callbacks\+=diffclf.tasks.callbacks.PredictionWriter"):
        main(["predict", *DIGITS, f"--trainer.default_root_dir={tmp_path}"])


@pytest.mark.parametrize("name", ["all.json", "folder"])
def test_a_results_file_that_is_not_jsonl_is_refused_before_scoring(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A .json name was appended to as lines (with the run's own results.json, corrupting it); a folder failed at the end.
    (tmp_path / "folder").mkdir()
    monkeypatch.setattr(DiffusionClassifier, "classify", _never)
    with pytest.raises(ValueError, match=f"model.results_file {tmp_path / name}: expected a .jsonl file"):
        main(["test", *DIGITS, f"--trainer.default_root_dir={tmp_path}",
              f"--model.init_args.results_file={tmp_path / name}"])


def test_parquet_predictions_without_an_engine_are_refused_when_the_writer_is_built(tmp_path: Path) -> None:
    if parquet_engine_installed():
        PredictionWriter(str(tmp_path / "p.parquet"))
        return
    with pytest.raises(ValueError, match=r"p.parquet: writing .parquet needs pyarrow"):
        PredictionWriter(str(tmp_path / "p.parquet"))


def test_sample_steps_are_checked_when_sample_grids_are_asked_for() -> None:
    args = {"model": "DiT-T/4", "input_size": 8, "in_channels": 1, "num_classes": 3}
    with pytest.raises(ValueError, match=r"model.sample_steps must be in \[1, 1000\].*got 0"):
        DiffusionClassifier(**args, sample_every_n_epochs=5, sample_steps=0)
    DiffusionClassifier(**args, sample_every_n_epochs=0, sample_steps=0)  # no grids: the steps are never read


def test_non_finite_temperature_and_a_zero_eval_batch_are_refused() -> None:
    for value in (float("inf"), float("nan"), 0.0):  # inf gave a uniform p(c|x) and a record saying null
        with pytest.raises(ValueError, match="scoring.temperature must be a finite number > 0"):
            ScoringOptions(temperature=value)
    with pytest.raises(ValueError, match="data.eval_batch_size must be >= 1"):  # 0 once became batch_size
        DigitsDataModule(eval_batch_size=0)
    assert DigitsDataModule(batch_size=7).eval_batch_size == 7


def test_a_held_out_fraction_that_rounds_to_no_image_is_refused_at_fit(tmp_path: Path) -> None:
    for cls in ("a", "b", "c"):
        (tmp_path / "d" / cls).mkdir(parents=True)
        for i in range(10):
            Image.new("RGB", (8, 8), (i * 20, 0, 0)).save(tmp_path / "d" / cls / f"{i}.png")
    for split in ("test", "val"):
        dm = ImageFolderDataModule(root=str(tmp_path / "d"), image_size=8, **{f"{split}_fraction": 0.04})
        with pytest.raises(ValueError, match=rf"data.{split}_fraction 0.04 holds out no image \(classes of 10-10"):
            dm.setup("fit")
    dm = ImageFolderDataModule(root=str(tmp_path / "d"), image_size=8, test_fraction=0.1)
    assert len(dm.split_samples()["test"]) == 3


def test_bench_checks_every_option_before_the_sweep(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import diffclf.cli.bench as bench_module

    monkeypatch.setattr(bench_module, "create_dit", _never)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    tiny = {"model": "DiT-T/4", "input_size": 8, "in_channels": 1, "num_classes": 3, "batch_sizes": [2],
            "strategies": []}
    for change, message in (
        ({"strategies": ["exhaustive", "ttset"]}, "--strategies ttset"),
        ({"images": 0}, "bench --images must be >= 1, got 0"),
        ({"batch_sizes": [2, 0]}, "bench --batch_sizes must be >= 1, got 0"),
        ({"peak_tflops": 0.0}, "bench --peak_tflops must be > 0"),
        ({"out": str(tmp_path)}, "a folder; expected a JSON file name"),
    ):
        with pytest.raises((ValueError, FileNotFoundError), match=message):
            bench(**{**tiny, **change})
    with pytest.raises(OSError, match="bench --out's folder"):
        bench(**tiny, out=str(blocker / "bench.json"))
