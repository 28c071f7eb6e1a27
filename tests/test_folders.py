"""Image-folder and ImageNet-family data modules on tiny real image files written into tmp_path.

Labels are checked against mappings written here independently of the code under test: facts
about ImageNet's sorted-wnid indices (tench = 0, kit fox = 278, toilet tissue = 999, analog clock
= 409, digital clock = 530, banana = 954) and timm's ImageNet-A index file read directly.
"""

from __future__ import annotations

import json
from importlib import import_module
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import yaml
from jsonargparse import ArgumentParser
from PIL import Image

from diffclf.data.folders import ImageFileDataset, ImageFolderDataModule, UnreadableImageError
from diffclf.data.imagenet import ImageNetDataModule
from diffclf.data.imagenet_a import ImageNetADataModule
from diffclf.data.imagenet_v2 import ImageNetV2DataModule
from diffclf.data.objectnet import ObjectNetDataModule
from diffclf.data.transforms import ImageTransform

REPO = Path(__file__).resolve().parents[1]
TIMM_INFO = Path(timm.__file__).parent / "data" / "_info"
MODES = ("RGB", "L", "RGBA", "CMYK", "P", "I;16")
# Known ImageNet-1k model indices (sorted-wnid order, as torchvision/timm).
KNOWN_WNIDS = {"n01440764": 0, "n01443537": 1, "n02119789": 278, "n15075141": 999}
SIZE = 16


def write_image(path: Path, mode: str = "RGB", size: tuple[int, int] = (24, 20), value: int | None = None) -> Path:
    """A tiny real image file in ``mode``; JPEG for RGB/CMYK when the name says so, else by suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size
    if mode == "I;16":
        arr = np.full((h, w), 40000 if value is None else value, dtype=np.uint16)
        img = Image.fromarray(arr)
    elif mode == "P":
        img = Image.new("RGB", size, (200, 30, 30)).convert("P", palette=Image.Palette.ADAPTIVE)
    elif mode == "RGBA":
        img = Image.new("RGBA", size, (10, 20, 30, 128))
    elif mode == "CMYK":
        img = Image.new("CMYK", size, (0, 0, 0, 0))
    else:
        img = Image.new(mode, size, 90 if value is None else value) if mode == "L" else Image.new(mode, size, (1, 2, 3))
    img.save(path)
    return path


def image_name(k: int, mode: str) -> str:
    ext = ".JPEG" if mode in ("RGB", "CMYK") else ".png"
    return f"img{k}{ext}"


def write_class_tree(root: Path, folders: list[str], per_class: int = 2) -> dict[str, str]:
    """``root/<folder>/img*.ext`` in varied modes; returns relative path → folder."""
    made = {}
    for c, folder in enumerate(folders):
        for k in range(per_class):
            mode = MODES[(c * per_class + k) % len(MODES)]
            path = write_image(root / folder / image_name(k, mode), mode)
            made[path.relative_to(root).as_posix()] = folder
    return made


def all_items(dm: object, split: str = "test") -> list[tuple[str, int]]:
    """``(path, target)`` of a data module's split after setup, in dataset order."""
    return list(getattr(dm, f"{split}_dataset").base.samples)


def check_tensor(x: torch.Tensor, channels: int = 3) -> None:
    assert x.shape == (channels, SIZE, SIZE) and x.dtype == torch.float32
    assert x.min() >= -1.0 and x.max() <= 1.0


# ---------------------------------------------------------------------- generic image folder
def test_image_folder_sorted_classes_modes_and_batches(tmp_path: Path) -> None:
    made = write_class_tree(tmp_path / "train", ["emu", "cat", "dog"], per_class=2)
    dm = ImageFolderDataModule(root=str(tmp_path / "train"), image_size=SIZE, eval_batch_size=4)
    expected = {"cat": 0, "dog": 1, "emu": 2}  # sorted folder names
    assert dm.label_space.names == ("cat", "dog", "emu") and dm.num_model_classes == 3
    dm.setup("test")
    got = {Path(p).relative_to(tmp_path / "train").as_posix(): t for p, t in all_items(dm)}
    assert got == {rel: expected[folder] for rel, folder in made.items()}
    for i in range(len(dm.test_dataset)):
        image, _, index = dm.test_dataset[i]
        check_tensor(image)
        assert index == i
    images, targets, indices = next(iter(dm.test_dataloader()))
    assert images.shape == (4, 3, SIZE, SIZE) and targets.dtype == torch.long and indices.tolist() == [0, 1, 2, 3]
    assert dm.val_dataloader() == []


def test_image_folder_fixed_class_order_and_grey(tmp_path: Path) -> None:
    write_class_tree(tmp_path / "d", ["a", "b", "c"], per_class=1)
    (tmp_path / "classes.txt").write_text("c\na\nb\n")
    for kwargs in ({"classes": ["c", "a", "b"]}, {"classes_file": str(tmp_path / "classes.txt")}):
        dm = ImageFolderDataModule(root=str(tmp_path / "d"), image_size=SIZE, in_channels=1, **kwargs)
        dm.setup("test")
        folders = {Path(p).parent.name: t for p, t in all_items(dm)}
        assert folders == {"c": 0, "a": 1, "b": 2}
        check_tensor(dm.test_dataset[0][0], channels=1)
    with pytest.raises(ValueError, match=r"not among the 2 classes: c"):
        ImageFolderDataModule(root=str(tmp_path / "d"), classes=["a", "b"])
    with pytest.warns(UserWarning, match=r"no folder for 1 of the 4 listed classes: z"):
        dm = ImageFolderDataModule(root=str(tmp_path / "d"), classes=["a", "z", "b", "c"])
    assert dm.num_model_classes == 4 and dm.label_space.names[3] == "c"


def test_image_folder_held_out_split_is_per_class_and_disjoint(tmp_path: Path) -> None:
    write_class_tree(tmp_path / "d", ["a", "b"], per_class=4)
    dm = ImageFolderDataModule(root=str(tmp_path / "d"), image_size=SIZE, test_fraction=0.25, val_fraction=0.25)
    splits = dm.split_samples()
    assert [len(splits[s]) for s in ("train", "val", "test")] == [4, 2, 2]
    for split in ("val", "test"):
        assert sorted(t for _, t in splits[split]) == [0, 1]
    paths = [p for s in splits.values() for p, _ in s]
    assert len(set(paths)) == 8
    assert dm.split_samples() == splits  # same draw every time
    dm.setup("fit")
    assert len(dm.train_dataset) == 4 and len(dm.val_dataset) == 2


def test_image_folder_root_errors_name_the_root_and_layout(tmp_path: Path) -> None:
    write_image(tmp_path / "flat" / "x.png", "RGB")
    with pytest.raises(ValueError, match=r"root .*flat holds image files but no class folders; expected one sub-folder"):
        ImageFolderDataModule(root=str(tmp_path / "flat"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"root .*empty has no class folders"):
        ImageFolderDataModule(root=str(tmp_path / "empty"))
    with pytest.raises(ValueError, match=r"--data.root"):
        ImageFolderDataModule(root=None)
    (tmp_path / "noimg" / "cls").mkdir(parents=True)
    (tmp_path / "noimg" / "cls" / "notes.txt").write_text("x")
    dm = ImageFolderDataModule(root=str(tmp_path / "noimg"))
    with pytest.raises(ValueError, match=r"class folders without images in .*noimg: cls"):
        dm.setup("test")


# ---------------------------------------------------------------------- transforms of odd modes
def test_modes_convert_correctly(tmp_path: Path) -> None:
    t = ImageTransform(SIZE, 3, "adm")
    from diffclf.data.folders import load_image

    rgba = tmp_path / "clear.png"
    Image.new("RGBA", (24, 20), (0, 0, 0, 0)).save(rgba)
    assert torch.allclose(t(load_image(rgba)), torch.ones(3, SIZE, SIZE))  # composited on white, not black
    white16 = write_image(tmp_path / "w16.png", "I;16", value=65535)
    mid16 = write_image(tmp_path / "m16.png", "I;16", value=32768)
    assert torch.allclose(t(load_image(white16)), torch.ones(3, SIZE, SIZE))
    assert t(load_image(mid16)).abs().max() < 0.01
    cmyk = write_image(tmp_path / "c.jpg", "CMYK")
    assert t(load_image(cmyk)).min() > 0.9  # CMYK 0,0,0,0 is white
    grey = write_image(tmp_path / "g.png", "L", value=0)
    assert torch.allclose(t(load_image(grey)), -torch.ones(3, SIZE, SIZE))
    pal = write_image(tmp_path / "p.png", "P")
    red = t(load_image(pal))
    assert red[0].mean() > 0.5 and red[1].mean() < -0.5


# ---------------------------------------------------------------------- bad files
def truncated_jpeg(path: Path) -> Path:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path, quality=95)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def test_bad_files_raise_one_line_naming_the_file(tmp_path: Path) -> None:
    good = write_image(tmp_path / "good.png")
    trunc = truncated_jpeg(tmp_path / "trunc.jpg")
    text = tmp_path / "text.png"
    text.write_text("not an image at all")
    ds = ImageFileDataset([(good, 0), (trunc, 1), (text, 2)], ImageTransform(SIZE))
    check_tensor(ds[0][0])
    for i, bad in ((1, trunc), (2, text)):
        with pytest.raises(UnreadableImageError) as info:
            ds[i]
        msg = str(info.value)
        assert msg.startswith(f"{bad}: not a readable image (") and "\n" not in msg


def test_skip_drops_bad_files_and_lists_them(tmp_path: Path) -> None:
    root = tmp_path / "d"
    write_class_tree(root, ["a", "b"], per_class=2)
    trunc = truncated_jpeg(root / "a" / "zz_trunc.jpg")
    text = root / "b" / "zz_text.PNG"
    text.write_text("hello")
    dm = ImageFolderDataModule(root=str(root), image_size=SIZE, on_bad_file="skip")
    dm.setup("test")
    assert sorted(dm.skipped_images) == sorted([str(trunc), str(text)])
    assert len(dm.test_dataset) == 4
    for images, _, _ in dm.test_dataloader():
        check_tensor(images[0])
    strict = ImageFolderDataModule(root=str(root), image_size=SIZE, eval_batch_size=8)
    strict.setup("test")
    with pytest.raises(UnreadableImageError, match="zz_t"):
        list(strict.test_dataloader())


# ---------------------------------------------------------------------- ImageNet
def test_imagenet_folder_layout_uses_sorted_wnid_indices(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("IMAGENET_TRAIN_DIR", raising=False)
    made = write_class_tree(tmp_path / "val", list(KNOWN_WNIDS), per_class=2)
    dm = ImageNetDataModule(root=str(tmp_path / "val"), image_size=SIZE)
    assert (dm.name, dm.num_model_classes, dm.image_size, dm.in_channels) == ("imagenet", 1000, SIZE, 3)
    assert dm.label_space.num_classes == 1000 and dm.label_space.names[0] == "tench"
    dm.setup("test")
    got = {Path(p).relative_to(tmp_path / "val").as_posix(): t for p, t in all_items(dm)}
    assert got == {rel: KNOWN_WNIDS[w] for rel, w in made.items()}
    check_tensor(dm.test_dataset[0][0])
    with pytest.raises(ValueError, match=r"--data.train_root PATH or set IMAGENET_TRAIN_DIR"):
        dm.setup("fit")
    write_class_tree(tmp_path / "train", ["n15075141", "n01440764"], per_class=1)
    dm.train_root = str(tmp_path / "train")
    dm.setup("fit")
    assert sorted(dm.train_dataset.base.targets) == [0, 999] and len(dm.val_dataset) == 8


def write_meta_mat(path: Path, leaves: dict[int, str]) -> None:
    from scipy.io import savemat

    dt = [("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O"), ("num_children", "O")]
    rows = [(i, w, "x", 0) for i, w in leaves.items()] + [(1001, "n00001740", "entity", 3)]
    savemat(path, {"synsets": np.array(rows, dtype=dt)})


FLAT_WNIDS = ["n02119789", "n01440764", "n15075141"]  # images 1, 2, 3 → model ids 278, 0, 999


@pytest.mark.parametrize("fmt", ["wnid", "index", "kaggle_found", "devkit"])
def test_imagenet_flat_layout_label_files(tmp_path: Path, fmt: str) -> None:
    val = tmp_path / "ILSVRC" / "Data" / "CLS-LOC" / "val"
    names = [f"ILSVRC2012_val_{k:08d}.JPEG" for k in (1, 2, 3)]
    for name, mode in zip(names, ("RGB", "CMYK", "RGB")):
        write_image(val / name, mode)
    labels_file = tmp_path / "labels.txt"
    if fmt == "wnid":
        labels_file.write_text("".join(f"{n} {w}\n" for n, w in zip(names, FLAT_WNIDS)))
    elif fmt == "index":
        labels_file.write_text("".join(f"{n} {KNOWN_WNIDS[w]}\n" for n, w in zip(names, FLAT_WNIDS)))
    elif fmt == "kaggle_found":
        rows = [f"{n[:-5]},{w} 1 2 30 40 {w} 5 6 7 8" for n, w in zip(names, FLAT_WNIDS)]
        (tmp_path / "LOC_val_solution.csv").write_text("ImageId,PredictionString\n" + "\n".join(rows[::-1]) + "\n")
        labels_file = None
    else:
        devkit = tmp_path / "devkit" / "data"
        devkit.mkdir(parents=True)
        write_meta_mat(devkit / "meta.mat", {7: "n02119789", 3: "n01440764", 500: "n15075141"})
        labels_file = devkit / "ILSVRC2012_validation_ground_truth.txt"
        labels_file.write_text("7\n3\n500\n")
    dm = ImageNetDataModule(root=str(val), labels_file=None if labels_file is None else str(labels_file),
                            image_size=SIZE)
    dm.setup("test")
    assert [(Path(p).name, t) for p, t in all_items(dm)] == list(zip(names, [278, 0, 999]))


def test_imagenet_flat_layout_errors(tmp_path: Path) -> None:
    val = tmp_path / "val"
    write_image(val / "ILSVRC2012_val_00000001.JPEG")
    write_image(val / "ILSVRC2012_val_00000002.JPEG")
    with pytest.raises(FileNotFoundError, match=r"flat layout .* --data.labels_file"):
        ImageNetDataModule(root=str(val))
    gt = tmp_path / "ILSVRC2012_validation_ground_truth.txt"
    gt.write_text("1\n2\n")
    with pytest.raises(FileNotFoundError, match=r"meta.mat"):
        ImageNetDataModule(root=str(val), labels_file=str(gt)).setup("test")
    partial = tmp_path / "partial.txt"
    partial.write_text("ILSVRC2012_val_00000001.JPEG n01440764\n")
    with pytest.raises(ValueError, match=r"1 image\(s\) .* no label .*ILSVRC2012_val_00000002.JPEG"):
        ImageNetDataModule(root=str(val), labels_file=str(partial)).setup("test")


def test_subset_file_selects_exactly_the_listed_images(tmp_path: Path) -> None:
    made = write_class_tree(tmp_path / "val", list(KNOWN_WNIDS), per_class=2)
    write_image(tmp_path / "val" / "n01440764" / "ILSVRC2012_val_00000293.JPEG")
    last, second = (next(r for r in made if r.startswith(f"{w}/img1")) for w in ("n15075141", "n01443537"))
    subset = tmp_path / "subset.txt"
    # a relative path, a bare (unique) file name as in the flat layout, a path under the root's own name
    subset.write_text(f"# the fixed subset\n{last}\n\nILSVRC2012_val_00000293.JPEG\nval/{second}\n")
    dm = ImageNetDataModule(root=str(tmp_path / "val"), image_size=SIZE, subset_file=str(subset))
    dm.setup("test")
    got = [(Path(p).relative_to(tmp_path / "val").as_posix(), t) for p, t in all_items(dm)]
    assert got == [(last, 999), ("n01440764/ILSVRC2012_val_00000293.JPEG", 0), (second, 1)]
    assert len(dm.test_dataset) == 3
    subset.write_text("n15075141/img1.png\nn15075141/missing.JPEG\n")
    with pytest.raises(FileNotFoundError, match=r"n15075141/missing.JPEG"):
        dm.setup("test")


# ---------------------------------------------------------------------- ImageNet-V2 and ImageNet-A
def test_imagenet_v2_targets_are_the_folder_numbers(tmp_path: Path) -> None:
    made = write_class_tree(tmp_path / "v2", ["0", "2", "10", "999"], per_class=2)
    dm = ImageNetV2DataModule(root=str(tmp_path / "v2"), image_size=SIZE)
    assert (dm.name, dm.num_model_classes, dm.label_space.num_classes) == ("imagenet_v2", 1000, 1000)
    dm.setup("test")
    got = {Path(p).relative_to(tmp_path / "v2").as_posix(): t for p, t in all_items(dm)}
    assert got == {rel: int(folder) for rel, folder in made.items()}
    assert {t for rel, t in got.items() if rel.startswith("10/")} == {10}  # not 2, its place in string order
    with pytest.raises(ValueError, match=r"imagenet_v2 is an evaluation set"):
        dm.setup("fit")


def test_imagenet_v2_root_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_class_tree(tmp_path / "v2", ["3"], per_class=1)
    monkeypatch.setenv("IMAGENET_V2_DIR", str(tmp_path / "v2"))
    assert ImageNetV2DataModule().root == tmp_path / "v2"
    monkeypatch.delenv("IMAGENET_V2_DIR")
    with pytest.raises(ValueError, match=r"pass --data.root PATH or set IMAGENET_V2_DIR"):
        ImageNetV2DataModule()


def test_imagenet_a_targets_follow_timm_index_file(tmp_path: Path) -> None:
    indices = [int(x) for x in (TIMM_INFO / "imagenet_a_indices.txt").read_text().split()]
    wnids = (TIMM_INFO / "imagenet_synsets.txt").read_text().split()
    assert wnids[indices[0]] == "n01498041" and indices[0] == 6  # stingray: ImageNet-A's first class
    picks = {wnids[indices[k]]: k for k in (0, 57, 199)}
    made = write_class_tree(tmp_path / "imagenet-a", list(picks), per_class=2)
    (tmp_path / "imagenet-a" / "README.txt").write_text("ImageNet-A")
    dm = ImageNetADataModule(root=str(tmp_path / "imagenet-a"), image_size=SIZE, eval_batch_size=4)
    assert (dm.name, dm.num_model_classes, dm.label_space.num_classes) == ("imagenet_a", 1000, 200)
    assert dm.label_space.model_classes[0] == (6,)
    assert [dm.label_space.model_classes[k] for k in picks.values()] == [(indices[k],) for k in picks.values()]
    dm.setup("test")
    got = {Path(p).relative_to(tmp_path / "imagenet-a").as_posix(): t for p, t in all_items(dm)}
    assert got == {rel: picks[w] for rel, w in made.items()}
    batches = list(dm.test_dataloader())
    assert [len(b[0]) for b in batches] == [4, 2]
    images, targets, idx = batches[0]
    assert images.shape == (4, 3, SIZE, SIZE) and images.min() >= -1 and images.max() <= 1
    assert targets.dtype == torch.long and idx.tolist() == [0, 1, 2, 3]
    assert torch.cat([b[2] for b in batches]).tolist() == list(range(6))


def test_wrong_layouts_are_detected_and_named(tmp_path: Path) -> None:
    write_class_tree(tmp_path / "v2", ["0", "1"], per_class=1)
    write_class_tree(tmp_path / "wnid", ["n01440764"], per_class=1)
    write_class_tree(tmp_path / "unknown", ["n01440764", "n00000001"], per_class=1)
    v2 = tmp_path / "v2"
    with pytest.raises(ValueError, match=rf"root {v2} looks like ImageNet-V2 \(numeric class folders\); "
                                         r"imagenet_a expects wnid folders n########"):
        ImageNetADataModule(root=str(v2))
    with pytest.raises(ValueError, match=r"looks like ImageNet-V2 .*; imagenet expects wnid class folders"):
        ImageNetDataModule(root=str(v2))
    with pytest.raises(ValueError, match=r"looks like ImageNet or ImageNet-A .*; imagenet_v2 expects numeric"):
        ImageNetV2DataModule(root=str(tmp_path / "wnid"))
    with pytest.raises(ValueError, match=r"looks like ImageNet-V2 .*; objectnet expects images/"):
        ObjectNetDataModule(root=str(v2))
    with pytest.raises(ValueError, match=r"unknown wnids .*n00000001"):
        ImageNetDataModule(root=str(tmp_path / "unknown"))
    with pytest.raises(ValueError, match=r"outside ImageNet-A's 200 classes: n01440764"):
        ImageNetADataModule(root=str(tmp_path / "wnid"))
    with pytest.raises(FileNotFoundError, match=r"does not exist"):
        ImageNetADataModule(root=str(tmp_path / "nowhere"))


# ---------------------------------------------------------------------- ObjectNet
# Model ids the miniature's ImageNet names stand for (torchvision order); the 2012 ids are permuted.
ON_IMAGENET = {"analog clock": 409, "digital clock": 530, "banana": 954}


def write_objectnet(root: Path) -> None:
    maps = root / "mappings"
    maps.mkdir(parents=True)
    folders = {"alarm_clock": "Alarm clock", "banana": "Banana", "squeegee": "Squeegee"}
    (maps / "folder_to_objectnet_label.json").write_text(json.dumps(folders, indent=2))
    to_in = {"Alarm clock": "analog clock; digital clock", "Banana": "banana"}  # Squeegee: unmapped
    (maps / "objectnet_to_imagenet_1k.json").write_text(json.dumps(to_in, indent=2))
    pytorch_to_2012 = {str(p): (7 * p + 3) % 1000 for p in range(1000)}
    (maps / "pytorch_to_imagenet_2012_id.json").write_text(json.dumps(pytorch_to_2012, indent=2))
    names = {p: f"class {p}" for p in range(1000)} | {p: n for n, p in ON_IMAGENET.items()}
    lines = [""] * 1000
    for p, id2012 in pytorch_to_2012.items():
        lines[id2012] = names[int(p)]
    (maps / "imagenet_to_label_2012_v2").write_text("\n".join(lines) + "\n")
    img = Image.new("RGB", (24, 24), (255, 0, 0))  # a 2 px red frame around a green picture
    img.paste((0, 255, 0), (2, 2, 22, 22))
    for folder in folders:
        (root / "images" / folder).mkdir(parents=True)
        for k in range(2):
            img.save(root / "images" / folder / f"{k}.png")


def test_objectnet_label_space_groups_and_border(tmp_path: Path) -> None:
    root = tmp_path / "objectnet-1.0"
    write_objectnet(root)
    dm = ObjectNetDataModule(root=str(root), image_size=20, crop="adm")
    assert (dm.name, dm.num_model_classes) == ("objectnet", 1000)
    assert dm.label_space.names == ("Alarm clock", "Banana")
    assert dm.label_space.model_classes == ((409, 530), (954,))
    dm.setup("test")
    got = sorted((Path(p).relative_to(root / "images").as_posix(), t) for p, t in all_items(dm))
    assert got == [("alarm_clock/0.png", 0), ("alarm_clock/1.png", 0), ("banana/0.png", 1), ("banana/1.png", 1)]
    green = torch.tensor([-1.0, 1.0, -1.0]).view(3, 1, 1).expand(3, 20, 20)
    x = dm.test_dataset[0][0]
    assert x.shape == (3, 20, 20) and torch.allclose(x, green)
    framed = ObjectNetDataModule(root=str(root), image_size=20, border=0)
    framed.setup("test")
    assert framed.test_dataset[0][0][0, 0, 0] > -0.5  # the red frame shows without the border crop
    subset = tmp_path / "subset.txt"
    subset.write_text("images/banana/1.png\nalarm_clock/0.png\n")
    sub = ObjectNetDataModule(root=str(root), image_size=20, subset_file=str(subset))
    sub.setup("test")
    assert [t for _, t in all_items(sub)] == [1, 0]


def test_objectnet_missing_mapping_file_is_named(tmp_path: Path) -> None:
    root = tmp_path / "objectnet-1.0"
    write_objectnet(root)
    (root / "mappings" / "pytorch_to_imagenet_2012_id.json").unlink()
    (root / "mappings" / "imagenet_to_label_2012_v2").unlink()
    with pytest.raises(FileNotFoundError) as info:
        ObjectNetDataModule(root=str(root))
    msg = str(info.value)
    assert "pytorch_to_imagenet_2012_id.json, imagenet_to_label_2012_v2" in msg and "\n" not in msg


# ---------------------------------------------------------------------- presets
@pytest.mark.parametrize("preset", ["imagenet", "imagenet_v2", "imagenet_a", "objectnet", "image_folder"])
def test_presets_are_complete(tmp_path: Path, preset: str) -> None:
    config = yaml.safe_load((REPO / "configs" / "data" / f"{preset}.yaml").read_text())
    module, _, cls_name = config["class_path"].rpartition(".")
    cls = getattr(import_module(module), cls_name)
    parser = ArgumentParser()
    parser.add_class_arguments(cls, "data")  # the class's own arguments and, through **kwargs, the base's
    params = list(vars(parser.get_defaults().data))
    args = config["init_args"]
    assert sorted(args) == sorted(params), "a preset must spell out every argument (jsonargparse carries them over)"
    assert (args["image_size"], args["in_channels"], args["crop"], args["on_bad_file"]) == (256, 3, "adm", "error")
    assert args["root"] is None
    root = tmp_path / "root"
    if preset == "objectnet":
        write_objectnet(root)
    else:
        folders = {"imagenet_v2": ["5"], "image_folder": ["x"]}.get(preset, ["n01498041"])
        write_class_tree(root, folders, per_class=1)
    dm = cls(**{**args, "root": str(root)})
    assert dm.name == preset and dm.image_size == 256


def test_center_crop_is_the_official_zero_shot_transform_not_adms(tmp_path: Path) -> None:
    # Li et al.'s get_transform (bicubic shorter side, CenterCrop), built from torchvision directly; the SD
    # zero-shot ImageNet and ObjectNet presets use it, DiT's presets keep ADM's crop, which differs from it.
    from torchvision import transforms as T

    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (37, 53, 3), dtype=np.uint8))
    official = T.Compose([T.Resize(16, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(16), T.ToTensor()])
    want = official(img) * 2 - 1
    torch.testing.assert_close(ImageTransform(16, 3, "center")(img), want, rtol=0, atol=1e-6)
    assert (ImageTransform(16, 3, "adm")(img) - want).abs().max() > 0.05
    for preset in ("imagenet", "objectnet"):
        config = yaml.safe_load((REPO / "diffclf" / "configs" / "zero_shot" / f"{preset}.yaml").read_text())
        assert config["data"]["init_args"]["crop"] == "center", preset
