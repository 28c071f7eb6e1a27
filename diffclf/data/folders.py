"""Image files on disk → ``(image, target)`` datasets, and a data module for class-folder trees.

Real evaluation sets hold the odd truncated JPEG, CMYK scan or 16-bit PNG. A bad file either stops
the run with one line naming it (``on_bad_file="error"``, when it is loaded) or is dropped by a full
decode of every file at setup and *listed* (``on_bad_file="skip"``), so results can report how many
images were not scored instead of silently scoring fewer. Every mode is converted by
:func:`diffclf.data.transforms.convert_mode` (alpha composited on white, 16-bit rescaled).

The evaluation sets (:mod:`diffclf.data.eval_sets` and the ImageNet family built on it) use the same
helpers.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from diffclf.data.base import ClassificationDataModule
from diffclf.data.label_spaces import LabelSpace
from diffclf.data.transforms import Crop, ImageTransform

BadFile = Literal["error", "skip"]
Sample = tuple[str, int]

#: Extensions read as images, compared lower-case (so ``.JPEG`` and ``.PNG`` count too).
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})


class UnreadableImageError(OSError):
    """A file that PIL cannot fully decode; the message is one line that starts with its path."""


def is_image_file(path: str | os.PathLike) -> bool:
    """True for a visible file with an image extension (case-insensitive); hides ``._x.jpg`` etc."""
    p = Path(path)
    return not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open and fully decode ``path``; anything PIL cannot decode raises :class:`UnreadableImageError`.

    ``Image.open`` only reads the header, so a truncated file would otherwise fail later, deep inside
    a transform or a worker, without saying which file it was.
    """
    try:
        with Image.open(path) as img:
            img.load()
            return img
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, struct.error, ...
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())
        raise UnreadableImageError(f"{path}: not a readable image ({reason})") from exc


def image_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot be decoded, or None when it can (the check pass of ``on_bad_file="skip"``)."""
    try:
        load_image(path)
    except UnreadableImageError as exc:
        return str(exc)
    return None


def find_unreadable(paths: Sequence[str], workers: int | None = None) -> dict[str, str]:
    """``{path: reason}`` for every file that does not decode, in input order.

    Threads suffice: PIL releases the GIL while decoding, so this scales with cores.
    """
    workers = max(1, min(32, workers or os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        problems = list(pool.map(image_problem, paths, chunksize=64))
    return {p: why for p, why in zip(paths, problems) if why is not None}


def list_subfolders(root: str | os.PathLike) -> list[str]:
    """Names of the visible sub-folders of ``root``, sorted (no file listing: cheap at ``__init__``)."""
    with os.scandir(root) as it:
        return sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))


def list_image_files(folder: str | os.PathLike, recursive: bool = True) -> list[str]:
    """Image files under ``folder``, sorted by relative path so dataset order never depends on the disk."""
    folder = Path(folder)
    if not recursive:
        with os.scandir(folder) as it:
            return sorted(str(folder / e.name) for e in it if e.is_file() and is_image_file(e.name))
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found.extend(os.path.join(dirpath, f) for f in filenames if is_image_file(f))
    return sorted(found, key=lambda p: Path(p).relative_to(folder).as_posix())


def read_list_file(path: str | os.PathLike, what: str) -> list[str]:
    """Non-empty, non-comment lines of a text file (class lists, subset files)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what} {p} does not exist")
    lines = [line.strip() for line in p.read_text(encoding="utf-8").splitlines()]
    lines = [line for line in lines if line and not line.startswith("#")]
    if not lines:
        raise ValueError(f"{what} {p} lists nothing")
    return lines


def preview(items: Iterable[object], n: int = 5) -> str:
    """The first ``n`` items, comma-separated, and how many there are: error lines stay one line."""
    items = list(items)
    shown = ", ".join(str(i) for i in items[:n])
    return shown + (f", … ({len(items)} in all)" if len(items) > n else "")


def select_subset(samples: Sequence[Sample], base: str | os.PathLike, subset_file: str | os.PathLike) -> list[Sample]:
    """The samples listed in ``subset_file``, in the file's order, so every model scores the same images.

    A line is a path relative to ``base`` (leading folders that ``base`` already is, such as
    ``images/`` or an absolute prefix, are tolerated) or, when file names are unique, a bare file
    name — so a subset written for ImageNet's flat layout also selects from the folder layout.
    A listed image that is not in the dataset is an error naming it, never a silent omission.
    """
    base = Path(base)
    by_rel: dict[str, int] = {}
    by_name: dict[str, int] = {}
    for i, (path, _) in enumerate(samples):
        p = Path(path)
        by_rel[p.relative_to(base).as_posix() if p.is_relative_to(base) else p.as_posix()] = i
        by_name[p.name] = -1 if p.name in by_name else i
    chosen: list[int] = []
    missing: list[str] = []
    seen: dict[int, str] = {}
    for line in read_list_file(subset_file, "subset_file"):
        parts = Path(line.replace("\\", "/")).parts
        index = next((by_rel[r] for k in range(len(parts)) if (r := "/".join(parts[k:])) in by_rel), None)
        if index is None and by_name.get(parts[-1], -1) >= 0:
            index = by_name[parts[-1]]
        if index is None:
            missing.append(line)
        elif index in seen:
            raise ValueError(f"subset_file {subset_file}: '{line}' lists the same image as '{seen[index]}'")
        else:
            seen[index] = line
            chosen.append(index)
    if missing:
        raise FileNotFoundError(
            f"subset_file {subset_file}: {len(missing)} listed image(s) not found among the images under "
            f"{base}: {preview(missing)}"
        )
    return [samples[i] for i in chosen]


class ImageFileDataset(Dataset):
    """``(image tensor, target)`` from ``(path, target)`` samples.

    Args:
        samples: ``(path, target)`` pairs, in dataset order.
        transform: PIL image → tensor (e.g. :class:`ImageTransform`).
        on_bad_file: ``error`` — loading an undecodable file raises :class:`UnreadableImageError`
            naming it; ``skip`` — every file is fully decoded once here, bad ones are dropped and
            their paths kept in :attr:`skipped`.
        check_workers: threads for the ``skip`` check pass (default: all cores).
    """

    def __init__(self, samples: Sequence[tuple[str | os.PathLike, int]], transform: ImageTransform,
                 on_bad_file: BadFile = "error", check_workers: int | None = None) -> None:
        if on_bad_file not in ("error", "skip"):
            raise ValueError(f"data.on_bad_file must be 'error' or 'skip', got {on_bad_file!r}")
        self.samples: list[Sample] = [(str(p), int(t)) for p, t in samples]
        self.transform = transform
        self.on_bad_file = on_bad_file
        self.skipped: list[str] = []
        if on_bad_file == "skip":
            bad = find_unreadable([p for p, _ in self.samples], check_workers)
            self.skipped = list(bad)
            self.samples = [s for s in self.samples if s[0] not in bad]

    @property
    def targets(self) -> list[int]:
        return [t for _, t in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        path, target = self.samples[i]
        return self.transform(load_image(path)), target


def _resolve_dir(path: str | os.PathLike | None, what: str) -> Path:
    if path is None:
        raise ValueError(f"{what} is not set")
    p = Path(path).expanduser()
    if not p.is_dir():
        raise FileNotFoundError(f"{what} {p} does not exist or is not a folder")
    return p


class ImageFolderDataModule(ClassificationDataModule):
    """Any tree of one sub-folder per class (the ImageNet *train* layout): ``root/<class>/<image>``.

    Classes are the sub-folder names of ``root`` sorted (as torchvision's ``ImageFolder``), or the
    order fixed by ``classes`` / ``classes_file`` (one name per line) so that label ids match a model
    trained elsewhere. The label space is known after ``__init__`` (only folder names are read);
    files are listed in :meth:`setup`.

    Splits: ``train`` = ``root`` minus held-out images; ``val`` = ``val_root``, else ``val_fraction``
    of every class of ``root`` (no validation when neither); ``test`` = ``test_root``, else
    ``test_fraction`` of every class of ``root``, else all of ``root`` (to score a folder as is).
    Held-out images are drawn per class with ``split_seed``, the same on every run and rank.

    Args:
        root: the class-folder tree (required).
        val_root, test_root: separate class-folder trees (their folders must be among the classes).
        val_fraction, test_fraction: share of each class of ``root`` held out instead.
        classes, classes_file: fixed class order (give at most one).
        name: dataset name in results and the label space.
        image_size, in_channels, crop, border: see :class:`ImageTransform`.
        subset_file: image paths relative to the test root, one per line: score exactly those.
        on_bad_file: ``error`` or ``skip`` (skipped files are listed in ``skipped_images``).
        split_seed: seed of the held-out draw.
        **kwargs: ``batch_size``, ``eval_batch_size``, ``num_workers``, ``seed``, ``eval_limit``, ``flip``: see
            :class:`ClassificationDataModule`.
    """

    def __init__(
        self,
        root: str | None = None,
        val_root: str | None = None,
        test_root: str | None = None,
        val_fraction: float = 0.0,
        test_fraction: float = 0.0,
        classes: list[str] | None = None,
        classes_file: str | None = None,
        name: str = "image_folder",
        image_size: int = 256,
        in_channels: int = 3,
        crop: Crop = "adm",
        border: int = 0,
        subset_file: str | None = None,
        on_bad_file: BadFile = "error",
        split_seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if on_bad_file not in ("error", "skip"):
            raise ValueError(f"data.on_bad_file must be 'error' or 'skip', got {on_bad_file!r}")
        for what, frac, other in (("val", val_fraction, val_root), ("test", test_fraction, test_root)):
            if not 0.0 <= frac < 1.0:
                raise ValueError(f"data.{what}_fraction must lie in [0, 1), got {frac}")
            if frac and other is not None:
                raise ValueError(f"give data.{what}_root or data.{what}_fraction, not both")
        if val_fraction + test_fraction >= 1.0:
            raise ValueError(f"data.val_fraction + data.test_fraction must be < 1, got {val_fraction + test_fraction}")
        if classes is not None and classes_file is not None:
            raise ValueError("give data.classes or data.classes_file, not both")
        if root is None:
            raise ValueError(
                f"{name}: no data root: pass --data.root PATH, a folder with one sub-folder of images per class "
                "(root/<class>/<image>)"
            )
        self.name = name
        self.root = _resolve_dir(root, f"{name}: root")
        self.val_root = _resolve_dir(val_root, f"{name}: val_root") if val_root is not None else None
        self.test_root = _resolve_dir(test_root, f"{name}: test_root") if test_root is not None else None
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.subset_file = subset_file
        self.on_bad_file = on_bad_file
        self.split_seed = split_seed
        self.image_size, self.in_channels = image_size, in_channels
        self.transform = ImageTransform(image_size, in_channels, crop, border)

        found = self._class_folders(self.root)
        if classes_file is not None:
            classes = read_list_file(classes_file, "classes_file")
        if classes is None:
            classes = found
        else:
            classes = [str(c) for c in classes]
            dupes = sorted({c for c in classes if classes.count(c) > 1})
            if dupes:
                raise ValueError(f"{name}: classes listed twice: {preview(dupes)}")
            absent = [c for c in classes if c not in found]
            if absent:
                warnings.warn(
                    f"{name}: root {self.root} has no folder for {len(absent)} of the {len(classes)} listed classes: "
                    f"{preview(absent)} (they keep their ids but have no images)", stacklevel=2,
                )
        self.classes = list(classes)
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        for extra_root in (self.root, self.val_root, self.test_root):
            if extra_root is not None:
                unknown = [f for f in self._class_folders(extra_root) if f not in self.class_to_idx]
                if unknown:
                    raise ValueError(
                        f"{name}: {extra_root} has folders that are not among the {len(self.classes)} classes: "
                        f"{preview(unknown)}"
                    )
        self.label_space = LabelSpace.identity(self.classes, name=name)

    def _class_folders(self, root: Path) -> list[str]:
        folders = list_subfolders(root)
        if folders:
            return folders
        holds = "holds image files but" if list_image_files(root, recursive=False) else "has"
        raise ValueError(
            f"{self.name}: root {root} {holds} no class folders; expected one sub-folder of images per class "
            "(root/<class>/<image>, the ImageNet train layout)"
        )

    def _samples(self, root: Path) -> list[Sample]:
        samples: list[Sample] = []
        empty = []
        for folder in self._class_folders(root):
            files = list_image_files(root / folder)
            if not files:
                empty.append(folder)
            samples.extend((f, self.class_to_idx[folder]) for f in files)
        if root == self.root and empty:
            raise ValueError(f"{self.name}: class folders without images in {root}: {preview(empty)}")
        if not samples:
            raise ValueError(f"{self.name}: no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) under {root}")
        return samples

    def split_samples(self) -> dict[str, list[Sample]]:
        """``{"train", "val", "test"}`` → samples (``val`` may be empty); held-out draws are per class."""
        rest = self._samples(self.root)
        held: dict[str, list[Sample]] = {"val": [], "test": []}
        if self.val_fraction or self.test_fraction:
            rng = np.random.default_rng(self.split_seed)
            by_class: dict[int, list[Sample]] = {}
            for s in rest:
                by_class.setdefault(s[1], []).append(s)
            keep: list[Sample] = []
            for _, group in sorted(by_class.items()):
                order = rng.permutation(len(group))
                n_test = round(len(group) * self.test_fraction)
                n_val = round(len(group) * self.val_fraction)
                picked = [group[i] for i in order]
                held["test"] += picked[:n_test]
                held["val"] += picked[n_test:n_test + n_val]
                keep += picked[n_test + n_val:]
            rest = sorted(keep, key=lambda s: (s[1], s[0]))
            held = {k: sorted(v, key=lambda s: (s[1], s[0])) for k, v in held.items()}
            sizes = sorted(len(g) for g in by_class.values())
            for split, fraction in (("test", self.test_fraction), ("val", self.val_fraction)):
                if fraction and not held[split]:  # else fit runs and only test finds its split empty
                    raise ValueError(f"{self.name}: data.{split}_fraction {fraction} holds out no image (classes of "
                                     f"{sizes[0]}-{sizes[-1]} images round to 0 each); raise it, or give data.{split}_root")
        val = self._samples(self.val_root) if self.val_root is not None else held["val"]
        if self.test_root is not None:
            test = self._samples(self.test_root)
        else:
            test = held["test"] if self.test_fraction else rest
        return {"train": rest, "val": val, "test": test}

    def build_datasets(self, stage: str) -> dict[str, Dataset]:
        splits = self.split_samples()
        wanted = {"fit": ("train", "val"), "validate": ("val",)}.get(stage, ("test",))
        if stage == "validate" and not splits["val"]:
            raise ValueError(f"{self.name}: no validation split: set data.val_root or data.val_fraction")
        if "test" in wanted and self.subset_file is not None:
            splits["test"] = select_subset(splits["test"], self.test_root or self.root, self.subset_file)
        datasets: dict[str, Dataset] = {}
        skipped: list[str] = []
        for split in wanted:
            if not splits[split]:
                continue
            ds = ImageFileDataset(splits[split], self.transform, self.on_bad_file, self.num_workers or None)
            skipped += ds.skipped
            if len(ds) == 0:
                raise ValueError(f"{self.name}: every image of the {split} split was unreadable and skipped")
            datasets[split] = ds
        self.skipped_images = skipped
        return datasets

    def val_dataloader(self) -> DataLoader | list:
        """No validation split configured → no validation (an empty list), rather than an error."""
        if self.val_dataset is None and self.val_root is None and not self.val_fraction:
            return []
        return super().val_dataloader()
