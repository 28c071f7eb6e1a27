"""Fashion-MNIST: 70,000 28×28 grey images of clothes in 10 classes, read from its IDX files.

The IDX files are parsed here with numpy (gzipped or not), found in this order: the folder the user
names (``root``, the files directly in it or in ``FashionMNIST/raw/``), Debian's ``dataset-fashion-mnist``
(``/usr/share/datasets/fashion-mnist/``), else torchvision downloads them into ``root`` when
``download=True``. Reading the files ourselves, rather than through torchvision's dataset, is what lets
a machine without network use Debian's copy, and a broken file fail with one line naming it. The whole
set is then held in memory (:class:`~diffclf.data.arrays.UInt8ImageDataset`); its shifted test sets
(:mod:`diffclf.data.shifts`) are built from the same reader.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from diffclf.data.arrays import UInt8ImageDataset, ValSplit, check_val_split, split_val
from diffclf.data.base import ClassificationDataModule, DataSourceError, stage_splits
from diffclf.data.label_spaces import fashion_mnist_label_space

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
DEFAULT_DOWNLOAD_ROOT = "data"
FASHION_MNIST_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
FASHION_MNIST_SIZES = {"train": 60000, "test": 10000}
FASHION_MNIST_SIDE = 28
MIN_SIDE = 8  # the smallest side that still gives a patch-4 DiT a 2x2 grid of tokens
IDX_IMAGES_MAGIC = 0x00000803
IDX_LABELS_MAGIC = 0x00000801
_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


# --------------------------------------------------------------------------- IDX files
def read_idx(path: str | Path, magic: int | None = None) -> np.ndarray:
    """Read an IDX file (gzipped or not, told apart by content) into a numpy array.

    ``magic`` (e.g. ``0x00000803`` for uint8 images) is checked when given. Anything wrong — not
    IDX, wrong kind, truncated, corrupt gzip — raises :class:`DataSourceError` naming the file.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as err:
        raise DataSourceError(f"{path}: unreadable IDX file ({err})") from None
    head = raw[:4]
    if len(head) < 4 or head[0] or head[1] or head[2] not in _IDX_DTYPES or not 1 <= head[3] <= 4:
        raise DataSourceError(f"{path}: not an IDX file (magic number 0x{head.hex() or '<empty>'})")
    found = struct.unpack(">I", head)[0]
    if magic is not None and found != magic:
        raise DataSourceError(f"{path}: IDX magic number 0x{found:08x}, expected 0x{magic:08x}")
    ndim, dtype = head[3], _IDX_DTYPES[head[2]]
    if len(raw) < 4 + 4 * ndim:
        raise DataSourceError(f"{path}: truncated IDX header")
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    body = memoryview(raw)[4 + 4 * ndim :]
    expected = math.prod(dims) * dtype.itemsize
    if len(body) != expected:
        raise DataSourceError(
            f"{path}: IDX header says {dims} ({expected} bytes) but {len(body)} data bytes follow"
        )
    return np.frombuffer(body, dtype=dtype).astype(dtype.newbyteorder("="), copy=True).reshape(dims)


def _find_in(folder: Path) -> dict[str, Path] | None:
    """The four Fashion-MNIST IDX files (``name`` or ``name.gz``) in ``folder``, or None if any is missing."""
    found: dict[str, Path] = {}
    for stem in (s for pair in FASHION_MNIST_FILES.values() for s in pair):
        for candidate in (folder / stem, folder / f"{stem}.gz"):
            if candidate.is_file():
                found[stem] = candidate
                break
        else:
            return None
    return found


def find_fashion_mnist(root: str | Path | None = None) -> dict[str, Path] | None:
    """The IDX files by stem from ``root`` (directly or in ``FashionMNIST/raw/``), else Debian's folder.

    Without ``root``, an earlier ``download`` into the default ``data`` folder is found last.
    """
    folders = [Path(root), Path(root) / "FashionMNIST" / "raw"] if root is not None else []
    folders.append(DEBIAN_FASHION_MNIST)
    if root is None:
        folders.append(Path(DEFAULT_DOWNLOAD_ROOT) / "FashionMNIST" / "raw")
    for folder in folders:
        found = _find_in(folder)
        if found is not None:
            return found
    return None


def missing_fashion_mnist_message(root: str | Path | None, option_prefix: str = "--data.init_args.") -> str:
    """One line naming where we looked and the three ways to provide the data."""
    looked = f"{root} (and its FashionMNIST/raw/), " if root is not None else ""
    return (
        f"Fashion-MNIST not found (looked in {looked}{DEBIAN_FASHION_MNIST}/): name a folder with its four IDX "
        f"files ({option_prefix}root DIR), install Debian's copy (apt-get install dataset-fashion-mnist), "
        f"or let torchvision download it ({option_prefix}download true)"
    )


def download_fashion_mnist(root: str | Path) -> dict[str, Path]:
    """torchvision's download into ``root/FashionMNIST/raw/``; returns the files found there."""
    from torchvision.datasets import FashionMNIST

    try:
        FashionMNIST(str(root), train=True, download=True)
    except Exception as err:  # noqa: BLE001 - network and archive errors alike get one line
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataSourceError(f"Fashion-MNIST download into {root} failed ({reason})") from None
    found = _find_in(Path(root) / "FashionMNIST" / "raw")
    if found is None:
        raise DataSourceError(
            f"Fashion-MNIST download into {root} left no IDX files in {root}/FashionMNIST/raw/"
        )
    return found


def load_fashion_mnist_split(files: dict[str, Path], split: str) -> tuple[Tensor, Tensor]:
    """``(uint8 images (N, 28, 28), int64 labels (N,))`` of ``train`` or ``test``, checked for shape and range."""
    image_stem, label_stem = FASHION_MNIST_FILES[split]
    images = read_idx(files[image_stem], IDX_IMAGES_MAGIC)
    labels = read_idx(files[label_stem], IDX_LABELS_MAGIC)
    side = FASHION_MNIST_SIDE
    if images.shape[1:] != (side, side):
        raise DataSourceError(
            f"{files[image_stem]}: images are {images.shape[1:]}, Fashion-MNIST's are {side}x{side}"
        )
    if len(images) != len(labels):
        raise DataSourceError(f"{files[label_stem]}: {len(labels)} labels for {len(images)} images")
    if labels.size and labels.max() >= 10:
        raise DataSourceError(f"{files[label_stem]}: label {int(labels.max())} outside Fashion-MNIST's 0..9")
    return torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64))


# --------------------------------------------------------------------------- Fashion-MNIST
class FashionMNISTDataModule(ClassificationDataModule):
    """Fashion-MNIST: 60,000 training and 10,000 test images, 28×28 grey, 10 classes.

    Images are padded with the background value (-1) to ``image_size``, or shrunk to it when it is below
    28. Training uses all 60,000 images, as every published Fashion-MNIST number does. Validation (the
    eps-loss / accuracy curve) defaults to a fixed stratified 1,000 of the test images: held out from
    training, so the curve shows over-fitting, yet cheap enough to run often. The presets never select
    checkpoints on it;
    to do so without touching the test split, set ``val_split=train`` (those images then leave training).

    Args:
        root: folder with the four IDX files (gzipped or not; directly or in ``FashionMNIST/raw/``);
            also where ``download`` puts them (default ``data``, relative to the working directory).
        download: download with torchvision when neither ``root`` nor Debian's copy has the files.
        image_size: side after padding (>= 28; 28 = no padding; 32 suits patch 2 and 4) or after an
            antialiased shrink (< 28; 16 gives a patch-4 DiT 16 tokens, for short training budgets).
        val_split: where validation images come from: ``test`` or ``train`` (then removed from training).
        val_size: validation images, a fixed stratified subset of ``val_split``.
        **kwargs: ``batch_size``, ``eval_batch_size``, ``num_workers``, ``seed``, ``eval_limit``, ``flip``: see
            :class:`ClassificationDataModule`.
    """

    def __init__(
        self,
        root: str | None = None,
        download: bool = False,
        image_size: int = 32,
        val_split: ValSplit = "test",
        val_size: int = 1000,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        check_val_split(val_split)
        if image_size < MIN_SIDE:
            raise ValueError(
                f"data.image_size must be >= {MIN_SIDE} (>= 28 pads the 28x28 images, less shrinks them), got {image_size}"
            )
        self.name = "fashion_mnist"
        self.label_space = fashion_mnist_label_space()
        self.image_size = image_size
        self.in_channels = 1
        self.root = root
        self.download = download
        self.val_split = val_split
        self.val_size = val_size
        self.files = find_fashion_mnist(root)
        if self.files is None and not download:
            raise DataSourceError(missing_fashion_mnist_message(root))
        self._arrays: dict[str, tuple[Tensor, Tensor]] = {}

    def prepare_data(self) -> None:
        """Download once (per node) when asked and nothing local was found."""
        if self.files is None:
            self.files = find_fashion_mnist(self.root) or download_fashion_mnist(
                self.root or DEFAULT_DOWNLOAD_ROOT
            )

    def arrays(self, split: str) -> tuple[Tensor, Tensor]:
        """The raw ``train``/``test`` split as uint8 images and labels, read once."""
        if split not in self._arrays:
            if self.files is None:
                self.prepare_data()
            assert self.files is not None
            self._arrays[split] = load_fashion_mnist_split(self.files, split)
        return self._arrays[split]

    def build_datasets(self, stage: str) -> dict[str, Dataset]:
        wanted = stage_splits(stage)
        need = {"train"} if "train" in wanted or ("val" in wanted and self.val_split == "train") else set()
        if "test" in wanted or ("val" in wanted and self.val_split == "test"):
            need.add("test")
        arrays = {s: self.arrays(s) for s in sorted(need)}
        labels = {s: y.numpy() for s, (_, y) in arrays.items()}
        out: dict[str, Dataset] = {}
        if "val" in wanted or "train" in wanted:
            keep, val = split_val(self.val_split, self.val_size, labels.get("train"), labels.get("test"))
            x, y = arrays[self.val_split]
            if "val" in wanted:
                val_t = torch.from_numpy(val)
                out["val"] = UInt8ImageDataset(x[val_t], y[val_t], image_size=self.image_size)
            if "train" in wanted:
                x, y = arrays["train"]
                if keep is not None:
                    keep_t = torch.from_numpy(keep)
                    x, y = x[keep_t], y[keep_t]
                out["train"] = UInt8ImageDataset(x, y, image_size=self.image_size)
        if "test" in wanted:
            out["test"] = UInt8ImageDataset(*arrays["test"], image_size=self.image_size)
        return out
