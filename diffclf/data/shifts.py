"""Distribution shifts of the Fashion-MNIST test set, built once by a command and read by a data module.

``python cli.py build-shift --name NAME --out DIR`` writes ``DIR/shift.npz`` (uint8 images, labels,
source test index; for corruptions also the corruption name and severity per image) and
``DIR/meta.json`` (the recipe, the source files' hashes and the data's hash), so a shift is a file
one can hash, share and rebuild bit for bit:

- ``fashion_mnist_c``: fixed corruptions of the 10,000 test images (Fashion-MNIST-C, after
  ImageNet-C / MNIST-C; the image math is :mod:`diffclf.data.corruptions`) at fixed severities, every
  random draw seeded from ``(seed, corruption, severity)`` and taken in image order, so the first ``n``
  images of a ``limit=n`` build equal those of the full build.
- ``fashion_mnist_hard``: the test images a reference discriminative model misclassifies — adversarial
  filtering, the way ImageNet-A was built against a ResNet-50. The reference is recorded in the meta as
  ``exclude_from_fit``: its accuracy on this set is zero by construction, so it must not sit on the
  effective-robustness line fitted over discriminative models.

:class:`FashionMNISTShiftDataModule` serves such a file as a test split over Fashion-MNIST's label space.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from diffclf.data.arrays import UInt8ImageDataset, uint8_to_model
from diffclf.data.base import ClassificationDataModule, DataSourceError
from diffclf.data.corruptions import CORRUPTIONS, corrupt
from diffclf.data.fashion_mnist import (
    FASHION_MNIST_FILES,
    download_fashion_mnist,
    find_fashion_mnist,
    load_fashion_mnist_split,
    missing_fashion_mnist_message,
)
from diffclf.data.label_spaces import fashion_mnist_label_space

SHIFT_FILE = "shift.npz"
META_FILE = "meta.json"
SHIFT_NAMES = ("fashion_mnist_c", "fashion_mnist_hard")
DEFAULT_SEVERITIES = (1, 3, 5)
FORMAT_VERSION = 1


# --------------------------------------------------------------------------- files
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez_compressed`` with fixed zip timestamps, so equal arrays give equal bytes; written atomically."""
    tmp = path.with_name(path.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key, arr in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, buf.getvalue())
    os.replace(tmp, path)


def _write_shift(out: Path, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> str:
    out.mkdir(parents=True, exist_ok=True)
    write_npz(out / SHIFT_FILE, arrays)
    meta = {
        **meta,
        "format_version": FORMAT_VERSION,
        "file": SHIFT_FILE,
        "num_images": len(arrays["labels"]),
        "sha256": _sha256(out / SHIFT_FILE),
    }
    (out / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return str(out)


def _source_test(root: str | None, download: bool) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Fashion-MNIST's test images and labels as numpy arrays, plus where they came from (paths and hashes)."""
    files = find_fashion_mnist(root)
    if files is None and download:
        files = download_fashion_mnist(root or "data")
    if files is None:
        raise SystemExit(f"error: {missing_fashion_mnist_message(root, option_prefix='--')}")
    try:
        images, labels = load_fashion_mnist_split(files, "test")
    except DataSourceError as err:
        raise SystemExit(f"error: {err}") from None
    source = {
        stem: {"path": str(files[stem].resolve()), "sha256": _sha256(files[stem])}
        for stem in FASHION_MNIST_FILES["test"]
    }
    return images.numpy(), labels.numpy(), source


def _command(**args: Any) -> str:
    parts = ["python cli.py build-shift"]
    for key, value in args.items():
        if value is not None:
            parts.append(
                f"--{key} {'[' + ','.join(map(str, value)) + ']' if isinstance(value, list) else value}"
            )
    return " ".join(parts)


# --------------------------------------------------------------------------- building
def build_shift(
    name: str,
    out: str,
    reference: str | None = None,
    root: str | None = None,
    download: bool = False,
    severities: list[int] | None = None,
    corruptions: list[str] | None = None,
    batch_size: int = 512,
    device: str = "cpu",
    seed: int = 0,
    limit: int | None = None,
) -> str:
    """Build a shifted Fashion-MNIST test set into ``out`` (``shift.npz`` + ``meta.json``); returns ``out``.

    Args:
        name: ``fashion_mnist_c`` (fixed corruptions) or ``fashion_mnist_hard`` (test images the
            reference model misclassifies).
        out: folder to write; the data presets read ``data/shifts/<name>``.
        reference: ``fashion_mnist_hard`` only: a diffclf ``TimmClassifier`` checkpoint trained on
            Fashion-MNIST (10 classes, 1 channel). It is recorded as ``exclude_from_fit``.
        root: folder with Fashion-MNIST's IDX files (default: Debian's ``/usr/share/datasets/fashion-mnist``).
        download: let torchvision download Fashion-MNIST into ``root`` (default ``data``) if not found.
        severities: ``fashion_mnist_c`` severities, each in 1..5 (default 1, 3, 5).
        corruptions: ``fashion_mnist_c`` corruptions (default all: gaussian_noise, shot_noise,
            impulse_noise, gaussian_blur, contrast, pixelate, rotate, shear).
        batch_size: images per reference-model forward.
        device: torch device for the reference model.
        seed: seed of the corruptions' random draws.
        limit: use only the first ``limit`` test images (tests and quick looks).
    """
    if name not in SHIFT_NAMES:
        raise SystemExit(f"error: --name {name!r}: known shifts are {', '.join(SHIFT_NAMES)}")
    if limit is not None and limit < 1:
        raise SystemExit(f"error: --limit must be >= 1, got {limit}")
    if name == "fashion_mnist_c":
        if reference is not None:
            raise SystemExit("error: --reference is for fashion_mnist_hard; fashion_mnist_c needs no model")
        images, labels, source = _source_test(root, download)
        return _build_corruptions(
            Path(out), images[:limit], labels[:limit], source, severities, corruptions, seed, limit
        )
    if severities is not None or corruptions is not None:
        raise SystemExit("error: --severities/--corruptions are for fashion_mnist_c, not fashion_mnist_hard")
    if reference is None:
        raise SystemExit(
            "error: fashion_mnist_hard needs --reference CKPT, a TimmClassifier checkpoint trained on Fashion-MNIST"
        )
    model, info = _load_reference(reference, device)
    images, labels, source = _source_test(root, download)
    return _build_hard(
        Path(out), images[:limit], labels[:limit], source, model, info, batch_size, device, limit
    )


def _build_corruptions(
    out: Path,
    images: np.ndarray,
    labels: np.ndarray,
    source: dict[str, Any],
    severities: list[int] | None,
    corruptions: list[str] | None,
    seed: int,
    limit: int | None,
) -> str:
    severities = sorted(set(severities or DEFAULT_SEVERITIES))
    corruptions = list(dict.fromkeys(corruptions or CORRUPTIONS))
    bad = [c for c in corruptions if c not in CORRUPTIONS]
    if bad:
        raise SystemExit(f"error: --corruptions {bad}: known corruptions are {', '.join(CORRUPTIONS)}")
    if any(not 1 <= s <= 5 for s in severities):
        raise SystemExit(f"error: --severities {severities}: each must be in 1..5")
    parts, names, sevs = [], [], []
    for c in corruptions:
        for s in severities:
            parts.append(corrupt(images, c, s, seed))
            names.append(np.full(len(images), c))
            sevs.append(np.full(len(images), s, dtype=np.int8))
    reps = len(parts)
    arrays = {
        "images": np.concatenate(parts),
        "labels": np.tile(labels.astype(np.int64), reps),
        "source_index": np.tile(np.arange(len(images), dtype=np.int64), reps),
        "corruption": np.concatenate(names).astype(f"<U{max(map(len, corruptions))}"),
        "severity": np.concatenate(sevs),
    }
    meta = {
        "name": "fashion_mnist_c",
        "description": "Fashion-MNIST test images under fixed corruptions (after ImageNet-C / MNIST-C); "
        "images ordered by corruption, then severity, then test index",
        "corruptions": {
            c: {
                "parameter": CORRUPTIONS[c][2],
                "by_severity": dict(zip(map(str, range(1, 6)), CORRUPTIONS[c][1])),
            }
            for c in corruptions
        },
        "severities": severities,
        "seed": seed,
        "limit": limit,
        "num_source_images": len(images),
        "class_names": list(fashion_mnist_label_space().names),
        "image_shape": list(images.shape[1:]),
        "source": source,
        "command": _command(
            name="fashion_mnist_c",
            out=str(out),
            severities=severities,
            corruptions=corruptions,
            seed=seed,
            limit=limit,
        ),
    }
    path = _write_shift(out, arrays, meta)
    print(
        f"fashion_mnist_c: {len(arrays['labels'])} images ({len(corruptions)} corruptions x "
        f"{len(severities)} severities x {len(images)}) written to {path}"
    )
    return path


def _load_reference(reference: str, device: str) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The reference classifier (eval mode) and what the meta records about it; refuses a non-10-class model."""
    from diffclf.models.checkpoints import read_checkpoint
    from diffclf.models.classifiers import load_classifier

    try:
        model = load_classifier(reference, map_location=device)
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"error: --reference {err}") from None
    hp = read_checkpoint(reference, option="--reference", mmap=True).hparams
    config = model.config
    if model.num_classes != 10:
        raise SystemExit(
            f"error: --reference {reference}: {model.num_classes} classes; a Fashion-MNIST reference needs 10"
        )
    if int(config["in_chans"]) != 1:
        raise SystemExit(
            f"error: --reference {reference}: takes {config['in_chans']} channels; Fashion-MNIST has 1"
        )
    if int(config["img_size"]) < 28:
        raise SystemExit(
            f"error: --reference {reference}: built for {config['img_size']}px, below Fashion-MNIST's 28"
        )
    label = hp.get("label") or hp.get("model_name") or config["name"]
    info = {
        "model": str(label),
        "timm_model": str(config["name"]),
        "img_size": int(config["img_size"]),
        "checkpoint": str(Path(reference).resolve()),
        "checkpoint_sha256": _sha256(Path(reference)),
    }
    return model, info


@torch.inference_mode()
def predict_reference(
    model: torch.nn.Module, images: np.ndarray, img_size: int, batch_size: int = 512, device: str = "cpu"
) -> np.ndarray:
    """Predicted class per uint8 image ``(N, 28, 28)``, fed as [-1, 1] padded with -1 to ``img_size``."""
    preds = []
    for i in range(0, len(images), batch_size):
        x = uint8_to_model(torch.from_numpy(images[i : i + batch_size]), image_size=img_size).to(device)
        preds.append(model(x).argmax(dim=1).cpu())
    return torch.cat(preds).numpy() if preds else np.zeros(0, dtype=np.int64)


def _build_hard(
    out: Path,
    images: np.ndarray,
    labels: np.ndarray,
    source: dict[str, Any],
    model: torch.nn.Module,
    info: dict[str, Any],
    batch_size: int,
    device: str,
    limit: int | None,
) -> str:
    preds = predict_reference(model, images, info["img_size"], batch_size, device)
    wrong = np.flatnonzero(preds != labels)
    arrays = {
        "images": images[wrong],
        "labels": labels[wrong].astype(np.int64),
        "source_index": wrong.astype(np.int64),
        "reference_pred": preds[wrong].astype(np.int64),
    }
    accuracy = float((preds == labels).mean()) if len(labels) else float("nan")
    meta = {
        "name": "fashion_mnist_hard",
        "description": "Fashion-MNIST test images the reference model misclassifies (adversarial filtering, "
        "as ImageNet-A); the reference scores 0 here by construction, so leave it out of robustness fits",
        "reference": {**info, "accuracy_on_source": accuracy},
        "exclude_from_fit": [info["model"]],
        "limit": limit,
        "num_source_images": len(images),
        "class_counts": np.bincount(arrays["labels"], minlength=10).tolist(),
        "class_names": list(fashion_mnist_label_space().names),
        "image_shape": list(images.shape[1:]),
        "source": source,
        "command": _command(
            name="fashion_mnist_hard", out=str(out), reference=info["checkpoint"], limit=limit
        ),
    }
    path = _write_shift(out, arrays, meta)
    print(
        f"fashion_mnist_hard: kept {len(wrong)} of {len(images)} test images misclassified by {info['model']} "
        f"(its accuracy {accuracy:.2%}), written to {path}"
    )
    return path


# --------------------------------------------------------------------------- reading
def _build_hint(path: Path) -> str:
    """How to build the shift a folder should hold (guessed from its name, else both)."""
    hard = f"python cli.py build-shift --name fashion_mnist_hard --reference CKPT --out {path}"
    corrupted = f"python cli.py build-shift --name fashion_mnist_c --out {path}"
    if path.name == "fashion_mnist_hard":
        return f"build it with: {hard} (CKPT: a TimmClassifier checkpoint trained on Fashion-MNIST)"
    if path.name == "fashion_mnist_c":
        return f"build it with: {corrupted}"
    return f"build it with: {corrupted} (or: {hard})"


def read_shift_meta(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """``(folder, meta)`` of a built shift (``path`` is its folder or its ``shift.npz``); one-line errors."""
    folder = Path(path)
    if folder.name == SHIFT_FILE:
        folder = folder.parent
    meta_path = folder / META_FILE
    if not meta_path.is_file() or not (folder / SHIFT_FILE).is_file():
        raise DataSourceError(
            f"no built shift at {folder} (needs {META_FILE} and {SHIFT_FILE}); {_build_hint(folder)}"
        )
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as err:
        raise DataSourceError(f"{meta_path}: unreadable ({err}); {_build_hint(folder)}") from None
    if not isinstance(meta, dict) or meta.get("name") not in SHIFT_NAMES:
        raise DataSourceError(
            f"{meta_path}: not a diffclf shift (name must be one of {SHIFT_NAMES}); {_build_hint(folder)}"
        )
    return folder, meta


def read_shift_arrays(folder: Path, meta: dict[str, Any]) -> dict[str, np.ndarray]:
    """The arrays of a built shift, checked for keys, shapes and dtypes; one-line errors."""
    keys = ["images", "labels", "source_index"] + (
        ["corruption", "severity"] if meta["name"] == "fashion_mnist_c" else []
    )
    npz_path = folder / SHIFT_FILE
    try:
        with np.load(npz_path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in keys if k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise DataSourceError(
            f"{npz_path}: unreadable ({str(err).splitlines()[0]}); {_build_hint(folder)}"
        ) from None
    missing = [k for k in keys if k not in arrays]
    if missing:
        raise DataSourceError(f"{npz_path}: missing arrays {missing}; {_build_hint(folder)}")
    n = len(arrays["labels"])
    images = arrays["images"]
    if images.dtype != np.uint8 or images.ndim != 3 or any(len(a) != n for a in arrays.values()):
        raise DataSourceError(
            f"{npz_path}: malformed (images {images.shape} {images.dtype}, {n} labels); {_build_hint(folder)}"
        )
    if n and (arrays["labels"].min() < 0 or arrays["labels"].max() >= 10):
        raise DataSourceError(f"{npz_path}: labels outside 0..9; {_build_hint(folder)}")
    return arrays


def shift_dataset_name(kind: str, corruption: str | None, severity: int | None) -> str:
    """``fashion_mnist_c``, ``fashion_mnist_c-rotate``, ``fashion_mnist_c-rotate-3`` or ``fashion_mnist_c-s3``."""
    if corruption is not None:
        return f"{kind}-{corruption}" + (f"-{severity}" if severity is not None else "")
    return kind + (f"-s{severity}" if severity is not None else "")


class FashionMNISTShiftDataModule(ClassificationDataModule):
    """A built Fashion-MNIST shift as a test split, scored over Fashion-MNIST's own label space.

    The dataset ``name`` is the shift's (``fashion_mnist_c`` / ``fashion_mnist_hard``), suffixed with
    the filter when one is set (``fashion_mnist_c-gaussian_noise-3``, ``fashion_mnist_c-s5``), so
    results of different slices never collide under one name. No training split; ``validate`` gets
    the same images (eps-loss of a trained model on shifted data).

    Args:
        path: folder written by ``python cli.py build-shift`` (relative to the working directory;
            the presets use ``data/shifts/<name>``).
        corruption: ``fashion_mnist_c`` only: keep one corruption (e.g. ``gaussian_noise``).
        severity: ``fashion_mnist_c`` only: keep one severity.
        image_size: side after padding with -1 (>= 28).
        **kwargs: ``batch_size``, ``eval_batch_size``, ``num_workers``, ``seed``, ``eval_limit``, ``flip``: see
            :class:`ClassificationDataModule`.
    """

    #: A test-only set: its validation images are its test images.
    val_is_held_out: ClassVar[bool] = False

    def __init__(
        self,
        path: str,
        corruption: str | None = None,
        severity: int | None = None,
        image_size: int = 32,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if image_size < 28:
            raise ValueError(
                f"data.image_size must be >= 28 (images are padded, not cropped), got {image_size}"
            )
        self.folder, self.meta = read_shift_meta(path)
        kind = self.meta["name"]
        if kind != "fashion_mnist_c" and (corruption is not None or severity is not None):
            raise ValueError(
                f"data.corruption/data.severity filter fashion_mnist_c, but {self.folder} holds {kind}"
            )
        if corruption is not None and corruption not in self.meta.get("corruptions", {}):
            raise ValueError(
                f"data.corruption {corruption!r} is not in {self.folder}; it has "
                f"{', '.join(self.meta.get('corruptions', {}))}"
            )
        if severity is not None and severity not in self.meta.get("severities", []):
            raise ValueError(
                f"data.severity {severity} is not in {self.folder}; it has {self.meta.get('severities')}"
            )
        self.label_space = fashion_mnist_label_space()
        if list(self.meta.get("class_names", [])) != list(self.label_space.names):
            raise DataSourceError(
                f"{self.folder / META_FILE}: class names differ from Fashion-MNIST's; "
                f"{_build_hint(self.folder)}"
            )
        self.name = shift_dataset_name(kind, corruption, severity)
        self.corruption = corruption
        self.severity = severity
        self.image_size = image_size
        self.in_channels = 1
        self.path = path
        self.source_index: Tensor | None = None

    @property
    def exclude_from_fit(self) -> list[str]:
        """Models to leave out of an effective-robustness fit on this set (the adversarial reference)."""
        return list(self.meta.get("exclude_from_fit", []))

    def build_datasets(self, stage: str) -> dict[str, Dataset]:
        if stage == "fit":
            raise ValueError(
                f"{self.name} is a test-only set: use it with test, predict or validate, not fit"
            )
        arrays = read_shift_arrays(self.folder, self.meta)
        keep = np.ones(len(arrays["labels"]), dtype=bool)
        if self.corruption is not None:
            keep &= arrays["corruption"] == self.corruption
        if self.severity is not None:
            keep &= arrays["severity"] == self.severity
        idx = np.flatnonzero(keep)
        if len(idx) == 0:
            raise DataSourceError(f"{self.folder}: no images for {self.name}; {_build_hint(self.folder)}")
        self.source_index = torch.from_numpy(arrays["source_index"][idx])
        dataset = UInt8ImageDataset(
            torch.from_numpy(arrays["images"][idx]),
            torch.from_numpy(arrays["labels"][idx]),
            image_size=self.image_size,
        )
        return {"val": dataset} if stage == "validate" else {"test": dataset}
