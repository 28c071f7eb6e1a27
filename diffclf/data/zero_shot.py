"""What the six zero-shot benchmarks of Li et al. 2023 (Table 1) share: a root found the way torchvision
lays the data sets out, the official evaluation transform, and train/test (and val) splits.

Each set is read from the files its official download unpacks to, by our own readers: torchvision's
datasets check md5 sums or need a download, which a machine without network (or a test's miniature
copy) cannot satisfy. Labels are in each data set's own order (= torchvision's), so accuracies
compare with published ones; class names are the prompt-friendly ones the official
diffusion-classifier builds its prompts from. Nothing is trained on these sets: ``train`` exists to
fit calibrations (``predict --data.init_args.predict_split train``), and ``val`` is the data set's
own validation split where it has one, else the test images (as the ImageNet evaluation sets).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from diffclf.data.base import ClassificationDataModule, DataSourceError, stage_splits
from diffclf.data.folders import BadFile, ImageFileDataset, Sample, preview
from diffclf.data.transforms import Interpolation, convert_mode, resize_center_crop, to_model_range

#: One folder holding every data set in torchvision's layout (the official diffusion-classifier's variable).
DATA_ROOT_ENV = "DATASET_ROOT"


class ResizeCenterCrop:
    """PIL image → ``(3, S, S)`` in [-1, 1] as the official evaluation does it (:func:`resize_center_crop`:
    shorter side to ``S``, bicubic unless ``interpolation`` says otherwise, then ``CenterCrop(S)``).

    ``crop_bottom`` pixels are cut from the bottom first (FGVC-Aircraft's copyright banner).
    """

    def __init__(self, image_size: int, crop_bottom: int = 0, interpolation: Interpolation = "bicubic") -> None:
        if image_size < 1:
            raise ValueError(f"data.image_size must be >= 1, got {image_size}")
        self.image_size = image_size
        self.crop_bottom = crop_bottom
        self.interpolation = interpolation

    def __call__(self, img: Image.Image) -> Tensor:
        img = convert_mode(img, 3)
        if self.crop_bottom:
            img = img.crop((0, 0, img.width, img.height - self.crop_bottom))
        return to_model_range(np.array(resize_center_crop(img, self.image_size, self.interpolation)))


class ArrayImageDataset(Dataset):
    """``(image, target)`` from uint8 arrays ``(N, A, B, C)`` held in memory or memory-mapped.

    ``axes`` orders one image's axes into ``(H, W, 3)``: ``(1, 2, 0)`` for CIFAR's row-major CHW,
    ``(2, 1, 0)`` for STL-10's column-major channels.
    """

    def __init__(self, images: np.ndarray, targets: np.ndarray, transform: ResizeCenterCrop,
                 axes: tuple[int, int, int]) -> None:
        if len(images) != len(targets):
            raise ValueError(f"{len(images)} images but {len(targets)} targets")
        self.images, self.targets = images, np.asarray(targets, dtype=np.int64)
        self.transform, self.axes = transform, axes

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        hwc = np.ascontiguousarray(np.transpose(self.images[i], self.axes))
        return self.transform(Image.fromarray(hwc, "RGB")), int(self.targets[i])


def find_dataset_folder(root: str | None, folder: str, name: str, layout: str, marker: str) -> Path:
    """``root/folder``, or ``root`` itself when it is that folder (by name, or holding ``marker`` when renamed);
    else one line naming ``data.root`` and the layout."""
    source = "data.root"
    if root is None:
        root, source = os.environ.get(DATA_ROOT_ENV) or None, f"${DATA_ROOT_ENV}"
    if root is None:
        raise DataSourceError(f"{name}: no data root: pass --data.root PATH or set {DATA_ROOT_ENV} "
                              f"(a folder holding {layout})")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DataSourceError(f"{name}: root {path} (from {source}) does not exist or is not a folder; "
                              f"expected {layout}")
    if (path / folder).is_dir():
        return path / folder
    if path.name == folder or (path / marker).is_file():
        return path
    raise DataSourceError(f"{name}: root {path} (from {source}) has no {folder}/ folder; expected {layout}")


def require_file(path: Path, name: str, layout: str) -> Path:
    """``path`` if it is a file, else one line naming it and the layout."""
    if not path.is_file():
        raise DataSourceError(f"{name}: missing {path}; expected {layout}")
    return path


def read_lines(path: Path, name: str, layout: str) -> list[str]:
    """The non-empty, non-comment lines of a metadata file (must exist)."""
    text = require_file(path, name, layout).read_text(encoding="utf-8")
    return [s for line in text.splitlines() if (s := line.strip()) and not s.startswith("#")]


def check_on_bad_file(on_bad_file: str) -> BadFile:
    """``on_bad_file`` checked when the data module is built, not when the first split is."""
    if on_bad_file not in ("error", "skip"):
        raise ValueError(f"data.on_bad_file must be 'error' or 'skip', got {on_bad_file!r}")
    return on_bad_file  # type: ignore[return-value]


def check_class_count(names: Sequence[str], expected: int, path: Path, name: str) -> None:
    """Refuse a names file with the wrong number of (distinct) classes: a different data set's folder."""
    if len(names) != expected or len(set(names)) != expected:
        raise DataSourceError(f"{name}: {path} names {len(set(names))} distinct classes in {len(names)} lines, "
                              f"{name} has {expected}")


class ZeroShotDataModule(ClassificationDataModule):
    """A zero-shot benchmark under ``root``: subclasses set ``name``, ``folder``, ``marker``, ``layout``, ``splits``,
    ``label_space`` and implement :meth:`split_dataset`.

    Args:
        root: the folder holding the data set's folder (``folder``), or that folder itself
            (default: ``$DATASET_ROOT``).
        image_size: side of the shorter-side bicubic resize and the center crop (the paper: 512 or 256).
        **kwargs: ``batch_size``, ``eval_batch_size``, ``num_workers``, ``seed``, ``eval_limit``, ``flip``,
            ``predict_split``: see :class:`ClassificationDataModule`.
    """

    default_batch_size = 8
    default_flip = False
    #: The data set's folder as its official download unpacks it (torchvision's ``base_folder``).
    folder: ClassVar[str] = ""
    #: A file of the data set's folder that recognises it under another name.
    marker: ClassVar[str] = ""
    #: The expected files, in words, for error lines.
    layout: ClassVar[str] = ""
    #: The data set's own splits; ``val`` falls back to the test images when absent.
    splits: ClassVar[tuple[str, ...]] = ("train", "test")

    def __init__(self, root: str | None, image_size: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.root = find_dataset_folder(root, self.folder, self.name, self.layout, self.marker)
        self.image_size, self.in_channels = image_size, 3
        self.transform = ResizeCenterCrop(image_size)

    @property
    def val_is_held_out(self) -> bool:
        """Only a data set with its own validation split has validation images that are not test images."""
        return "val" in self.splits

    def file(self, relative: str) -> Path:
        """A metadata file under the data set's folder, which must exist."""
        return require_file(self.root / relative, self.name, self.layout)

    def split_dataset(self, split: str) -> Dataset:
        """The ``(image, target)`` dataset of one of :attr:`splits`, in the data set's own order."""
        raise NotImplementedError

    def image_dataset(self, samples: list[Sample], on_bad_file: BadFile) -> ImageFileDataset:
        """Image files as a dataset; with ``on_bad_file=error`` a missing file stops setup, naming it."""
        if on_bad_file == "error":
            missing = [p for p, _ in samples if not os.path.isfile(p)]
            if missing:
                raise DataSourceError(f"{self.name}: {len(missing)} listed image(s) missing: {preview(missing, 3)}; "
                                      f"expected {self.layout}")
        ds = ImageFileDataset(samples, self.transform, on_bad_file, self.num_workers or None)  # type: ignore[arg-type]
        self.skipped_images += ds.skipped
        if not len(ds):
            raise DataSourceError(f"{self.name}: no readable images in the split under {self.root}")
        return ds

    def build_datasets(self, stage: str) -> dict[str, Dataset]:
        self.skipped_images = []
        wanted = stage_splits(stage)
        if stage == "fit" and "val" not in self.splits:
            wanted = wanted - {"val"}
        cache: dict[str, Dataset] = {}
        out: dict[str, Dataset] = {}
        for split in sorted(wanted):
            source = split if split in self.splits else "test"
            if source not in cache:
                cache[source] = self.split_dataset(source)
            out[split] = cache[source]
        return out
