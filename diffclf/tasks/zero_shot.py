"""``PromptedTask``: what the zero-shot kinds (a text-to-image diffusion model, CLIP) share.

A zero-shot classifier has no classes of its own: it scores the *names* of the data's label space through
prompts. So its label space is the data's class names, and the "model ids" of the task base are the rows
of its conditioning table (the prompts, or one row per class when a class's prompts are merged): class ``k``
stands for its rows, and the base's machinery (a class takes the best of its ids' scores and the sum of
their probabilities) applies unchanged. ImageNet-A is then a 200-way problem over 200 names, ObjectNet a
113-way one over ObjectNet's names: the model never scores a class the data does not have.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from diffclf.data.label_spaces import LabelSpace
from diffclf.diffusion.scoring import Denoiser, Scorer
from diffclf.models.prompts import Prompts, build_prompts, dataset_templates, read_class_names
from diffclf.tasks.base import ClassifierTask


class PromptedTask(ClassifierTask):
    """Base of the zero-shot kinds: prompts from the data's class names, a label space over prompt rows.

    Subclasses save (at least) ``templates``, ``prompt_file``, ``class_names`` (a names file or preset that replaces
    the data's names in prompts, e.g. ``imagenet_clip``) and the base's hyperparameters, implement
    ``classify`` / ``result_context``, and call :meth:`set_rows` with how many conditioning rows each class has.
    """

    def __init__(self) -> None:
        super().__init__()
        self.data_space: LabelSpace | None = None
        self.prompts: Prompts | None = None

    @property
    def num_model_classes(self) -> int:
        """Rows of the conditioning table (before ``setup``: the data's class count the CLI linked)."""
        if self.label_space is not None:
            return self.label_space.num_model_classes
        return int(self.hparams.num_classes or 0)

    def setup(self, stage: str) -> None:
        """Prompts for the data's class names; the task's label space over their conditioning rows."""
        if stage == "fit":
            raise ValueError(f"{type(self).__name__} is a zero-shot classifier: it has nothing to fit; run test or predict")
        trainer = self._trainer
        dm = getattr(trainer, "datamodule", None) if trainer is not None else None
        space = getattr(dm, "label_space", None)
        if space is None:
            raise ValueError(f"{type(self).__name__} needs a data module with class names (its label_space) to build prompts")
        hp = self.hparams
        if hp.get("class_names"):
            names = read_class_names(hp.class_names, space.model_classes, space.num_model_classes)
            space = LabelSpace(names, space.model_classes, space.num_model_classes, space.name)
        self.data_space = space
        templates = hp.templates
        if templates is None and hp.prompt_file is None:
            templates = dataset_templates(getattr(dm, "name", None))
        self.prompts = build_prompts(space.names, templates, hp.prompt_file)
        self.set_rows(self.rows_per_class())

    def rows_per_class(self) -> list[int]:
        """Conditioning rows of each class (default: one per prompt)."""
        return [len(group) for group in self.prompts.prompts]

    def set_rows(self, counts: list[int]) -> None:
        """The label space over conditioning rows: class ``k`` stands for its ``counts[k]`` consecutive rows."""
        starts = [sum(counts[:k]) for k in range(len(counts))]
        groups = tuple(tuple(range(s, s + n)) for s, n in zip(starts, counts))
        self.label_space = LabelSpace(self.data_space.names, groups, sum(counts), self.data_space.name)

    def match(self, images: Tensor, captions: Sequence[Sequence[str]], keys: Tensor) -> Tensor:
        """``(B, M)`` scores of image ``b`` with each of its captions ``captions[b]``, higher = better match, for
        evaluations whose candidates are free text rather than a label space (Winoground, attribute binding).
        ``keys`` fix any random draws (images given one key are scored on the same draws)."""
        raise NotImplementedError

    def prompt_record(self) -> dict[str, Any]:
        """What a results record says about the prompts."""
        p = self.prompts
        return {"prompts": p.source if p is not None else None,
                "prompts_per_class": (p.per_class if p is not None else None)}


def caption_table(captions: Sequence[Sequence[str]], batch: int, device: torch.device) -> tuple[list[str], Tensor]:
    """The distinct captions (sorted: the rows of a text table) and ``(B, M)`` each image's rows in it; one caption
    list per image, all of one length (a ``(B, M)`` table of scores)."""
    lengths = {len(group) for group in captions}
    if len(captions) != batch or len(lengths) != 1 or 0 in lengths:
        raise ValueError(f"match needs one list of captions per image ({batch} images), all of one non-zero length; "
                         f"got {len(captions)} lists of lengths {sorted(lengths)}")
    flat = sorted({c for group in captions for c in group})
    row = {c: i for i, c in enumerate(flat)}
    return flat, torch.tensor([[row[c] for c in group] for group in captions], device=device)


class DenoisingPromptedTask(PromptedTask):
    """What the zero-shot *diffusion* kinds share (a pipeline folder, a text DiT trained here): a class's
    prompts combined by ``combine`` (``error``: cycled over the draws, the scorer's ``variants``; ``best``:
    each prompt a candidate; ``embedding``: one merged row, where the kind offers it) and ``match`` by
    denoising error on shared draws.

    Subclasses save ``combine``, ``seed`` and set ``self.scoring`` and ``self.strategy``, and implement
    :meth:`caption_denoiser` and :meth:`model_inputs`; ``self.match_schedule`` is their noise schedule.
    """

    #: The caption of the unconditional denoiser, the one classifier-free guidance trains and samples with: SD's
    #: empty prompt, a text DiT's ``<bos>`` alone. Image retrieval subtracts its error (``compositional``).
    null_caption: ClassVar[str] = ""

    def rows_per_class(self) -> list[int]:
        if self.hparams.combine == "best":
            return super().rows_per_class()
        if self.hparams.combine == "error" and self.prompts.per_class is None:
            raise ValueError("model.init_args.combine error needs as many prompts for every class (templates); "
                             "this prompt file has uneven rows: use combine best")
        return [1] * len(self.prompts.prompts)

    @property
    def variants(self) -> int:
        """Conditioning rows the scorer cycles through per candidate (templates in error space)."""
        return self.prompts.per_class if self.hparams.combine == "error" else 1

    def caption_denoiser(self, captions: list[str], device: torch.device) -> Denoiser:
        """``denoise(x_t, t, rows) -> eps`` conditioned on row ``rows[i]`` of ``captions``."""
        raise NotImplementedError

    def model_inputs(self, images: Tensor) -> Tensor:
        """Images in [-1, 1] → what the denoiser sees (pixels, or latents)."""
        raise NotImplementedError

    @torch.no_grad()
    def match(self, images: Tensor, captions: Sequence[Sequence[str]], keys: Tensor, draws: int | None = None) -> Tensor:
        """``(B, M)`` image-caption scores, minus the mean eps error of image ``b`` under each of its captions, every
        caption on the same ``draws`` draws (default: the strategy's ``max_draws``; Li et al. score Winoground on
        1000 even timesteps). The draws depend on ``keys`` (``(B,)``), so the two images of a Winoground example,
        given one key, are scored on the same noise and timesteps too."""
        x = self.model_inputs(images)
        flat, rows = caption_table(captions, len(images), x.device)
        n = int(self.strategy.max_draws if draws is None else draws)
        if n < 1:
            raise ValueError(f"draws must be >= 1 (draws per image and caption), got {draws}")
        scorer = Scorer(self.caption_denoiser(flat, x.device), self.match_schedule, x.shape[1], max_draws=n,
                        seed=self.hparams.seed, num_classes=len(flat), **self.scoring.scorer_kwargs(self.device))
        table = scorer.new_table(x, rows)
        scorer.score(table, x, keys.to(x.device), 0, n)
        return -table.mean_error()
