"""scikit-learn's 8×8 handwritten digits: the data set every quick run and test can rely on.

It ships inside scikit-learn (no download, no file to find) and is small enough to train a DiT on in
minutes on a CPU, so its splits are fixed once and for all here: the README's numbers are on them.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torch import Tensor
from torch.utils.data import Dataset

from diffclf.data.arrays import UInt8ImageDataset, ValSplit, check_val_split, split_val
from diffclf.data.base import ClassificationDataModule, stage_splits
from diffclf.data.label_spaces import LabelSpace

DIGITS_TEST_SIZE = 360


class DigitsDataModule(ClassificationDataModule):
    """scikit-learn's 8×8 handwritten digits (1797 images, embedded in scikit-learn: no download).

    The test split is fixed: 360 images, stratified, ``train_test_split(test_size=360, stratify=y,
    random_state=0)`` — the README's "360-image held-out test split"; training gets the other 1437.
    Validation (the generative eps-loss curve) defaults to a fixed stratified subset of the *test*
    split (``val_size=360``: all of it): the curve is only worth watching on images the denoiser has
    not seen, and at 1437 training images every held-back image costs the model. Nothing in the presets
    selects checkpoints on it (they keep the last one); to select on validation without touching the
    test split, set ``val_split=train`` (``val_size`` images leave the training split).

    Args:
        val_split: where validation images come from: ``test`` or ``train`` (then removed from training).
        val_size: validation images, a fixed stratified subset of ``val_split``.
        **kwargs: ``batch_size``, ``eval_batch_size``, ``num_workers``, ``seed``, ``eval_limit``, ``flip``:
            see :class:`ClassificationDataModule` (``seed`` only shuffles training; the splits never
            depend on it; ``flip`` is off by default: digits are not mirror-symmetric).
    """

    default_flip: ClassVar[bool] = False

    def __init__(
        self,
        val_split: ValSplit = "test",
        val_size: int = DIGITS_TEST_SIZE,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        check_val_split(val_split)
        self.name = "digits"
        self.label_space = LabelSpace.identity([str(d) for d in range(10)], name="digits")
        self.image_size = 8
        self.in_channels = 1
        self.val_split = val_split
        self.val_size = val_size
        self._splits: dict[str, tuple[Tensor, Tensor]] | None = None

    def split_arrays(self) -> dict[str, tuple[Tensor, Tensor]]:
        """``{"train", "val", "test"}`` → ``(uint8 images (N, 8, 8) in 0..16, labels)``, fixed and cached."""
        if self._splits is None:
            from sklearn.datasets import load_digits

            digits = load_digits()
            images = digits.images.astype(np.uint8)
            y = digits.target.astype(np.int64)
            train_idx, test_idx = train_test_split(
                np.arange(len(y)), test_size=DIGITS_TEST_SIZE, stratify=y, random_state=0
            )
            train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)
            keep, val = split_val(self.val_split, self.val_size, y[train_idx], y[test_idx])
            val_idx = (train_idx if self.val_split == "train" else test_idx)[val]
            if keep is not None:
                train_idx = train_idx[keep]
            t_images, t_y = torch.from_numpy(images), torch.from_numpy(y)
            self._splits = {
                name: (t_images[idx], t_y[idx])
                for name, idx in (("train", train_idx), ("val", val_idx), ("test", test_idx))
            }
        return self._splits

    def build_datasets(self, stage: str) -> dict[str, Dataset]:
        return {
            name: UInt8ImageDataset(x, y, max_value=16.0)
            for name, (x, y) in self.split_arrays().items()
            if name in stage_splits(stage)
        }
