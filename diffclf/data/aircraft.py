"""FGVC-Aircraft (2013b) from its official files, 100 variants, for zero-shot classification.

``data/variants.txt`` lists the 100 variants in label order (torchvision's); ``data/images_variant_<split>.txt``
has lines ``<image id> <variant name, may contain spaces>`` for the images ``data/images/<id>.jpg``.
The variant level is what Li et al. (and CLIP) score. Names are the variants as written
(``F-16A/B``, ``Falcon 2000``): the official diffusion-classifier's prompts use them verbatim (its
``templates.json`` writes ``/`` as ``_``, for folder names only).

Every image carries a 20-pixel copyright banner at its bottom. torchvision does not crop it, nor
does the official diffusion-classifier (``datasets.FGVCAircraft`` as is), so by default neither do we;
``crop_banner=true`` cuts it before the resize (a different protocol: say so next to its numbers).
"""

from __future__ import annotations

from typing import Any, Literal

from torch.utils.data import Dataset

from diffclf.data.base import DataSourceError
from diffclf.data.folders import BadFile, Sample
from diffclf.data.label_spaces import LabelSpace
from diffclf.data.zero_shot import (
    ResizeCenterCrop,
    ZeroShotDataModule,
    check_class_count,
    check_on_bad_file,
    read_lines,
)

AIRCRAFT_FOLDER = "fgvc-aircraft-2013b"
AIRCRAFT_LAYOUT = (f"{AIRCRAFT_FOLDER}/data/{{images/<id>.jpg, variants.txt, "
                   "images_variant_{train,val,trainval,test}.txt}")
AIRCRAFT_NUM_VARIANTS = 100
AIRCRAFT_BANNER = 20


class AircraftDataModule(ZeroShotDataModule):
    """FGVC-Aircraft: 3,334 train, 3,333 val and 3,333 test images of 100 aircraft variants.

    Args:
        root: the folder holding ``fgvc-aircraft-2013b/`` or that folder itself (default: ``$DATASET_ROOT``).
        image_size: side after the bicubic resize and center crop (the paper: 512; 256 its other setting).
        train_split: the images ``train`` means: ``train``, or ``trainval`` (what the official
            diffusion-classifier's ``--split train`` reads; it then overlaps ``val``).
        crop_banner: cut the 20-pixel copyright banner off the bottom first (off: as the official code).
        on_bad_file: ``error`` or ``skip`` (skipped files are listed in ``skipped_images``).
        **kwargs: ``batch_size``, ``eval_batch_size``, ``num_workers``, ``seed``, ``eval_limit``, ``flip``,
            ``predict_split``: see :class:`ClassificationDataModule` (``batch_size`` defaults to 8).
    """

    name = "aircraft"
    folder = AIRCRAFT_FOLDER
    marker = "data/variants.txt"
    layout = AIRCRAFT_LAYOUT
    splits = ("train", "val", "test")

    def __init__(self, root: str | None = None, image_size: int = 512,
                 train_split: Literal["train", "trainval"] = "train", crop_banner: bool = False,
                 on_bad_file: BadFile = "error", **kwargs: Any) -> None:
        super().__init__(root, image_size, **kwargs)
        self.transform = ResizeCenterCrop(image_size, crop_bottom=AIRCRAFT_BANNER if crop_banner else 0)
        if train_split not in ("train", "trainval"):
            raise ValueError(f"data.train_split must be 'train' or 'trainval', got {train_split!r}")
        self.train_split = train_split
        self.crop_banner = crop_banner
        self.on_bad_file = check_on_bad_file(on_bad_file)
        path = self.file("data/variants.txt")
        self.variants = read_lines(path, self.name, self.layout)
        check_class_count(self.variants, AIRCRAFT_NUM_VARIANTS, path, self.name)
        self.label_space = LabelSpace.identity(self.variants, name=self.name)

    def split_dataset(self, split: str) -> Dataset:
        path = self.file(f"data/images_variant_{self.train_split if split == 'train' else split}.txt")
        index = {v: k for k, v in enumerate(self.variants)}
        images = self.root / "data" / "images"
        samples: list[Sample] = []
        for k, line in enumerate(read_lines(path, self.name, self.layout), start=1):
            image_id, _, variant = line.partition(" ")
            if variant not in index:
                raise DataSourceError(f"aircraft: {path}:{k}: variant '{variant}' is not in data/variants.txt")
            samples.append((str(images / f"{image_id}.jpg"), index[variant]))
        return self.image_dataset(samples, self.on_bad_file)
