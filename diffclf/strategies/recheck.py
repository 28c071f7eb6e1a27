"""Re-score a reduced-precision classifier's close calls in fp32 on the same draws (plain torch).

Why: bf16 autocast rounds every class's mean error by about 1e-3 of its size (Fashion-MNIST DiT-T/4: median
relative change 8e-4), which is nothing next to most images' margins (median 4e-2) but decides near-ties: on
2,000 Fashion-MNIST test images bf16 changed 5 predictions and bf16 + compile 10, every one among the 36
closest calls (``benchmarks/results/precision/``). A call can only flip when its margin is smaller than the
rounding of that margin, so re-scoring the two best classes of the images whose bf16 margin is below a bound
on that rounding (fitted on training images) restores the fp32 answer at the cost of a few fp32 forwards for
a few images: the finalists are scored again on exactly the draws they shared.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from diffclf.diffusion.scoring import Scorer, ScoreTable
from diffclf.strategies.base import Classification, slot_runs


def finalists(result: Classification) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per image the positions of the two best-ranked classes, the draws both were scored on, and their relative
    margin there: ``(mean(e_2) - mean(e_1)) / mean(e_1)`` over those draws (NaN where fewer than two classes
    are ranked or they share no draw). Returns ``(first, second, shared, margin)``: ``(B,)``, ``(B,)``,
    ``(B, D)``, ``(B,)``."""
    if result.errors is None:
        raise ValueError("a precision recheck needs the strategy's per-draw errors (Classification.errors)")
    scores = result.rank_scores()
    top = scores.topk(min(2, scores.shape[1]), dim=1)
    B = scores.shape[0]
    if top.indices.shape[1] < 2:
        nan = torch.full((B,), math.nan, device=scores.device)
        none = torch.zeros(B, result.errors.shape[-1], dtype=torch.bool, device=scores.device)
        return top.indices[:, 0], top.indices[:, 0], none, nan
    first, second = top.indices[:, 0], top.indices[:, 1]
    rows = torch.arange(B, device=scores.device)
    e1, e2 = result.errors[rows, first].double(), result.errors[rows, second].double()
    shared = ~torch.isnan(e1) & ~torch.isnan(e2) & torch.isfinite(top.values[:, 1:2])
    count = shared.sum(dim=1)
    m1 = torch.where(shared, e1, 0.0).sum(dim=1) / count.clamp(min=1)
    m2 = torch.where(shared, e2, 0.0).sum(dim=1) / count.clamp(min=1)
    margin = torch.where(count > 0, (m2 - m1) / m1, torch.full_like(m1, math.nan))
    return first, second, shared, margin


def recheck_close_calls(
    result: Classification, scorer: Scorer, x: Tensor, index: Tensor, margin: float
) -> tuple[Classification, Tensor]:
    """``result`` with the two best classes of every image whose relative margin is below ``margin`` scored again
    in fp32 on the draws they shared, and swapped where fp32 orders them the other way.

    Only the two finalists move: every other class keeps its rank (a swap exchanges the pair's stage and
    tiebreak), their fp32 errors replace the bf16 ones on the shared draws, and the fp32 forwards are added to
    ``forwards``. ``x`` and ``index`` are what the strategy was given (the very tensor ``x``, so mirrored
    views bound to it still apply). Returns the result and ``(B,)`` which images were re-scored.
    """
    first, second, shared, rel = finalists(result)
    close = ~torch.isnan(rel) & (rel.abs() < margin)
    if not bool(close.any()):
        return result, close
    B = close.shape[0]
    rows = torch.arange(B, device=close.device)
    pair = torch.stack([result.candidates[rows, first], result.candidates[rows, second]], dim=1)
    # built here, not by scorer.new_table: analyses that capture the strategy's tables see only the strategy's
    table = ScoreTable(
        candidates=pair,
        errors=torch.full((B, 2, scorer.max_draws), math.nan, dtype=torch.float32, device=x.device),
        forwards=torch.zeros(B, dtype=torch.long, device=x.device),
    )
    active = close.unsqueeze(1).expand(B, 2)
    keep = shared & close.unsqueeze(1)  # the draws each re-scored pair shared
    needed = keep.any(dim=0)
    with scorer.full_precision():
        for a, b in slot_runs(needed.nonzero().flatten().tolist()):
            scorer.score(table, x, index, a, b, active)
    fp32 = table.errors[:, :, : shared.shape[1]]
    errors = result.errors.clone()
    for j, pos in enumerate((first, second)):
        errors[rows, pos] = torch.where(keep, fp32[:, j], errors[rows, pos])
    means = [torch.where(keep, errors[rows, pos].double(), 0.0).sum(dim=1) for pos in (first, second)]
    swap = close & (means[1] < means[0])
    stage, tiebreak = result.stage.clone(), result.tiebreak.clone()
    for values in (stage, tiebreak):
        a, b = values[rows, first].clone(), values[rows, second].clone()
        values[rows, first] = torch.where(swap, b, a)
        values[rows, second] = torch.where(swap, a, b)
    rechecked = Classification(  # nanmean: NaN where a class was never scored, as before
        result.candidates, errors.nanmean(dim=-1), result.num_draws, result.forwards + table.forwards,
        stage=stage, tiebreak=tiebreak, errors=errors,
    )
    return rechecked, close
