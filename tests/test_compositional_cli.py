"""``diffclf compositional`` (diffclf.cli.compositional): Winoground, binding and cue-conflict end to end on a
``build-scenes`` folder, with tiny random SD and CLIP folders (tests/tiny_pipelines.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tiny_pipelines import build_clip_model, build_sd_pipeline

from diffclf.cli import main
from diffclf.cli.compositional import run_winoground
from diffclf.tasks import ClipClassifier, TextDiffusionClassifier


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("scenes") / "build"
    main(["build-scenes", "--out", str(out), "--seed", "0", "--size", "32", "--train", "40", "--test", "120"])
    return out


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_clip_model(tmp_path_factory.mktemp("clip") / "clip")


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_sd_pipeline(tmp_path_factory.mktemp("sd") / "pipe")


def run(evaluation: str, root: Path, model: list[str], out: Path, *extra: str) -> dict:
    main(["compositional", *model, "--evaluation", evaluation, "--root", str(root), "--out", str(out),
          "--image_size", "32", "--batch_size", "8", *extra])
    return json.loads((out / f"{evaluation}.json").read_text())


def test_winoground_scores_are_the_models_matches_of_each_image_with_each_caption(scenes: Path, sd_dir: Path,
                                                                                   tmp_path: Path) -> None:
    model = ["--model", "diffclf.tasks.TextDiffusionClassifier", "--model.init_args.pretrained", str(sd_dir)]
    record = run("winoground", scenes / "winoground", model, tmp_path, "--draws", "4", "--limit", "6")
    assert record["n"] == 6 and set(record["summary"]) >= {"all", "Object", "Relation"}
    assert record["summary"]["all"]["text"]["total"] == 6 and record["draws"] == 4
    task = TextDiffusionClassifier(pretrained=str(sd_dir))
    keys_seen = []
    original = task.match

    def spy(images, captions, keys, draws=None):
        keys_seen.append(keys.tolist())
        return original(images, captions, keys, draws=draws)

    task.match = spy
    again = run_winoground(task, str(scenes / "winoground"), 32, 3, 6, 0.95, lambda i, c, k: task.match(i, c, k, draws=4),
                           torch.device("cpu"))
    torch.testing.assert_close(torch.tensor(again["scores"]), torch.tensor(record["scores"]))
    # Both images of an example are scored on the same draws: one key per example, twice.
    assert keys_seen == [[0, 0, 1, 1, 2, 2], [3, 3, 4, 4, 5, 5]]
    # s[n, i, j] is image i with caption j: recompute example 4's scores one pair at a time.
    from diffclf.data.winoground import WinogroundDataset

    item = WinogroundDataset(scenes / "winoground", image_size=32)[4]
    for i in range(2):
        for j in range(2):
            s = original(item.images[i:i + 1], [[item.captions[j]]], torch.tensor([4]), draws=4)
            torch.testing.assert_close(float(s[0, 0]), record["scores"][4][i][j], rtol=1e-5, atol=1e-6)


def test_winoground_image_scores_subtract_each_images_unconditional_error(scenes: Path, sd_dir: Path, clip_dir: Path,
                                                                         tmp_path: Path) -> None:
    """A denoising model's record adds ``null_scores`` (each image under the empty prompt, on its example's draws,
    recomputed here one image at a time) and ``summary_normalised``, which is Thrush et al.'s three scores on
    ``s - s_null``, written out here; the text score equals the raw one. CLIP, whose cosines need no such
    correction, gets none. Mutation tried: subtracting the other image's null error fails."""
    from diffclf.data.winoground import WinogroundDataset

    model = ["--model", "diffclf.tasks.TextDiffusionClassifier", "--model.init_args.pretrained", str(sd_dir)]
    record = run("winoground", scenes / "winoground", model, tmp_path, "--draws", "4", "--limit", "6")
    task = TextDiffusionClassifier(pretrained=str(sd_dir))
    data = WinogroundDataset(scenes / "winoground", image_size=32)
    assert record["null_caption"] == ""
    s = torch.tensor(record["scores"], dtype=torch.float64)
    null = torch.tensor(record["null_scores"], dtype=torch.float64)
    for n in (1, 4):
        for i in range(2):
            want = task.match(data[n].images[i:i + 1], [[""]], torch.tensor([n]), draws=4)
            torch.testing.assert_close(float(want[0, 0]), float(null[n, i]), rtol=1e-5, atol=1e-6)
    counts = {"text": 0, "image": 0, "group": 0}
    for n in range(6):
        d = [[float(s[n, i, j] - null[n, i]) for j in range(2)] for i in range(2)]
        text = d[0][0] > d[0][1] and d[1][1] > d[1][0]
        image = d[0][0] > d[1][0] and d[1][1] > d[0][1]
        counts["text"] += text
        counts["image"] += image
        counts["group"] += text and image
    got = {k: record["summary_normalised"]["all"][k]["correct"] for k in counts}
    assert got == counts
    assert got["text"] == record["summary"]["all"]["text"]["correct"]
    clip = run("winoground", scenes / "winoground", ["--model", "diffclf.tasks.ClipClassifier",
                                                     "--model.init_args.pretrained", str(clip_dir)],
               tmp_path / "clip", "--limit", "6")
    assert "summary_normalised" not in clip and "null_scores" not in clip


def test_precision_overrides_a_denoising_models_own_and_is_recorded(scenes: Path, sd_dir: Path, clip_dir: Path,
                                                                    tmp_path: Path) -> None:
    """``--precision`` replaces the model's scoring precision for the run (the record says which ran, and its
    scores are the fp32 ones of a model built with ``scoring.precision`` 32); CLIP has no such option: one line.
    Mutation tried: ignoring the flag leaves the record at the model's bf16."""
    model = ["--model", "diffclf.tasks.TextDiffusionClassifier", "--model.init_args.pretrained", str(sd_dir),
             "--model.init_args.scoring", '{"precision": "bf16"}']
    record = run("winoground", scenes / "winoground", model, tmp_path, "--draws", "4", "--limit", "2",
                 "--precision", "32")
    assert record["scoring"]["precision"] == "32" and record["hparams"]["scoring"]["precision"] == "32"
    fp32 = run("winoground", scenes / "winoground", model[:4], tmp_path / "fp32", "--draws", "4", "--limit", "2")
    assert record["scores"] == fp32["scores"]
    with pytest.raises(ValueError, match="--precision: ClipClassifier does not score by denoising"):
        run("winoground", scenes / "winoground", ["--model", "diffclf.tasks.ClipClassifier",
                                                  "--model.init_args.pretrained", str(clip_dir)],
            tmp_path / "clip", "--limit", "2", "--precision", "32")


def test_binding_tasks_are_scored_positive_against_negative_with_a_binomial_test(scenes: Path, clip_dir: Path,
                                                                                 tmp_path: Path) -> None:
    model = ["--model", "diffclf.tasks.ClipClassifier", "--model.init_args.pretrained", str(clip_dir)]
    record = run("binding", scenes, model, tmp_path, "--num_examples", "10", "--tasks",
                 '["Shape", "Shape|Color", "Shape,Color"]')
    assert list(record["tasks"]) == ["Shape", "Shape|Color", "Shape,Color"]
    task = ClipClassifier(pretrained=str(clip_dir))
    from PIL import Image

    from diffclf.data import scenes as sc
    from diffclf.data.zero_shot import ResizeCenterCrop

    images = sc.read_images(scenes, "test", 120, 32)
    for result in record["tasks"].values():
        assert result["total"] == 10 and len(result["examples"]) == 10
        assert result["correct"] == sum(e["correct"] for e in result["examples"])
        e = result["examples"][0]
        s = task.match(ResizeCenterCrop(32)(Image.fromarray(images[e["scene"]]))[None], [[e["positive"], e["negative"]]],
                       torch.tensor([e["scene"]]))
        assert bool(s[0, 0] > s[0, 1]) == e["correct"]
        assert 0.0 <= result["p_value"] <= 1.0 and result["significant"] == (result["p_value"] < 0.01)


def test_cue_conflict_reads_a_generated_set_and_reports_the_shape_bias(scenes: Path, clip_dir: Path,
                                                                      tmp_path: Path) -> None:
    model = ["--model", "diffclf.tasks.ClipClassifier", "--model.init_args.pretrained", str(clip_dir)]
    record = run("cue_conflict", scenes / "cue_conflict", model, tmp_path, "--limit", "12")
    assert record["categories"] == ["cube", "cylinder", "sphere"] and record["n"] == 12
    pred, shape, texture = (torch.tensor(record[k]) for k in ("pred", "shape", "texture"))
    assert bool((shape != texture).all())
    assert record["shape_correct"] == int((pred == shape).sum()) and record["texture_correct"] == int((pred == texture).sum())
    hits = record["shape_correct"] + record["texture_correct"]
    if hits:
        assert record["shape_bias"] == pytest.approx(record["shape_correct"] / hits)


def test_the_model_is_a_class_spec_or_a_prompted_checkpoint(scenes: Path, tmp_path: Path) -> None:
    from conftest import REPO

    with pytest.raises(ValueError, match="give --model .* or --ckpt_path"):
        main(["compositional", "--evaluation", "binding", "--root", str(scenes), "--out", str(tmp_path)])
    with pytest.raises(ValueError, match="a DiffusionClassifier scores class ids, not captions"):
        main(["compositional", "--evaluation", "binding", "--root", str(scenes), "--out", str(tmp_path),
              "--ckpt_path", str(REPO / "checkpoints" / "digits_dit_t2_quickstart.ckpt")])


def test_a_1000_class_diffusion_classifier_decides_the_16_categories_by_mean_probability(tmp_path: Path) -> None:
    """A class-conditional ImageNet DiT scores only Geirhos' 207 classes, and a category's score is its classes'
    mean probability: the decisions equal a softmax over all 1000 classes averaged per category (the
    model-vs-human rule, computed here from the 1000-class logits on the same draws). Mutation tried: the
    label space's log-sum-exp (sum of probabilities) without the log class count changes decisions here."""
    import numpy as np
    from PIL import Image

    from diffclf.cli.compositional import compositional
    from diffclf.data.cue_conflict import CUE_CONFLICT_CATEGORIES, GEIRHOS_IMAGENET_INDICES
    from diffclf.data.label_spaces import LabelSpace
    from diffclf.diffusion.scoring import ScoringOptions
    from diffclf.strategies import Exhaustive
    from diffclf.tasks import DiffusionClassifier

    names = ["airplane/airplane1-bicycle2.png", "bear/bear3-knife1.png", "dog/dog1-cat2.png",
             "truck/truck2-oven5.png", "cat/cat4-dog1.png", "knife/knife2-bear3.png"]
    rng = np.random.default_rng(0)
    for c in CUE_CONFLICT_CATEGORIES:
        (tmp_path / "stimuli" / c).mkdir(parents=True)
    for name in names:
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(tmp_path / "stimuli" / name)

    def model() -> DiffusionClassifier:
        torch.manual_seed(0)
        # Temperature 200: random weights give logits of std ~200, one class would take all the mass and the
        # aggregation rule would not matter; at std ~1 summing and averaging probabilities disagree.
        m = DiffusionClassifier(model="DiT-T/4", input_size=8, in_channels=3, num_classes=1000, learn_sigma=False,
                                strategy=Exhaustive(trials=2), scoring=ScoringOptions(temperature=200.0))
        for p in m.dit.parameters():  # DiT's init zeroes the output: every class would tie
            p.data.normal_(0.0, 0.05)
        m.ema.load_state_dict(m.dit.state_dict())
        return m

    restricted = model()
    record = compositional("cue_conflict", str(tmp_path / "stimuli"), model=restricted, out=str(tmp_path / "out"),
                           draws=6, image_size=8, batch_size=4, device="cpu")
    assert len(restricted.candidate_maps(torch.device("cpu")).ids) == 207 and record["n"] == 6

    full = model()
    full.strategy = Exhaustive(trials=6)
    full.label_space = LabelSpace.identity([str(i) for i in range(1000)], name="imagenet")
    from diffclf.data.cue_conflict import CueConflictDataset

    data = CueConflictDataset(tmp_path / "stimuli", image_size=8)
    x = torch.stack([data[i][0] for i in range(len(data))])
    with torch.no_grad():
        probs = torch.softmax(full.classify(x, torch.arange(len(data))).logits.double(), dim=1).numpy()
    mean = np.stack([probs[:, list(GEIRHOS_IMAGENET_INDICES[c])].mean(1) for c in CUE_CONFLICT_CATEGORIES], axis=1)
    assert record["pred"] == mean.argmax(1).tolist()
    assert record["shape"] == [s.shape for s in data.stimuli]


def test_bad_options_are_refused_before_any_scoring(scenes: Path, clip_dir: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # Each of these once failed (or, --draws 0, was silently replaced) only after every example was scored.
    monkeypatch.setattr(ClipClassifier, "match", lambda *a, **k: pytest.fail("scored before the options were checked"))
    model = ["--model", "diffclf.tasks.ClipClassifier", "--model.init_args.pretrained", str(clip_dir)]
    for extra, message in ((["--level", "1.5"], r"compositional --level must be in \(0, 1\)"),
                           (["--draws", "0"], "compositional --draws must be >= 1, got 0"),
                           (["--tasks", '["Shape", "Colour"]'], "compositional --tasks 'Colour': ")):
        with pytest.raises(ValueError, match=message):
            run("binding", scenes, model, tmp_path / "out", "--num_examples", "10", *extra)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(OSError, match="compositional --out"):
        run("binding", scenes, model, blocker, "--num_examples", "10")
