"""``diffclf sample``: a PNG grid, one row per class, from a checkpoint's EMA weights."""

from __future__ import annotations

from diffclf.tasks.checkpoints import load_task
from diffclf.tasks.diffusion import DiffusionClassifier


def sample(
    ckpt_path: str,
    out: str = "samples.png",
    per_class: int = 8,
    classes: list[int] | None = None,
    steps: int = 50,
    cfg_scale: float = 1.0,
    seed: int = 0,
    device: str = "cpu",
) -> str:
    """Write a PNG grid, one row per class, sampled (DDIM) from a checkpoint's EMA weights.

    Args:
        ckpt_path: checkpoint written by ``fit`` (or ``publish``).
        out: PNG file to write.
        per_class: images per row.
        classes: model class ids, one row each (default: the first 16 classes).
        steps: DDIM steps.
        cfg_scale: classifier-free guidance scale (1 = no guidance).
        seed: sampler seed.
        device: torch device.
    """
    task = load_task(ckpt_path, map_location=device, sample_steps=steps, sample_cfg_scale=cfg_scale)
    if not isinstance(task, DiffusionClassifier):
        raise ValueError(f"--ckpt_path {ckpt_path}: a {type(task).__name__} checkpoint cannot sample images")  # noqa: TRY004 - a user's file: one-line error
    path = task.write_sample_grid(out, per_class=per_class, class_ids=classes, seed=seed)
    print(f"sample grid written to {path}")
    return str(path)
