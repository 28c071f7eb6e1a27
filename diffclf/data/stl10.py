"""STL-10 from its binary files (``stl10_binary.tar.gz``), 10-way, for zero-shot classification.

Read here rather than by torchvision's ``STL10``, which checks md5 sums. ``*_X.bin`` is raw uint8,
``96×96`` RGB images one after the other, each stored as three channels of **column-major** pixels
(MATLAB's order): the bytes of one image are ``(3, 96, 96)`` indexed ``[channel, column, row]``, so
its ``(H, W, 3)`` pixels are the transpose ``(2, 1, 0)`` — exactly what torchvision's ``__loadfile``
does in two steps (``(0, 1, 3, 2)``, then ``(1, 2, 0)``). Reading them row-major mirrors every image
along its diagonal, which a classifier partly survives, so the test checks it on an asymmetric image.
``*_y.bin`` holds labels 1..10; the unlabelled split is not read. The images are memory-mapped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from diffclf.data.base import DataSourceError
from diffclf.data.label_spaces import LabelSpace
from diffclf.data.zero_shot import ArrayImageDataset, ZeroShotDataModule, check_class_count, read_lines

STL10_FOLDER = "stl10_binary"
STL10_LAYOUT = f"{STL10_FOLDER}/{{train_X.bin,train_y.bin,test_X.bin,test_y.bin,class_names.txt}}"
STL10_SHAPE = (3, 96, 96)


def read_stl10_split(x_path: Path, y_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Memory-mapped uint8 images ``(N, 3, 96, 96)`` as stored (``[channel, column, row]``) and 0-based labels."""
    per_image = int(np.prod(STL10_SHAPE))
    size = x_path.stat().st_size
    if size == 0 or size % per_image:
        raise DataSourceError(f"stl10: {x_path} holds {size} bytes, not a whole number of 3x96x96 images")
    labels = np.fromfile(y_path, dtype=np.uint8).astype(np.int64) - 1
    if len(labels) != size // per_image:
        raise DataSourceError(f"stl10: {y_path} holds {len(labels)} labels for {size // per_image} images in {x_path}")
    if labels.size and not 0 <= labels.min() <= labels.max() <= 9:
        raise DataSourceError(f"stl10: {y_path} has labels outside STL-10's 1..10")
    return np.memmap(x_path, dtype=np.uint8, mode="r", shape=(len(labels), *STL10_SHAPE)), labels


class Stl10DataModule(ZeroShotDataModule):
    """STL-10: 5,000 training and 8,000 test images, 96×96, 10 classes (upsampled to ``image_size``).

    Class names come from ``class_names.txt`` (airplane, bird, car, …), the names the official
    diffusion-classifier prompts with.

    Args:
        root: the folder holding ``stl10_binary/`` or that folder itself (default: ``$DATASET_ROOT``).
        image_size: side after the bicubic resize and center crop (the paper: 512; 256 its other setting).
        **kwargs: ``batch_size``, ``eval_batch_size``, ``num_workers``, ``seed``, ``eval_limit``, ``flip``,
            ``predict_split``: see :class:`ClassificationDataModule` (``batch_size`` defaults to 8).
    """

    name = "stl10"
    folder = STL10_FOLDER
    marker = "class_names.txt"
    layout = STL10_LAYOUT

    def __init__(self, root: str | None = None, image_size: int = 512, **kwargs: Any) -> None:
        super().__init__(root, image_size, **kwargs)
        path = self.file("class_names.txt")
        names = read_lines(path, self.name, self.layout)
        check_class_count(names, 10, path, self.name)
        self.label_space = LabelSpace.identity(names, name=self.name)

    def split_dataset(self, split: str) -> Dataset:
        images, labels = read_stl10_split(self.file(f"{split}_X.bin"), self.file(f"{split}_y.bin"))
        return ArrayImageDataset(images, labels, self.transform, axes=(2, 1, 0))
