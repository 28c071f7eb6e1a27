"""What the ImageNet-family evaluation sets share: a root found from an option or the environment, a
layout recognised from folder names alone, and one scored split.

ImageNet, ImageNet-V2, ImageNet-A and ObjectNet each lie on disk in their own layout, and handing one
set's folder to another's data module is the easy mistake: wnid folders look alike, numeric ones get
sorted as strings. :func:`scan_root` classifies a root from its sub-folder names (no file listing,
so it is cheap at ``__init__``) and :class:`EvalSetDataModule` refuses a root in the wrong layout with
one line saying which layout it looks like. Each set then only says how its folders map to targets.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from torch.utils.data import Dataset

from diffclf.data.base import ClassificationDataModule
from diffclf.data.folders import (
    BadFile,
    ImageFileDataset,
    Sample,
    list_image_files,
    list_subfolders,
    preview,
    select_subset,
)
from diffclf.data.label_spaces import WNID_RE, imagenet_wnid_to_index
from diffclf.data.transforms import Crop, ImageTransform

LAYOUT_LOOKS_LIKE = {
    "numeric": "ImageNet-V2 (numeric class folders)",
    "wnid": "ImageNet or ImageNet-A (wnid class folders n########)",
    "mixed": "a mix of wnid and numeric class folders",
    "objectnet": "ObjectNet (images/ and mappings/ folders)",
    "flat": "a flat folder of images (the ImageNet validation flat layout)",
    "other": "a folder of other sub-folders",
    "empty": "an empty folder (no sub-folders, no images)",
}


@dataclass(frozen=True)
class RootScan:
    """What a root holds, from folder names alone: the evidence for :func:`scan_root`'s ``kind``."""

    root: Path
    kind: str
    wnid: tuple[str, ...]
    numeric: tuple[str, ...]
    other: tuple[str, ...]
    has_images: bool

    def looks_like(self) -> str:
        text = LAYOUT_LOOKS_LIKE[self.kind]
        if self.kind == "other":
            text += f": {preview(self.other, 3)}"
        return text


def scan_root(root: Path) -> RootScan:
    """Classify a dataset root by its sub-folder names (cheap: no file listing below the root)."""
    folders = list_subfolders(root)
    wnid = tuple(f for f in folders if WNID_RE.match(f))
    numeric = tuple(f for f in folders if f.isdigit())
    other = tuple(f for f in folders if f not in wnid and f not in numeric)
    has_images = bool(list_image_files(root, recursive=False))
    if "images" in other and "mappings" in other:
        kind = "objectnet"
    elif wnid and numeric:
        kind = "mixed"
    elif wnid:
        kind = "wnid"
    elif numeric:
        kind = "numeric"
    elif other:
        kind = "other"
    elif has_images:
        kind = "flat"
    else:
        kind = "empty"
    return RootScan(root, kind, wnid, numeric, other, has_images)


def resolve_root(root: str | None, env_var: str, name: str, expects: str) -> Path:
    """``root`` if given, else ``$env_var``, else one line saying both ways to set it."""
    source = "data.root"
    if root is None:
        root, source = os.environ.get(env_var) or None, f"${env_var}"
    if root is None:
        raise ValueError(f"{name}: no data root: pass --data.root PATH or set {env_var} (a folder with {expects})")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"{name}: root {path} (from {source}) does not exist or is not a folder")
    return path


def check_wnid_folders(scan: RootScan, name: str) -> list[str]:
    """The wnid folders of a root, after refusing stray folders and wnids that are not ImageNet-1k's."""
    if scan.other:
        raise ValueError(f"root {scan.root}: folders {preview(scan.other)} are not ImageNet wnids (n########); "
                         f"{name} expects wnid class folders")
    unknown = [w for w in scan.wnid if w not in imagenet_wnid_to_index()]
    if unknown:
        raise ValueError(f"root {scan.root}: unknown wnids (not among ImageNet-1k's 1000): {preview(unknown)}")
    return list(scan.wnid)


class EvalSetDataModule(ClassificationDataModule):
    """An evaluation set under one root: ``test``/``predict``/``validate`` all score it.

    Subclasses set ``name``, ``env_var`` (the root's fallback), ``expects`` (the layout, in words, for
    error lines) and ``accepted_layouts`` (:func:`scan_root` kinds), and implement :meth:`list_samples`.

    Args:
        root: the set's folder (default: ``$env_var``).
        image_size, in_channels, crop, border: see :class:`ImageTransform`.
        subset_file: image paths relative to :meth:`image_root`, one per line: score exactly those.
        on_bad_file: ``error`` or ``skip`` (skipped files are listed in ``skipped_images``).
        **kwargs: ``batch_size``, ``eval_batch_size``, ``num_workers``, ``seed``, ``eval_limit``, ``flip``: see
            :class:`ClassificationDataModule`.
    """

    env_var: str = ""
    #: ``validate`` scores the evaluation images themselves: not held out from the test.
    val_is_held_out: ClassVar[bool] = False
    expects: str = ""
    accepted_layouts: tuple[str, ...] = ()
    default_batch_size = 32

    def __init__(self, root: str | None, image_size: int, in_channels: int, crop: Crop, border: int,
                 subset_file: str | None, on_bad_file: BadFile, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if on_bad_file not in ("error", "skip"):
            raise ValueError(f"data.on_bad_file must be 'error' or 'skip', got {on_bad_file!r}")
        self.root = resolve_root(root, self.env_var, self.name, self.expects)
        self.image_size, self.in_channels = image_size, in_channels
        self.transform = ImageTransform(image_size, in_channels, crop, border)
        self.subset_file = subset_file
        self.on_bad_file = on_bad_file
        self.scan = scan_root(self.root)
        if self.scan.kind not in self.accepted_layouts:
            raise ValueError(f"root {self.root} looks like {self.scan.looks_like()}; {self.name} expects {self.expects}")

    def image_root(self) -> Path:
        """The folder that ``subset_file`` paths are relative to."""
        return self.root

    def list_samples(self) -> list[Sample]:
        """Every ``(path, label-space target)`` of the evaluation set, in a fixed order."""
        raise NotImplementedError

    def eval_dataset(self) -> ImageFileDataset:
        samples = self.list_samples()
        if not samples:
            raise ValueError(f"{self.name}: no images under {self.image_root()}")
        if self.subset_file is not None:
            samples = select_subset(samples, self.image_root(), self.subset_file)
        ds = ImageFileDataset(samples, self.transform, self.on_bad_file, self.num_workers or None)
        if len(ds) == 0:
            raise ValueError(f"{self.name}: every image was unreadable and skipped")
        return ds

    def fit_datasets(self) -> dict[str, Dataset]:
        raise ValueError(f"{self.name} is an evaluation set: it has no training split (use test or predict)")

    def build_datasets(self, stage: str) -> dict[str, Dataset]:
        if stage == "fit":
            return self.fit_datasets()
        ds = self.eval_dataset()
        self.skipped_images = list(ds.skipped)
        return {"val": ds, "test": ds}

    def _class_folder_samples(self, folder_to_target: dict[str, int]) -> list[Sample]:
        """Images of each class folder, folders in the dict's order, files sorted within each."""
        samples: list[Sample] = []
        for folder, target in folder_to_target.items():
            samples.extend((f, target) for f in list_image_files(self.image_root() / folder))
        return samples
