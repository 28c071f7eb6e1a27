"""Digits and Fashion-MNIST data modules on the real data: splits, values, sources, one-line errors."""

from __future__ import annotations

import gzip
import importlib
import shutil
import struct
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import DEBIAN_FASHION, gz_idx
from jsonargparse import ArgumentParser
from sklearn.datasets import load_digits

from diffclf.data import fashion_mnist
from diffclf.data.base import DataSourceError
from diffclf.data.digits import DigitsDataModule
from diffclf.data.fashion_mnist import FashionMNISTDataModule, read_idx
from diffclf.data.label_spaces import LabelSpace

ROOT = Path(__file__).resolve().parents[1]
DEBIAN = DEBIAN_FASHION
needs_debian = pytest.mark.skipif(
    not (DEBIAN / "t10k-labels-idx1-ubyte.gz").is_file(),
    reason="Debian's dataset-fashion-mnist is not installed (/usr/share/datasets/fashion-mnist absent)",
)


def write_idx(path: Path, array: np.ndarray, compress: bool = False) -> None:
    """Write a uint8 IDX file (magic 0x0000080N, big-endian dims), gzipped when ``compress``."""
    payload = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(payload) if compress else payload)


def small_fashion_root(
    root: Path, layout: str, n_train: int = 120, n_test: int = 50
) -> tuple[np.ndarray, ...]:
    """A Fashion-MNIST folder with the first images of Debian's files, uncompressed in FashionMNIST/raw/
    (``raw``) or gzipped directly in ``root`` (``direct``)."""
    arrays = {
        "train-images-idx3-ubyte": gz_idx("train-images-idx3-ubyte")[:n_train],
        "train-labels-idx1-ubyte": gz_idx("train-labels-idx1-ubyte")[:n_train],
        "t10k-images-idx3-ubyte": gz_idx("t10k-images-idx3-ubyte")[:n_test],
        "t10k-labels-idx1-ubyte": gz_idx("t10k-labels-idx1-ubyte")[:n_test],
    }
    for name, arr in arrays.items():
        if layout == "raw":
            write_idx(root / "FashionMNIST" / "raw" / name, arr)
        else:
            write_idx(root / f"{name}.gz", arr, compress=True)
    return tuple(arrays.values())


# --------------------------------------------------------------------------- digits
def _rows(x: torch.Tensor) -> list[bytes]:
    return sorted(bytes(r) for r in x.reshape(len(x), -1).numpy())


def test_digits_fixed_stratified_splits() -> None:
    dm = DigitsDataModule()
    dm.setup("fit")
    dm.setup("test")
    assert (len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)) == (1437, 360, 360)
    splits = dm.split_arrays()
    digits = load_digits()
    # train + test is exactly the whole set (as a multiset of images), nothing lost or doubled
    all_rows = _rows(torch.from_numpy(digits.images.astype(np.uint8)))
    assert _rows(torch.cat([splits["train"][0], splits["test"][0]])) == all_rows
    # stratified: each class's test share is within one image of 360 * its frequency
    freq = Counter(digits.target.tolist())
    test_counts = Counter(splits["test"][1].tolist())
    for c in range(10):
        assert abs(test_counts[c] - 360 * freq[c] / len(digits.target)) <= 1
    # fixed: a second module (another seed) gives the same splits; validation defaults to the test split
    other = DigitsDataModule(seed=5).split_arrays()
    for name in ("train", "val", "test"):
        assert torch.equal(other[name][0], splits[name][0]) and torch.equal(other[name][1], splits[name][1])
    assert torch.equal(splits["val"][0], splits["test"][0])


def test_digits_values_labels_and_batches() -> None:
    dm = DigitsDataModule(batch_size=64)
    assert dm.name == "digits" and (dm.image_size, dm.in_channels) == (8, 1)
    assert dm.label_space == LabelSpace.identity([str(d) for d in range(10)], name="digits")
    assert dm.num_model_classes == 10
    dm.setup("test")
    x, y, idx = next(iter(dm.test_dataloader()))
    assert x.shape == (64, 1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.long
    assert torch.equal(idx, torch.arange(64))
    images, labels = dm.split_arrays()["test"]
    assert torch.equal(x[:, 0], images[:64].float() / 8.0 - 1.0)
    assert torch.equal(y, labels[:64])
    everything = torch.stack([dm.test_dataset[i][0] for i in range(len(dm.test_dataset))])
    assert everything.min() == -1.0 and everything.max() == 1.0


def test_digits_validation_from_train_and_no_flip() -> None:
    dm = DigitsDataModule(val_split="train", val_size=100)
    dm.setup("fit")
    assert (len(dm.train_dataset), len(dm.val_dataset)) == (1337, 100)
    splits = dm.split_arrays()
    assert _rows(torch.cat([splits["train"][0], splits["val"][0]])) == _rows(
        DigitsDataModule().split_arrays()["train"][0]
    )
    train_counts = Counter(DigitsDataModule().split_arrays()["train"][1].tolist())
    val_counts = Counter(splits["val"][1].tolist())
    assert all(abs(val_counts[c] - 100 * train_counts[c] / 1437) <= 1 for c in range(10))
    # digits are not mirror-symmetric: training images are not flipped unless asked
    assert not dm.train_dataset.flip
    flipped = DigitsDataModule(flip=True)
    flipped.setup("fit")
    assert flipped.train_dataset.flip


def test_bad_val_split_is_refused() -> None:
    with pytest.raises(ValueError, match="val_split"):
        DigitsDataModule(val_split="other")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- Fashion-MNIST
@pytest.mark.parametrize("name", [
    "DigitsDataModule", "FashionMNISTDataModule", "FashionMNISTShiftDataModule", "ImageFolderDataModule",
    "ImageNetDataModule", "ImageNetV2DataModule", "ImageNetADataModule", "ObjectNetDataModule",
    "CachedLatentsDataModule",
])
def test_every_data_module_takes_flip_from_the_command_line(name: str) -> None:
    # A mirrored "J" is not a "J": every data set must let the user turn DiT's flip augmentation off.
    from jsonargparse import ArgumentParser

    import diffclf.data

    parser = ArgumentParser()
    parser.add_class_arguments(getattr(diffclf.data, name), "data")
    assert "data.flip" in {action.dest for action in parser._actions}


@needs_debian
def test_fashion_mnist_flips_training_images_unless_told_not_to() -> None:
    default, off = FashionMNISTDataModule(), FashionMNISTDataModule(flip=False)
    default.setup("fit")
    off.setup("fit")
    assert default.train_dataset.flip and not off.train_dataset.flip
    image, _, _ = off.train_dataset[0]
    again, _, _ = off.train_dataset[0]
    assert torch.equal(image, again)  # no random mirror when off


@needs_debian
def test_fashion_mnist_from_debian() -> None:
    dm = FashionMNISTDataModule()
    assert dm.name == "fashion_mnist" and (dm.image_size, dm.in_channels, dm.num_model_classes) == (32, 1, 10)
    from torchvision.datasets import FashionMNIST

    assert dm.class_names == list(FashionMNIST.classes)
    dm.setup("fit")
    dm.setup("test")
    assert (len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)) == (60000, 1000, 10000)
    first_label = gzip.decompress((DEBIAN / "t10k-labels-idx1-ubyte.gz").read_bytes())[8]
    image, target, index = dm.test_dataset[0]
    assert (target, index) == (first_label, 0)
    raw = torch.from_numpy(gz_idx("t10k-images-idx3-ubyte")[0].copy())
    assert image.shape == (1, 32, 32)
    assert torch.equal(image[0, 2:30, 2:30], raw.float() / 127.5 - 1.0)
    border = image[0].clone()
    border[2:30, 2:30] = -1.0
    assert torch.all(border == -1.0)
    # validation: a fixed stratified 1,000 of the test images (100 per class)
    vals = Counter(int(dm.val_dataset[i][1]) for i in range(len(dm.val_dataset)))
    assert vals == Counter({c: 100 for c in range(10)})
    assert dm.train_dataset.base.images.dtype == torch.uint8


@needs_debian
def test_fashion_mnist_image_size_28_is_unpadded() -> None:
    dm = FashionMNISTDataModule(image_size=28)
    dm.setup("test")
    raw = torch.from_numpy(gz_idx("t10k-images-idx3-ubyte")[-1].copy())
    assert torch.equal(dm.test_dataset[9999][0][0], raw.float() / 127.5 - 1.0)
    with pytest.raises(ValueError, match="image_size must be >= 8"):
        FashionMNISTDataModule(image_size=4)


@needs_debian
def test_fashion_mnist_below_28_is_an_antialiased_shrink() -> None:
    """14 px halves the image with the antialiased bilinear (triangle) filter: inside the border each pixel
    is the [1, 3, 3, 1]/8 x [1, 3, 3, 1]/8 weighting of its 4x4 input window, not a 2x2 mean or a subsample."""
    dm = FashionMNISTDataModule(image_size=14)
    dm.setup("test")
    raw = torch.from_numpy(gz_idx("t10k-images-idx3-ubyte")[7].copy()).double() / 127.5 - 1.0
    small = dm.test_dataset[7][0][0].double()
    assert small.shape == (14, 14)
    w = torch.tensor([1.0, 3.0, 3.0, 1.0], dtype=torch.float64) / 8
    for i in range(1, 13):
        for j in range(1, 13):
            window = raw[2 * i - 1 : 2 * i + 3, 2 * j - 1 : 2 * j + 3]
            assert float(small[i, j]) == pytest.approx(float(w @ window @ w), abs=1e-5)


@needs_debian
@pytest.mark.parametrize("layout", ["raw", "direct"])
def test_fashion_mnist_from_root_first(tmp_path: Path, layout: str) -> None:
    """A user's root wins over Debian's copy, uncompressed in FashionMNIST/raw/ or gzipped directly."""
    train_x, train_y, test_x, test_y = small_fashion_root(tmp_path, layout)
    dm = FashionMNISTDataModule(root=str(tmp_path), image_size=28, val_split="train", val_size=20)
    dm.setup("fit")
    dm.setup("test")
    assert (len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)) == (100, 20, 50)
    images = torch.stack([dm.test_dataset[i][0][0] for i in range(50)])
    assert torch.equal(images, torch.from_numpy(test_x.copy()).float() / 127.5 - 1.0)
    assert [dm.test_dataset[i][1] for i in range(50)] == test_y.tolist()
    train = torch.cat([dm.train_dataset.base.images, dm.val_dataset.base.images])
    assert _rows(train) == _rows(torch.from_numpy(train_x.copy()))
    assert sorted(dm.train_dataset.base.targets.tolist() + dm.val_dataset.base.targets.tolist()) == sorted(
        train_y.tolist()
    )


def test_fashion_mnist_missing_names_three_ways(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fashion_mnist, "DEBIAN_FASHION_MNIST", tmp_path / "not-installed")
    with pytest.raises(DataSourceError) as err:
        FashionMNISTDataModule(root=str(tmp_path / "empty"))
    message = str(err.value)
    assert "\n" not in message
    for way in (
        "--data.init_args.root DIR",
        "apt-get install dataset-fashion-mnist",
        "--data.init_args.download true",
    ):
        assert way in message
    # asking for a download defers to prepare_data instead of failing at construction
    assert FashionMNISTDataModule(root=str(tmp_path / "empty"), download=True).files is None


@needs_debian
def test_corrupt_idx_names_the_file(tmp_path: Path) -> None:
    small_fashion_root(tmp_path, "raw")
    bad = tmp_path / "FashionMNIST" / "raw" / "t10k-images-idx3-ubyte"
    bad.write_bytes(b"this is not an IDX file at all")
    dm = FashionMNISTDataModule(root=str(tmp_path))
    with pytest.raises(DataSourceError) as err:
        dm.setup("test")
    assert str(bad) in str(err.value) and "\n" not in str(err.value)
    # a labels file where images belong: the magic number gives it away
    shutil.copy(tmp_path / "FashionMNIST" / "raw" / "t10k-labels-idx1-ubyte", bad)
    with pytest.raises(DataSourceError, match="magic number 0x00000801, expected 0x00000803"):
        FashionMNISTDataModule(root=str(tmp_path)).setup("test")
    # a truncated file
    good = tmp_path / "FashionMNIST" / "raw" / "train-images-idx3-ubyte"
    good.write_bytes(good.read_bytes()[:-10])
    with pytest.raises(DataSourceError, match="train-images-idx3-ubyte: IDX header says"):
        read_idx(good)
    broken_gz = tmp_path / "x.gz"
    broken_gz.write_bytes(gzip.compress(b"\x00\x00\x08\x01" + bytes(8))[:-6])
    with pytest.raises(DataSourceError, match="x.gz: unreadable IDX file"):
        read_idx(broken_gz)


# --------------------------------------------------------------------------- presets
@pytest.mark.parametrize("preset", ["digits", "fashion_mnist", "fashion_mnist_hard", "fashion_mnist_c"])
def test_data_presets_spell_out_every_argument(preset: str) -> None:
    """jsonargparse carries same-named init_args over from an earlier class: each preset names them all."""
    spec = yaml.safe_load((ROOT / "configs" / "data" / f"{preset}.yaml").read_text())
    module, _, name = spec["class_path"].rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    parser = ArgumentParser()
    parser.add_class_arguments(cls, "data")  # the class's own arguments and, through **kwargs, the base's
    assert set(spec["init_args"]) == set(vars(parser.get_defaults().data))


def test_digits_preset_instantiates() -> None:
    spec = yaml.safe_load((ROOT / "configs" / "data" / "digits.yaml").read_text())
    dm = DigitsDataModule(**spec["init_args"])
    dm.setup("test")
    assert len(dm.test_dataset) == 360
