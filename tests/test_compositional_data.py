"""Compositional evaluations: Winoground in both published layouts, Geirhos' cue-conflict stimuli and the
16-category decision, Clark & Jaini's attribute-binding tasks, and their metrics against hand computations.

Fixture images are solid colours that encode (example, image), so a reader that swaps images 0 and 1,
pairs an image with the wrong example, or mislabels a stimulus fails.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffclf.data import (
    BindingExample,
    BindingTask,
    CueConflictDataset,
    SceneObject,
    WinogroundDataset,
    WinogroundExample,
)
from diffclf.data import winoground as wg
from diffclf.data.base import DataSourceError
from diffclf.data.binding import (
    ATTRIBUTES,
    binding_examples,
    describe,
    join_descriptions,
    parse_task,
    qualifies,
    random_scenes,
)
from diffclf.data.cue_conflict import (
    CUE_CONFLICT_CATEGORIES,
    cue_conflict_label_space,
    read_cue_conflict,
)
from diffclf.data.label_spaces import imagenet_class_names
from diffclf.metrics.accuracy import clopper_pearson
from diffclf.metrics.compositional import (
    binding_summary,
    mean_probability_scores,
    pairwise_correct,
    shape_bias,
    strict_argmax,
    winoground_scores,
    winoground_summary,
)

pytestmark = pytest.mark.usefixtures("one_thread")
SIZE = 8


def colour(example: int, image: int) -> tuple[int, int, int]:
    return (20 + 40 * example, 200 if image else 60, 7 * example + 100 * image)


def png_bytes(rgb: tuple[int, int, int], size: tuple[int, int] = (12, 10)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, rgb).save(buf, format="PNG")
    return buf.getvalue()


def model_range(rgb: tuple[int, int, int]) -> torch.Tensor:
    return torch.tensor(rgb, dtype=torch.float32) / 127.5 - 1


# ---------------------------------------------------------------------------------------- Winoground
ROWS = [
    {"id": 0, "caption_0": "an old person kisses a young person", "caption_1": "a young person kisses an old person",
     "tag": "Noun", "secondary_tag": "", "num_main_preds": 1, "collapsed_tag": "Object"},
    {"id": 1, "caption_0": "the kid with the magnifying glass looks at them",
     "caption_1": "the kid looks at them with the magnifying glass", "tag": "Relation, Scope",
     "secondary_tag": "Symbolic", "num_main_preds": 1, "collapsed_tag": "Relation"},
    {"id": 2, "caption_0": "the lightbulb surrounds some plants", "caption_1": "some plants surround the lightbulb",
     "tag": "Object", "secondary_tag": "", "num_main_preds": 2, "collapsed_tag": "Both"},
]


def write_jsonl_layout(root: Path, images_at_root: bool = False) -> None:
    data = root / "data"
    images = (root if images_at_root else data) / "images"
    images.mkdir(parents=True)
    data.mkdir(exist_ok=True)
    lines = []
    for row in ROWS:
        names = {f"image_{j}": f"ex_{row['id']}_img_{j}" for j in (0, 1)}
        lines.append(json.dumps({**row, **names}))
        for j in (0, 1):
            (images / f"{names[f'image_{j}']}.png").write_bytes(png_bytes(colour(row["id"], j)))
    (data / "examples.jsonl").write_text("\n".join(lines) + "\n")


def parquet_rows() -> list[dict]:
    return [{**row, **{f"image_{j}": {"bytes": png_bytes(colour(row["id"], j)), "path": None} for j in (0, 1)}}
            for row in ROWS]


def check_winoground(ds: WinogroundDataset) -> None:
    assert len(ds) == 3
    assert ds.collapsed_tags == ["Object", "Relation", "Both"]
    for k, row in enumerate(ROWS):
        item = ds[k]
        assert item.images.shape == (2, 3, SIZE, SIZE)
        assert item.images.min() >= -1 and item.images.max() <= 1
        for j in (0, 1):
            torch.testing.assert_close(item.images[j, :, 0, 0], model_range(colour(row["id"], j)))
        assert item.captions == (row["caption_0"], row["caption_1"])
        assert item.index == k and item.collapsed_tag == row["collapsed_tag"]
    e = ds.examples[1]
    assert isinstance(e, WinogroundExample)
    assert (e.id, e.tag, e.secondary_tag, e.num_main_preds) == (1, "Relation, Scope", "Symbolic", 1)
    batch = torch.utils.data.default_collate([ds[0], ds[1]])
    assert batch.images.shape == (2, 2, 3, SIZE, SIZE) and list(batch.captions[1]) == [ROWS[0]["caption_1"],
                                                                                           ROWS[1]["caption_1"]]


@pytest.mark.parametrize("images_at_root", [False, True])
def test_winoground_jsonl_layout(tmp_path: Path, images_at_root: bool) -> None:
    write_jsonl_layout(tmp_path, images_at_root)
    check_winoground(WinogroundDataset(tmp_path, image_size=SIZE))


def test_winoground_parquet_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The parquet reader's rows → examples → decoded image bytes over two shards (indices run on), with
    pandas' file reading stubbed (no parquet engine is installed here; the next test reads a real file)."""
    import pandas as pd

    (tmp_path / "data").mkdir()
    shards = {tmp_path / "data" / f"test-0000{k}-of-00002.parquet": rows
              for k, rows in enumerate((parquet_rows()[:2], parquet_rows()[2:]))}
    for path in shards:
        path.write_bytes(b"stub")
    monkeypatch.setattr(wg, "parquet_engine_installed", lambda: True)
    monkeypatch.setattr(pd, "read_parquet", lambda path: pd.DataFrame(shards[Path(path)]))
    check_winoground(WinogroundDataset(tmp_path, image_size=SIZE))


@pytest.mark.skipif(not wg.parquet_engine_installed(), reason="no parquet engine (pyarrow / fastparquet) installed")
def test_winoground_parquet_file(tmp_path: Path) -> None:
    import pandas as pd

    (tmp_path / "data").mkdir()
    pd.DataFrame(parquet_rows()).to_parquet(tmp_path / "data" / "test-00000-of-00001.parquet")
    check_winoground(WinogroundDataset(tmp_path, image_size=SIZE))


def test_winoground_parquet_needs_an_engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "data").mkdir()
    shard = tmp_path / "data" / "test-00000-of-00001.parquet"
    shard.write_bytes(b"PAR1")
    monkeypatch.setattr(wg, "parquet_engine_installed", lambda: False)
    with pytest.raises(DataSourceError, match="pip install pyarrow") as err:
        WinogroundDataset(tmp_path, image_size=SIZE)
    assert str(shard) in str(err.value) and "\n" not in str(err.value)


def test_winoground_errors_name_file_and_layout(tmp_path: Path) -> None:
    with pytest.raises(DataSourceError, match="neither data/examples.jsonl nor data/test-"):
        WinogroundDataset(tmp_path)
    write_jsonl_layout(tmp_path)
    (tmp_path / "data" / "images" / "ex_2_img_1.png").unlink()
    with pytest.raises(DataSourceError, match=r"1 image\(s\).*ex_2_img_1\.png.*expected data/examples.jsonl"):
        WinogroundDataset(tmp_path)
    jsonl = tmp_path / "data" / "examples.jsonl"
    rows = jsonl.read_text().splitlines()
    jsonl.write_text(rows[0] + "\n" + json.dumps({k: v for k, v in json.loads(rows[1]).items() if k != "caption_1"}))
    with pytest.raises(DataSourceError, match=r"examples\.jsonl:2 lacks field\(s\) caption_1") as err:
        WinogroundDataset(tmp_path)
    assert "\n" not in str(err.value)


def test_winoground_scores_by_hand() -> None:
    # s[n, i, j]: image i with caption j
    s = torch.tensor([
        [[5., 1.], [2., 6.]],  # everything right
        [[3., 4.], [1., 2.]],  # text wrong (image 0 prefers caption 1), image wrong (caption 1 prefers image 0)
        [[3., 1.], [4., 5.]],  # text right; image wrong: caption 0 prefers image 1 (4 > 3)
        [[3., 4.], [1., 5.]],  # image right; text wrong: image 0 prefers caption 1
        [[2., 2.], [1., 3.]],  # image 0 ties its captions: text wrong; image right
    ])
    c = winoground_scores(s)
    assert c.text.tolist() == [True, False, True, False, False]
    assert c.image.tolist() == [True, False, False, True, True]
    assert c.group.tolist() == [True, False, False, False, False]
    summary = winoground_summary(s, ["Object", "Relation", "Object", "Both", "Relation"])
    expect = {"all": (2, 3, 1, 5), "Object": (2, 1, 1, 2), "Relation": (0, 1, 0, 2), "Both": (0, 1, 0, 1)}
    assert set(summary) == set(expect)
    for tag, (text, image, group, n) in expect.items():
        for key, k in (("text", text), ("image", image), ("group", group)):
            r = summary[tag][key]
            assert (r.correct, r.total) == (k, n)
            assert r.accuracy == k / n and (r.low, r.high) == clopper_pearson(k, n)


# ---------------------------------------------------------------------------------------- cue-conflict
STIMULI = {  # file → (shape, texture) indices into the 16 sorted categories, None when dropped
    "airplane/airplane1-bicycle2.png": (0, 2),
    "airplane/airplane10-airplane1.png": None,
    "bear/bear3-knife1.png": (1, 13),
    "dog/im_dog1-cat2.png": (10, 7),
    "truck/truck2-oven5.png": (15, 14),
}


def write_cue_conflict(root: Path) -> None:
    for c in CUE_CONFLICT_CATEGORIES:
        (root / c).mkdir(parents=True)
    for k, name in enumerate(STIMULI):
        (root / name).write_bytes(png_bytes(colour(k, 0), (SIZE, SIZE)))


def test_cue_conflict_stimuli(tmp_path: Path) -> None:
    write_cue_conflict(tmp_path)
    ds = CueConflictDataset(tmp_path, image_size=SIZE)
    kept = [(k, cues) for k, cues in enumerate(STIMULI.values()) if cues is not None]
    assert len(ds) == 4 and ds.dropped == 1
    for i, (k, (shape, texture)) in enumerate(kept):
        image, s, t, index = ds[i]
        assert (s, t, index) == (shape, texture, i)
        torch.testing.assert_close(image[:, 0, 0], model_range(colour(k, 0)))
    assert ds.shapes == [0, 1, 10, 15] and ds.textures == [2, 13, 7, 14]


def test_cue_conflict_errors(tmp_path: Path) -> None:
    with pytest.raises(DataSourceError, match="no folder"):
        read_cue_conflict(tmp_path)
    write_cue_conflict(tmp_path)
    (tmp_path / "cat" / "cat1-dog1.png").write_bytes(png_bytes((0, 0, 0)))
    read_cue_conflict(tmp_path)
    (tmp_path / "cat" / "dog2-cat1.png").write_bytes(png_bytes((0, 0, 0)))
    with pytest.raises(DataSourceError, match="names shape 'dog' but lies in cat/"):
        read_cue_conflict(tmp_path)
    (tmp_path / "cat" / "dog2-cat1.png").unlink()
    (tmp_path / "cat" / "cat1-zebra1.png").write_bytes(png_bytes((0, 0, 0)))
    with pytest.raises(DataSourceError, match=r"cat1-zebra1\.png is not named"):
        read_cue_conflict(tmp_path)


def test_cue_conflict_imagenet_mapping() -> None:
    space = cue_conflict_label_space()
    ids = [i for group in space.model_classes for i in group]
    assert space.names == CUE_CONFLICT_CATEGORIES and space.num_model_classes == 1000
    assert len(ids) == 207 and len(set(ids)) == 207 and space.all_model_ids() == sorted(ids)
    sizes = dict(zip(space.names, map(len, space.model_classes)))
    assert (sizes["dog"], sizes["bird"], sizes["truck"], sizes["knife"]) == (109, 49, 8, 1)
    names = imagenet_class_names()
    groups = dict(zip(space.names, space.model_classes))
    assert [names[i] for i in groups["airplane"] + groups["knife"] + groups["oven"]] == ["airliner", "cleaver",
                                                                                          "rotisserie"]
    for category in ("bear", "elephant", "clock", "keyboard"):
        assert all(category in names[i].lower() for i in groups[category]), category


def test_sixteen_class_decision_is_the_mean_probability() -> None:
    probs = torch.tensor([[0.4, 0.1, 0.3, 0.2]])
    scores = mean_probability_scores(probs.log(), [(0, 1), (2,), (3,)])
    torch.testing.assert_close(scores.exp(), torch.tensor([[0.25, 0.3, 0.2]], dtype=torch.float64))
    assert strict_argmax(scores).tolist() == [1]  # the sum (0.5) or the max (0.4) would pick class 0
    masked = torch.tensor([[0.0, -torch.inf, 1.0]])  # an unscored id is probability 0 and still counts
    expected = torch.tensor([0.5 / (1 + np.e), np.e / (1 + np.e)], dtype=torch.float64)
    torch.testing.assert_close(mean_probability_scores(masked, [(0, 1), (2,)]).exp()[0], expected)


def test_shape_bias_by_hand() -> None:
    shape, texture = torch.tensor([0, 1, 2, 3, 4]), torch.tensor([1, 2, 3, 4, 5])
    r = shape_bias(torch.tensor([0, 2, 2, -1, 7]), shape, texture)
    assert (r.total, r.shape_correct, r.texture_correct) == (5, 2, 1)
    assert (r.shape_accuracy, r.texture_accuracy) == (0.4, 0.2) and r.shape_bias == pytest.approx(2 / 3)
    # 2 shape of 3 cue decisions: Clopper-Pearson 95% = (Beta(0.025; 2, 2), Beta(0.975; 3, 1)); two-sided
    # binomial p of 2 of 3 at 0.5 = P(X != 1.5 ...) = 1 (every outcome is at least as far from 1.5).
    assert (r.bias_low, r.bias_high) == pytest.approx((0.094299, 0.991596), abs=1e-6)
    assert r.p_value == pytest.approx(1.0)
    strong = shape_bias(torch.zeros(12, dtype=torch.long), torch.zeros(12), torch.ones(12))
    assert strong.shape_bias == 1.0 and strong.p_value == pytest.approx(2 * 0.5**12)
    assert np.isnan(shape_bias(torch.tensor([9, 9]), shape[:2], texture[:2]).shape_bias)
    with pytest.raises(ValueError, match="no cue conflict"):
        shape_bias(torch.tensor([0]), torch.tensor([3]), torch.tensor([3]))


def test_strict_argmax_counts_ties_as_no_decision() -> None:
    scores = torch.tensor([[1.0, 3.0, 2.0], [2.0, 2.0, 1.0], [float("nan"), 1.0, 0.0]])
    assert strict_argmax(scores).tolist() == [1, -1, -1]


# ---------------------------------------------------------------------------------------- binding
LEFT0 = SceneObject("cube", "red", "small", "left")
RIGHT0 = SceneObject("sphere", "blue", "large", "right")
SCENES = [
    (RIGHT0, LEFT0),  # given right first: descriptions still put the left object first
    (LEFT0, SceneObject("cube", "blue", "small", "right")),  # same shape, same size
    (SceneObject("sphere", "green", "large", "left"), SceneObject("cylinder", "green", "small", "right")),  # same colour
]


def test_descriptions_follow_the_template() -> None:
    assert describe(LEFT0, frozenset({"shape", "color"})) == "A red cube"
    assert describe(LEFT0, frozenset({"shape", "color", "size"})) == "A small red cube"
    assert describe(LEFT0, frozenset({"color"})) == "A red object"
    assert describe(LEFT0, frozenset({"size", "position"})) == "On the left is a small object"
    assert describe(RIGHT0, frozenset(ATTRIBUTES)) == "On the right is a large blue sphere"
    assert join_descriptions("On the left is a cube", "On the right is a sphere") == \
        "On the left is a cube and on the right is a sphere"


def only(task: str, scene_index: int) -> set[tuple[str, str]]:
    """Every (positive, negative) a task can give on one scene, over many seeds."""
    out = set()
    for seed in range(40):
        (e,) = binding_examples([SCENES[scene_index]], task, num_examples=1, seed=seed)
        assert isinstance(e, BindingExample) and e.scene_index == 0 and e.task == parse_task(task).name
        out.add((e.positive, e.negative))
    return out


def test_binding_tasks_by_hand() -> None:
    assert only("Shape|Color", 0) == {("A red cube", "A red sphere"), ("A blue sphere", "A blue cube")}
    assert only("Color|Shape", 0) == {("A red cube", "A blue cube"), ("A blue sphere", "A red sphere")}
    assert only("Size|Shape", 2) == {("A large sphere", "A small sphere"), ("A small cylinder", "A large cylinder")}
    assert only("Position|Shape", 0) == {("On the left is a cube", "On the right is a cube"),
                                         ("On the right is a sphere", "On the left is a sphere")}
    assert only("Shape,Color", 0) == {("A red cube and a blue sphere", "A red sphere and a blue cube")}
    assert only("Color,Shape", 0) == {("A red cube and a blue sphere", "A blue cube and a red sphere")}
    assert only("Shape", 0) == {("A cube", "A cylinder"), ("A sphere", "A cylinder")}
    assert only("Size", 1) == {("A small object", "A large object")}
    assert only("Shape|Color control", 0) == {("A red cube", "A red cylinder"), ("A blue sphere", "A blue cylinder")}
    colours = only("Color", 1)
    assert {p for p, _ in colours} == {"A red object", "A blue object"}
    assert {n for _, n in colours} <= {f"A {c} object" for c in ATTRIBUTES["color"] if c not in ("red", "blue")}


def test_which_scenes_qualify() -> None:
    table = {"Shape|Color": [True, False, False], "Color|Shape": [True, False, False],
             "Size|Shape": [True, False, True], "Shape,Size": [True, False, True], "Size": [False, True, False],
             "Shape": [True, True, True], "Color|Position": [True, True, False]}
    for name, expected in table.items():
        assert [qualifies(s, parse_task(name)) for s in SCENES] == expected, name


def true_descriptions(scene: tuple[SceneObject, SceneObject], attributes: frozenset[str]) -> set[str]:
    return {describe(o, attributes) for o in scene}


@pytest.mark.parametrize("name", ["Shape|Color", "Color|Size", "Size|Position", "Shape|Color control", "Color",
                                  "Shape,Color", "Size,Shape,Color"])
def test_binding_tasks_on_random_scenes(name: str) -> None:
    scenes = random_scenes(400, seed=3)
    task = parse_task(name)
    examples = binding_examples(scenes, name, num_examples=50, seed=1)
    assert binding_examples(scenes, name, num_examples=50, seed=1) == examples
    assert binding_examples(scenes, name, num_examples=50, seed=2) != examples
    indices = [e.scene_index for e in examples]
    assert indices == sorted(set(indices)) and len(indices) == 50
    for e in examples:
        scene = scenes[e.scene_index]
        left, right = scene
        if task.kind == "pair":
            d = task.described
            assert e.positive == join_descriptions(describe(left, d), describe(right, d))
            assert e.negative not in {join_descriptions(describe(a, d), describe(b, d))
                                      for a, b in ((left, right), (right, left))}
            assert sorted(e.negative.split()) == sorted(e.positive.split())  # same words: binding, not recognition
        else:
            truths = true_descriptions(scene, task.described)
            assert e.positive in truths and e.negative not in truths
            words = {w for o in scene for w in describe(o, task.described).split()}
            if task.kind == "binding":
                assert set(e.negative.split()) <= words
            else:
                assert not set(e.negative.split()) <= words


def test_binding_task_names_and_errors() -> None:
    assert parse_task("shape|color") == BindingTask("binding", "shape", ("color",))
    assert parse_task("Shape,Color").kind == "pair" and parse_task("Color").kind == "recognition"
    for name in ("Shape|Color", "Shape,Color", "Shape|Color control", "Size", "Size,Shape,Color"):
        assert parse_task(name).name == name
    with pytest.raises(ValueError, match="position cannot be a recognition control"):
        parse_task("Position")
    with pytest.raises(ValueError, match="unknown attribute 'material'"):
        parse_task("Material|Color")
    with pytest.raises(ValueError, match="color must be one of"):
        SceneObject("cube", "pink", "small", "left")
    with pytest.raises(ValueError, match="one object on the left and one on the right"):
        binding_examples([(LEFT0, LEFT0)], "Shape|Color", num_examples=1)
    with pytest.raises(ValueError, match="1 of 3 scenes qualify, 2 examples wanted"):
        binding_examples(SCENES, "Shape|Color", num_examples=2)


def test_binding_summary_by_hand() -> None:
    # two-sided exact binomial test against 1/2: P(X >= 9) + P(X <= 1) for n = 10 is 2 * 11 / 1024
    nine = binding_summary(np.array([True] * 9 + [False]))
    assert (nine.rate.correct, nine.rate.total, nine.rate.accuracy) == (9, 10, 0.9)
    assert nine.p_value == pytest.approx(22 / 1024) and not nine.significant
    assert (nine.rate.low, nine.rate.high) == clopper_pearson(9, 10)
    ten = binding_summary(np.ones(10, dtype=bool))
    assert ten.p_value == pytest.approx(2 / 1024) and ten.significant
    none = binding_summary(np.zeros(10, dtype=bool))  # significantly below chance is significant too
    assert none.p_value == pytest.approx(2 / 1024) and none.significant
    assert pairwise_correct(torch.tensor([2.0, 1.0, 3.0]), torch.tensor([1.0, 1.0, 4.0])).tolist() == [True, False,
                                                                                                     False]
    with pytest.raises(ValueError, match="booleans"):
        binding_summary(np.array([1, 0, 1]))


def test_winoground_images_are_resized_bilinear_as_the_official_script(tmp_path: Path) -> None:
    # Li et al.'s run_winoground.py defaults to bilinear (get_transform(BILINEAR, 512)), not the bicubic of the
    # classification sets; reference built from torchvision directly.
    from torchvision import transforms as T

    write_jsonl_layout(tmp_path)
    rng = np.random.default_rng(0)
    noisy = Image.fromarray(rng.integers(0, 256, (10, 14, 3), dtype=np.uint8))
    noisy.save(tmp_path / "data" / "images" / "ex_0_img_0.png")
    official = T.Compose([T.Resize(6, interpolation=T.InterpolationMode.BILINEAR), T.CenterCrop(6), T.ToTensor()])
    got = WinogroundDataset(tmp_path, image_size=6)[0].images[0]
    torch.testing.assert_close(got, official(noisy) * 2 - 1, rtol=0, atol=1e-6)
