"""timm classifiers: construction, input normalisation, the Lightning baseline, and Lightning-free reload."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import timm
import torch
from lightning.pytorch import LightningDataModule, Trainer
from torch.utils.data import DataLoader, Dataset

from diffclf.metrics.results import load_records
from diffclf.models.classifiers import create_classifier, load_classifier
from diffclf.tasks import TimmClassifier

try:
    from diffclf.data.label_spaces import LabelSpace
except ImportError:  # the data package lands separately; the contract is these four fields

    @dataclass(frozen=True)
    class LabelSpace:  # type: ignore[no-redef]
        names: tuple[str, ...]
        model_classes: tuple[tuple[int, ...], ...]
        num_model_classes: int
        name: str

        @property
        def num_classes(self) -> int:
            return len(self.names)


class RandomImages(Dataset):
    """Fixed random [-1, 1] images with label-space targets, yielding (image, target, index)."""

    def __init__(self, n: int, num_classes: int, seed: int = 0) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.x = torch.rand(n, 1, 32, 32, generator=gen) * 2 - 1
        self.y = torch.randint(0, num_classes, (n,), generator=gen)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        return self.x[i], self.y[i], i


class TinyData(LightningDataModule):
    def __init__(self, space: LabelSpace, n: int = 10) -> None:
        super().__init__()
        self.label_space = space
        self.num_model_classes = space.num_model_classes
        self.name = "random"
        self.n = n

    def _loader(self) -> DataLoader:
        return DataLoader(RandomImages(self.n, self.label_space.num_classes), batch_size=4)

    train_dataloader = val_dataloader = test_dataloader = predict_dataloader = _loader


def _space(groups: tuple[tuple[int, ...], ...], num_model_classes: int) -> LabelSpace:
    return LabelSpace(
        names=tuple(f"c{i}" for i in range(len(groups))),
        model_classes=groups,
        num_model_classes=num_model_classes,
        name="tiny",
    )


def _trainer(tmp_path: Path, **kwargs: object) -> Trainer:
    return Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        **kwargs,
    )


def test_resnet18_grey_32px_forward_shape_and_identity_input() -> None:
    model = create_classifier("resnet18", num_classes=10, in_chans=1, img_size=32).eval()
    assert model.num_classes == 10
    assert model(torch.rand(2, 1, 32, 32) * 2 - 1).shape == (2, 10)
    assert torch.equal(model.scale, torch.ones(1, 1, 1, 1)) and torch.equal(
        model.shift, torch.zeros(1, 1, 1, 1)
    )


def test_small_vit_gets_small_patches() -> None:
    model = create_classifier("vit_tiny_patch16_224", num_classes=3, in_chans=1, img_size=32, depth=2)
    assert model.config["patch_size"] == 4
    assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 3)


def test_pretrained_file_loads_offline_and_normalises_as_imagenet(tmp_path: Path) -> None:
    source = timm.create_model("resnet18", pretrained=False)
    weights = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), weights)
    model = create_classifier(
        "resnet18", num_classes=5, in_chans=3, img_size=64, pretrained_file=str(weights)
    )
    assert torch.equal(model.backbone.conv1.weight, source.conv1.weight)
    assert model.backbone.fc.out_features == 5
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    x = torch.rand(1, 3, 8, 8) * 2 - 1
    expected = ((x + 1) / 2 - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    assert torch.allclose(x * model.scale + model.shift, expected, atol=1e-6)
    with pytest.raises(FileNotFoundError, match="no such weights file"):
        create_classifier("resnet18", 5, 3, 64, pretrained_file=str(tmp_path / "nope.pth"))


def test_fit_test_predict_and_lightning_free_reload(tmp_path: Path) -> None:
    torch.manual_seed(0)
    space = _space(tuple((i,) for i in range(4)), 4)
    data = TinyData(space)
    results_file = tmp_path / "all.jsonl"
    module = TimmClassifier(
        "test_resnet",
        num_classes=4,
        in_chans=1,
        img_size=32,
        results_dir=str(tmp_path / "run"),
        results_file=str(results_file),
    )
    trainer = _trainer(tmp_path, max_steps=1, limit_val_batches=1, num_sanity_val_steps=0)
    trainer.fit(module, datamodule=data)
    ckpt = tmp_path / "baseline.ckpt"
    trainer.save_checkpoint(ckpt)

    reloaded = load_classifier(ckpt)
    x = torch.rand(3, 1, 32, 32) * 2 - 1
    module.eval()
    with torch.no_grad():
        assert torch.equal(reloaded(x), module(x))
    assert reloaded.num_classes == 4 and not reloaded.training

    out = _trainer(tmp_path).test(module, datamodule=data, ckpt_path=str(ckpt))
    record = json.loads((tmp_path / "run" / "results.json").read_text())
    assert record["kind"] == "discriminative" and record["n"] == 10 and record["forwards_per_image"] == 1.0
    assert (
        record["checkpoint"] == str(ckpt)
        and record["dataset"] == "random"
        and record["label_space_size"] == 4
    )
    assert out[0]["test/accuracy"] == pytest.approx(record["accuracy"])
    assert len(load_records([results_file])) == 1

    rows = [r for batch in _trainer(tmp_path).predict(module, datamodule=data) for r in batch]
    assert sorted(r["index"] for r in rows) == list(range(10))
    assert all(len(r["top5"]) == 4 and sum(r["probs"]) == pytest.approx(1.0) for r in rows)


def test_label_space_restriction_takes_the_max_over_model_ids(tmp_path: Path) -> None:
    space = _space(((0,), (1, 2), (3,)), 5)
    module = TimmClassifier("test_resnet", num_classes=5, in_chans=1, img_size=32)
    rows = [r for batch in _trainer(tmp_path).predict(module, datamodule=TinyData(space, n=2)) for r in batch]
    assert len(rows[0]["probs"]) == 3  # setup took the data's 3-class label space
    logits = torch.tensor([[0.0, 1.0, 7.0, 2.0, 9.0], [5.0, 3.0, -1.0, 4.0, 0.0]])
    module.model.forward = lambda images: logits  # the restriction alone is under test
    assert module.scores(torch.zeros(2, 1, 32, 32)).tolist() == [[0.0, 7.0, 2.0], [5.0, 3.0, 4.0]]


def test_label_space_must_match_the_model(tmp_path: Path) -> None:
    module = TimmClassifier("test_resnet", num_classes=5, in_chans=1, img_size=32)
    with pytest.raises(ValueError, match="defined over 4 model classes but the model has 5"):
        _trainer(tmp_path, max_steps=1).fit(module, datamodule=TinyData(_space(((0,), (1,)), 4)))


def test_load_classifier_refuses_missing_and_foreign_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="classifier .*missing.ckpt: no such checkpoint file"):
        load_classifier(tmp_path / "missing.ckpt")
    foreign = tmp_path / "dit.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"model": "DiT-S/2"}}, foreign)
    with pytest.raises(ValueError, match="not a diffclf TimmClassifier checkpoint"):
        load_classifier(foreign)
    (tmp_path / "text.ckpt").write_text("hello")
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        load_classifier(tmp_path / "text.ckpt")


def test_a_given_patch_size_reaches_models_without_img_size() -> None:
    """ConvNeXt takes no ``img_size``; its stem stride (``patch_size``) must still arrive: at 8x8 the
    default stride 4 leaves nothing for the later downsampling layers."""
    model = create_classifier("convnext_atto", num_classes=10, in_chans=1, img_size=8, patch_size=1).eval()
    assert model.config["patch_size"] == 1
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
