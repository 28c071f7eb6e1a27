"""``diffclf publish``: a release checkpoint (EMA weights and architecture only) from a training one."""

from __future__ import annotations

from pathlib import Path

import torch

from diffclf.tasks.checkpoints import published_checkpoint


def publish(ckpt_path: str, out: str) -> str:
    """A release checkpoint from a training one: only the EMA weights (evaluation and sampling use them;
    loading copies them into the training weights, so fine-tuning starts from them), the
    hyperparameters that fix the architecture, and no optimizer state: a few MB instead of four
    copies of the model. Loads with ``--ckpt_path`` like any checkpoint.

    Args:
        ckpt_path: checkpoint written by ``fit``.
        out: the release file to write.
    """
    release = published_checkpoint(ckpt_path)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    torch.save(release, out)
    size = Path(out).stat().st_size / 2**20
    print(f"published {out} ({size:.1f} MiB): EMA weights of global step {release['global_step']}")
    return out
