"""A plain (non-editable) install works from any folder: the wheel carries every preset and the ``diffclf``
command, and that command finds the packaged presets by name outside the checkout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import REPO

from diffclf.configs import CONFIG_DIR


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(REPO),
                    "-w", str(out)], check=True, capture_output=True, text=True)
    return next(out.glob("diffclf-*.whl"))


def test_the_wheel_ships_every_preset_and_the_console_script(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    presets = {f"diffclf/configs/{p.relative_to(CONFIG_DIR).as_posix()}" for p in CONFIG_DIR.rglob("*.yaml")}
    assert len(presets) > 30 and presets <= names, sorted(presets - names)[:5]
    prompts = {f"diffclf/configs/{p.relative_to(CONFIG_DIR).as_posix()}" for p in CONFIG_DIR.rglob("*.txt")}
    assert "diffclf/configs/prompts/names/imagenet_clip.txt" in prompts and prompts <= names, sorted(prompts - names)[:5]
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "diffclf = diffclf.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_installed_command_tests_a_checkpoint_from_outside_the_checkout(wheel: Path, tmp_path: Path) -> None:
    # The venv sees the machine's torch & co. but imports diffclf from its own site-packages (checked below).
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                   check=True, capture_output=True)
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import diffclf; print(diffclf.__file__)"],
                           check=True, capture_output=True, text=True, cwd=tmp_path).stdout
    assert str(venv) in where and str(REPO) not in where
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [str(venv / "bin" / "diffclf"), "test", "--config", "quickstart",
         "--ckpt_path", str(REPO / "checkpoints" / "digits_dit_t2_quickstart.ckpt"),
         "--data", "digits", "--model.strategy", "ttest", "--data.init_args.eval_limit=6",
         "--trainer.enable_progress_bar=false"],
        cwd=work, env=env, capture_output=True, text=True, timeout=600, check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    record = json.loads((work / "runs" / "quickstart" / "results.json").read_text())
    assert record["n"] == 6 and record["strategy"].startswith("PairedTTest(")
