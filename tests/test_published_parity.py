"""The published digits checkpoint predicts what it predicted before the package was restructured.

``benchmarks/results/refactor_parity/digits_dit_t2_before.jsonl`` holds the rows ``predict`` wrote with the
code of commit 01227b3 (the layout before issue 15; command in that folder's README). The same checkpoint,
config and seed through today's CLI must give the same rows: predictions, top-5, forwards and draws exactly,
errors to float32 rounding (the reference was recorded on one CPU; another CPU model may round the last bit
differently, which is not a behaviour change). ``p(c|x)`` was redefined since (issue 16: ELBO units,
``softmax(-D T / 2 * err)``), so the probabilities are checked against that definition applied to the
reference's errors, and the new ``logits`` column is the last one.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import REPO

from diffclf.cli import main

BEFORE = REPO / "benchmarks" / "results" / "refactor_parity" / "digits_dit_t2_before.jsonl"
N = 60

pytestmark = pytest.mark.usefixtures("one_thread")


def test_published_digits_model_predicts_as_before_the_restructuring(tmp_path: Path) -> None:
    before = [json.loads(line) for line in BEFORE.read_text().splitlines()][:N]
    out = tmp_path / "now.jsonl"
    main(["predict", "--config", str(REPO / "configs" / "digits.yaml"),
          "--ckpt_path", str(REPO / "checkpoints" / "digits_dit_t2.ckpt"),
          f"--trainer.default_root_dir={tmp_path}", "--trainer.enable_progress_bar=false",
          f"--data.init_args.eval_limit={N}",
          "--model.init_args.scoring.precision=32",  # the reference is fp32; the config's "auto" is bf16 on bf16 CPUs
          "--trainer.callbacks+=diffclf.tasks.callbacks.PredictionWriter", f"--trainer.callbacks.output={out}"])
    now = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["index"] for r in now] == list(range(N))
    scale = 1 * 8 * 8 * 1000 / 2  # D * T / 2 nats per unit of mean error: 8x8 grey digits, 1000 steps
    for old, new in zip(before, now):
        assert list(new) == [*old, "logits"]  # the same columns in the same order, then the logits
        for key in ("index", "target", "pred", "top5", "forwards", "num_draws"):
            assert new[key] == old[key], (old["index"], key)
        torch.testing.assert_close(torch.tensor(new["mean_error"]), torch.tensor(old["mean_error"]), rtol=1e-5, atol=1e-7)
        # Exhaustive scores every class on the same draws, so the gap to the winner is a difference of means.
        err = torch.tensor(old["mean_error"], dtype=torch.float64)
        want = torch.softmax(-scale * (err - err.min()), dim=0)
        torch.testing.assert_close(torch.tensor(new["probs"], dtype=torch.float64), want, rtol=1e-3, atol=1e-6)
    assert sum(r["pred"] == r["target"] for r in now) == sum(r["pred"] == r["target"] for r in before)
