"""Food-101 from its official files, 101-way, for zero-shot classification.

``meta/classes.txt`` lists the classes (``apple_pie`` … ``waffles``, sorted: torchvision's label order,
which sorts the keys of ``train.json``); ``meta/{train,test}.json`` map each class to its images
(``"apple_pie/1005649"`` → ``images/apple_pie/1005649.jpg``), listed in the file's order as
torchvision does. Names are the class folders with spaces (``apple pie``): the names the official
diffusion-classifier's ``prompts/food_prompts.csv`` puts in its prompts.
"""

from __future__ import annotations

import json
from typing import Any

from torch.utils.data import Dataset

from diffclf.data.base import DataSourceError
from diffclf.data.folders import BadFile, Sample, preview
from diffclf.data.label_spaces import LabelSpace
from diffclf.data.zero_shot import ZeroShotDataModule, check_class_count, check_on_bad_file, read_lines

FOOD101_FOLDER = "food-101"
FOOD101_LAYOUT = (f"{FOOD101_FOLDER}/{{images/<class>/<id>.jpg, meta/train.json, meta/test.json, "
                  "meta/classes.txt}")
FOOD101_NUM_CLASSES = 101


def food_prompt_name(folder: str) -> str:
    """``apple_pie`` → ``apple pie``."""
    return folder.replace("_", " ")


class Food101DataModule(ZeroShotDataModule):
    """Food-101: 75,750 train and 25,250 test images, 101 classes.

    Args:
        root: the folder holding ``food-101/`` or that folder itself (default: ``$DATASET_ROOT``).
        image_size: side after the bicubic resize and center crop (the paper: 512; 256 its other setting).
        on_bad_file: ``error`` or ``skip`` (skipped files are listed in ``skipped_images``).
        **kwargs: ``batch_size``, ``eval_batch_size``, ``num_workers``, ``seed``, ``eval_limit``, ``flip``,
            ``predict_split``: see :class:`ClassificationDataModule` (``batch_size`` defaults to 8).
    """

    name = "food101"
    folder = FOOD101_FOLDER
    marker = "meta/classes.txt"
    layout = FOOD101_LAYOUT

    def __init__(self, root: str | None = None, image_size: int = 512, on_bad_file: BadFile = "error",
                 **kwargs: Any) -> None:
        super().__init__(root, image_size, **kwargs)
        self.on_bad_file = check_on_bad_file(on_bad_file)
        path = self.file("meta/classes.txt")
        self.classes = read_lines(path, self.name, self.layout)
        check_class_count(self.classes, FOOD101_NUM_CLASSES, path, self.name)
        self.label_space = LabelSpace.identity([food_prompt_name(c) for c in self.classes], name=self.name)

    def split_dataset(self, split: str) -> Dataset:
        path = self.file(f"meta/{split}.json")
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise DataSourceError(f"food101: {path} is not readable JSON ({err})") from None
        if not isinstance(meta, dict):
            raise DataSourceError(f"food101: {path} is not a {{class: [images]}} object")
        index = {c: k for k, c in enumerate(self.classes)}
        unknown = [c for c in meta if c not in index]
        if unknown:
            raise DataSourceError(f"food101: {path} has classes not in meta/classes.txt: {preview(unknown)}")
        images = self.root / "images"
        samples: list[Sample] = [(str(images.joinpath(*f"{rel}.jpg".split("/"))), index[c])
                                 for c, rels in meta.items() for rel in rels]
        return self.image_dataset(samples, self.on_bad_file)
