"""Zero-shot CLIP (``diffclf.models.clip``, ``diffclf.tasks.ClipClassifier``) on a tiny random CLIP folder.

The references are written here from transformers' own ``CLIPModel`` / ``CLIPImageProcessor`` and the CLIP
ImageNet notebook's ensembling formula, independently of the code under test.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import REPO, write_cifar10
from PIL import Image
from tiny_pipelines import build_clip_model

from diffclf.cli import main
from diffclf.metrics.results import load_records
from diffclf.metrics.robustness import plot_effective_robustness, robustness_points
from diffclf.models.clip import ClipZeroShot, load_clip, read_preprocess, text_fingerprint
from diffclf.models.prompts import Prompts
from diffclf.tasks import ClipClassifier

CONFIG = REPO / "configs" / "clip_zero_shot.yaml"
PROMPTS = Prompts(
    classes=("cat", "dog", "bird"),
    # Uneven counts: a class's features must be the mean of unit prompt embeddings, renormalised.
    prompts=(("a photo of a cat.", "a blurry photo of a cat."),
             ("a photo of a dog.",),
             ("a photo of the bird.", "a photo of a bird.", "the red bird.")),
    source="test",
)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory, one_thread) -> Path:
    return build_clip_model(tmp_path_factory.mktemp("clip") / "clip", seed=0)


def _uint8_images(n: int, h: int = 32, w: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def _model_range(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def _reference_logits(folder: Path, prompts: Prompts, images: np.ndarray) -> torch.Tensor:
    """CLIP zero-shot from transformers directly: the processor's pixels, get_text/image_features, and the
    notebook's zeroshot_classifier (normalise each prompt, mean, normalise), times logit_scale.exp()."""
    from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

    model = CLIPModel.from_pretrained(str(folder)).eval()
    tokenizer = CLIPTokenizer.from_pretrained(str(folder))
    processor = CLIPImageProcessor.from_pretrained(str(folder))

    def pooled(out):
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    with torch.no_grad():
        weights = []
        for group in prompts.prompts:
            tokens = tokenizer(list(group), padding=True, return_tensors="pt")
            emb = pooled(model.get_text_features(**tokens))
            emb = emb / emb.norm(dim=-1, keepdim=True)
            mean = emb.mean(dim=0)
            weights.append(mean / mean.norm())
        weights = torch.stack(weights, dim=1)
        pixels = processor(images=[Image.fromarray(im) for im in images], return_tensors="pt")["pixel_values"]
        feats = pooled(model.get_image_features(pixel_values=pixels))
        feats = feats / feats.norm(dim=-1, keepdim=True)
        return model.logit_scale.exp() * feats @ weights


def test_logits_equal_an_independent_clip_zero_shot(clip_dir: Path, tmp_path: Path) -> None:
    images = _uint8_images(5)
    zs = ClipZeroShot(load_clip(clip_dir), PROMPTS, tmp_path / "text.safetensors")
    logits = zs(_model_range(images))
    ref = _reference_logits(clip_dir, PROMPTS, images)
    assert logits.shape == (5, 3) and logits.dtype == torch.float32
    torch.testing.assert_close(logits, ref, rtol=1e-4, atol=1e-4)
    # Logits that would all be equal would pass trivially: the random model separates the prompts.
    assert float(logits.std()) > 1e-3


def test_one_prompt_per_class_is_clips_own_logits_per_image(clip_dir: Path, tmp_path: Path) -> None:
    from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

    prompts = Prompts(("cat", "dog", "truck"), (("a photo of a cat.",), ("a dog.",), ("the blue truck.",)), "test")
    images = _uint8_images(3, seed=1)
    logits = ClipZeroShot(load_clip(clip_dir), prompts, tmp_path / "text.safetensors")(_model_range(images))
    model = CLIPModel.from_pretrained(str(clip_dir)).eval()
    tokens = CLIPTokenizer.from_pretrained(str(clip_dir))([p[0] for p in prompts.prompts], padding=True,
                                                          return_tensors="pt")
    pixels = CLIPImageProcessor.from_pretrained(str(clip_dir))(images=list(map(Image.fromarray, images)),
                                                                return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        ref = model(**tokens, pixel_values=pixels).logits_per_image
    torch.testing.assert_close(logits, ref, rtol=1e-4, atol=1e-4)


def test_match_scores_each_image_against_its_own_captions(clip_dir: Path, tmp_path: Path) -> None:
    """Free-text matching (Winoground, binding) is CLIPModel's own logits_per_image, caption by caption."""
    from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

    images = _uint8_images(2, seed=2)
    captions = [["a red cube.", "a blue sphere."], ["the cat.", "a photo of a dog.", "a red cube."]]
    task = ClipClassifier(pretrained=str(clip_dir))
    scores = [task.match(_model_range(images[i:i + 1]), [captions[i]], torch.tensor([i])) for i in range(2)]
    model = CLIPModel.from_pretrained(str(clip_dir)).eval()
    tok = CLIPTokenizer.from_pretrained(str(clip_dir))
    proc = CLIPImageProcessor.from_pretrained(str(clip_dir))
    for i, got in enumerate(scores):
        tokens = tok(captions[i], padding=True, return_tensors="pt")
        pixels = proc(images=[Image.fromarray(images[i])], return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            ref = model(**tokens, pixel_values=pixels).logits_per_image
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
    both = task.match(_model_range(images[:1]).expand(2, -1, -1, -1), [captions[0], captions[0][::-1]], torch.tensor([0, 1]))
    torch.testing.assert_close(both[1], both[0].flip(0))


def test_preprocessing_matches_clips_image_processor_on_a_non_square_image(clip_dir: Path) -> None:
    from transformers import CLIPImageProcessor

    # A smooth 48x64 image: resize of the shorter side to 32, center crop 32x32, normalisation.
    y, x = np.mgrid[0:48, 0:64]
    image = (np.stack([np.sin(x / 7.0), np.cos(y / 5.0), np.sin((x + y) / 9.0)], -1) * 127 + 128).astype(np.uint8)
    ref = CLIPImageProcessor.from_pretrained(str(clip_dir))(images=Image.fromarray(image), return_tensors="pt")
    ours = read_preprocess(clip_dir / "preprocessor_config.json")(_model_range(image[None]))
    assert ours.shape == ref["pixel_values"].shape == (1, 3, 32, 32)
    # PIL resizes uint8 pixels: the two differ by about one grey level.
    assert float((ours - ref["pixel_values"]).abs().max()) < 0.05
    gray = read_preprocess(clip_dir / "preprocessor_config.json")(_model_range(image[None])[:, :1])
    assert gray.shape == (1, 3, 32, 32)


def test_text_features_are_cached_reused_and_refused_for_another_clip(clip_dir: Path, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "text.safetensors"
    first = ClipZeroShot(load_clip(clip_dir), PROMPTS, cache)
    features = first.class_features()
    assert cache.is_file() and first.from_cache is False

    def must_not_encode(self):
        raise AssertionError("the cached text features were encoded again")

    monkeypatch.setattr(ClipZeroShot, "compute_class_features", must_not_encode)
    second = ClipZeroShot(load_clip(clip_dir), PROMPTS, cache)
    torch.testing.assert_close(second.class_features(), features, rtol=0, atol=0)
    assert second.from_cache is True

    # The image processor does not change text features, so it is not fingerprinted; the weights are.
    copy = tmp_path / "clip-copy"
    shutil.copytree(clip_dir, copy)
    cfg = json.loads((copy / "preprocessor_config.json").read_text())
    (copy / "preprocessor_config.json").write_text(json.dumps({**cfg, "size": {"shortest_edge": 40}}))
    assert text_fingerprint(copy) == text_fingerprint(clip_dir)

    other = build_clip_model(tmp_path / "other" / "clip", seed=1)
    assert text_fingerprint(other) != text_fingerprint(clip_dir)
    with pytest.raises(ValueError, match="another text encoder") as err:
        ClipZeroShot(load_clip(other), PROMPTS, cache).class_features()
    assert str(cache) in str(err.value) and "\n" not in str(err.value)


def test_predictions_do_not_depend_on_the_order_of_a_class_prompts(clip_dir: Path, tmp_path: Path) -> None:
    # Prompts built directly: template files are put in a canonical order before CLIP sees them, so a
    # permutation there would not reach the ensembling.
    templates = ["a photo of a {}.", "a blurry photo of the {}.", "the red {}.", "a {} of a cube."]
    classes = ("cat", "dog", "bird", "ship")
    orders = [[0, 1, 2, 3], [2, 0, 3, 1], [3, 2, 1, 0], [1, 3, 0, 2]]
    forward = Prompts(classes, tuple(tuple(t.format(c) for t in templates) for c in classes), "forward")
    shuffled = Prompts(classes, tuple(tuple(templates[j].format(c) for j in order)
                                      for c, order in zip(classes, orders)), "shuffled")
    images = _model_range(_uint8_images(6, seed=2))
    clip = load_clip(clip_dir)
    a = ClipZeroShot(clip, forward, tmp_path / "a.safetensors")(images)
    b = ClipZeroShot(clip, shuffled, tmp_path / "b.safetensors")(images)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert torch.equal(a.argmax(1), b.argmax(1))


@pytest.mark.parametrize("missing", ["preprocessor_config.json", "config.json", "model.safetensors",
                                     "tokenizer.json"])
def test_a_folder_missing_a_file_is_one_line_naming_it(clip_dir: Path, tmp_path: Path, missing: str) -> None:
    copy = tmp_path / "clip"
    shutil.copytree(clip_dir, copy)
    (copy / missing).unlink()
    with pytest.raises(FileNotFoundError) as err:
        ClipClassifier(pretrained=str(copy), num_classes=10)
    message = str(err.value)
    assert missing in message and str(copy) in message and "\n" not in message


def test_a_config_that_is_not_a_clip_model_is_refused(clip_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "clip"
    shutil.copytree(clip_dir, copy)
    cfg = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**cfg, "model_type": "clip_text_model"}))
    with pytest.raises(ValueError, match="expected a CLIPModel"):
        load_clip(copy)


def test_the_preset_parses() -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["test", "--config", str(CONFIG), "--print_config"])
    assert exit_info.value.code in (0, None)


def test_cli_test_and_predict_without_a_checkpoint(clip_dir: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIFFCLF_CACHE", str(tmp_path / "cache"))
    root = write_cifar10(tmp_path / "data", per_class=2, size=32)
    run = tmp_path / "run"
    args = ["--config", str(CONFIG), "--data.init_args.root", str(root), "--data.init_args.image_size", "32",
            "--data.init_args.num_workers", "0", "--data.init_args.eval_batch_size", "8",
            "--model.init_args.pretrained", str(clip_dir), "--trainer.default_root_dir", str(run),
            "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar=false"]
    main(["test", *args])
    record = json.loads((run / "results.json").read_text())
    assert record["kind"] == "contrastive" and record["strategy"] == "clip-zero-shot"
    assert record["n"] == 20 and record["num_classes"] == 10 and record["label_space_size"] == 10
    assert 0.0 <= record["ci_low"] <= record["accuracy"] <= record["ci_high"] <= 1.0
    assert record["forwards_per_image"] == 1 and record["checkpoint"] == str(clip_dir)
    assert record["prompts"] == "templates:cifar10" and record["prompts_per_class"] == 18
    assert record["model"] == "clip"
    assert load_records([run / "results.json"])["kind"].tolist() == ["contrastive"]
    assert list((tmp_path / "cache" / "text").glob("*.safetensors"))

    preds = tmp_path / "preds.jsonl"
    main(["predict", *args, "--trainer.callbacks+=diffclf.tasks.callbacks.PredictionWriter",
          f"--trainer.callbacks.output={preds}"])
    rows = [json.loads(line) for line in preds.read_text().splitlines()]
    assert sorted(r["index"] for r in rows) == list(range(20))
    assert all(len(r["probs"]) == 10 and abs(sum(r["probs"]) - 1) < 1e-4 for r in rows)
    correct = sum(r["pred"] == r["target"] for r in rows)
    assert correct == record["correct"]


def test_contrastive_models_are_drawn_but_kept_out_of_the_baseline_fit(tmp_path: Path) -> None:
    rows = []
    for model, kind, acc_id, acc_ood in [("r18", "discriminative", 0.6, 0.2), ("r50", "discriminative", 0.8, 0.4),
                                         ("vit", "discriminative", 0.7, 0.3), ("clip", "contrastive", 0.75, 0.7)]:
        for dataset, acc in (("imagenet", acc_id), ("imagenet_v2", acc_ood)):
            rows.append({"model": model, "kind": kind, "dataset": dataset, "accuracy": acc,
                         "ci_low": acc - 0.02, "ci_high": acc + 0.02})
    points, fits, _ = robustness_points(pd.DataFrame(rows), "imagenet")
    assert sorted(fits["imagenet_v2"].models) == ["r18", "r50", "vit"]
    assert float(points.set_index("model").at["clip", "er"]) > 20
    assert plot_effective_robustness(points, fits, tmp_path / "er.png", 0.95).is_file()
