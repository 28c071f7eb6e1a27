"""Exponential moving average of a model's weights (DiT's ``update_ema``)."""

from __future__ import annotations

import copy

import torch
from torch import nn


def make_ema(model: nn.Module) -> nn.Module:
    """A frozen copy of ``model`` in eval mode; it is a submodule, so checkpoints carry it."""
    ema = copy.deepcopy(model)
    ema.requires_grad_(False)
    ema.eval()
    return ema


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """``ema = decay * ema + (1 - decay) * model`` over trainable parameters; buffers are copied.

    Frozen parameters (DiT's fixed position embedding) never change, so they are skipped.
    """
    ema_params = dict(ema.named_parameters())
    pairs = [(ema_params[name], p) for name, p in model.named_parameters() if p.requires_grad]
    if pairs:
        ema_list = [e for e, _ in pairs]
        src_list = [p.detach().to(e.dtype) for e, p in pairs]
        torch._foreach_lerp_(ema_list, src_list, 1.0 - decay)
    ema_buffers = dict(ema.named_buffers())
    for name, b in model.named_buffers():
        ema_buffers[name].copy_(b)


def ema_decay_at(step: int, decay: float, warmup: bool) -> float:
    """Decay for optimizer step ``step``; with warmup, ``min(decay, (1+step)/(10+step))``.

    Warmup lets short runs (CPU quickstarts of a few thousand steps) get a useful EMA without
    changing the long-run decay that the paper recipe uses.
    """
    if not warmup:
        return decay
    return min(decay, (1.0 + step) / (10.0 + step))
