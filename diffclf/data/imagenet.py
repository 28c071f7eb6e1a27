"""ImageNet, ImageNet-V2, ImageNet-A and ObjectNet as they lie on disk, scored by a 1000-class model.

Each set has its own layout and its own trap: ImageNet-V2 names its folders by class *index*
(``ImageFolder`` would sort ``"10"`` before ``"2"`` and scramble the labels); ImageNet-A is a
200-way problem over a subset of the 1000 classes; ObjectNet's 113 ImageNet-shared classes each
stand for one or several ImageNet classes (a class takes the best of them) and its images carry a
thin frame that the reference evaluation crops. The data modules here encode all of that in a
:class:`LabelSpace`, detect a root in the wrong layout and say which layout it looks like.

The 1000 classes are in the standard sorted-wnid order (= torchvision / timm indices); wnids,
names and the ImageNet-A indices come from the files timm ships in ``timm/data/_info/``.
"""

from __future__ import annotations

import csv
import json
import os
import pkgutil
import re
import warnings
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Literal

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
from diffclf.data.label_spaces import LabelSpace
from diffclf.data.transforms import Crop, ImageTransform

NUM_IMAGENET_CLASSES = 1000
WNID_RE = re.compile(r"^n\d{8}$")


# ---------------------------------------------------------------------- class metadata (timm's files)
def _timm_info(filename: str) -> list[str]:
    data = pkgutil.get_data("timm.data", f"_info/{filename}")
    if data is None:
        raise FileNotFoundError(f"timm does not ship timm/data/_info/{filename}")
    return [line.strip() for line in data.decode("utf-8").splitlines() if line.strip()]


@cache
def imagenet_wnids() -> tuple[str, ...]:
    """The 1000 ImageNet-1k wnids in model-index order (sorted, as torchvision and timm)."""
    wnids = tuple(_timm_info("imagenet_synsets.txt"))
    if len(wnids) != NUM_IMAGENET_CLASSES or list(wnids) != sorted(wnids):
        raise RuntimeError("timm's imagenet_synsets.txt is not the 1000 sorted ImageNet-1k wnids")
    return wnids


@cache
def imagenet_wnid_to_index() -> dict[str, int]:
    return {w: i for i, w in enumerate(imagenet_wnids())}


@cache
def imagenet_class_names() -> tuple[str, ...]:
    """Short class names (the first WordNet lemma, e.g. ``tench``), in model-index order."""
    lemmas = dict(line.split("\t", 1) for line in _timm_info("imagenet_synset_to_lemma.txt"))
    return tuple(lemmas[w].split(",")[0].strip() for w in imagenet_wnids())


@cache
def imagenet_a_indices() -> tuple[int, ...]:
    """The 200 ImageNet indices of ImageNet-A's classes, in timm's ``imagenet_a_indices.txt`` order."""
    indices = tuple(int(x) for x in _timm_info("imagenet_a_indices.txt"))
    if len(indices) != 200 or len(set(indices)) != 200:
        raise RuntimeError("timm's imagenet_a_indices.txt does not list 200 distinct classes")
    return indices


# ---------------------------------------------------------------------- layouts
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


def _resolve_root(root: str | None, env_var: str, name: str, expects: str) -> Path:
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


# ---------------------------------------------------------------------- shared base
class _EvalSetDataModule(ClassificationDataModule):
    """An evaluation set under one root: ``test``/``predict``/``validate`` all score it."""

    env_var: str = ""
    expects: str = ""
    accepted_layouts: tuple[str, ...] = ()

    def __init__(self, root: str | None, image_size: int, in_channels: int, crop: Crop, border: int,
                 subset_file: str | None, on_bad_file: BadFile, batch_size: int, eval_batch_size: int | None,
                 num_workers: int, seed: int, eval_limit: int | None = None) -> None:
        super().__init__(batch_size, eval_batch_size, num_workers, seed, eval_limit)
        if on_bad_file not in ("error", "skip"):
            raise ValueError(f"data.on_bad_file must be 'error' or 'skip', got {on_bad_file!r}")
        self.root = _resolve_root(root, self.env_var, self.name, self.expects)
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


def _check_wnid_folders(scan: RootScan, name: str) -> list[str]:
    """The wnid folders of a root, after refusing stray folders and wnids that are not ImageNet-1k's."""
    if scan.other:
        raise ValueError(f"root {scan.root}: folders {preview(scan.other)} are not ImageNet wnids (n########); "
                         f"{name} expects wnid class folders")
    unknown = [w for w in scan.wnid if w not in imagenet_wnid_to_index()]
    if unknown:
        raise ValueError(f"root {scan.root}: unknown wnids (not among ImageNet-1k's 1000): {preview(unknown)}")
    return list(scan.wnid)


def _imagenet_label_space(name: str) -> LabelSpace:
    return LabelSpace.identity(imagenet_class_names(), name=name)


# ---------------------------------------------------------------------- ImageNet labels (flat layout)
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


# ---------------------------------------------------------------------- data modules
class ImageNetDataModule(_EvalSetDataModule):
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
        batch_size, eval_batch_size, num_workers, seed, eval_limit: see :class:`ClassificationDataModule`.
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
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
        eval_limit: int | None = None,
    ) -> None:
        super().__init__(root, image_size, in_channels, crop, 0, subset_file, on_bad_file, batch_size,
                         eval_batch_size, num_workers, seed, eval_limit)
        if classes not in ("all", "imagenet_a"):
            raise ValueError(f"data.classes must be 'all' or 'imagenet_a', got {classes!r}")
        self.classes = classes
        self.label_space = _imagenet_label_space(self.name)
        self.restrict: dict[int, int] | None = None
        if classes == "imagenet_a":
            self.name = "imagenet_200"
            indices = imagenet_a_indices()
            names = imagenet_class_names()
            self.label_space = LabelSpace.subset([names[i] for i in indices], indices, NUM_IMAGENET_CLASSES, self.name)
            self.restrict = {i: k for k, i in enumerate(indices)}
        self.meta_file = meta_file
        self.train_root = train_root
        self.labels_file: Path | None = None
        if self.scan.kind == "wnid":
            wnids = _check_wnid_folders(self.scan, self.name)
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
        for w in _check_wnid_folders(scan, self.name):
            train.extend((f, w2i[w]) for f in list_image_files(train_root / w))
        train = self._restricted(train)
        train_ds = ImageFileDataset(train, self.transform, self.on_bad_file, self.num_workers or None)
        val_ds = self.eval_dataset()
        self.skipped_images = train_ds.skipped + val_ds.skipped
        return {"train": train_ds, "val": val_ds}


class ImageNetV2DataModule(_EvalSetDataModule):
    """ImageNet-V2 (any of its three variants), 1000-way: folders ``0``…``999`` named by class *index*.

    The target is ``int(folder name)``: sorting the names as strings (``ImageFolder``) would put
    ``"10"`` at position 2 and scramble the labels. Root: ``root``, else ``$IMAGENET_V2_DIR``
    (e.g. ``imagenetv2-matched-frequency-format-val``).

    Args:
        root: the folder holding ``0``…``999``.
        image_size, in_channels, crop: see :class:`ImageTransform`.
        subset_file: image paths relative to root, one per line: score exactly those.
        on_bad_file: ``error`` or ``skip`` (skipped files are listed in ``skipped_images``).
        batch_size, eval_batch_size, num_workers, seed, eval_limit: see :class:`ClassificationDataModule`.
    """

    name = "imagenet_v2"
    env_var = "IMAGENET_V2_DIR"
    expects = "numeric class folders 0…999 named by ImageNet class index (imagenetv2-*-format-val)"
    accepted_layouts = ("numeric",)

    def __init__(
        self,
        root: str | None = None,
        image_size: int = 256,
        in_channels: int = 3,
        crop: Crop = "adm",
        subset_file: str | None = None,
        on_bad_file: BadFile = "error",
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
        eval_limit: int | None = None,
    ) -> None:
        super().__init__(root, image_size, in_channels, crop, 0, subset_file, on_bad_file, batch_size,
                         eval_batch_size, num_workers, seed, eval_limit)
        if self.scan.other:
            raise ValueError(f"root {self.root}: folders {preview(self.scan.other)} are not class indices; "
                             f"{self.name} expects {self.expects}")
        bad = [f for f in self.scan.numeric if int(f) >= NUM_IMAGENET_CLASSES or str(int(f)) != f]
        if bad:
            raise ValueError(f"root {self.root}: folders {preview(bad)} are not class indices 0..999")
        self.label_space = _imagenet_label_space(self.name)

    def list_samples(self) -> list[Sample]:
        return self._class_folder_samples({f: int(f) for f in sorted(self.scan.numeric, key=int)})


class ImageNetADataModule(_EvalSetDataModule):
    """ImageNet-A, scored as the 200-way problem over its classes (as the papers report it).

    Root: ``root``, else ``$IMAGENET_A_DIR`` (the ``imagenet-a`` folder of 200 wnid folders).
    Label-space class ``k`` is the ``k``-th entry of timm's ``imagenet_a_indices.txt``; targets are
    0..199 and ``label_space.model_classes[k]`` is the ImageNet index the model scores for it.

    Args:
        root: the folder holding the wnid folders.
        image_size, in_channels, crop: see :class:`ImageTransform`.
        subset_file: image paths relative to root, one per line: score exactly those.
        on_bad_file: ``error`` or ``skip`` (skipped files are listed in ``skipped_images``).
        batch_size, eval_batch_size, num_workers, seed, eval_limit: see :class:`ClassificationDataModule`.
    """

    name = "imagenet_a"
    env_var = "IMAGENET_A_DIR"
    expects = "wnid folders n######## of ImageNet-A's 200 classes"
    accepted_layouts = ("wnid",)

    def __init__(
        self,
        root: str | None = None,
        image_size: int = 256,
        in_channels: int = 3,
        crop: Crop = "adm",
        subset_file: str | None = None,
        on_bad_file: BadFile = "error",
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
        eval_limit: int | None = None,
    ) -> None:
        super().__init__(root, image_size, in_channels, crop, 0, subset_file, on_bad_file, batch_size,
                         eval_batch_size, num_workers, seed, eval_limit)
        indices = imagenet_a_indices()
        wnids, names = imagenet_wnids(), imagenet_class_names()
        self.label_space = LabelSpace.subset([names[i] for i in indices], indices, NUM_IMAGENET_CLASSES, self.name)
        self.wnid_to_target = {wnids[i]: k for k, i in enumerate(indices)}
        folders = _check_wnid_folders(self.scan, self.name)
        outside = [w for w in folders if w not in self.wnid_to_target]
        if outside:
            raise ValueError(
                f"root {self.root} has wnid folders outside ImageNet-A's 200 classes: {preview(outside)} "
                f"({len(folders)} wnid folders in all; the ImageNet validation set? use --data imagenet)"
            )

    def list_samples(self) -> list[Sample]:
        return self._class_folder_samples({w: self.wnid_to_target[w] for w in self.scan.wnid})


OBJECTNET_MAPPING_FILES = (
    "folder_to_objectnet_label.json",
    "objectnet_to_imagenet_1k.json",
    "pytorch_to_imagenet_2012_id.json",
    "imagenet_to_label_2012_v2",
)


@dataclass(frozen=True)
class ObjectNetClasses:
    """ObjectNet's ImageNet-shared classes (folder, label, model ids) and every image folder it knows."""

    folders: tuple[str, ...]
    names: tuple[str, ...]
    model_ids: tuple[tuple[int, ...], ...]
    all_folders: frozenset[str]


def read_objectnet_mappings(mappings_dir: str | os.PathLike) -> ObjectNetClasses:
    """ObjectNet's own ``mappings/`` → its ImageNet-shared classes and the model ids each stands for.

    ``objectnet_to_imagenet_1k.json`` maps an ObjectNet label to ImageNet class names joined by
    ``"; "``; ``imagenet_to_label_2012_v2`` is the name of ILSVRC2012 id ``i`` (0-based) on line
    ``i``; ``pytorch_to_imagenet_2012_id.json`` maps model index → that id;
    ``folder_to_objectnet_label.json`` maps an image folder to its ObjectNet label. Classes come in
    sorted folder order (as the reference evaluations).
    """
    mdir = Path(mappings_dir)
    missing = [f for f in OBJECTNET_MAPPING_FILES if not (mdir / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"objectnet: mapping files missing from {mdir}: {', '.join(missing)} (ObjectNet ships them in "
            "objectnet-1.0/mappings/; or pass --data.mappings_dir)"
        )

    def load_json(name: str) -> dict:
        try:
            data = json.loads((mdir / name).read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"objectnet: {mdir / name} is not valid JSON ({exc})") from exc
        if not isinstance(data, dict):
            raise TypeError(f"objectnet: {mdir / name} should hold a JSON object, not {type(data).__name__}")
        return data

    folder_to_label = {str(k): str(v) for k, v in load_json(OBJECTNET_MAPPING_FILES[0]).items()}
    to_imagenet = {str(k): str(v) for k, v in load_json(OBJECTNET_MAPPING_FILES[1]).items()}
    pytorch_to_2012 = {int(k): int(v) for k, v in load_json(OBJECTNET_MAPPING_FILES[2]).items()}
    label_lines = (mdir / OBJECTNET_MAPPING_FILES[3]).read_text(encoding="utf-8").splitlines()
    label_lines = [line.strip() for line in label_lines if line.strip()]
    if sorted(pytorch_to_2012) != list(range(NUM_IMAGENET_CLASSES)) or sorted(pytorch_to_2012.values()) != list(
        range(NUM_IMAGENET_CLASSES)
    ):
        raise ValueError(f"objectnet: {mdir / OBJECTNET_MAPPING_FILES[2]} is not a one-to-one map of 0..999")
    if len(label_lines) != NUM_IMAGENET_CLASSES:
        raise ValueError(f"objectnet: {mdir / OBJECTNET_MAPPING_FILES[3]} has {len(label_lines)} names, not 1000")
    id2012_to_model = {v: k for k, v in pytorch_to_2012.items()}
    name_to_model: dict[str, list[int]] = {}
    for id2012, imagenet_name in enumerate(label_lines):
        name_to_model.setdefault(imagenet_name, []).append(id2012_to_model[id2012])
    label_to_folder = {label: folder for folder, label in folder_to_label.items()}

    classes: list[tuple[str, str, tuple[int, ...]]] = []
    for label, imagenet_names in to_imagenet.items():
        if label not in label_to_folder:
            raise ValueError(f"objectnet: class '{label}' of {OBJECTNET_MAPPING_FILES[1]} has no folder in "
                             f"{OBJECTNET_MAPPING_FILES[0]}")
        ids = []
        for imagenet_name in (n.strip() for n in imagenet_names.split(";")):
            found = name_to_model.get(imagenet_name)
            if found is None or len(found) != 1:
                why = "is not" if found is None else "is ambiguous"
                raise ValueError(f"objectnet: ImageNet class '{imagenet_name}' (for '{label}') {why} in "
                                 f"{OBJECTNET_MAPPING_FILES[3]}")
            ids.append(found[0])
        classes.append((label_to_folder[label], label, tuple(sorted(set(ids)))))
    classes.sort()
    folders, names, model_ids = zip(*classes) if classes else ((), (), ())
    return ObjectNetClasses(tuple(folders), tuple(names), tuple(model_ids), frozenset(folder_to_label))


class ObjectNetDataModule(_EvalSetDataModule):
    """ObjectNet over its 113 ImageNet-shared classes; each takes the best of the ImageNet classes it maps to.

    Root: ``root``, else ``$OBJECTNET_DIR`` — the ``objectnet-1.0`` folder, holding ``images/<folder>/``
    and ObjectNet's own ``mappings/`` (``folder_to_objectnet_label.json``,
    ``objectnet_to_imagenet_1k.json``, ``pytorch_to_imagenet_2012_id.json``,
    ``imagenet_to_label_2012_v2``). Images of classes with no ImageNet counterpart are left out.
    A ``border`` (default 2 px, as the reference evaluation) is cut from every edge before the crop.

    Args:
        root: the ``objectnet-1.0`` folder.
        mappings_dir: where the mapping files are (default ``root/mappings``).
        border: pixels cut from every edge first (ObjectNet's frame).
        image_size, in_channels, crop: see :class:`ImageTransform`.
        subset_file: image paths relative to ``root/images`` (a leading ``images/`` is fine), one per line.
        on_bad_file: ``error`` or ``skip`` (skipped files are listed in ``skipped_images``).
        batch_size, eval_batch_size, num_workers, seed, eval_limit: see :class:`ClassificationDataModule`.
    """

    name = "objectnet"
    env_var = "OBJECTNET_DIR"
    expects = "images/<folder>/ and mappings/ (the objectnet-1.0 folder)"
    accepted_layouts = ("objectnet", "other")

    def __init__(
        self,
        root: str | None = None,
        mappings_dir: str | None = None,
        border: int = 2,
        image_size: int = 256,
        in_channels: int = 3,
        crop: Crop = "adm",
        subset_file: str | None = None,
        on_bad_file: BadFile = "error",
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
        eval_limit: int | None = None,
    ) -> None:
        super().__init__(root, image_size, in_channels, crop, border, subset_file, on_bad_file, batch_size,
                         eval_batch_size, num_workers, seed, eval_limit)
        self.border = border
        self.mappings_dir = Path(mappings_dir).expanduser() if mappings_dir is not None else self.root / "mappings"
        images = self.root / "images"
        if not images.is_dir():
            raise ValueError(f"root {self.root} looks like {self.scan.looks_like()} without images/; "
                             f"{self.name} expects {self.expects}")
        mapped = read_objectnet_mappings(self.mappings_dir)
        self.label_space = LabelSpace(mapped.names, mapped.model_ids, NUM_IMAGENET_CLASSES, self.name)
        self.folder_to_target = {f: k for k, f in enumerate(mapped.folders)}
        present = list_subfolders(images)
        unknown = [f for f in present if f not in mapped.all_folders]
        if unknown:
            raise ValueError(f"objectnet: folders in {images} not in {OBJECTNET_MAPPING_FILES[0]}: {preview(unknown)}")
        if not any(f in self.folder_to_target for f in present):
            raise ValueError(f"objectnet: {images} has no folder of a class that maps to ImageNet")
        self.present = [f for f in present if f in self.folder_to_target]

    def image_root(self) -> Path:
        return self.root / "images"

    def list_samples(self) -> list[Sample]:
        return self._class_folder_samples({f: self.folder_to_target[f] for f in self.present})
