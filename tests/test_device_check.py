"""The GPU device check (``benchmarks/device_check.sh``) and the scripts it runs, on CPU with tiny sizes.

A session lent a GPU gets one try of a few minutes, so the script must not have rotted by then: its dry run
runs the same steps end to end here. The official-loop re-creation must do the same work as diffclf's engine,
or the speed ratio it reports compares different things.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from diffclf.diffusion.schedule import NoiseSchedule
from diffclf.diffusion.scoring import Scorer
from diffclf.models.dit import create_dit
from diffclf.strategies import Adaptive

REPO = Path(__file__).resolve().parent.parent
BENCHMARKS = REPO / "benchmarks"
DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")

pytestmark = pytest.mark.usefixtures("one_thread")


def _script(name: str) -> ModuleType:
    """A benchmark script as a module, loaded from its file (the scripts are not a package)."""
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


official_loop = _script("official_loop")
train_throughput = _script("train_throughput")


# ---------------------------------------------------------------------------------------------- official loop
def test_official_loop_scores_what_the_engine_scores() -> None:
    """Same prediction, forwards, draws and per-class mean errors as ``Adaptive(schedule="official")`` with the
    noise bank. Trials 4, 10, 20 overlap in part: of the 4-point sub-grid (positions 2, 7, 12, 17 of 20) the
    10-point one (odd positions) shares 7 and 17, so stage 2 adds 8 draws and stage 3 the last 8."""
    torch.manual_seed(0)
    dit = official_loop.fill_zero_layers(
        create_dit("DiT-T/2", input_size=8, in_channels=4, num_classes=7, learn_sigma=True)).eval()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, 4, 8, 8, generator=gen) * 2
    noise = torch.randn(20, 4, 8, 8, generator=gen)
    acp = NoiseSchedule().alphas_cumprod.float()
    schedule = NoiseSchedule.from_alphas_cumprod(acp)
    classes = torch.tensor([0, 2, 3, 4, 5, 6])
    keep, trials = [4, 2, 1], [4, 10, 20]
    engine = official_loop.engine_eval(dit, x, classes, keep, trials, schedule, noise, batch_size=32)
    strategy = Adaptive(keep, trials, schedule="official")
    grid = Scorer(dit, schedule, 4, max_draws=20, order=strategy.draw_order).timesteps(torch.tensor([0]))[0]
    for i in range(3):
        record: dict = {}
        pred, forwards = official_loop.official_eval(dit, x[i: i + 1], classes, keep, trials, acp, noise,
                                                     record=record)
        assert (pred, forwards) == (int(engine.pred[i]), int(engine.forwards[i])) == (pred, 6 * 4 + 4 * 8 + 2 * 8)
        for j in range(len(classes)):
            n = int(engine.num_draws[i, j])
            assert record[j]["t"].tolist() == grid[:n].tolist(), f"class {j}: other timesteps, or in another order"
        official_means = torch.stack([record[j]["pred_errors"].mean() for j in range(len(classes))])
        torch.testing.assert_close(official_means, engine.mean_error[i])
    assert len({len(r["t"]) for r in record.values()}) == 3  # the classes dropped at each stage got fewer draws
    bf16 = official_loop.engine_eval(dit, x, classes, keep, trials, schedule, noise, batch_size=32, precision="bf16")
    assert torch.equal(bf16.forwards, engine.forwards)  # the same work, under autocast
    assert not torch.equal(bf16.mean_error, engine.mean_error)  # and it did run in bf16
    torch.testing.assert_close(bf16.mean_error, engine.mean_error, rtol=0.15, atol=0.02, equal_nan=True)


@pytest.mark.skipif(not (REPO / "checkpoints" / "digits_dit_t2.ckpt").is_file(), reason="published digits checkpoint")
def test_official_loop_end_to_end_on_labelled_images(tmp_path: Path) -> None:
    """``--data``: real test images and their labels; the same-schedule engine agrees with the official loop
    image for image, accuracies count the labels, and a strategy preset runs through the task as ``test`` does.
    Mutation tried: labels taken as the data's class positions shifted by one: every accuracy check fails."""
    from diffclf.tasks.analysis import split_batches

    out = tmp_path / "e2e.json"
    got = official_loop.main(["--ckpt_path", str(REPO / "checkpoints" / "digits_dit_t2.ckpt"), "--data", "digits",
                              "--images", "5", "--keep", "2", "1", "--trials", "2", "4", "--engine_precisions", "32",
                              "--engine_batch_sizes", "16", "--engine_compile", "off", "on", "--engine_strategies",
                              "exhaustive", "--engine_strategy_compile", "--threads", "1", "--out", str(out)])
    _, batches = split_batches("digits", None, 5)
    targets = [int(y) for b in batches for y in b[1]]
    official = got["official"]
    assert official["correct"] == sum(p == t for p, t in zip(official["pred"], targets))
    assert official["accuracy"] == pytest.approx(official["correct"] / 5)
    eager, compiled = got["engine"]
    assert not eager["compile"] and compiled["compile"] and compiled["frozen"] and compiled["first_run_seconds_per_image"] > 0
    for engine in (eager, compiled):
        assert engine["pred"] == official["pred"] and engine["agrees_with_official"] == 5  # the same work
        assert engine["correct"] == official["correct"]
    (row,) = got["end_to_end"]
    assert row["strategy_preset"] == "exhaustive" and row["scoring"]["precision"] in ("32", "bf16")
    assert row["scoring"]["compile"] and row["first_run_seconds_per_image"] > 0
    assert row["within_official_interval"] == (official["ci_low"] <= row["accuracy"] <= official["ci_high"])
    assert row["speedup_vs_official"] > 0 and got["inputs"] == "the first 5 test images of digits"
    assert json.loads(out.read_text())["end_to_end"][0]["correct"] == row["correct"]


def test_official_loop_data_needs_a_checkpoint() -> None:
    with pytest.raises(SystemExit, match="--data needs --ckpt_path"):
        official_loop.main(["--data", "digits", "--device", "cpu"])


def test_official_eval_keeps_the_official_batch_loop() -> None:
    """One denoiser call per batch of 32 (the last one partial), each on the device's own inputs."""
    dit = official_loop.fill_zero_layers(create_dit("DiT-T/2", input_size=8, in_channels=4, num_classes=5))
    sizes = []
    dit.register_forward_hook(lambda module, args, out: sizes.append(args[0].shape[0]))
    noise = torch.randn(10, 4, 8, 8)
    _, forwards = official_loop.official_eval(dit.eval(), torch.randn(1, 4, 8, 8), torch.arange(5), [1], [10],
                                              NoiseSchedule().alphas_cumprod.float(), noise)
    assert forwards == 50 and sizes == [32, 18]


# ---------------------------------------------------------------------------------------------- training clock
def test_step_clock_times_whole_steps_after_the_warmup() -> None:
    clock = train_throughput.StepClock()
    clock.starts, clock.images = [0.0, 5.0, 6.0, 8.0, 10.0], [8, 8, 8, 8, 4]
    # Steps 1, 2, 3 ran from 5.0 to 10.0 (the start of the last step, whose end is not seen).
    assert clock.images_per_s(warmup=1) == pytest.approx(24 / 5)
    with pytest.raises(ValueError, match="warmup"):
        clock.images_per_s(warmup=4)


def test_synthetic_cache_reads_as_a_latent_cache(tmp_path) -> None:
    from diffclf.data.latent_cache import LatentCacheDataset
    from diffclf.data.latents import CachedLatentsDataModule

    path = train_throughput.write_synthetic_cache(tmp_path / "c.safetensors", count=6, channels=4, side=8,
                                                  classes=3)
    dm = CachedLatentsDataModule(train_cache=str(path))
    assert (dm.in_channels, dm.image_size, dm.label_space.num_model_classes) == (4, 8, 3)
    latent, target, index = LatentCacheDataset(path, sample=False, flip=False)[5]
    assert latent.shape == (4, 8, 8) and 0 <= target < 3 and index == 5


# ---------------------------------------------------------------------------------------------- the script
def _run_command(text: str) -> str:
    match = re.search(r"^#?\s*(DEVICE_CHECK_COMMIT=\S+ .*bash benchmarks/device_check\.sh.*)$", text, re.MULTILINE)
    assert match, "no device run command"
    return match.group(1).strip().strip("`")


def test_the_documented_run_command_is_one_and_fits_the_device_tool() -> None:
    script = _run_command((BENCHMARKS / "device_check.sh").read_text())
    readme = _run_command((BENCHMARKS / "README.md").read_text())
    assert script == readme and len(script) <= 2000


EXPECTED = {
    "bench_bf16": {"sweep", "best_tflops", "mfu", "peak_tflops", "engine_efficiency", "peak_memory_mb",
                   "mfu_against"},
    "bench_fp32": {"sweep", "best_tflops", "mfu", "peak_tflops", "peak_memory_mb", "mfu_against"},
    "bench_bf16_compile": {"sweep", "best_tflops", "mfu", "compile", "peak_memory_mb", "mfu_against"},
    "official_loop": {"official", "engine", "keep", "trials", "peak_memory_mb"},
    "train_dit_xl2": {"images_per_s", "seconds_per_step", "train_tflops_3x_forward", "mfu", "peak_memory_mb"},
    "fashion_train": {"images_per_s", "seconds_per_step", "peak_memory_mb"},
    "fashion_test": {"accuracy", "seconds_per_image", "forwards_per_image", "peak_memory_mb"},
}


def test_dry_run_writes_every_figure(tmp_path) -> None:
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "OMP_NUM_THREADS": "1", "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(BENCHMARKS / "device_check.sh"), "--dry-run"], cwd=REPO, env=env,
                          check=False, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    expected = dict(EXPECTED)
    if not DEBIAN_FASHION.is_dir():
        expected.pop("fashion_train")
        expected.pop("fashion_test")
        assert "skipped, no Fashion-MNIST" in done.stdout
    files = sorted(p.name for p in out.iterdir())
    assert files == sorted([*(f"{name}.json" for name in expected), "device_check.log"])
    assert len(files) <= 8 and all(p.is_file() for p in out.iterdir())
    for name, keys in expected.items():
        record = json.loads((out / f"{name}.json").read_text())
        assert keys <= set(record), f"{name}: missing {keys - set(record)}"
        assert {"device", "date", "command", "commit"} <= set(record["provenance"]), name
        assert record["step"]["exit_code"] == 0, name
    assert json.loads((out / "bench_bf16_compile.json").read_text())["compile"] is True
    official = json.loads((out / "official_loop.json").read_text())
    assert all(e["agrees_with_official"] == official["images"] for e in official["engine"])
    summary = done.stdout[done.stdout.index("== summary"):]
    assert all(name in summary for name in expected)
