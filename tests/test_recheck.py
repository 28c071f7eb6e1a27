"""The fp32 recheck of a bf16 classifier's close calls (diffclf.strategies.recheck) on the published digits
DiT: re-scored finalists carry the fp32 errors of the very draws they shared, a call bf16 got wrong by less than
the margin is put back, and nothing else moves."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from diffclf.diffusion.scoring import ScoringOptions
from diffclf.strategies import Classification, Exhaustive
from diffclf.strategies.recheck import finalists, recheck_close_calls
from diffclf.tasks.analysis import load_diffusion_task, split_batches

REPO = Path(__file__).resolve().parents[1]
DIGITS_CKPT = REPO / "checkpoints" / "digits_dit_t2.ckpt"
pytestmark = pytest.mark.skipif(not DIGITS_CKPT.is_file(), reason="published digits checkpoint not in this checkout")
DRAWS = 6


@pytest.fixture(scope="module")
def digits():
    """The task in bf16, 24 test images as the strategy sees them, and the bf16 and fp32 exhaustive results on
    the same draws."""
    dm, batches = split_batches("digits", None, 24)
    task = load_diffusion_task(str(DIGITS_CKPT), dm)
    task.set_scoring(precision="bf16")
    task.strategy = Exhaustive(trials=DRAWS)
    images = torch.cat([b[0] for b in batches])
    index = torch.cat([b[2] for b in batches])
    x = task.encode(images, sample=False)
    scorer = task.scorer()
    low = task.strategy.classify(scorer, x, index)
    with scorer.full_precision():
        full = task.strategy.classify(scorer, x, index)
    return task, scorer, images, x, index, low, full


def test_bf16_and_fp32_differ_on_these_draws(digits) -> None:
    *_, low, full = digits
    assert not torch.equal(low.errors, full.errors)  # so the checks below can tell the two apart
    assert torch.isfinite(low.errors).all() and torch.isfinite(full.errors).all()


def test_a_margin_no_call_is_under_changes_nothing(digits) -> None:
    _, scorer, _, x, index, low, _ = digits
    got, close = recheck_close_calls(low, scorer, x, index, margin=1e-12)
    assert got is low and not close.any()


def test_every_rechecked_pair_carries_the_fp32_errors_of_its_draws(digits) -> None:
    _, scorer, _, x, index, low, full = digits
    first, second, shared, _ = finalists(low)
    got, close = recheck_close_calls(low, scorer, x, index, margin=1e9)
    assert close.all() and shared.all()  # exhaustive: every pair shares every draw
    rows = torch.arange(len(index))
    for pos in (first, second):
        assert torch.equal(got.errors[rows, pos], full.errors[rows, pos])  # bit for bit: the same draws in fp32
    others = torch.ones_like(low.errors[..., 0], dtype=torch.bool)
    others[rows, first] = others[rows, second] = False
    assert torch.equal(got.errors[others], low.errors[others])  # the rest keep their bf16 errors
    assert torch.equal(got.forwards, low.forwards + 2 * DRAWS)
    assert torch.equal(got.pred, full.pred)  # fp32's winner was among bf16's two best on every image


def test_a_call_bf16_got_wrong_by_less_than_the_margin_is_put_back(digits) -> None:
    """Mutation tried: the swap left out (the finalists re-scored but their ranks kept): image 0 keeps the
    runner-up and this fails."""
    _, scorer, _, x, index, low, full = digits
    errors = low.errors.clone()
    winner = int(full.pred[0])
    runner = int(full.errors[0].mean(dim=-1).argsort()[1])
    errors[0, runner] = errors[0, winner] * (1 - 1e-5)  # bf16 now prefers the runner-up by 1e-5
    forged = Classification(low.candidates, errors.nanmean(dim=-1), low.num_draws, low.forwards, errors=errors)
    assert int(forged.pred[0]) == runner
    got, close = recheck_close_calls(forged, scorer, x, index, margin=1e-3)
    assert bool(close[0]) and int(got.pred[0]) == winner
    assert torch.equal(got.pred[~close], forged.pred[~close])  # calls above the margin are left alone
    assert got.forwards[0] == forged.forwards[0] + 2 * DRAWS and torch.equal(got.forwards[~close], forged.forwards[~close])


def test_the_task_rechecks_in_bf16_only_and_records_it(digits) -> None:
    task, _, images, _, index, low, full = digits
    task.set_scoring(precision="bf16", recheck=1e9)
    try:
        got = task.run_strategy(images, index)
        assert torch.equal(got.pred, full.pred) and bool((got.forwards > low.forwards).all())
        assert task.scoring.record("cpu")["recheck"] == 1e9
        task.set_scoring(precision="32")
        plain = task.run_strategy(images, index)
        assert torch.equal(plain.forwards, low.forwards)  # nothing to recheck in fp32
        assert "recheck" not in task.scoring.record("cpu")
    finally:
        task.set_scoring(precision="bf16", recheck=0.0)


@pytest.mark.parametrize("value", [-0.1, math.inf, math.nan])
def test_a_negative_or_infinite_margin_is_refused_naming_the_option(value: float) -> None:
    with pytest.raises(ValueError, match=r"scoring.recheck must be a finite relative margin >= 0"):
        ScoringOptions(recheck=value)
