"""The zero-shot diffusion classifier: a text-to-image model scores each class's prompts (Li et al. 2023,
Clark & Jaini 2023).

Each image is encoded to latents once; every candidate class is scored on the *same* draws ``(t, eps)`` by
the eps error of the denoiser conditioned on its prompt's text embedding, through the same strategies
(Exhaustive, Adaptive, PairedTTest, Prefilter) and scorer as the class-conditional DiT. Several prompts per
class (templates) are combined in one of three ways (``combine``):

- ``error`` (default): each draw of a class uses one template, every ``V`` neighbouring timesteps all of them
  (the scorer's ``variants``); the mean over draws then estimates the template-averaged error, an ensemble in
  error space, at the cost of one prompt.
- ``embedding``: the templates' text embeddings are averaged into one conditioning per class.
- ``best``: each prompt is a candidate of its own and a class takes its best prompt (what the official code
  does with a prompt file that has several rows for a class).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from diffclf.diffusion.schedule import FlowSchedule, NoiseSchedule
from diffclf.diffusion.scoring import Denoiser, Scorer, ScoringOptions
from diffclf.models.text_cache import cached_embeddings
from diffclf.models.text_to_image import Conditioning, PredictionType, TextToImageModel, read_noise_bank
from diffclf.strategies import Exhaustive, Strategy
from diffclf.tasks.base import Scored, check_ci_level
from diffclf.tasks.diffusion import describe_strategy, elbo_scored, scoring_options, uses_pixels
from diffclf.tasks.zero_shot import DenoisingPromptedTask

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class TextDiffusionClassifier(DenoisingPromptedTask):
    """Zero-shot classification with a local Stable Diffusion (1.x/2.x) or SD3 (rectified flow) pipeline folder.

    Args:
        pretrained: the diffusers pipeline folder (``model_index.json``, ``unet/`` or ``transformer/``, ``vae/``,
            ``text_encoder/``, ``tokenizer/``, ``scheduler/``).
        num_classes: the data's model-class count (linked by the CLI); a zero-shot model scores the data's
            class *names*, so the label space is the data's whatever this says.
        templates: a template preset (``configs/prompts/<name>.txt``) or file; default the data set's own preset.
        prompt_file: an official-format prompts CSV (``prompt,classname,classidx``) instead of templates.
        class_names: the names prompts use instead of the data's: a file (one per class, or one per model class)
            or a preset of ``configs/prompts/names/`` (``imagenet_clip``: OpenAI's curated ImageNet names).
        combine: how several prompts of a class combine: ``error``, ``embedding`` or ``best`` (module docstring).
        text_cache: file for the text embeddings (default: one per prompts and folder under
            ``$DIFFCLF_CACHE``, ``~/.cache/diffclf``); refused when made by another encoder or for other prompts.
        prediction_type: ``auto`` (the scheduler's), or the target the model is known to predict, checked
            against the scheduler.
        dtype: the weights' dtype: ``auto`` is float16 on CUDA (as the official runs) and float32 elsewhere.
        noise_path: an official ``--noise_path`` noise bank (``(n, C, h, w)``; draw ``k`` = row ``k``, the same
            for every image), so a run uses exactly an official run's noise.
        strategy: how to spend denoiser calls (default: exhaustive, 100 draws).
        scoring: draws and error (``diffclf.diffusion.scoring.ScoringOptions``); ``error: l1`` is the paper's
            choice for CIFAR-10, Pets, Flowers and STL-10; ``weighting: exp`` Clark & Jaini's x0-space weights.
        seed: the draws of an image depend only on it and the image's dataset index.
        ci_level, results_dir, results_file, label, calibration: as for ``DiffusionClassifier``.
    """

    weight_hparams: ClassVar[frozenset[str]] = frozenset()
    kind: ClassVar[str] = "generative"

    def __init__(
        self,
        pretrained: str | None = None,
        num_classes: int | None = None,
        templates: str | None = None,
        prompt_file: str | None = None,
        class_names: str | None = None,
        combine: Literal["error", "embedding", "best"] = "error",
        text_cache: str | None = None,
        prediction_type: PredictionType = "auto",
        dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto",
        noise_path: str | None = None,
        strategy: Strategy | None = None,
        scoring: ScoringOptions | None = None,
        seed: int = 0,
        ci_level: float = 0.95,
        results_dir: str | None = None,
        results_file: str | None = None,
        label: str | None = None,
        calibration: str | None = None,
    ) -> None:
        super().__init__()
        self.scoring = scoring_options(scoring)
        self.save_hyperparameters(ignore=["strategy", "scoring"])
        self.hparams["scoring"] = asdict(self.scoring)
        check_ci_level(ci_level)
        if pretrained is None:
            raise ValueError("model.init_args.pretrained: give a local diffusers pipeline folder (SD 1.x/2.x or SD3)")
        if combine not in ("error", "embedding", "best"):
            raise ValueError(f"model.init_args.combine must be error, embedding or best; got {combine!r}")
        if self.scoring.flip_views:
            raise ValueError("model.init_args.scoring.flip_views: a zero-shot model was not trained on mirrored views of "
                             "these images; turn it off")
        if self.scoring.compile:
            raise ValueError("model.init_args.scoring.compile is not supported by TextDiffusionClassifier (it would be "
                             "recorded but not run); turn it off")
        if self.scoring.recheck:
            raise ValueError("model.init_args.scoring.recheck is not supported by TextDiffusionClassifier (it would be "
                             "recorded but not run); set it to 0")
        self.t2i = TextToImageModel(pretrained, torch.float32 if dtype == "auto" else DTYPES[dtype], prediction_type)
        self.strategy: Strategy = strategy if strategy is not None else Exhaustive(trials=100)
        self.noise_bank = read_noise_bank(noise_path) if noise_path is not None else None
        self.cond: Conditioning | None = None
        self._cond_on: tuple[torch.device, torch.dtype] | None = None
        self._scorer: Scorer | None = None
        self.text_cache_hit: bool | None = None

    # ------------------------------------------------------------------ prompts → conditionings
    def setup(self, stage: str) -> None:
        super().setup(stage)
        if self.hparams.dtype == "auto" and self.trainer.strategy.root_device.type == "cuda":
            self.t2i.to(torch.float16)
            self.t2i.dtype = torch.float16
        key = {"kind": "text-to-image-conditioning", "pipeline": self.t2i.pipeline, "prompts": self.prompts.flat,
               "fingerprint": self.t2i.fingerprint()}
        values, self.text_cache_hit = cached_embeddings(
            self.hparams.text_cache, key, lambda: self.t2i.encode_prompts(self.prompts.flat).tensors()
        )
        table = Conditioning.from_tensors(values)
        if self.hparams.combine == "embedding":
            starts = [sum(len(g) for g in self.prompts.prompts[:k]) for k in range(len(self.prompts.prompts))]
            table = table.merged([range(s, s + len(g)) for s, g in zip(starts, self.prompts.prompts)])
        self.cond, self._cond_on, self._scorer = table, None, None

    # ------------------------------------------------------------------ scoring
    def _denoise(self, x_t: Tensor, t: Tensor, rows: Tensor) -> Tensor:
        where = (x_t.device, self.t2i.dtype)
        if self._cond_on != where:
            self.cond, self._cond_on = self.cond.to(*where), where
        return self.t2i.eps(x_t, t, self.cond, rows)

    def scorer(self, latent_shape: tuple[int, ...]) -> Scorer:
        """The shared-noise scorer over the label space's candidate rows (rebuilt when the strategy changes)."""
        order, pairs = self.strategy.draw_order, self.strategy.antithetic
        s = self._scorer
        if s is None or not s.serves(self.strategy.max_draws, order, self.scoring.antithetic or pairs, self.device):
            bank = self.noise_bank
            if bank is not None and tuple(bank.shape[1:]) != tuple(latent_shape):
                raise ValueError(f"model.init_args.noise_path {self.hparams.noise_path}: its draws are "
                                 f"{tuple(bank.shape[1:])} but this model's latents are {tuple(latent_shape)}")
            self._scorer = Scorer(
                self._denoise, self.t2i.schedule, latent_shape[0], max_draws=self.strategy.max_draws,
                seed=self.hparams.seed, num_classes=self.label_space.num_model_classes, order=order,
                variants=self.variants, noise_bank=bank, **self.scoring.scorer_kwargs(self.device, pairs),
            )
        return self._scorer

    def elbo_scale(self, latent_shape: tuple[int, ...]) -> float:
        """Nats per unit of mean eps error, ``D * T / 2`` (see ``DiffusionClassifier.elbo_scale``)."""
        D = 1
        for n in latent_shape:
            D *= int(n)
        return D * self.t2i.schedule.num_timesteps / 2

    @torch.no_grad()
    def classify(self, images: Tensor, index: Tensor) -> Scored:
        """Latents once per image; the strategy over every class's conditioning rows on shared draws."""
        x = self.t2i.encode_images(images)
        shape = tuple(x.shape[1:])
        maps = self.candidate_maps(x.device)
        if uses_pixels(self.strategy) and self.hparams.combine == "best":
            raise ValueError("model.strategy: a Prefilter proposes classes, but combine best scores prompts; "
                             "use combine error or embedding with a prefilter")
        result = self.strategy.classify(self.scorer(shape), x, index, maps.ids, images=images)
        return elbo_scored(result, maps, self.elbo_scale(shape) / self.scoring.temperature)

    @property
    def match_schedule(self) -> NoiseSchedule | FlowSchedule:
        return self.t2i.schedule

    def model_inputs(self, images: Tensor) -> Tensor:
        return self.t2i.encode_images(images)

    def caption_denoiser(self, captions: list[str], device: torch.device) -> Denoiser:
        cond = self.t2i.encode_prompts(captions).to(device, self.t2i.dtype)
        return lambda x_t, t, rows: self.t2i.eps(x_t, t, cond, rows)

    def on_test_epoch_start(self) -> None:
        super().on_test_epoch_start()
        self.t2i.eval()

    def result_context(self) -> dict[str, Any]:
        hp = self.hparams
        return {
            "model": hp.label or Path(hp.pretrained).name,
            "pretrained": str(hp.pretrained),
            "pipeline": self.t2i.pipeline,
            "prediction_type": self.t2i.prediction_type,
            "strategy": describe_strategy(self.strategy),
            "seed": hp.seed,
            "scoring": self.scoring.record(self.device, self.strategy.antithetic),
            "combine": hp.combine,
            "noise_path": hp.noise_path,
            "dtype": str(self.t2i.dtype).removeprefix("torch."),
            "num_classes": self.label_space.num_classes if self.label_space is not None else hp.num_classes,
            **self.prompt_record(),
            "ci_level": hp.ci_level,
            "results_dir": hp.results_dir,
            "results_file": hp.results_file,
        }
