"""Checkpoints as the tasks see them: which task wrote one, what its weights fix, loading and publishing.

Files are read by ``diffclf.models.checkpoints.read_checkpoint`` (one reader, one error format); this
module adds the task-level rules on top:

- :func:`task_class`: the class that wrote a checkpoint (its saved class path under the current name;
  files without one are recognised by their weights).
- :func:`fixed_hparams`: what a checkpoint imposes on a run given ``--ckpt_path`` — only the
  hyperparameters its task class lists in ``weight_hparams``. Lightning's default applies *every* saved
  hyperparameter over the config, so a test with another ``scoring.error`` or ``results_dir`` would
  silently run with the training run's values.
- :func:`load_task`: a task rebuilt from a checkpoint alone (``sample``, ``export``, ``bench``), where no
  config exists and the saved constructor arguments are all there is.
- :func:`published_checkpoint`: a release file holding only what evaluation and fine-tuning need.
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import Any

import torch

from diffclf.models.checkpoints import Checkpoint, read_checkpoint
from diffclf.tasks.base import ClassifierTask


def _import(class_path: str) -> type:
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        raise ValueError(f"checkpoint names task class {class_path}, which this diffclf does not have") from None


def task_class(ckpt: Checkpoint) -> type[ClassifierTask]:
    """The task class that wrote ``ckpt``."""
    if ckpt.class_path:
        cls = _import(ckpt.class_path)
    elif any(k.startswith("ema.") for k in ckpt.state_dict):
        from diffclf.tasks.diffusion import DiffusionClassifier

        cls = DiffusionClassifier
    elif "model_name" in ckpt.hparams:
        from diffclf.tasks.timm import TimmClassifier

        cls = TimmClassifier
    else:
        raise ValueError(f"{ckpt.path}: cannot tell which diffclf task wrote this checkpoint")
    if not (isinstance(cls, type) and issubclass(cls, ClassifierTask)):
        raise ValueError(f"{ckpt.path}: {ckpt.class_path} is not a diffclf task")  # noqa: TRY004 - a user's file: one-line error
    return cls


def fixed_hparams(ckpt: Checkpoint, cls: type[ClassifierTask] | None = None) -> dict[str, Any]:
    """The saved hyperparameters the checkpoint's weights fix (architecture, classes, noise schedule)."""
    keep = (cls or task_class(ckpt)).weight_hparams
    return {k: v for k, v in ckpt.hparams.items() if k in keep}


def load_task(path: str | Path, option: str = "--ckpt_path", map_location: str | torch.device = "cpu",
              **overrides: Any) -> ClassifierTask:
    """The task a checkpoint holds, weights loaded, in eval mode, built from its saved arguments.

    Saved arguments the task no longer takes (options of earlier versions) are dropped; ``overrides``
    replace saved ones.
    """
    ckpt = read_checkpoint(path, option=option, map_location=map_location)
    cls = task_class(ckpt)
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    kwargs = {k: v for k, v in {**ckpt.hparams, **overrides}.items() if k in accepted}
    task = cls(**kwargs)
    raw = {**ckpt.raw, "state_dict": dict(ckpt.state_dict)}
    task.on_load_checkpoint(raw)
    task.load_state_dict(raw["state_dict"])
    return task.to(map_location).eval()


def published_checkpoint(path: str | Path, option: str = "--ckpt_path") -> dict[str, Any]:
    """A release checkpoint from a training one: only the EMA weights (evaluation and sampling use them;
    loading copies them into the training weights, so fine-tuning starts from them) — or, for a task that
    keeps no EMA (``trains_ema`` false: the contrastive model), its weights — the hyperparameters that fix
    the architecture and the task's class path; no optimizer state."""
    ckpt = read_checkpoint(path, option=option)
    ema = {k: v for k, v in ckpt.state_dict.items() if k.startswith("ema.")}
    cls = task_class(ckpt) if ema or (ckpt.raw.get("hyper_parameters") or {}).get("_class_path") else None
    if not ema and (cls is None or getattr(cls, "trains_ema", True)):
        raise ValueError(f"{option} {path}: no EMA weights (ema.*); expected a DiffusionClassifier checkpoint")
    if ckpt.hparams.get("pretrained") is not None:
        raise ValueError(
            f"{option} {path} was fine-tuned from model.pretrained={ckpt.hparams['pretrained']}; "
            "publish it with `diffclf export` (a diffusers folder) instead"
        )
    return {
        "state_dict": ema or dict(ckpt.state_dict),  # a task without an EMA (a contrastive model): its weights
        "hyper_parameters": {"_class_path": f"{cls.__module__}.{cls.__name__}",
                             **fixed_hparams(ckpt, cls)},
        "pytorch-lightning_version": ckpt.raw.get("pytorch-lightning_version"),
        "global_step": ckpt.raw.get("global_step"),
        "epoch": ckpt.raw.get("epoch"),
        "published_from": str(path),
    }
