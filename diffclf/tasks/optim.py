"""Learning-rate schedules for training the DiT.

DiT trains at a constant rate for hundreds of thousands of steps. Short budgets (a CPU session, a
30-minute GPU lease) end far from convergence, where annealing the rate to a small final value
lowers the loss the EMA weights reach at the same compute; so the schedule is a recipe choice.
"""

from __future__ import annotations

import math
from typing import Literal

LRSchedule = Literal["constant", "cosine"]


def lr_factor(step: int, warmup_steps: int, total_steps: int, schedule: LRSchedule, final_ratio: float) -> float:
    """Multiplier of the base rate at optimizer ``step`` (0-based): linear warm-up, then constant or cosine.

    The cosine falls from 1 at the end of warm-up to ``final_ratio`` at ``total_steps`` and stays there.
    """
    if schedule not in ("constant", "cosine"):
        raise ValueError(f"model.lr_schedule must be 'constant' or 'cosine', got {schedule!r}")
    if not 0.0 <= final_ratio <= 1.0:
        raise ValueError(f"model.lr_final_ratio must be in [0, 1], got {final_ratio}")
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return final_ratio + (1.0 - final_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
