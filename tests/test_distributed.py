"""Scale-out for real: a simulated two-node SLURM job (two processes, gloo) and a SIGKILLed run.

Each process is started with the variables ``srun`` would set, so Lightning's SLURM environment
(not a test double) decides ranks and world size. The checks are exact: every image is counted once,
predictions under DDP equal the single-process ones image by image, and a classification run killed
mid-way and restarted ends with exactly the uninterrupted run's predictions.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
QUICK = ROOT / "configs" / "quickstart.yaml"
EVAL = ["--data.init_args.eval_limit=11", "--data.init_args.eval_batch_size=4",
        "--model.init_args.strategy.init_args.trials=4", "--trainer.enable_progress_bar=false"]


def _run_dirs(tmp: Path) -> list[str]:
    return [f"--trainer.logger.init_args.save_dir={tmp}", f"--trainer.callbacks.init_args.dirpath={tmp / 'ckpt'}",
            f"--model.init_args.results_dir={tmp}", f"--trainer.default_root_dir={tmp}"]


def _env(rank: int = 0, world: int = 1, port: int = 0) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "MASTER_", "WORLD_SIZE", "RANK", "LOCAL_RANK"))}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    if world > 1:
        env.update(
            SLURM_NTASKS=str(world), SLURM_NTASKS_PER_NODE="1", SLURM_NNODES=str(world), SLURM_PROCID=str(rank),
            SLURM_LOCALID="0", SLURM_NODEID=str(rank), SLURM_JOB_ID="4242", SLURM_JOB_NAME="diffclf-test",
            MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
        )
    return env


def _srun(args: list[str], world: int, timeout: float = 300, env: dict[str, str] | None = None) -> list[str]:
    """Run ``python cli.py ARGS`` as ``world`` SLURM tasks (one per simulated node), with ``env`` added to
    their environment; return their logs."""
    port = free_port()
    ddp = ["--trainer.accelerator=cpu", "--trainer.devices=1"]
    if world > 1:
        ddp += ["--trainer.strategy=ddp", f"--trainer.num_nodes={world}"]
    procs = [
        subprocess.Popen([sys.executable, "cli.py", *args, *ddp], cwd=ROOT, env={**_env(r, world, port), **(env or {})},
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for r in range(world)
    ]
    logs = []
    for p in procs:
        out, _ = p.communicate(timeout=timeout)
        logs.append(out)
    for r, (p, out) in enumerate(zip(procs, logs)):
        assert p.returncode == 0, f"rank {r} failed:\n{out[-4000:]}"
    return logs


@pytest.fixture(scope="module")
def two_node_fit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A quickstart DiT trained for 4 steps by a simulated 2-node job (2 steps per epoch per rank); each rank
    writes what its DiT was trained on (``test_training_rng.RecordDraws``) to ``draws/draws_rank{r}.json``."""
    tmp = tmp_path_factory.mktemp("ddp")
    tests = os.pathsep.join(p for p in (str(ROOT / "tests"), os.environ.get("PYTHONPATH")) if p)
    _srun(["fit", "--config", str(QUICK), *_run_dirs(tmp), "--trainer.max_epochs=2", "--trainer.limit_train_batches=2",
           "--trainer.limit_val_batches=1", "--trainer.check_val_every_n_epoch=1",
           "--model.init_args.sample_every_n_epochs=0", "--trainer.enable_progress_bar=false",
           "--trainer.callbacks+=test_training_rng.RecordDraws", f"--trainer.callbacks.out={tmp / 'draws'}"],
          world=2, env={"PYTHONPATH": tests})
    return tmp


def test_two_node_fit_then_test_counts_every_image_once(two_node_fit: Path) -> None:
    ckpt = two_node_fit / "ckpt" / "last.ckpt"
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert state["global_step"] == 4  # 2 epochs x 2 batches; both ranks stepped together
    # Each rank draws its own timesteps, eps and class-dropout masks (with the global RNG, seeded alike on
    # every rank by seed_everything, both drew the same: a global batch of 256 held 128 distinct draws).
    draws = [json.loads((two_node_fit / "draws" / f"draws_rank{r}.json").read_text()) for r in range(2)]
    assert sorted(draws[0]) == sorted(draws[1]) == ["0", "1", "2", "3"]
    for step, mine in draws[0].items():
        theirs = draws[1][step]
        assert sum(a != b for a, b in zip(mine["t"], theirs["t"])) > 0.9 * len(mine["t"]), step
        assert mine["eps"] != theirs["eps"] and mine["drop"] != theirs["drop"], step
        assert 0 < sum(mine["drop"]) < len(mine["drop"]), step  # quickstart's class dropout of 0.1

    out = two_node_fit / "test2"
    _srun(["test", "--config", str(QUICK), *_run_dirs(out), *EVAL, f"--ckpt_path={ckpt}"], world=2)
    two = json.loads((out / "results.json").read_text())
    # 11 images on 2 ranks: 6 + 5. Lightning's default sampler would have scored 12.
    assert two["n"] == 11 and two["world_size"] == 2

    single = two_node_fit / "test1"
    _srun(["test", "--config", str(QUICK), *_run_dirs(single), *EVAL, f"--ckpt_path={ckpt}"], world=1)
    one = json.loads((single / "results.json").read_text())
    assert (one["n"], one["correct"], one["forwards_per_image"]) == (two["n"], two["correct"], two["forwards_per_image"])


def _predict(tmp: Path, ckpt: Path, output: Path, world: int = 1, extra: list[str] | None = None) -> list[str]:
    return ["predict", "--config", str(QUICK), *_run_dirs(tmp), f"--ckpt_path={ckpt}",
            "--trainer.callbacks+=diffclf.tasks.callbacks.PredictionWriter", f"--trainer.callbacks.output={output}",
            "--trainer.callbacks.keep_parts=true", "--trainer.enable_progress_bar=false", *(extra or [])]


def _rows(path: Path) -> dict[int, dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    by_index = {r["index"]: r for r in rows}
    assert len(by_index) == len(rows), "an index was written twice"
    return by_index


def test_predictions_identical_on_one_and_two_nodes(two_node_fit: Path) -> None:
    ckpt = two_node_fit / "ckpt" / "last.ckpt"
    extra = EVAL
    one, two = two_node_fit / "p1" / "preds.jsonl", two_node_fit / "p2" / "preds.jsonl"
    _srun(_predict(two_node_fit / "p1", ckpt, one, extra=extra), world=1)
    _srun(_predict(two_node_fit / "p2", ckpt, two, extra=extra), world=2)
    a, b = _rows(one), _rows(two)
    assert sorted(a) == list(range(11)) and a == b


def test_killed_classification_resumes_to_the_uninterrupted_result(two_node_fit: Path) -> None:
    ckpt = two_node_fit / "ckpt" / "last.ckpt"
    extra = ["--data.init_args.eval_batch_size=2", "--model.init_args.strategy.init_args.trials=30",
             "--data.init_args.eval_limit=120"]
    ref = two_node_fit / "ref" / "preds.jsonl"
    _srun(_predict(two_node_fit / "ref", ckpt, ref, extra=extra), world=1)

    out = two_node_fit / "killed" / "preds.jsonl"
    parts = out.with_name(out.name + ".parts")
    cmd = [sys.executable, "cli.py", *_predict(two_node_fit / "killed", ckpt, out, extra=extra),
           "--trainer.accelerator=cpu", "--trainer.devices=1"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if len(list(parts.glob("r*.jsonl"))) >= 5:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed; give it more work"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(list(parts.glob("r*.jsonl")))
    assert 5 <= done_before < 60 and not out.exists()

    logs = _srun(_predict(two_node_fit / "killed", ckpt, out, extra=extra), world=1)
    assert "120 rows written" in logs[0]
    assert _rows(out) == _rows(ref)
