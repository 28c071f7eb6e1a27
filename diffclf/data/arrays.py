"""Grey images held in memory as ``uint8`` tensors, and the fixed stratified splits cut from them.

Digits, Fashion-MNIST and its shifts all fit in RAM as ``uint8`` (Fashion-MNIST: 55 MB), so their
datasets are tensor-backed and convert one item at a time to ``(1, S, S)`` floats in [-1, 1] — no
decoding, no file reads after setup, and cheap to copy into dataloader workers. Images are padded
with the background value (-1) to ``image_size`` (Fashion-MNIST's 28×28 to 32) so patch-2/patch-4
DiTs fit, or shrunk to it (antialiased) when it is smaller: a 16-pixel side gives a patch-4 DiT a third
to a quarter of the tokens of 28–32, which is what a short training budget gains most from. Validation
subsets are drawn with a fixed seed, so they never depend on the run's seed.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.model_selection import train_test_split
from torch import Tensor
from torch.utils.data import Dataset

ValSplit = Literal["test", "train"]


# --------------------------------------------------------------------------- tensors → items
def pad_images(images: Tensor, image_size: int, value: float = -1.0) -> Tensor:
    """Pad ``(..., H, W)`` to ``image_size`` on both sides (extra pixel right/bottom); the image stays centred."""
    h, w = images.shape[-2:]
    if image_size < max(h, w):
        raise ValueError(
            f"image_size {image_size} is smaller than the {h}x{w} images (padding only, no crop)"
        )
    top, left = (image_size - h) // 2, (image_size - w) // 2
    if image_size == h == w:
        return images
    return F.pad(images, (left, image_size - w - left, top, image_size - h - top), value=value)


def fit_images(images: Tensor, image_size: int) -> Tensor:
    """``(..., H, W)`` to ``image_size`` square: padded (see :func:`pad_images`) when it is at least the
    larger side, else resized with an antialiased bilinear filter (a box-like average, not a subsample)."""
    h, w = images.shape[-2:]
    if image_size >= max(h, w):
        return pad_images(images, image_size)
    if h != w:
        raise ValueError(f"image_size {image_size} would shrink non-square {h}x{w} images; pad them instead")
    lead = images.shape[:-2]
    flat = images.reshape(-1, 1, h, w)
    small = F.interpolate(flat, size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False)
    return small.clamp(-1.0, 1.0).reshape(*lead, image_size, image_size)


def uint8_to_model(images: Tensor, max_value: float = 255.0, image_size: int | None = None) -> Tensor:
    """``(N, H, W)`` integer pixels in ``[0, max_value]`` → float ``(N, 1, S, S)`` in [-1, 1], background-padded
    (or shrunk, for ``image_size`` below the images' side)."""
    x = images.float().div(max_value / 2.0).sub(1.0).unsqueeze(-3)
    return x if image_size is None else fit_images(x, image_size)


class UInt8ImageDataset(Dataset):
    """Grey images kept as a ``uint8`` tensor ``(N, H, W)``, converted per item to ``(1, S, S)`` in [-1, 1].

    Args:
        images: ``(N, H, W)`` uint8 pixels in ``[0, max_value]``.
        targets: ``(N,)`` label-space indices.
        max_value: the pixel value that maps to +1 (255; digits: 16).
        image_size: side to pad to with -1, or to shrink to when smaller than the images (default: as they are).
    """

    def __init__(
        self, images: Tensor, targets: Tensor, max_value: float = 255.0, image_size: int | None = None
    ) -> None:
        if images.dtype != torch.uint8 or images.ndim != 3:
            raise ValueError(f"expected (N, H, W) uint8 images, got {tuple(images.shape)} {images.dtype}")
        if len(images) != len(targets):
            raise ValueError(f"{len(images)} images but {len(targets)} targets")
        self.images = images
        self.targets = targets.long()
        self.max_value = max_value
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        image = uint8_to_model(self.images[i : i + 1], self.max_value, self.image_size)[0]
        return image, int(self.targets[i])


# --------------------------------------------------------------------------- fixed splits
def stratified_subset(labels: np.ndarray, size: int, random_state: int = 0) -> np.ndarray:
    """Sorted positions of a fixed subset of ``size`` items, stratified by label where the sizes allow it
    (all items when ``size >= len``)."""
    n = len(labels)
    if size >= n:
        return np.arange(n)
    if size < 1:
        raise ValueError(f"subset size must be >= 1, got {size}")
    counts = np.unique(labels, return_counts=True)[1]
    stratify = labels if min(size, n - size) >= len(counts) and counts.min() >= 2 else None
    _, idx = train_test_split(np.arange(n), test_size=size, stratify=stratify, random_state=random_state)
    return np.sort(idx)


def split_val(
    val_split: ValSplit, val_size: int, train_labels: np.ndarray | None, test_labels: np.ndarray | None
) -> tuple[np.ndarray | None, np.ndarray]:
    """(training positions kept or None for all, validation positions in its source split)."""
    if val_split == "train":
        assert train_labels is not None
        if not 1 <= val_size < len(train_labels):
            raise ValueError(
                f"data.val_size must be in 1..{len(train_labels) - 1} with val_split=train, got {val_size}"
            )
        val = stratified_subset(train_labels, val_size)
        return np.setdiff1d(np.arange(len(train_labels)), val), val
    assert test_labels is not None
    if val_size < 1:
        raise ValueError(f"data.val_size must be >= 1, got {val_size}")
    return None, stratified_subset(test_labels, val_size)


def check_val_split(val_split: str) -> None:
    """Refuse a ``val_split`` other than ``test`` or ``train``, naming the option."""
    if val_split not in ("test", "train"):
        raise ValueError(f"data.val_split must be 'test' or 'train', got {val_split!r}")
