"""Fashion-MNIST shifts: reproducible corruptions, adversarial filtering against a real model, the data module."""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import DEBIAN_FASHION, gz_idx
from lightning.pytorch import Trainer
from torch.utils.data import DataLoader, TensorDataset

from diffclf.cli import main
from diffclf.data.base import DataSourceError
from diffclf.data.corruptions import CORRUPTIONS
from diffclf.data.fashion_mnist import FashionMNISTDataModule
from diffclf.data.shifts import FashionMNISTShiftDataModule, build_shift
from diffclf.tasks import TimmClassifier

DEBIAN = DEBIAN_FASHION
pytestmark = pytest.mark.skipif(
    not (DEBIAN / "t10k-images-idx3-ubyte.gz").is_file(),
    reason="Debian's dataset-fashion-mnist is not installed (/usr/share/datasets/fashion-mnist absent)",
)
LIMIT = 48


def load(out: str) -> tuple[dict[str, np.ndarray], dict]:
    with np.load(Path(out) / "shift.npz") as z:
        arrays = {k: z[k] for k in z.files}
    return arrays, json.loads((Path(out) / "meta.json").read_text())


@pytest.fixture(scope="module")
def corrupted(tmp_path_factory: pytest.TempPathFactory) -> str:
    out = tmp_path_factory.mktemp("shifts") / "fashion_mnist_c"
    return build_shift("fashion_mnist_c", str(out), severities=[1, 2, 3, 4, 5], limit=LIMIT)


# --------------------------------------------------------------------------- fashion_mnist_c
def test_corruptions_are_deterministic(corrupted: str, tmp_path: Path) -> None:
    again = build_shift("fashion_mnist_c", str(tmp_path / "again"), severities=[1, 2, 3, 4, 5], limit=LIMIT)
    assert (Path(again) / "shift.npz").read_bytes() == (Path(corrupted) / "shift.npz").read_bytes()
    first, second = load(corrupted)[1], load(again)[1]
    assert {k: v for k, v in first.items() if k != "command"} == {
        k: v for k, v in second.items() if k != "command"
    }
    assert first["sha256"] == hashlib.sha256((Path(corrupted) / "shift.npz").read_bytes()).hexdigest()
    # rebuilding in place gives the very same files
    before = (Path(corrupted) / "meta.json").read_bytes()
    build_shift("fashion_mnist_c", corrupted, severities=[1, 2, 3, 4, 5], limit=LIMIT)
    assert (Path(corrupted) / "meta.json").read_bytes() == before
    # another seed changes the random corruptions only
    other, _ = load(
        build_shift("fashion_mnist_c", str(tmp_path / "seed1"), severities=[3], limit=LIMIT, seed=1)
    )
    base, _ = load(corrupted)
    for name in CORRUPTIONS:
        a = base["images"][(base["corruption"] == name) & (base["severity"] == 3)]
        b = other["images"][other["corruption"] == name]
        assert np.array_equal(a, b) == (name in ("gaussian_blur", "contrast", "pixelate")), name


def test_each_corruption_grows_with_severity(corrupted: str) -> None:
    arrays, meta = load(corrupted)
    clean = gz_idx("t10k-images-idx3-ubyte")[:LIMIT].astype(np.float64)
    labels = gz_idx("t10k-labels-idx1-ubyte")[:LIMIT]
    assert len(arrays["images"]) == len(CORRUPTIONS) * 5 * LIMIT == meta["num_images"]
    assert sorted(meta["corruptions"]) == sorted(CORRUPTIONS) and meta["severities"] == [1, 2, 3, 4, 5]
    assert set(meta["source"]) == {"t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"}
    for name in CORRUPTIONS:
        change = []
        for s in range(1, 6):
            sel = (arrays["corruption"] == name) & (arrays["severity"] == s)
            assert np.array_equal(arrays["source_index"][sel], np.arange(LIMIT))
            assert np.array_equal(arrays["labels"][sel], labels)
            change.append(np.abs(arrays["images"][sel].astype(np.float64) - clean).mean())
        assert change[0] > 1.0, (name, change)
        assert all(a < b for a, b in itertools.pairwise(change)), (name, change)


def test_limit_takes_a_prefix_of_the_full_draws(corrupted: str, tmp_path: Path) -> None:
    """Image i's corruption does not depend on how many images follow it."""
    small, _ = load(build_shift("fashion_mnist_c", str(tmp_path / "s"), severities=[2, 5], limit=LIMIT // 2))
    full, _ = load(corrupted)
    for name in CORRUPTIONS:
        for s in (2, 5):
            a = small["images"][(small["corruption"] == name) & (small["severity"] == s)]
            b = full["images"][(full["corruption"] == name) & (full["severity"] == s)][: LIMIT // 2]
            assert np.array_equal(a, b), (name, s)


def test_shift_data_module_reads_corruptions(corrupted: str) -> None:
    dm = FashionMNISTShiftDataModule(corrupted)
    assert dm.name == "fashion_mnist_c"
    assert dm.label_space == FashionMNISTDataModule().label_space and dm.num_model_classes == 10
    dm.setup("test")
    assert len(dm.test_dataset) == len(CORRUPTIONS) * 5 * LIMIT
    one = FashionMNISTShiftDataModule(corrupted, corruption="rotate", severity=3)
    assert one.name == "fashion_mnist_c-rotate-3"
    one.setup("predict")
    arrays, _ = load(corrupted)
    sel = (arrays["corruption"] == "rotate") & (arrays["severity"] == 3)
    x, y, idx = next(iter(DataLoader(one.predict_dataset, batch_size=LIMIT)))
    expected = F.pad(torch.from_numpy(arrays["images"][sel]).float() / 127.5 - 1.0, (2, 2, 2, 2), value=-1.0)
    assert torch.equal(x[:, 0], expected)
    assert y.tolist() == arrays["labels"][sel].tolist() and torch.equal(idx, torch.arange(LIMIT))
    assert FashionMNISTShiftDataModule(corrupted, severity=5).name == "fashion_mnist_c-s5"
    with pytest.raises(ValueError, match="not in"):
        FashionMNISTShiftDataModule(corrupted, corruption="fog")
    with pytest.raises(ValueError, match="test-only"):
        dm.setup("fit")


def test_unknown_corruption_and_name_are_refused(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="known corruptions"):
        build_shift("fashion_mnist_c", str(tmp_path), corruptions=["fog"], limit=4)
    with pytest.raises(SystemExit, match="known shifts"):
        build_shift("fashion_mnist_z", str(tmp_path))
    with pytest.raises(SystemExit, match="needs --reference"):
        build_shift("fashion_mnist_hard", str(tmp_path))


def test_build_shift_command_line(tmp_path: Path) -> None:
    out = tmp_path / "cli"
    main(["build-shift", "--name", "fashion_mnist_c", "--out", str(out), "--limit", "5", "--severities", "[4]",
          "--corruptions", "[contrast,shear]"])  # fmt: skip
    arrays, meta = load(str(out))
    assert (
        len(arrays["images"]) == 10
        and meta["severities"] == [4]
        and set(arrays["corruption"]) == {"contrast", "shear"}
    )


# --------------------------------------------------------------------------- fashion_mnist_hard
@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny timm classifier trained for a few steps on Fashion-MNIST: right on some images, wrong on others."""
    torch.manual_seed(0)
    model = TimmClassifier(
        model_name="test_resnet", num_classes=10, lr=3e-3, schedule="constant", label="tiny-ref"
    )
    dm = FashionMNISTDataModule(batch_size=64)
    trainer = Trainer(max_steps=30, accelerator="cpu", logger=False, enable_checkpointing=False,
                      limit_val_batches=0, enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    trainer.fit(model, dm)
    path = tmp_path_factory.mktemp("ref") / "ref.ckpt"
    trainer.save_checkpoint(path)
    return path


def test_hard_keeps_exactly_the_misclassified(reference: Path, tmp_path: Path) -> None:
    n = 300
    out = build_shift(
        "fashion_mnist_hard", str(tmp_path / "hard"), reference=str(reference), limit=n, batch_size=64
    )
    arrays, meta = load(out)
    # independently: the checkpoint through Lightning, images read with gzip + numpy, padded by hand
    model = TimmClassifier.load_from_checkpoint(reference, map_location="cpu").eval()
    images = gz_idx("t10k-images-idx3-ubyte")[:n]
    labels = gz_idx("t10k-labels-idx1-ubyte")[:n].astype(np.int64)
    x = F.pad(torch.from_numpy(images.copy()).float() / 127.5 - 1.0, (2, 2, 2, 2), value=-1.0)[:, None]
    with torch.no_grad():
        preds = model(x).argmax(dim=1).numpy()
    wrong = np.flatnonzero(preds != labels)
    assert 0 < len(wrong) < n, "the reference should be right on some images and wrong on others"
    assert np.array_equal(arrays["source_index"], wrong)
    assert np.array_equal(arrays["images"], images[wrong]) and np.array_equal(arrays["labels"], labels[wrong])
    assert np.array_equal(arrays["reference_pred"], preds[wrong])
    assert meta["exclude_from_fit"] == ["tiny-ref"]
    assert meta["reference"]["checkpoint_sha256"] == hashlib.sha256(reference.read_bytes()).hexdigest()
    assert meta["reference"]["accuracy_on_source"] == pytest.approx(1 - len(wrong) / n)
    dm = FashionMNISTShiftDataModule(out)
    assert dm.name == "fashion_mnist_hard" and dm.exclude_from_fit == ["tiny-ref"]
    assert dm.label_space == FashionMNISTDataModule().label_space
    dm.setup("test")
    assert len(dm.test_dataset) == len(wrong)
    assert torch.equal(dm.test_dataset[0][0], x[wrong[0]])
    with pytest.raises(ValueError, match="filter fashion_mnist_c"):
        FashionMNISTShiftDataModule(out, corruption="rotate")


def test_hard_refuses_a_reference_without_ten_classes(tmp_path: Path) -> None:
    model = TimmClassifier(model_name="test_resnet", num_classes=5)
    trainer = Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    data = TensorDataset(torch.zeros(4, 1, 32, 32), torch.zeros(4, dtype=torch.long), torch.arange(4))
    trainer.fit(model, DataLoader(data, batch_size=4))
    ckpt = tmp_path / "five.ckpt"
    trainer.save_checkpoint(ckpt)
    with pytest.raises(SystemExit) as err:
        build_shift("fashion_mnist_hard", str(tmp_path / "out"), reference=str(ckpt), limit=10)
    assert "5 classes" in str(err.value) and "needs 10" in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- reading errors
def test_missing_or_malformed_shift_says_how_to_build(tmp_path: Path, corrupted: str) -> None:
    with pytest.raises(DataSourceError) as err:
        FashionMNISTShiftDataModule(str(tmp_path / "data" / "shifts" / "fashion_mnist_hard"))
    assert "python cli.py build-shift" in str(err.value) and "\n" not in str(err.value)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "meta.json").write_text("{not json")
    (broken / "shift.npz").write_bytes(b"")
    with pytest.raises(DataSourceError, match="unreadable.*python cli.py build-shift"):
        FashionMNISTShiftDataModule(str(broken))
    (broken / "meta.json").write_text((Path(corrupted) / "meta.json").read_text())
    with pytest.raises(DataSourceError, match="shift.npz: unreadable.*python cli.py build-shift"):
        FashionMNISTShiftDataModule(str(broken)).setup("test")
    np.savez(broken / "shift.npz", images=np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(DataSourceError, match=r"missing arrays \['labels'"):
        FashionMNISTShiftDataModule(str(broken)).setup("test")
