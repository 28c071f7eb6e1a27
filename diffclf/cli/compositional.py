"""``diffclf compositional``: Winoground, attribute binding and cue-conflict shape bias for a zero-shot model.

The model is any prompted task (``TextDiffusionClassifier``, ``ClipClassifier``, or one diffclf trained),
given as a class spec: ``--model diffclf.tasks.ClipClassifier --model.init_args.pretrained DIR``. It scores
images against free text through its ``match`` (a diffusion model: minus the mean denoising error on draws
shared by every caption of an image, and by both images of a Winoground example, which get one key; CLIP:
the scaled cosine). Each evaluation writes ``<out>/<evaluation>.json`` (summaries with exact intervals, the
binomial tests, per-example scores, provenance) and prints a table.

- ``winoground``: a local ``facebook/winoground`` copy (either layout) or a ``build-scenes`` folder's
  ``winoground/``; text, image and group scores overall and per ``collapsed_tag``.
- ``binding``: the scenes of a ``build-scenes`` folder's split; Clark & Jaini's binary tasks (controls,
  single bindings ``X|Y``, pairs ``X,Y``) with a two-sided binomial test against chance at p < 0.01.
- ``cue_conflict``: Geirhos' stimuli (16 categories) or a ``build-scenes`` folder's ``cue_conflict/``; the
  categories' prompts are scored for each image, or, for a 1000-class ImageNet classifier (a DiT-XL/2, a timm
  model), the mean probability of each category's ImageNet classes (Geirhos' 207; a diffusion classifier
  scores only those); shape and texture accuracy and the shape bias.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from diffclf.data.binding import binding_examples, parse_task
from diffclf.data.cue_conflict import CUE_CONFLICT_CATEGORIES, CueConflictDataset, cue_conflict_label_space
from diffclf.data.label_spaces import NUM_IMAGENET_CLASSES
from diffclf.data.winoground import WinogroundDataset
from diffclf.data.zero_shot import ResizeCenterCrop
from diffclf.diffusion.scoring import ScoringOptions
from diffclf.metrics.compositional import (
    binding_summary,
    pairwise_correct,
    shape_bias,
    strict_argmax,
    winoground_summary,
)
from diffclf.metrics.provenance import provenance
from diffclf.models.prompts import read_templates
from diffclf.tasks.base import ClassifierTask, check_writable
from diffclf.tasks.zero_shot import DenoisingPromptedTask, PromptedTask

Evaluation = Literal["winoground", "binding", "cue_conflict"]

#: Clark & Jaini's kinds of binding task over shape, colour, size and position: recognition controls, every
#: single binding X|Y, every pair X,Y.
ATTRIBUTES = ("shape", "color", "size", "position")
DEFAULT_BINDING_TASKS = (
    [a.capitalize() for a in ATTRIBUTES if a != "position"]
    + [f"{x.capitalize()}|{y.capitalize()}" for x in ATTRIBUTES for y in ATTRIBUTES if x != y]
    + [f"{x.capitalize()},{y.capitalize()}" for i, x in enumerate(ATTRIBUTES) for y in ATTRIBUTES[i + 1:]]
)


def _batches(n: int, size: int) -> Iterator[range]:
    for start in range(0, n, size):
        yield range(start, min(n, start + size))


def _match(model: PromptedTask, draws: int | None) -> Callable[[Tensor, list[list[str]], Tensor], Tensor]:
    """The model's match with ``draws`` for the kinds that draw (a diffusion model), as is otherwise."""
    if draws is not None and "draws" in inspect.signature(model.match).parameters:
        return lambda images, captions, keys: model.match(images, captions, keys, draws=draws)
    return model.match


def run_winoground(model: PromptedTask, root: str, image_size: int, batch_size: int, limit: int | None,
                   level: float, match: Callable, device: torch.device) -> dict[str, Any]:
    """The ``(N, 2, 2)`` scores ``s[n, i, j]`` of image ``i`` with caption ``j`` and their summary.

    A denoising model also scores each image with its unconditional caption on the same draws, and the record
    adds the summary of ``s[n, i, j] - s_null[n, i]`` (``summary_normalised``). Why: an image's own denoising
    difficulty is common to its captions, so it cancels in the text score but decides the image score (both
    captions prefer the easier image); subtracting the unconditional error removes it, the unconditional
    normalisation of Krojer et al. 2023 (DiffusionITM, "Are Diffusion Models Vision-and-Language Reasoners?").
    The text score is the same under both.
    """
    data = WinogroundDataset(root, image_size=image_size)
    n = len(data) if limit is None else min(limit, len(data))
    null = model.null_caption if isinstance(model, DenoisingPromptedTask) else None
    scores = []
    for rows in _batches(n, batch_size):
        items = [data[i] for i in rows]
        if null is not None and null in {c for item in items for c in item.captions}:
            raise ValueError(f"{root}: an example's caption is the model's unconditional caption {null!r}")
        images = torch.cat([item.images for item in items]).to(device)  # image 0, image 1 of each example
        captions = [[*item.captions, *([] if null is None else [null])] for item in items for _ in range(2)]
        keys = torch.tensor([item.index for item in items for _ in range(2)])  # both images share the draws
        scores.append(match(images, captions, keys).float().cpu().view(len(items), 2, len(captions[0])))
    s = torch.cat(scores)
    tags = data.collapsed_tags[:n]
    out: dict[str, Any] = {"n": n}
    if null is not None:
        normalised = s[..., :2] - s[..., 2:]
        out["null_caption"] = null
        out["summary_normalised"] = _summary_dict(winoground_summary(normalised, tags, level))
        out["null_scores"] = s[..., 2].tolist()
        s = s[..., :2]
    return {**out, "summary": _summary_dict(winoground_summary(s, tags, level)), "scores": s.tolist(),
            "collapsed_tags": tags}


def _summary_dict(summary: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {g: {k: r.as_dict() for k, r in rates.items()} for g, rates in summary.items()}


def _scene_images(root: Path, split: str) -> tuple[list[Any], np.ndarray]:
    from diffclf.data import scenes as sc

    folder, meta = sc.read_meta(root)
    scenes = sc.read_scenes(folder, split)
    images = sc.read_images(folder, split, len(scenes), int(meta["size"]))
    return scenes, images


def run_binding(model: PromptedTask, root: str, split: str, tasks: Sequence[str], num_examples: int, seed: int,
                image_size: int, batch_size: int, level: float, match: Callable, device: torch.device) -> dict[str, Any]:
    """Every task's accuracy, exact interval and binomial test on ``num_examples`` scenes of ``split``."""
    from PIL import Image

    scenes, images = _scene_images(Path(root), split)
    transform = ResizeCenterCrop(image_size)
    # every task's examples before any scoring, so a task the scenes cannot pose fails first
    drawn = {}
    for name in tasks:
        try:
            drawn[name] = binding_examples([s.objects for s in scenes], parse_task(name), num_examples, seed)
        except ValueError as err:
            raise ValueError(f"compositional --tasks {name!r}: {err}") from None
    results = {}
    for name, examples in drawn.items():
        pos, neg = [], []
        for rows in _batches(len(examples), batch_size):
            batch = [examples[i] for i in rows]
            x = torch.stack([transform(Image.fromarray(images[e.scene_index])) for e in batch]).to(device)
            s = match(x, [[e.positive, e.negative] for e in batch], torch.tensor([e.scene_index for e in batch]))
            pos.append(s[:, 0].float().cpu())
            neg.append(s[:, 1].float().cpu())
        correct = pairwise_correct(torch.cat(pos), torch.cat(neg))
        results[parse_task(name).name] = {
            **binding_summary(correct, level).as_dict(),
            "examples": [{"scene": e.scene_index, "positive": e.positive, "negative": e.negative, "correct": bool(c)}
                         for e, c in zip(examples, correct.tolist())],
        }
    return {"split": split, "tasks": results}


def imagenet_category_scorer(model: ClassifierTask, categories: Sequence[str]) -> Callable[[Tensor, Tensor], Tensor]:
    """Scores of the 16 categories for a 1000-class ImageNet classifier (a DiT-XL/2, a timm model): the model
    classifies over the label space of Geirhos' 207 mapped classes only (a diffusion classifier scores just
    those), and a category's score is the log of its classes' *mean* probability, model-vs-human's rule
    (``diffclf.metrics.compositional.mean_probability_scores``): the label space's log-sum-exp minus the log of
    its class count. The softmax normaliser is common to a row, so the ranking equals model-vs-human's softmax
    over all 1000 classes."""
    if model.num_model_classes != NUM_IMAGENET_CLASSES or tuple(categories) != CUE_CONFLICT_CATEGORIES:
        raise ValueError(f"cue_conflict: a {type(model).__name__} with {model.num_model_classes} classes decides the 16 "
                         f"categories only as a 1000-class ImageNet model on Geirhos' stimuli (categories "
                         f"{', '.join(CUE_CONFLICT_CATEGORIES)}); got categories {', '.join(categories)}")
    model.label_space = cue_conflict_label_space()
    sizes = torch.tensor([len(ids) for ids in model.label_space.model_classes], dtype=torch.float64)

    def score(images: Tensor, keys: Tensor) -> Tensor:
        logits = model.classify(images, keys.to(images.device)).logits
        if logits is None:
            raise ValueError(f"cue_conflict: {type(model).__name__} gives no logits of p(c|x), which the mean-"
                             "probability rule needs")
        return logits.double().cpu() - sizes.log()

    return score


def run_cue_conflict(model: ClassifierTask, root: str, templates: str, image_size: int, batch_size: int,
                     limit: int | None, level: float, match: Callable | None, device: torch.device) -> dict[str, Any]:
    """Every stimulus scored over the categories — a prompted model: the categories' prompts (mean over
    templates); a 1000-class ImageNet model: :func:`imagenet_category_scorer` — then the strict 16-way (or
    K-way) decision; shape and texture accuracy and the shape bias."""
    data = CueConflictDataset(root, image_size=image_size)
    names = list(data.categories)
    n = len(data) if limit is None else min(limit, len(data))
    if isinstance(model, PromptedTask):
        prompts = [[t.format(c) for c in names] for t in read_templates(templates)]

        def score(x: Tensor, keys: Tensor) -> Tensor:
            return torch.stack([match(x, [p] * len(x), keys).float().cpu() for p in prompts]).mean(0)
    else:
        score = imagenet_category_scorer(model, names)
    preds, shapes, textures = [], [], []
    for rows in _batches(n, batch_size):
        items = [data[i] for i in rows]
        x = torch.stack([it[0] for it in items]).to(device)
        keys = torch.tensor([it[3] for it in items])
        preds.append(strict_argmax(score(x, keys)))
        shapes += [it[1] for it in items]
        textures += [it[2] for it in items]
    bias = shape_bias(torch.cat(preds), torch.tensor(shapes), torch.tensor(textures), level)
    return {"n": n, "dropped_same_cue": data.dropped, "categories": names, **bias.as_dict(),
            "pred": torch.cat(preds).tolist(), "shape": shapes, "texture": textures}


def compositional(
    evaluation: Evaluation,
    root: str,
    model: ClassifierTask | None = None,
    ckpt_path: str | None = None,
    out: str = "runs/compositional",
    draws: int | None = 1000,
    image_size: int = 512,
    batch_size: int = 4,
    limit: int | None = None,
    tasks: list[str] | None = None,
    split: str = "test",
    num_examples: int = 1000,
    templates: str = "photo",
    seed: int = 0,
    level: float = 0.95,
    device: str = "auto",
    precision: Literal["32", "bf16", "auto"] | None = None,
) -> dict[str, Any]:
    """Run one compositional evaluation of a zero-shot model and write ``<out>/<evaluation>.json``.

    Args:
        evaluation: ``winoground``, ``binding`` or ``cue_conflict``.
        root: the data: a Winoground copy, a cue-conflict stimuli folder, or a ``build-scenes`` folder
            (its ``winoground/`` and ``cue_conflict/`` subfolders for those two).
        model: the model, a class spec (``--model diffclf.tasks.TextDiffusionClassifier
            --model.init_args.pretrained DIR``); for ``cue_conflict`` also a 1000-class ImageNet classifier
            (``--model diffclf.tasks.DiffusionClassifier --model.init_args.pretrained DiT-XL-2-256x256.pt``, a timm
            baseline), which decides among the 16 categories by the mean probability of their 207 classes.
        ckpt_path: instead of ``model``, a checkpoint diffclf trained (``TextDiTClassifier``,
            ``ContrastiveClassifier``; for ``cue_conflict`` a 1000-class ``DiffusionClassifier`` too).
        out: folder for the JSON record.
        draws: draws per (image, caption) pair for a diffusion model (Li et al. used 1000 even timesteps on
            Winoground); for a class-conditional one, draws per class (``Exhaustive``); ignored by CLIP.
        image_size: side images are resized and center-cropped to (512 for SD 2.0; a model's own size).
        batch_size: images per ``match`` call.
        limit: the first N examples (Winoground, cue-conflict) only.
        tasks: binding task names (default: every control, single binding and pair, ``DEFAULT_BINDING_TASKS``).
        split: the ``build-scenes`` split binding examples are drawn from (``test``: held-out combinations).
        num_examples: binding examples per task (Clark & Jaini: 1000).
        templates: prompt templates for the cue-conflict categories (a preset or a file).
        seed: binding examples are drawn from it.
        level: level of the exact intervals.
        device: ``auto``, ``cpu`` or ``cuda``.
        precision: a denoising model's scoring precision instead of its own (a checkpoint keeps its training
            config's, e.g. ``auto``, bf16 on a CPU with native bf16): ``32`` where a caption moves the error by
            less than bf16 resolves (~0.4%), as for the text DiTs trained on scenes, whose Winoground text score
            bf16 moved from 9.5% to 15.5%.
    """
    if (model is None) == (ckpt_path is None):
        raise ValueError("compositional: give --model (a class spec) or --ckpt_path (a trained prompted task), one of them")
    if not 0.0 < level < 1.0:
        raise ValueError(f"compositional --level must be in (0, 1) (e.g. 0.95), got {level}")
    for option, value in (("draws", draws), ("limit", limit), ("batch_size", batch_size), ("num_examples", num_examples),
                          ("image_size", image_size)):
        if value is not None and value < 1:
            raise ValueError(f"compositional --{option} must be >= 1, got {value}")
    check_writable(out, "compositional --out")
    if ckpt_path is not None:
        from diffclf.tasks.checkpoints import load_task

        model = load_task(ckpt_path)
    if not isinstance(model, PromptedTask) and evaluation != "cue_conflict":
        raise ValueError(f"compositional --evaluation {evaluation}: a {type(model).__name__} scores class ids, not "
                         "captions; give a prompted model (TextDiffusionClassifier, ClipClassifier, or a TextDiTClassifier "
                         "/ ContrastiveClassifier checkpoint); a 1000-class ImageNet model runs --evaluation cue_conflict")
    if precision is not None:
        try:
            model.set_scoring(precision=precision)
        except TypeError as err:
            raise ValueError(f"compositional --precision: {err}") from None
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device))
    model = model.to(dev).eval()
    if isinstance(model, PromptedTask):
        match = _match(model, draws)
    else:
        match = None
        if draws is not None and hasattr(model, "strategy"):
            # A class-conditional diffusion classifier: every one of the 207 classes on ``draws`` shared draws.
            from diffclf.strategies import Exhaustive

            model.strategy = Exhaustive(trials=draws)
    with torch.no_grad():
        if evaluation == "winoground":
            result = run_winoground(model, root, image_size, batch_size, limit, level, match, dev)
        elif evaluation == "binding":
            result = run_binding(model, root, split, tasks or list(DEFAULT_BINDING_TASKS), num_examples, seed,
                                 image_size, batch_size, level, match, dev)
        else:
            result = run_cue_conflict(model, root, templates, image_size, batch_size, limit, level, match, dev)
    record = {"evaluation": evaluation, "model": type(model).__name__, "checkpoint": ckpt_path,
              "hparams": _plain(dict(model.hparams)),
              "scoring": model.scoring.record(dev) if isinstance(getattr(model, "scoring", None), ScoringOptions) else None,
              "root": str(root), "draws": draws, "image_size": image_size, **provenance(dev), **result}
    path = Path(out) / f"{evaluation}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1))
    print(format_record(record))
    print(f"written to {path}")
    return record


def _plain(values: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(values, default=str))


def _rate(r: dict[str, Any]) -> str:
    return f"{100 * r['accuracy']:5.1f} [{100 * r['low']:5.1f}, {100 * r['high']:5.1f}]  ({r['correct']}/{r['total']})"


def format_record(record: dict[str, Any]) -> str:
    """The printed table of a record."""
    lines = []
    if record["evaluation"] == "winoground":
        lines.append(f"{'group':10s} {'text':30s} {'image':30s} {'group score':30s}")
        for g, rates in record["summary"].items():
            lines.append(f"{g:10s} " + " ".join(f"{_rate(rates[k]):30s}" for k in ("text", "image", "group")))
        if "summary_normalised" in record:
            lines.append("scores minus the unconditional caption's (DiffusionITM; the text score is unchanged):")
            for g, rates in record["summary_normalised"].items():
                lines.append(f"{g:10s} " + " ".join(f"{_rate(rates[k]):30s}" for k in ("text", "image", "group")))
    elif record["evaluation"] == "binding":
        lines.append(f"{'task':22s} {'accuracy [CI]':32s} p (two-sided)  significant")
        for name, r in record["tasks"].items():
            lines.append(f"{name:22s} {_rate(r):32s} {r['p_value']:.2e}       {'yes' if r['significant'] else 'no'}")
    else:
        lines.append(f"shape accuracy {100 * record['shape_accuracy']:.1f}%, texture accuracy "
                     f"{100 * record['texture_accuracy']:.1f}%, shape bias {record['shape_bias']:.3f} "
                     f"[{record['bias_low']:.3f}, {record['bias_high']:.3f}], p = {record['p_value']:.2e} against 0.5 "
                     f"(n = {record['n']})")
    return "\n".join(lines)
