"""CIFAR-10 from its python pickles (``cifar-10-python.tar.gz``), 10-way, for zero-shot classification.

The batches are read here rather than by torchvision's ``CIFAR10``, which checks every file's md5 sum:
that refuses a test's miniature copy and says nothing useful about a damaged file. Each batch is a
pickled dict with ``data`` (uint8 ``(N, 3072)``, each row a row-major ``3×32×32`` image) and
``labels``; ``batches.meta`` holds the ``label_names`` (airplane … truck), which are already the
names the official diffusion-classifier prompts with.
"""

from __future__ import annotations

import math
import pickle
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from diffclf.data.base import DataSourceError
from diffclf.data.label_spaces import LabelSpace
from diffclf.data.zero_shot import ArrayImageDataset, ZeroShotDataModule, check_class_count

CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_BATCHES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}
CIFAR10_LAYOUT = f"{CIFAR10_FOLDER}/{{data_batch_1..5,test_batch,batches.meta}} (the python version)"


def read_cifar_pickle(path: Path) -> dict[str, Any]:
    """A CIFAR batch as a dict with ``str`` keys (the originals are Python 2 pickles with byte-string keys)."""
    try:
        with open(path, "rb") as f:
            raw = pickle.load(f, encoding="bytes")
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError) as err:
        raise DataSourceError(f"cifar10: {path} is not a CIFAR python pickle ({type(err).__name__}: {err})") from None
    if not isinstance(raw, dict):
        raise DataSourceError(f"cifar10: {path} holds a {type(raw).__name__}, not a CIFAR batch dict")
    return {k.decode() if isinstance(k, bytes) else str(k): v for k, v in raw.items()}


def read_cifar10_names(path: Path) -> tuple[str, ...]:
    """``label_names`` of ``batches.meta``, in label order."""
    meta = read_cifar_pickle(path)
    if "label_names" not in meta:
        raise DataSourceError(f"cifar10: {path} has no label_names (not CIFAR-10's batches.meta)")
    names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in meta["label_names"])
    check_class_count(names, 10, path, "cifar10")
    return names


def read_cifar10_batches(paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images ``(N, 3, S, S)`` (S = 32 for the real files) and int64 labels of the batches, concatenated."""
    images, labels = [], []
    for path in paths:
        batch = read_cifar_pickle(path)
        if "data" not in batch or "labels" not in batch:
            raise DataSourceError(f"cifar10: {path} has no data/labels (not a CIFAR-10 batch)")
        data = np.asarray(batch["data"], dtype=np.uint8)
        side = math.isqrt(data.shape[-1] // 3) if data.ndim == 2 else 0
        if data.ndim != 2 or 3 * side * side != data.shape[1]:
            raise DataSourceError(f"cifar10: {path}: data of shape {data.shape}, expected (N, 3072)")
        y = np.asarray(batch["labels"], dtype=np.int64)
        if len(y) != len(data) or (y.size and not 0 <= y.min() <= y.max() <= 9):
            raise DataSourceError(f"cifar10: {path}: {len(y)} labels for {len(data)} images, expected one in 0..9 each")
        images.append(data.reshape(-1, 3, side, side))
        labels.append(y)
    return np.concatenate(images), np.concatenate(labels)


class Cifar10DataModule(ZeroShotDataModule):
    """CIFAR-10: 50,000 training and 10,000 test images, 32×32, 10 classes (upsampled to ``image_size``).

    Args:
        root: the folder holding ``cifar-10-batches-py/`` or that folder itself (default: ``$DATASET_ROOT``).
        image_size: side after the bicubic resize and center crop (the paper: 512; 256 its other setting).
        **kwargs: ``batch_size``, ``eval_batch_size``, ``num_workers``, ``seed``, ``eval_limit``, ``flip``,
            ``predict_split``: see :class:`ClassificationDataModule` (``batch_size`` defaults to 8).
    """

    name = "cifar10"
    folder = CIFAR10_FOLDER
    marker = "batches.meta"
    layout = CIFAR10_LAYOUT

    def __init__(self, root: str | None = None, image_size: int = 512, **kwargs: Any) -> None:
        super().__init__(root, image_size, **kwargs)
        self.label_space = LabelSpace.identity(read_cifar10_names(self.file("batches.meta")), name=self.name)

    def split_dataset(self, split: str) -> Dataset:
        images, labels = read_cifar10_batches([self.file(b) for b in CIFAR10_BATCHES[split]])
        return ArrayImageDataset(images, labels, self.transform, axes=(1, 2, 0))
