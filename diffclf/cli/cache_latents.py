"""``diffclf cache-latents``: encode a dataset split with an SD-VAE once, for fast latent-space training."""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import LightningDataModule

from diffclf.configs import load_preset
from diffclf.data.base import IndexedDataset
from diffclf.data.latent_cache import cache_latents as write_cache


def cache_latents(
    data: str,
    vae: str,
    out: str,
    split: str = "train",
    data_args: dict[str, Any] | None = None,
    batch_size: int = 64,
    device: str = "auto",
    dtype: str = "float32",
    num_workers: int = 0,
    limit: int | None = None,
) -> str:
    """Encode a dataset split with an SD-VAE once (both flips) for fast latent-space training.

    Args:
        data: data preset name (``configs/data/NAME.yaml``) or a data YAML file; its image size
            and crop are the ones the cache is made at.
        vae: local ``AutoencoderKL`` folder (e.g. ``sd-vae-ft-ema``).
        out: the ``.safetensors`` cache file to write.
        split: ``train``, ``val`` or ``test``.
        data_args: init_args overriding the preset's, e.g. ``{"train_root": "/data/imagenet/train"}``.
        batch_size: images per VAE batch.
        device: ``auto``, ``cpu`` or ``cuda``.
        dtype: storage type of the latent moments (``float32``, ``float16``, ``bfloat16``).
        num_workers: data loader workers.
        limit: cache only the first ``limit`` images of the split (quick runs, tests); indices are
            their positions in the split.
    """
    dm = load_preset("data", data, LightningDataModule, "--data", data_args)
    stage = {"train": "fit", "val": "fit", "test": "test"}.get(split)
    if stage is None:
        raise ValueError(f"--split {split}: expected train, val or test")
    splits = dm.build_datasets(stage)
    if split not in splits:
        raise ValueError(f"--split {split}: data {data} has no {split} split")
    if limit is not None and limit < 1:
        raise ValueError(f"--limit {limit}: must be >= 1 (or left out for the whole split)")
    dataset = splits[split]
    subset = None if limit is None else range(min(limit, len(dataset)))
    dataset = IndexedDataset(dataset, subset=subset)
    space = dm.label_space
    meta = {"dataset": dm.name, "names": list(space.names), "model_classes": [list(c) for c in space.model_classes],
            "num_model_classes": space.num_model_classes, "label_space": space.name}
    dev = "cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device)
    path = write_cache(dataset, vae, out, batch_size=batch_size, device=dev,
                       image_size=dm.image_size, crop=getattr(getattr(dm, "transform", None), "crop", "none"), meta=meta, dtype=dtype,
                       num_workers=num_workers)
    print(f"latent cache of {len(dataset)} images (both flips) written to {path}")
    return str(path)
