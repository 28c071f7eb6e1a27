"""Generated two-object scenes: exact drawings, held-out combinations, Winoground-style and cue-conflict
splits read by the real readers, the data module's batches, and byte-identical rebuilds.

The checks read the images independently of the renderer: each half of a scene holds one object, found
as the pixels that are not background, its shape told from its bounding box (a cylinder is taller than
wide, a cube fills its box, a sphere does not) and its colour from CLEVR's RGB table copied here.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffclf.cli import main
from diffclf.cli.build_scenes import build_scenes
from diffclf.data import scenes as sc
from diffclf.cli.compositional import DEFAULT_BINDING_TASKS
from diffclf.data.binding import SceneObject, binding_examples
from diffclf.data.cue_conflict import CueConflictDataset, read_cue_conflict
from diffclf.data.winoground import read_winoground

#: CLEVR's properties.json, copied rather than imported so a wrong table in the module fails here.
CLEVR = {"gray": (87, 87, 87), "red": (173, 35, 35), "blue": (42, 75, 215), "green": (29, 105, 20),
         "brown": (129, 74, 25), "purple": (129, 38, 192), "cyan": (41, 208, 208), "yellow": (255, 238, 51)}
BACKGROUND = (220, 220, 220)
HELD_OUT = {("cube", "green"), ("sphere", "red"), ("cylinder", "blue")}
COUNTS = {"train": 60, "test": 24, "winoground": 8, "cue_train": 60, "cue_conflict": 12}


def build(out: Path, seed: int = 0) -> Path:
    return Path(build_scenes(str(out), seed=seed, size=32, **COUNTS))


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(tmp_path_factory.mktemp("scenes") / "out")


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def read_objects(image: np.ndarray) -> dict[str, tuple[str, str, float]]:
    """``side -> (shape, colour, area / S²)`` of the object in each half, read from pixels alone."""
    size = image.shape[0]
    found = {}
    for side, cols in (("left", slice(0, size // 2)), ("right", slice(size // 2, size))):
        half = image[:, cols]
        mask = np.any(half != BACKGROUND, axis=-1)
        ys, xs = np.nonzero(mask)
        h, w = np.ptp(ys) + 1, np.ptp(xs) + 1
        shape = "cylinder" if h > 1.2 * w else "cube" if mask.sum() / (h * w) > 0.95 else "sphere"
        colours, counts = np.unique(half[mask], axis=0, return_counts=True)
        mode = tuple(int(v) for v in colours[counts.argmax()])
        colour = next((name for name, rgb in CLEVR.items() if rgb == mode), f"not CLEVR {mode}")
        found[side] = (shape, colour, mask.sum() / size**2)
    return found


def read_texture(image: np.ndarray, box: list[int], colour: str) -> str:
    """The pattern inside the object's core: dots darken a quarter, stripes are constant along diagonals."""
    x, y, r = box
    core = image[y - r // 3 : y + r // 2 + 1, x - r // 2 : x + r // 2 + 1]
    ink = np.any(core != CLEVR[colour], axis=-1)
    if not ink.any():
        return "solid"
    if ink.mean() < 0.375:
        return "dots"
    return "stripes" if np.mean(ink[1:, :-1] == ink[:-1, 1:]) > 0.95 else "checks"


# --------------------------------------------------------------------------- determinism, the CLI, the layout
def test_the_cli_writes_the_layout_and_a_rebuild_is_byte_identical(tmp_path: Path) -> None:
    """Mutations tried: ``split_rng`` returning ``np.random.default_rng()`` (unseeded) fails the byte
    comparison; dropping ``--seed`` from the command breaks the recorded command check."""
    out = tmp_path / "out"
    args = [f"--{k}={v}" for k, v in COUNTS.items()]
    main(["build-scenes", "--out", str(out), "--seed", "0", "--size", "32", *args])
    layout = set(files(out))
    assert {"meta.json", "README.md", "cue_conflict.jsonl", "train/images.npy", "train/scenes.jsonl",
            "test/images.npy", "test/scenes.jsonl", "winoground/data/examples.jsonl", "cue_train/images.npy",
            "cue_train/items.jsonl"} <= layout
    assert {f"winoground/images/ex_{k}_img_{j}.png" for k in range(8) for j in (0, 1)} <= layout
    assert len([p for p in layout if p.startswith("cue_conflict/")]) == 12
    assert np.load(out / "train" / "images.npy").shape == (60, 32, 32, 3)
    assert np.load(out / "train" / "images.npy").dtype == np.uint8
    meta = json.loads((out / "meta.json").read_text())
    assert meta["seed"] == 0 and meta["size"] == 32 and meta["counts"] == COUNTS
    assert meta["command"].startswith(f"diffclf build-scenes --out {out} --seed 0 --size 32 --train 60 --test 24")
    assert "cube-green, sphere-red, cylinder-blue" in meta["held_out_rule"]
    assert meta["command"] in (out / "README.md").read_text()

    first = files(out)
    shutil.move(out, tmp_path / "first")
    build(out)
    assert files(out) == first
    build(out)  # rebuilding in place replaces the folder's files with the same bytes
    assert files(out) == first
    other = build(tmp_path / "seed1", seed=1)
    assert not np.array_equal(np.load(other / "train" / "images.npy"), np.load(out / "train" / "images.npy"))


def test_a_smaller_rebuild_leaves_no_stale_files_and_a_foreign_folder_is_refused(tmp_path: Path) -> None:
    """Mutation tried: ``_clear`` skipping the removal keeps the larger build's PNGs (fails)."""
    out = tmp_path / "out"
    build(out)
    build_scenes(str(out), train=4, test=2, winoground=1, cue_train=3, cue_conflict=3)
    assert sorted(p.name for p in (out / "winoground" / "images").iterdir()) == ["ex_0_img_0.png", "ex_0_img_1.png"]
    assert len(list((out / "cue_conflict").rglob("*.png"))) == 3
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit, match="neither empty nor"):
        build_scenes(str(tmp_path / "foreign"), train=2, test=2)


def test_scene_i_does_not_depend_on_the_number_of_scenes() -> None:
    """Mutation tried: ``make_split`` drawing every scene from one generator seeded once per split fails the
    random-access check (scene 7 rendered alone differs from scene 7 of the split)."""
    small, scenes = sc.make_split("test", 5, 0, 32)
    large, more = sc.make_split("test", 12, 0, 32)
    assert np.array_equal(small, large[:5]) and scenes == more[:5]
    scene, image = sc.make_scene("test", 7, 0, 32)
    assert scene == more[7] and np.array_equal(np.asarray(image), large[7])


# --------------------------------------------------------------------------- what is drawn
@pytest.mark.parametrize("size", [32, 64])
def test_pixels_show_the_metadata_shape_colour_side_and_size(size: int) -> None:
    """Mutations tried: left/right centres swapped in ``layout``; circle and square swapped in ``_masks``;
    small/large radii swapped; CLEVR blue mistyped as (42, 75, 214): each fails here."""
    images, scenes = sc.make_split("train", 80, 3, size)
    areas: dict[str, list[float]] = {"small": [], "large": []}
    for image, scene in zip(images, scenes):
        assert tuple(image[0, 0]) == tuple(image[-1, -1]) == BACKGROUND
        found = read_objects(image)
        for obj, box in zip(scene.objects, scene.boxes):
            assert tuple(image[box[1], box[0]]) == CLEVR[obj.color], (scene, obj)
            shape, colour, area = found[obj.position]
            assert (shape, colour) == (obj.shape, obj.color), (scene.index, obj, found)
            areas[obj.size].append(area)
        assert [o.position for o in scene.objects] == ["left", "right"]
    assert max(areas["small"]) < 0.075 < min(areas["large"])


def test_captions_follow_the_grammar_and_vocabulary() -> None:
    """Mutation tried: template 3 as ``right of`` with the left object first (a false caption) fails the
    expected list; a template word missing from ``_GRAMMAR_WORDS`` fails the vocabulary check."""
    scene = (SceneObject("cube", "red", "small", "left"), SceneObject("sphere", "blue", "large", "right"))
    assert sc.scene_captions(scene)[: len(sc.TEMPLATES)] == (
        "a red cube and a blue sphere",
        "a blue sphere and a red cube",
        "a red cube left of a blue sphere",
        "a blue sphere right of a red cube",
        "a small red cube on the left and a large blue sphere on the right",
        "a large blue sphere on the right and a small red cube on the left",
        "a red object and a blue object",
        "a cube and a sphere",
    )
    descriptions = sc.scene_captions(scene)[len(sc.TEMPLATES):]
    # 7 attribute subsets x (without, with position) x (left, right, both) = 42, less the three pairs that
    # templates 1, 7 and 8 already say ("a red cube and a blue sphere", "a red object and ...", "a cube and ...").
    assert len(descriptions) == 39 and "a cube and a sphere" not in descriptions
    for caption in ("a small red cube", "a blue object", "a large sphere", "on the right is a large blue sphere",
                    "on the left is a cube", "a small object and a large object",
                    "on the left is a small red object and on the right is a large blue object"):
        assert caption in descriptions
    for false in ("a blue cube", "a small sphere", "on the left is a sphere", "a large red object"):
        assert false not in sc.scene_captions(scene)
    twins = (SceneObject("cube", "red", "small", "left"), SceneObject("cube", "red", "small", "right"))
    assert len(sc.scene_captions(twins)) == len(set(sc.scene_captions(twins))) < len(sc.scene_captions(scene))
    assert len(sc.VOCABULARY) == 22 and list(sc.VOCABULARY) == sorted(set(sc.VOCABULARY))
    _, scenes = sc.make_split("train", 40, 0, 32)
    assert {w for s in scenes for c in s.captions for w in c.split()} <= set(sc.VOCABULARY)


@pytest.mark.parametrize("task", DEFAULT_BINDING_TASKS)
def test_binding_positives_are_training_captions_and_negatives_never_are(task: str) -> None:
    """Every true description a binding task scores is a caption of its scene (the model has read that
    phrasing with such images) and no false one is. Mutation tried: descriptions without the position
    prefix (the position tasks' positives are then missing); ``describe`` of the other object (binding
    negatives become captions)."""
    scenes = [sc.make_scene("test", i, 0, 32)[0] for i in range(200)]
    examples = binding_examples([s.objects for s in scenes], task, 20, seed=1)
    for e in examples:
        captions = scenes[e.scene_index].captions
        assert e.positive.lower() in captions
        assert e.negative.lower() not in captions


# --------------------------------------------------------------------------- held-out combinations
def test_held_out_pairs_never_train_and_fill_half_the_test_split(built: Path) -> None:
    """Mutations tried: training scenes drawn from every pair (not ``SEEN_PAIRS``) fails the first check;
    ``held_out`` written as false everywhere fails the flag check."""
    assert set(sc.HELD_OUT_PAIRS) == HELD_OUT
    _, train = sc.make_split("train", 400, 0, 32)
    pairs = Counter((o.shape, o.color) for s in train for o in s.objects)
    assert not HELD_OUT & set(pairs)
    assert {s for s, _ in pairs} == {"cube", "sphere", "cylinder"} and {c for _, c in pairs} == set(CLEVR)
    assert all(not r["held_out"] for r in rows(built / "train" / "scenes.jsonl"))
    test = rows(built / "test" / "scenes.jsonl")
    for r in test:
        unseen = [(o["shape"], o["color"]) in HELD_OUT for o in r["objects"]]
        assert r["held_out"] == any(unseen) == (r["index"] % 2 == 0)
        assert sum(unseen) == (1 if r["index"] % 2 == 0 else 0)
    assert {(o["shape"], o["color"]) for r in test for o in r["objects"]} >= HELD_OUT


# --------------------------------------------------------------------------- Winoground-style split
def test_winoground_split_reads_with_the_real_reader_and_swaps_word_order(built: Path) -> None:
    """Mutations tried: image 1 drawn from image 0's objects; the Object swap exchanging whole objects
    (a Relation swap); ``collapsed_tag`` always ``Object``: each fails here."""
    examples = read_winoground(built / "winoground")
    assert [e.id for e in examples] == list(range(8))
    assert [e.collapsed_tag for e in examples] == ["Object", "Relation"] * 4
    for e in examples:
        assert e.caption_0 != e.caption_1 and sorted(e.caption_0.split()) == sorted(e.caption_1.split())
        described = []
        for caption, path in ((e.caption_0, e.image_0), (e.caption_1, e.image_1)):
            words = caption.split()  # a C S left of a C S
            assert words[0] == words[5] == "a" and words[3:5] == ["left", "of"], caption
            found = read_objects(np.asarray(Image.open(path).convert("RGB")))
            assert (found["left"][:2], found["right"][:2]) == ((words[2], words[1]), (words[7], words[6])), caption
            described.append(words)
        first, second = described
        if e.collapsed_tag == "Object":  # same shapes in place, colours exchanged
            assert (first[2], first[7]) == (second[2], second[7]) and (first[1], first[6]) == (second[6], second[1])
        else:  # the objects exchange sides
            assert first[1:3] == second[6:8] and first[6:8] == second[1:3]
    seen = {(s, c) for s in ("cube", "sphere", "cylinder") for c in CLEVR} - HELD_OUT
    for r in rows(built / "winoground" / "data" / "examples.jsonl"):
        for caption in (r["caption_0"], r["caption_1"]):
            w = caption.split()
            assert {(w[2], w[1]), (w[7], w[6])} <= seen


# --------------------------------------------------------------------------- cue conflict
def test_cue_conflict_reads_in_geirhos_layout_and_every_image_conflicts(built: Path) -> None:
    """Mutations tried: drawing each object with its own shape's texture; naming the file's texture by the
    pattern (``cube1-dots4``) instead of the shape owning it: each fails here."""
    dataset = CueConflictDataset(built / "cue_conflict", image_size=32)
    names = dataset.categories
    assert sorted(names) == sorted(sc.SHAPES) and dataset.dropped == 0 and len(dataset) == 12
    pairs = Counter((names[s.shape], names[s.texture]) for s in dataset.stimuli)
    assert pairs == Counter({(a, b): 2 for a in sc.SHAPES for b in sc.SHAPES if a != b})
    assert len(read_cue_conflict(built / "cue_conflict", sc.SHAPES)[0]) == 12
    owner = {"stripes": "cube", "dots": "sphere", "checks": "cylinder"}
    for r in rows(built / "cue_conflict.jsonl"):
        image = np.asarray(Image.open(built / "cue_conflict" / r["file"]).convert("RGB"))
        texture = read_texture(image, r["box"], r["color"])
        assert texture == r["texture"] and owner[texture] == r["texture_shape"] != r["shape"], r
        assert r["file"].split("/")[1].startswith(f"{r['shape']}") and f"-{r['texture_shape']}" in r["file"]


def test_cue_train_textures_follow_shape_nine_times_in_ten(built: Path) -> None:
    """Mutation tried: canonical texture for every item (no exceptions) fails the exact 90%; texture
    labels written for the wrong item fail the pixel check."""
    images = np.load(built / "cue_train" / "images.npy")
    items = rows(built / "cue_train" / "items.jsonl")
    own = {"cube": "stripes", "sphere": "dots", "cylinder": "checks"}
    for shape, texture in own.items():
        mine = [r for r in items if r["shape"] == shape]
        assert len(mine) == 20 and sum(r["texture"] == texture for r in mine) == 18
        assert {r["texture"] for r in mine} - {texture}, "exceptions wear another shape's texture"
    for image, r in zip(images, items):
        assert read_texture(image, r["box"], r["color"]) == r["texture"]


# --------------------------------------------------------------------------- the data module
def batches(loader: torch.utils.data.DataLoader) -> dict[int, int]:
    out = {}
    for images, targets, indices in loader:
        assert images.dtype == torch.float32 and targets.dtype == indices.dtype == torch.long
        out.update(zip(indices.tolist(), targets.tolist()))
    return out


def test_data_module_batches_and_caption_rotation(built: Path) -> None:
    """Mutations tried: ``EpochSampler`` not writing the shared counter (workers keep epoch 0's captions:
    the rotation check fails); val positions drawn with the run's seed; targets of the first caption in
    training: each fails here."""
    dm = sc.ScenesDataModule(str(built), batch_size=6, seed=0)  # 54 training scenes: no batch dropped
    assert dm.name == "scenes" and dm.image_size == 32 and dm.in_channels == 3 and dm.vocabulary == sc.VOCABULARY
    assert list(dm.captions) == sorted(set(dm.captions)) and dm.label_space.names == dm.captions
    assert dm.num_model_classes == len(dm.captions)
    pos = dm.positions
    assert len(pos["val"]) == 6 and sorted(pos["train"] + pos["val"]) == list(range(60))
    assert sc.ScenesDataModule(str(built), seed=5).positions == pos
    dm.setup("fit")
    loader = dm.train_dataloader()
    images, _, indices = next(iter(loader))
    assert images.shape == (6, 3, 32, 32) and images.min() >= -1 and images.max() <= 1
    raw = np.load(built / "train" / "images.npy")
    i = int(indices[0])
    expected = torch.from_numpy(raw[pos["train"][i]]).permute(2, 0, 1).float() / 127.5 - 1
    assert torch.equal(images[0], expected)
    seen: dict[int, set[int]] = {}
    for epoch in range(max(len(ids) for ids in dm.scene_captions["train"])):
        loader.sampler.set_epoch(epoch)  # what Lightning's fit loop calls
        for index, target in batches(loader).items():
            assert target in dm.scene_captions["train"][index]
            seen.setdefault(index, set()).add(target)
    assert len(seen) == 54 and all(seen[k] == set(dm.scene_captions["train"][k]) for k in seen)
    assert batches(dm.val_dataloader()) == {k: ids[0] for k, ids in enumerate(dm.scene_captions["val"])}

    workers = sc.ScenesDataModule(str(built), batch_size=6, seed=0, num_workers=2)
    workers.setup("fit")
    wloader = workers.train_dataloader()
    for epoch in (0, 3):
        wloader.sampler.set_epoch(epoch)
        loader.sampler.set_epoch(epoch)
        assert batches(wloader) == batches(loader)


def test_data_module_k_way_labels_test_filters_and_refusals(built: Path) -> None:
    """Mutations tried: ``shape_left`` read from the right object; ``test_scenes=seen`` keeping held-out
    scenes; accepting ``flip=True``: each fails here."""
    test = rows(built / "test" / "scenes.jsonl")
    dm = sc.ScenesDataModule(str(built), label="shape_left", batch_size=4)
    assert dm.label_space.names == ("cube", "sphere", "cylinder") and dm.num_model_classes == 3
    dm.setup("test")
    assert batches(dm.test_dataloader()) == {r["index"]: sc.SHAPES.index(r["objects"][0]["shape"]) for r in test}
    colours = sc.ScenesDataModule(str(built), label="color_left", test_scenes="held_out")
    assert colours.name == "scenes-held_out" and len(colours.label_space.names) == 8
    colours.setup("test")
    got = batches(colours.test_dataloader())
    held = [r for r in test if r["held_out"]]
    assert got == {k: sc.COLOR_NAMES.index(r["objects"][0]["color"]) for k, r in enumerate(held)}
    seen = sc.ScenesDataModule(str(built), test_scenes="seen")
    assert seen.positions["test"] == [r["index"] for r in test if not r["held_out"]]
    with pytest.raises(ValueError, match="flip"):
        sc.ScenesDataModule(str(built), flip=True)
    with pytest.raises(ValueError, match="val_size"):
        sc.ScenesDataModule(str(built), val_size=60)
    with pytest.raises(Exception, match="build-scenes"):
        sc.ScenesDataModule(str(built / "nowhere"))
    with pytest.raises(ValueError, match="cue_train needs data.label caption"):
        sc.ScenesDataModule(str(built), label="shape_left", cue_train=True)


def test_a_build_of_an_older_caption_format_is_refused_with_its_rebuild_command(built: Path, tmp_path: Path) -> None:
    """Mutation tried: no format check (an old build trains without the binding descriptions, silently)."""
    old = tmp_path / "old"
    shutil.copytree(built, old)
    meta = json.loads((old / "meta.json").read_text())
    (old / "meta.json").write_text(json.dumps({**meta, "format_version": 1}))
    with pytest.raises(Exception, match="format_version 1.*rebuild: diffclf build-scenes"):
        sc.ScenesDataModule(str(old))


def test_cue_train_items_join_the_training_split_with_shape_and_colour_captions(built: Path) -> None:
    """The textured objects follow the scenes in the training split, each with captions naming its shape
    and colour and never its texture. Mutations tried: the cue images not appended (the loader's length
    fails); captions from the texture's shape (the caption check fails)."""
    plain = sc.ScenesDataModule(str(built), batch_size=6, seed=0)
    dm = sc.ScenesDataModule(str(built), batch_size=6, seed=0, cue_train=True)
    items = rows(built / "cue_train" / "items.jsonl")
    n = len(plain.positions["train"])
    assert len(dm.scene_captions["train"]) == n + len(items) == 54 + 60
    for item, ids in zip(items, dm.scene_captions["train"][n:]):
        captions = {dm.captions[i] for i in ids}
        assert captions == {f"a {item['shape']}", f"a {item['color']} object", f"a {item['color']} {item['shape']}"}
    dm.setup("fit")
    assert len(dm.train_dataset) == n + len(items)
    cue = np.load(built / "cue_train" / "images.npy")
    image, target, index = dm.train_dataset[n + 7]
    assert index == n + 7
    assert torch.equal(image, torch.from_numpy(cue[7]).permute(2, 0, 1).float() / 127.5 - 1)
    assert target in dm.scene_captions["train"][n + 7]
    assert dm.scene_captions["val"] == plain.scene_captions["val"]
