"""The ImageNet-1k validation set (and, for fitting, its train set) as it lies on disk, 1000-way.

ImageNet's validation images come in two layouts: one folder per wnid (as torchvision prepares them) or
flat (``ILSVRC2012_val_*.JPEG``) with one of several label files, whose numbers are not always model
indices: the devkit's ground truth counts ILSVRC2012_IDs, which map to wnids only through its
``meta.mat``. :func:`read_imagenet_labels` reads every usual label file into model indices. The 1000
classes are in the standard sorted-wnid order (:mod:`diffclf.data.label_spaces`). With
``classes=imagenet_a`` the same images restricted to ImageNet-A's 200 classes are ``imagenet_200``,
the in-distribution axis that ImageNet-A's effective robustness is measured against.
"""

from __future__ import annotations

import csv
import os
import warnings
from pathlib import Path
from typing import Any, Literal

from torch.utils.data import Dataset

from diffclf.data.eval_sets import EvalSetDataModule, check_wnid_folders, scan_root
from diffclf.data.folders import BadFile, ImageFileDataset, Sample, list_image_files, preview
from diffclf.data.label_spaces import (
    NUM_IMAGENET_CLASSES,
    WNID_RE,
    imagenet_a_indices,
    imagenet_a_label_space,
    imagenet_label_space,
    imagenet_wnid_to_index,
    imagenet_wnids,
)
from diffclf.data.transforms import Crop

LABEL_FILE_CANDIDATES = (
    "LOC_val_solution.csv",
    "ILSVRC2012_validation_ground_truth.txt",
    "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt",
)


def read_devkit_meta(meta_file: str | os.PathLike) -> dict[int, str]:
    """ILSVRC2012_ID → wnid from the devkit's ``meta.mat`` (its 1000 leaf synsets)."""
    from scipy.io import loadmat

    try:
        synsets = loadmat(str(meta_file), squeeze_me=True)["synsets"]
        ids, wnids, children = synsets["ILSVRC2012_ID"], synsets["WNID"], synsets["num_children"]
    except (KeyError, ValueError, OSError, TypeError) as exc:
        raise ValueError(f"{meta_file}: not the ILSVRC2012 devkit meta.mat ({type(exc).__name__}: {exc})") from exc
    return {int(i): str(w) for i, w, c in zip(ids, wnids, children) if int(c) == 0}


def read_imagenet_labels(labels_file: str | os.PathLike, meta_file: str | os.PathLike | None = None) -> dict[str, int]:
    """File stem (``ILSVRC2012_val_00000001``) → model index, from any of the usual label files.

    - Kaggle ``LOC_val_solution.csv`` (``ImageId,PredictionString``; the first token is the wnid);
    - the devkit's ``ILSVRC2012_validation_ground_truth.txt`` (one ILSVRC2012_ID per line, line k for
      image k): those IDs are *not* model indices, they go through ``meta.mat`` (``meta_file``,
      default: ``meta.mat`` next to the labels file) to wnids;
    - lines ``filename wnid`` or ``filename index`` (index = sorted-wnid model index 0..999, as the
      common ``val.txt``).
    """
    path = Path(labels_file)
    if not path.is_file():
        raise FileNotFoundError(f"imagenet: labels_file {path} does not exist")
    text = path.read_text(encoding="utf-8-sig")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"imagenet: labels_file {path} is empty")
    w2i = imagenet_wnid_to_index()
    labels: dict[str, int] = {}

    def to_index(label: str, where: str) -> int:
        if WNID_RE.match(label):
            if label not in w2i:
                raise ValueError(f"{where}: unknown wnid {label}")
            return w2i[label]
        if label.isdigit() and int(label) < NUM_IMAGENET_CLASSES:
            return int(label)
        raise ValueError(f"{where}: label '{label}' is neither a wnid nor a class index 0..999")

    header = [h.strip() for h in lines[0].split(",")]
    if "ImageId" in header and "PredictionString" in header:
        for k, row in enumerate(csv.DictReader(lines), start=2):
            tokens = (row.get("PredictionString") or "").split()
            if not row.get("ImageId") or not tokens:
                raise ValueError(f"{path}:{k}: expected 'ImageId,PredictionString' with a wnid first")
            labels[Path(row["ImageId"].strip()).stem] = to_index(tokens[0], f"{path}:{k}")
        return labels
    if all(line.isdigit() for line in lines):
        meta = Path(meta_file) if meta_file is not None else path.with_name("meta.mat")
        if not meta.is_file():
            raise FileNotFoundError(
                f"imagenet: {path} holds devkit ILSVRC2012_IDs, which map to wnids only through the devkit's "
                f"meta.mat: put meta.mat next to it or pass --data.meta_file (not found: {meta})"
            )
        id_to_wnid = read_devkit_meta(meta)
        for k, line in enumerate(lines, start=1):
            if int(line) not in id_to_wnid:
                raise ValueError(f"{path}:{k}: ILSVRC2012_ID {line} is not a class in {meta}")
            labels[f"ILSVRC2012_val_{k:08d}"] = to_index(id_to_wnid[int(line)], f"{meta} (ILSVRC2012_ID {line})")
        return labels
    for k, line in enumerate(lines, start=1):
        parts = line.replace(",", " ").split()
        if len(parts) != 2:
            raise ValueError(f"{path}:{k}: cannot read '{line}' (expected 'filename wnid' or 'filename index')")
        labels[Path(parts[0]).stem] = to_index(parts[1], f"{path}:{k}")
    return labels


class ImageNetDataModule(EvalSetDataModule):
    """The ImageNet-1k validation set (50,000 images), 1000-way.

    Root: ``root``, else ``$IMAGENET_VAL_DIR``. Two layouts are read:

    - one folder per wnid (``val/n01440764/ILSVRC2012_val_00000293.JPEG``, as torchvision prepares it);
    - flat (``val/ILSVRC2012_val_*.JPEG``) with a label file: ``labels_file``, else the first of
      ``LOC_val_solution.csv`` (Kaggle), ``ILSVRC2012_validation_ground_truth.txt`` (devkit, needs
      ``meta.mat``) found in the root or up to four folders above (Kaggle: ``ILSVRC/Data/CLS-LOC/val``). See :func:`read_imagenet_labels`.

    Fitting reads ``train_root`` (else ``$IMAGENET_TRAIN_DIR``): the train set, one folder per wnid;
    validation then uses the validation set.

    Args:
        root: the validation folder.
        labels_file: labels of the flat layout (``filename wnid``/``filename index`` lines, Kaggle csv,
            or the devkit ground truth).
        meta_file: the devkit's ``meta.mat`` for the devkit ground truth (default: next to it).
        train_root: the train folder (fit only).
        image_size, in_channels, crop: see :class:`ImageTransform`.
        subset_file: image paths relative to root (or bare file names), one per line: score exactly
            those (e.g. the 10,000-image subset), so every model sees the same images.
        on_bad_file: ``error`` or ``skip`` (skipped files are listed in ``skipped_images``).
        classes: ``all`` (1000-way) or ``imagenet_a``: only the images of ImageNet-A's 200 classes,
            scored 200-way, named ``imagenet_200`` — the in-distribution axis that ImageNet-A's
            effective robustness is measured against.
        **kwargs: ``batch_size``, ``eval_batch_size``, ``num_workers``, ``seed``, ``eval_limit``, ``flip``: see
            :class:`ClassificationDataModule` (``batch_size`` defaults to 32).
    """

    name = "imagenet"
    env_var = "IMAGENET_VAL_DIR"
    expects = ("wnid class folders n######## or the flat ILSVRC2012_val_*.JPEG layout with a labels file "
               "(LOC_val_solution.csv, the devkit ground truth, or 'filename wnid' lines)")
    accepted_layouts = ("wnid", "flat")

    def __init__(
        self,
        root: str | None = None,
        labels_file: str | None = None,
        meta_file: str | None = None,
        train_root: str | None = None,
        image_size: int = 256,
        in_channels: int = 3,
        crop: Crop = "adm",
        subset_file: str | None = None,
        on_bad_file: BadFile = "error",
        classes: Literal["all", "imagenet_a"] = "all",
        **kwargs: Any,
    ) -> None:
        super().__init__(root, image_size, in_channels, crop, 0, subset_file, on_bad_file, **kwargs)
        if classes not in ("all", "imagenet_a"):
            raise ValueError(f"data.classes must be 'all' or 'imagenet_a', got {classes!r}")
        self.classes = classes
        self.label_space = imagenet_label_space(self.name)
        self.restrict: dict[int, int] | None = None
        if classes == "imagenet_a":
            self.name = "imagenet_200"
            self.label_space = imagenet_a_label_space(self.name)
            self.restrict = {i: k for k, i in enumerate(imagenet_a_indices())}
        self.meta_file = meta_file
        self.train_root = train_root
        self.labels_file: Path | None = None
        if self.scan.kind == "wnid":
            wnids = check_wnid_folders(self.scan, self.name)
            if set(wnids) == {imagenet_wnids()[i] for i in imagenet_a_indices()}:
                warnings.warn(
                    f"root {self.root} holds exactly ImageNet-A's 200 wnid folders: if it is ImageNet-A, use "
                    "--data imagenet_a (a 200-way label space)", stacklevel=2,
                )
        else:
            self.labels_file = self._find_labels_file(labels_file)

    def _find_labels_file(self, labels_file: str | None) -> Path:
        if labels_file is not None:
            path = Path(labels_file).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"imagenet: labels_file {path} does not exist")
            return path
        folders = [self.root, *list(self.root.resolve().parents)[:4]]
        for folder in folders:
            for candidate in LABEL_FILE_CANDIDATES:
                if (folder / candidate).is_file():
                    return folder / candidate
        raise FileNotFoundError(
            f"imagenet: root {self.root} is the flat layout (ILSVRC2012_val_*.JPEG) but no labels were found: pass "
            f"--data.labels_file (looked for {', '.join(LABEL_FILE_CANDIDATES)} in the root and the 4 folders above it)"
        )

    def list_samples(self) -> list[Sample]:
        return self._restricted(self._all_samples())

    def _restricted(self, samples: list[Sample]) -> list[Sample]:
        """With ``classes=imagenet_a``: keep ImageNet-A's classes, targets renumbered 0..199."""
        if self.restrict is None:
            return samples
        return [(f, self.restrict[t]) for f, t in samples if t in self.restrict]

    def _all_samples(self) -> list[Sample]:
        w2i = imagenet_wnid_to_index()
        if self.labels_file is None:
            return self._class_folder_samples({w: w2i[w] for w in self.scan.wnid})
        labels = read_imagenet_labels(self.labels_file, self.meta_file)
        files = list_image_files(self.root, recursive=False)
        unlabelled = [Path(f).name for f in files if Path(f).stem not in labels]
        if unlabelled:
            raise ValueError(f"imagenet: {len(unlabelled)} image(s) in {self.root} have no label in "
                             f"{self.labels_file}: {preview(unlabelled)}")
        return [(f, labels[Path(f).stem]) for f in files]

    def fit_datasets(self) -> dict[str, Dataset]:
        root = self.train_root or os.environ.get("IMAGENET_TRAIN_DIR") or None
        if root is None:
            raise ValueError("imagenet: fitting needs the train set: pass --data.train_root PATH or set "
                             "IMAGENET_TRAIN_DIR (one folder per wnid)")
        train_root = Path(root).expanduser()
        if not train_root.is_dir():
            raise FileNotFoundError(f"imagenet: train_root {train_root} does not exist or is not a folder")
        scan = scan_root(train_root)
        if scan.kind != "wnid":
            raise ValueError(f"root {train_root} looks like {scan.looks_like()}; the ImageNet train set is "
                             "wnid class folders n########")
        w2i = imagenet_wnid_to_index()
        train: list[Sample] = []
        for w in check_wnid_folders(scan, self.name):
            train.extend((f, w2i[w]) for f in list_image_files(train_root / w))
        train = self._restricted(train)
        train_ds = ImageFileDataset(train, self.transform, self.on_bad_file, self.num_workers or None)
        val_ds = self.eval_dataset()
        self.skipped_images = train_ds.skipped + val_ds.skipped
        return {"train": train_ds, "val": val_ds}
