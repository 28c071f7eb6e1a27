"""The CLIP task: zero-shot CLIP (Radford et al. 2021) as the contrastive baseline on diffclf's data modules.

It scores the data's class names through prompts (:class:`PromptedTask`), each class by the cosine between
the image and its prompt-ensembled text features (:class:`diffclf.models.clip.ClipZeroShot`), and is tested
exactly like the other kinds: the same metrics and records (``kind="contrastive"``), which the report shows
beside the others but keeps out of the effective-robustness fit (that line is fitted on discriminative models).
Nothing is trained and there is no diffclf checkpoint: the weights are the CLIP folder's, so ``test`` and
``predict`` run without ``--ckpt_path``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from diffclf.models.clip import DTYPES, ClipFolder, ClipZeroShot, encode_prompts, image_features, load_clip
from diffclf.tasks.base import Scored, check_ci_level
from diffclf.tasks.zero_shot import PromptedTask, caption_table


class ClipClassifier(PromptedTask):
    """Zero-shot CLIP from a local transformers ``CLIPModel`` folder (images in [-1, 1]).

    Args:
        pretrained: the folder (``save_pretrained`` of a ``CLIPModel`` and its ``CLIPProcessor``:
            ``config.json``, weights, tokenizer, ``preprocessor_config.json``).
        num_classes: the data's class count, linked by the CLI; zero-shot scores the data's class names,
            so the label space (and K) always come from the data.
        templates: a template preset (``cifar10``, ``imagenet``, ``photo``) or a file; None: the data set's
            own preset (``photo`` where none is shipped).
        prompt_file: an official-format prompts CSV instead of templates.
        class_names: names the prompts use instead of the data's (a file, or a preset such as ``imagenet_clip``).
        text_cache: the class text-feature cache file (default: ``$DIFFCLF_CACHE/text/<hash>.safetensors``).
        dtype: the image tower's dtype; ``float16`` / ``bfloat16`` need a CUDA device.
        ci_level: level of the Clopper-Pearson interval reported by ``test``.
        results_dir: where ``test`` writes ``results.json`` (default: the logger's directory).
        results_file: a JSON Lines file every ``test`` run appends one record to.
        label: the name the report gives this model (default: the folder's name).
        calibration: a calibration file from ``diffclf calibrate`` (a temperature fitted on non-test
            images) that maps the logits to ``p(c|x)``; without it ``p(c|x)`` is their softmax.
    """

    # No diffclf checkpoint carries CLIP's weights; the folder is the model.
    weight_hparams: ClassVar[frozenset[str]] = frozenset({"pretrained"})
    kind: ClassVar[str] = "contrastive"

    def __init__(
        self,
        pretrained: str | None = None,
        num_classes: int | None = None,
        templates: str | None = None,
        prompt_file: str | None = None,
        class_names: str | None = None,
        text_cache: str | None = None,
        dtype: Literal["float32", "float16", "bfloat16"] = "float32",
        ci_level: float = 0.95,
        results_dir: str | None = None,
        results_file: str | None = None,
        label: str | None = None,
        calibration: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if not pretrained:
            raise ValueError("model.init_args.pretrained: give a local CLIPModel folder "
                             "(e.g. openai/clip-vit-large-patch14 saved with save_pretrained)")
        check_ci_level(ci_level)
        self.clip: ClipFolder = load_clip(pretrained)
        self.zero_shot: ClipZeroShot | None = None

    def setup(self, stage: str) -> None:
        """Prompts for the data's class names and the classifier over them (text features come later,
        on the run's device)."""
        super().setup(stage)
        hp = self.hparams
        self.zero_shot = ClipZeroShot(self.clip, self.prompts, hp.text_cache, hp.dtype)

    def rows_per_class(self) -> list[int]:
        """One conditioning row per class: CLIP ensembles a class's prompts in embedding space."""
        return [1] * len(self.prompts.prompts)

    def prepare(self) -> None:
        """Refuse half precision off the GPU; encode (or read) the class text features before the first
        batch, so that no batch is charged for them."""
        if self.hparams.dtype != "float32" and self.device.type != "cuda":
            raise ValueError(f"model.init_args.dtype {self.hparams.dtype} needs a CUDA device (this run is on "
                             f"{self.device.type}); use float32")
        self.zero_shot.class_features()

    def on_test_start(self) -> None:
        super().on_test_start()
        self.prepare()

    def on_predict_start(self) -> None:
        super().on_predict_start()
        self.prepare()

    def forward(self, images: Tensor) -> Tensor:
        """Images in [-1, 1] → ``(B, K)`` logits over the label space."""
        return self.zero_shot(images)

    @torch.no_grad()
    def match(self, images: Tensor, captions: Sequence[Sequence[str]], keys: Tensor) -> Tensor:
        """``(B, M)`` image-caption scores, ``logit_scale.exp() * cos(image, caption)``: row ``b`` scores image
        ``b`` against each of its captions (Winoground, binding tasks). ``keys`` are unused (CLIP draws nothing)."""
        flat, rows = caption_table(captions, len(images), images.device)
        text = F.normalize(encode_prompts(self.clip.model, self.clip.tokenizer, flat), dim=-1)
        image = image_features(self.clip.model, self.clip.preprocess, images, DTYPES[self.hparams.dtype])
        rows = rows.to(image.device)
        sims = (image.unsqueeze(1) * text.to(image.device)[rows]).sum(-1)
        return self.clip.model.logit_scale.float().exp() * sims

    def classify(self, images: Tensor, index: Tensor) -> Scored:
        """One image-tower forward per image; class ``k`` is row ``k``, so the logits are the scores."""
        logits = self(images).float()
        return Scored(scores=logits, logits=logits,
                      forwards=torch.ones(images.shape[0], dtype=torch.long, device=logits.device))

    def result_context(self) -> dict[str, Any]:
        """Record fields of this run beside the metrics (see ``ClassifierTask.finish_test``)."""
        hp = self.hparams
        seed = os.environ.get("PL_GLOBAL_SEED")
        return {
            "model": hp.label or Path(hp.pretrained).name,
            "checkpoint": hp.pretrained,
            "strategy": "clip-zero-shot",
            "seed": int(seed) if seed is not None else None,
            "num_classes": len(self.prompts.classes) if self.prompts is not None else hp.num_classes,
            "clip_fingerprint": self.clip.fingerprint,
            "dtype": hp.dtype,
            **self.prompt_record(),
            "ci_level": hp.ci_level,
            "results_dir": hp.results_dir,
            "results_file": hp.results_file,
        }
