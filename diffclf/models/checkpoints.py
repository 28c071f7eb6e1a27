"""The one reader of diffclf checkpoint files (training, published, timm-baseline checkpoints).

Every path that opens a diffclf checkpoint — ``--ckpt_path`` in the CLI, ``publish``, ``init_from``
warm restarts, the prefilter's classifier, ``build-shift``'s reference model, the benchmarks —
goes through :func:`read_checkpoint`, so all of them give the same one-line error for a missing or
unreadable file, load without executing pickled code (``weights_only``), and see class paths of
earlier diffclf versions under their current names. Which hyperparameters a checkpoint's weights
fix is the task's business (``ClassifierTask.weight_hparams``); this module only reads.

Plain torch: no Lightning import (the prefilter, a strategy, uses it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

# Task classes that earlier diffclf versions saved under another module path.
LEGACY_CLASS_PATHS = {
    "diffclf.module.DiffusionClassifier": "diffclf.tasks.DiffusionClassifier",
    "diffclf.baselines.TimmClassifier": "diffclf.tasks.TimmClassifier",
}


@dataclass
class Checkpoint:
    """What a diffclf checkpoint file holds.

    Attributes:
        path: the file it was read from.
        state_dict: parameter name → tensor (``dit.*``/``ema.*`` for a diffusion task, ``model.*`` for
            a timm baseline; a published checkpoint holds ``ema.*`` only).
        hparams: the saved constructor arguments, without ``_class_path``.
        class_path: the task class that wrote it (current name), or None when not recorded.
        raw: the whole loaded dictionary (``global_step``, ``classifier_config``, ...).
    """

    path: Path
    state_dict: dict[str, torch.Tensor]
    hparams: dict[str, Any]
    class_path: str | None
    raw: dict[str, Any] = field(repr=False)

    @property
    def global_step(self) -> int:
        return int(self.raw.get("global_step") or 0)

    def prefixed(self, prefix: str) -> dict[str, torch.Tensor]:
        """The weights under ``prefix`` (e.g. ``"ema."``) with the prefix removed."""
        return {k[len(prefix):]: v for k, v in self.state_dict.items() if k.startswith(prefix)}


def current_class_path(class_path: str | None) -> str | None:
    """A saved task class path under its current name."""
    return LEGACY_CLASS_PATHS.get(class_path, class_path) if class_path else class_path


def read_checkpoint(
    path: str | Path, option: str = "--ckpt_path", map_location: str | torch.device = "cpu", mmap: bool = False
) -> Checkpoint:
    """Read a diffclf checkpoint, or fail with one line naming ``option``, the file and the reason.

    ``mmap`` maps the tensors instead of reading them (cheap when only the hyperparameters or the step
    are wanted from a multi-GB training checkpoint).
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{option} {p}: no such checkpoint file")
    try:
        raw = torch.load(p, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same one-line answer
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{option} {p}: not a readable checkpoint ({reason})") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("state_dict", {}), dict):
        raise ValueError(f"{option} {p}: not a diffclf checkpoint (expected a dict with a state_dict)")  # noqa: TRY004 - a user's file: one-line error
    hparams = dict(raw.get("hyper_parameters") or {})
    class_path = current_class_path(hparams.pop("_class_path", None))
    return Checkpoint(p, dict(raw.get("state_dict") or {}), hparams, class_path, raw)
