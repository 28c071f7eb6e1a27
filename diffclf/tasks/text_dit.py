"""The two text-image kinds diffclf trains itself (``diffclf.models.text_dit``): fit on captioned data, then
classify zero-shot through prompts of the data's class names, or score free-text captions (``match``).

- :class:`TextDiTClassifier` (``kind = "generative"``): a text-conditional DiT trained as
  ``DiffusionClassifier`` trains its DiT (eps loss, caption dropout to the empty caption with seeded per-rank
  draws, EMA, AdamW), and a classifier as ``TextDiffusionClassifier`` is one (every prompt row scored by the
  EMA model on shared draws through ``Scorer`` and the configured strategy).
- :class:`ContrastiveClassifier` (``kind = "contrastive"``): a CLIP-style dual encoder trained with the
  symmetric InfoNCE loss, classifying by the cosine to prompt-ensembled class embeddings (CLIP's recipe).

Data contract while fitting: batches ``(images, caption_ids, indices)`` where ``caption_ids`` index the data
module's ``captions``, whose words are in its ``vocabulary``. The vocabulary is saved in the hyperparameters,
so a checkpoint is self-contained: ``test`` needs no training data, only the prompts' words.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from diffclf.diffusion.hybrid import caption_candidates, elbo_cross_entropy
from diffclf.diffusion.losses import (
    LOSS_WEIGHTINGS,
    LossWeighting,
    diffusion_loss,
    loss_weights,
    training_draws,
    training_generator,
)
from diffclf.diffusion.schedule import NoiseSchedule
from diffclf.diffusion.scoring import Denoiser, Scorer, ScoringOptions
from diffclf.models.clip import ensemble_prompts
from diffclf.models.ema import make_ema
from diffclf.models.prompts import Prompts
from diffclf.models.text_dit import (
    ContrastiveModel,
    TextDiT,
    TextFeatures,
    WordTokenizer,
    create_text_dit,
    info_nce,
)
from diffclf.strategies import Exhaustive, Strategy
from diffclf.tasks.base import Scored, check_ci_level
from diffclf.tasks.diffusion import (
    check_hybrid,
    conditioning_groups,
    describe_strategy,
    elbo_scored,
    ema_as_training_weights,
    per_index_noise,
    scheduled_adamw,
    scoring_options,
    set_data_epoch,
    step_training_key,
    update_ema_after_step,
    uses_pixels,
)
from diffclf.tasks.optim import LRSchedule
from diffclf.tasks.zero_shot import DenoisingPromptedTask, PromptedTask, caption_table


class CaptionedTask(PromptedTask):
    """What the two kinds share: the vocabulary (taken from the data when fitting starts, kept in the
    hyperparameters), caption ids → tokens while fitting, prompts → tokens while classifying, AdamW with the
    project's learning-rate schedules.

    Subclasses save ``vocabulary``, ``max_tokens``, the optimizer options and ``PromptedTask``'s, and implement
    :meth:`build` (the networks, once the vocabulary is known).
    """

    def __init__(self) -> None:
        super().__init__()
        self.caption_tokens: Tensor | None = None
        self.prompt_tokens: Tensor | None = None
        self._tokenizer: WordTokenizer | None = None
        # Prompt encodings of the current setup (reset there): the weights do not change while classifying.
        self._prompt_states: tuple[torch.device, Any] | None = None
        self._class_embeddings: Tensor | None = None

    def build(self) -> None:
        """Create the networks from the hyperparameters (``vocabulary`` is set)."""
        raise NotImplementedError

    @property
    def tokenizer(self) -> WordTokenizer:
        hp = self.hparams
        tok = self._tokenizer
        if tok is None or tok.vocabulary != tuple(hp.vocabulary) or tok.max_tokens != hp.max_tokens:
            self._tokenizer = WordTokenizer(hp.vocabulary, hp.max_tokens)
        return self._tokenizer

    def setup(self, stage: str) -> None:
        """Fit/validate: the vocabulary (when not set) and the caption table from the data. Test/predict:
        ``PromptedTask``'s prompts and label space, tokenised now so an unknown word fails before any batch."""
        trainer = self._trainer
        dm = getattr(trainer, "datamodule", None) if trainer is not None else None
        name = type(self).__name__
        if stage in ("fit", "validate"):
            captions = getattr(dm, "captions", None)
            if captions is None:
                raise ValueError(f"{name} trains on captioned data: the data module needs `captions` and `vocabulary` "
                                 "(e.g. diffclf.data.ScenesDataModule)")
            if self.hparams.vocabulary is None:
                vocabulary = getattr(dm, "vocabulary", None)
                if vocabulary is None:
                    raise ValueError(f"{name}: the data module has captions but no `vocabulary`; give model.init_args.vocabulary")
                self.hparams.vocabulary = [str(w) for w in vocabulary]
                self.build()
            self.caption_tokens = self.tokenizer.tokenize(list(captions))
            return
        if self.hparams.vocabulary is None:
            raise ValueError(f"{name} has no vocabulary, so no trained weights: give --ckpt_path of a trained checkpoint")
        super().setup(stage)
        hp = self.hparams
        if hp.templates is None and hp.prompt_file is None:
            # The shipped presets are English photo captions ("a photo of a {}."); a model trained on its own small
            # vocabulary is asked for its class names as they are (a caption label space: the captions themselves).
            self.prompts = Prompts(self.prompts.classes, tuple((n,) for n in self.prompts.classes), "class names")
            self.set_rows(self.rows_per_class())
        self._prompt_states, self._class_embeddings = None, None
        try:
            self.prompt_tokens = self.tokenizer.tokenize(self.prompts.flat)
        except ValueError as err:
            raise ValueError(f"prompts {self.prompts.source}: {err}; give model.init_args.templates (or "
                             "prompt_file) in the model's words") from None

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Name the task class in every checkpoint, also one written outside the CLI: the readers'
        fallback for files without one (``diffclf.tasks.checkpoints.task_class``) takes ``ema.*`` weights
        for a ``DiffusionClassifier``."""
        cls = type(self)
        checkpoint.setdefault("hyper_parameters", {}).setdefault("_class_path", f"{cls.__module__}.{cls.__name__}")

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        ema_as_training_weights(checkpoint)  # a published TextDiT; a no-op for the contrastive model

    def tokens_of(self, caption_ids: Tensor) -> Tensor:
        """``(B, L)`` tokens of the data's captions ``caption_ids``."""
        if self.caption_tokens is None:
            raise RuntimeError("no caption table: setup('fit') or setup('validate') builds it from the data")
        if self.caption_tokens.device != caption_ids.device:  # once: every step then gathers on its device
            self.caption_tokens = self.caption_tokens.to(caption_ids.device)
        return self.caption_tokens[caption_ids]

    def on_train_epoch_start(self) -> None:
        set_data_epoch(self)

    def _check_channels(self, images: Tensor) -> None:
        if images.shape[1] != self.hparams.in_channels:
            raise ValueError(f"the model takes {self.hparams.in_channels}-channel images but the data gives "
                             f"{tuple(images.shape[1:])}; set model.init_args.in_channels")

    def base_context(self) -> dict[str, Any]:
        """Record fields both kinds write."""
        hp = self.hparams
        return {
            "vocabulary_size": len(hp.vocabulary) if hp.vocabulary is not None else None,
            "num_classes": self.label_space.num_classes if self.label_space is not None else hp.num_classes,
            **self.prompt_record(),
            "ci_level": hp.ci_level,
            "results_dir": hp.results_dir,
            "results_file": hp.results_file,
        }


class TextDiTClassifier(CaptionedTask, DenoisingPromptedTask):
    """A text-conditional DiT (``diffclf.models.text_dit.TextDiT``) trained on captioned images, classifying
    zero-shot as a diffusion classifier.

    Args:
        model: a preset of ``TEXT_DIT_PRESETS`` (``TextDiT-T/2``, ``TextDiT-T/4``, ``TextDiT-M/*``).
        input_size, in_channels: the images the model sees (pixels).
        num_classes: the data's model-class count, linked by the CLI; classification takes the data's names.
        vocabulary: the words the model knows; None: the training data's ``vocabulary`` (then saved here).
        max_tokens: token sequence length, ``<bos>`` included (the scenes' longest caption has 16 words).
        learn_sigma: also predict the variance, trained with DiT's VLB term.
        model_kwargs: overrides of the preset (``{"depth": 2}``).
        caption_dropout_prob: probability of training on the empty caption instead (classifier-free guidance);
            the mask is drawn from the step's seeded stream (``diffclf.diffusion.losses.training_draws``).
        lr, weight_decay, betas, warmup_steps, lr_schedule, lr_final_ratio, ema_decay, ema_warmup,
            num_timesteps, beta_start, beta_end, val_timesteps: as ``DiffusionClassifier``.
        cond_lr_mult: learning-rate multiplier of the word-embedding table (``DiffusionClassifier``'s for its
            class table): the words start at std 0.02 and otherwise need hundreds of steps to steer the image.
        hybrid_weight, hybrid_images, hybrid_captions, hybrid_temperature: ``DiffusionClassifier``'s hybrid
            objective with captions for classes: the cross-entropy of each of the batch's first ``hybrid_images``
            images' own caption against ``hybrid_captions - 1`` captions of other batch images that are false of
            it (``diffclf.diffusion.hybrid.caption_candidates``; the data's ``scene_captions`` say which are
            true), on the image's own ``(t, eps)``. Small objects on a plain background make the caption a tiny
            part of the eps loss, and eps training alone left the conditioning unlearned at this budget.
        loss_weighting: ``eps`` (DDPM's simple loss) or ``velocity`` (the v-prediction loss, eps-MSE / abar_t;
            ``diffclf.diffusion.losses.loss_weights``): it weighs the noisy timesteps, where only the caption
            says what to draw; score such a model with ``scoring.weighting: velocity``. On the generated scenes it
            did not make the caption steer more (``benchmarks/results/compositional/README.md``).
        templates, prompt_file, class_names: the prompts (``PromptedTask``), in the model's words; with neither
            templates nor a prompt file the prompts are the class names as they are (the shipped presets say
            "a photo of a ...", words a model trained on scenes never saw).
        combine: several prompts of a class: ``error`` (each draw one template, every ``V`` neighbouring timesteps
            all of them) or ``best`` (each prompt a candidate, a class takes its best), as ``TextDiffusionClassifier``.
        strategy, scoring, seed, ci_level, results_dir, results_file, label, calibration: as
            ``DiffusionClassifier`` (``scoring.compile`` is not supported here).
    """

    weight_hparams: ClassVar[frozenset[str]] = frozenset({
        "model", "input_size", "in_channels", "vocabulary", "max_tokens", "learn_sigma", "model_kwargs",
        "num_timesteps", "beta_start", "beta_end",
    })
    kind: ClassVar[str] = "generative"

    def __init__(
        self,
        model: str = "TextDiT-T/2",
        input_size: int = 32,
        in_channels: int = 3,
        num_classes: int | None = None,
        vocabulary: list[str] | None = None,
        max_tokens: int = 24,
        learn_sigma: bool = False,
        model_kwargs: dict[str, Any] | None = None,
        caption_dropout_prob: float = 0.1,
        lr: float = 1e-4,
        cond_lr_mult: float = 1.0,
        hybrid_weight: float = 0.0,
        hybrid_images: int = 16,
        hybrid_captions: int = 8,
        hybrid_temperature: float = 1.0,
        loss_weighting: LossWeighting = "eps",
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_steps: int = 0,
        lr_schedule: LRSchedule = "constant",
        lr_final_ratio: float = 0.0,
        ema_decay: float = 0.9999,
        ema_warmup: bool = False,
        num_timesteps: int = 1000,
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        val_timesteps: list[int] | None = None,
        templates: str | None = None,
        prompt_file: str | None = None,
        class_names: str | None = None,
        combine: Literal["error", "best"] = "error",
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
        if not 0.0 <= caption_dropout_prob < 1.0:
            raise ValueError(f"model.caption_dropout_prob must be in [0, 1), got {caption_dropout_prob}")
        if not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"model.ema_decay must be in [0, 1), got {ema_decay}")
        check_hybrid(hybrid_weight, hybrid_images, None, hybrid_temperature, cond_lr_mult)
        if loss_weighting not in LOSS_WEIGHTINGS:
            raise ValueError(f"model.loss_weighting must be one of {', '.join(LOSS_WEIGHTINGS)}; got {loss_weighting!r}")
        if hybrid_captions < 2:
            raise ValueError(f"model.hybrid_captions must be >= 2 (the own caption and one other), got {hybrid_captions}")
        if combine not in ("error", "best"):
            raise ValueError(f"model.init_args.combine must be error or best; got {combine!r}")
        if self.scoring.compile:
            raise ValueError("model.init_args.scoring.compile is not supported by TextDiTClassifier; turn it off")
        if self.scoring.recheck:
            raise ValueError("model.init_args.scoring.recheck is not supported by TextDiTClassifier; set it to 0")
        self.schedule = NoiseSchedule(num_timesteps, beta_start, beta_end)
        self.val_timesteps = list(val_timesteps or [50, 250, 500, 750, 950])
        if any(not 0 <= t < num_timesteps for t in self.val_timesteps):
            raise ValueError(f"model.val_timesteps must lie in [0, {num_timesteps}), got {self.val_timesteps}")
        self.strategy: Strategy = strategy if strategy is not None else Exhaustive(trials=100)
        self.dit: TextDiT | None = None
        self.ema: TextDiT | None = None
        self._scorer: Scorer | None = None
        self._table: TextFeatures | None = None
        self._true_captions: list[frozenset[int]] | None = None
        if vocabulary is not None:
            self.build()

    def build(self) -> None:
        hp = self.hparams
        self.dit = create_text_dit(hp.model, self.tokenizer.size, input_size=hp.input_size, in_channels=hp.in_channels,
                                   max_tokens=hp.max_tokens, learn_sigma=hp.learn_sigma, **(hp.model_kwargs or {}))
        self.ema = make_ema(self.dit)

    def _check_input(self, x: Tensor) -> None:
        want = (self.hparams.in_channels, self.hparams.input_size, self.hparams.input_size)
        if tuple(x.shape[1:]) != want:
            raise ValueError(f"the TextDiT expects images (C, H, W) = {want} but the data gives {tuple(x.shape[1:])}; "
                             "set model.init_args.input_size / in_channels (or the data's image size) to agree")

    # ------------------------------------------------------------------ training
    def setup(self, stage: str) -> None:
        super().setup(stage)
        if stage == "fit" and self.hparams.hybrid_weight > 0:
            dm = getattr(self._trainer, "datamodule", None)
            sets = getattr(dm, "scene_captions", {}).get("train") if dm is not None else None
            if sets is None:
                raise ValueError("model.hybrid_weight > 0 needs the data's true captions of every training item "
                                 "(`scene_captions['train']`, e.g. diffclf.data.ScenesDataModule); set hybrid_weight 0")
            self._true_captions = [frozenset(s) for s in sets]

    def training_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> Tensor:
        images, caption_ids, index = batch
        self._check_input(images)
        key = step_training_key(self, self.hparams.seed, batch_idx)
        t, noise, drop = training_draws(key, images.shape, self.schedule.num_timesteps,
                                        self.hparams.caption_dropout_prob, images.device, images.dtype)
        x_t = self.schedule.q_sample(images, t, noise)
        out = self.dit(x_t, t, self.tokens_of(caption_ids), force_drop_ids=drop)  # drop: caption -> empty caption
        losses = diffusion_loss(out, images, x_t, t, noise, self.schedule, self.hparams.learn_sigma)
        loss = losses["loss"]
        if self.hparams.loss_weighting != "eps":
            weights = loss_weights(t, self.schedule, self.hparams.loss_weighting)
            loss = (weights * losses["mse"]).mean() + losses["vb"]
        if self.hparams.hybrid_weight > 0:
            loss = loss + self.hparams.hybrid_weight * self._hybrid_loss(key, x_t, t, noise, caption_ids, index)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training loss became {loss.item()} at global step {self.global_step} "
                                     f"(epoch {self.current_epoch}, batch {batch_idx})")
        self.log("train/loss", loss, prog_bar=True, batch_size=images.shape[0])
        return loss

    def _hybrid_loss(self, key: tuple[int, ...], x_t: Tensor, t: Tensor, noise: Tensor, caption_ids: Tensor,
                     index: Tensor) -> Tensor:
        """Cross-entropy on the ELBO logits of the batch's first ``hybrid_images`` images over their own caption and
        false ones (``caption_candidates``), on their own draws; the step's ``hybrid`` stream picks the negatives."""
        hp = self.hparams
        if self._true_captions is None:
            raise RuntimeError("no true-caption sets: setup('fit') reads them from the data")
        m = min(hp.hybrid_images, x_t.shape[0])
        true = [self._true_captions[i] for i in index[:m].tolist()]
        cands = caption_candidates(caption_ids[:m], true, caption_ids, hp.hybrid_captions,
                                   training_generator(key, "hybrid", "cpu"))
        channels = x_t.shape[1]

        def denoise(x: Tensor, tt: Tensor, ids: Tensor) -> Tensor:
            return self.dit(x, tt, self.tokens_of(ids))[:, :channels]

        ce, err = elbo_cross_entropy(denoise, x_t[:m], t[:m], noise[:m], cands, hp.hybrid_temperature)
        self.log("train/hybrid_ce", ce, batch_size=m)
        self.log("train/hybrid_acc", (err.argmin(dim=1) == 0).float().mean(), batch_size=m)
        return ce

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        update_ema_after_step(self, self.ema, self.dit)

    def configure_optimizers(self) -> Any:
        table = self.dit.text_encoder.token_embedding.weight
        return scheduled_adamw(self, conditioning_groups(self.dit, self.hparams.lr, self.hparams.cond_lr_mult, table))

    def validation_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> None:
        """EMA eps-loss at fixed timesteps, noise fixed per image (as ``DiffusionClassifier``)."""
        images, caption_ids, index = batch
        self._check_input(images)
        noise = per_index_noise(index, images.shape[1:], self.hparams.seed).to(images)
        tokens = self.tokens_of(caption_ids)
        total = torch.zeros((), device=images.device)
        for t_val in self.val_timesteps:
            t = torch.full((images.shape[0],), t_val, device=images.device, dtype=torch.long)
            eps = self.ema(self.schedule.q_sample(images, t, noise), t, tokens)[:, : images.shape[1]]
            mse = (eps.float() - noise.float()).pow(2).mean()
            self.log(f"val/loss_t{t_val}", mse, batch_size=images.shape[0], sync_dist=True)
            total = total + mse
        self.log("val/loss", total / len(self.val_timesteps), prog_bar=True, batch_size=images.shape[0], sync_dist=True)

    # ------------------------------------------------------------------ classification
    def _denoise(self, x_t: Tensor, t: Tensor, rows: Tensor) -> Tensor:
        return self.ema.denoise(x_t, t, self._table.select(rows))

    def scorer(self) -> Scorer:
        """The shared-noise scorer over the prompt rows (rebuilt when the strategy's draws or the device change)."""
        order, pairs = self.strategy.draw_order, self.strategy.antithetic
        s = self._scorer
        if s is None or not s.serves(self.strategy.max_draws, order, self.scoring.antithetic or pairs, self.device):
            self._scorer = Scorer(
                self._denoise, self.schedule, self.hparams.in_channels, max_draws=self.strategy.max_draws,
                seed=self.hparams.seed, num_classes=self.label_space.num_model_classes, order=order,
                variants=self.variants, **self.scoring.scorer_kwargs(self.device, pairs),
            )
        return self._scorer

    def elbo_scale(self) -> float:
        """Nats per unit of mean eps error, ``D * T / 2`` (see ``DiffusionClassifier.elbo_scale``)."""
        hp = self.hparams
        return hp.in_channels * hp.input_size * hp.input_size * self.schedule.num_timesteps / 2

    @torch.no_grad()
    def classify(self, images: Tensor, index: Tensor) -> Scored:
        """The strategy over every class's prompt rows on shared draws, the EMA model scoring."""
        self._check_input(images)
        if uses_pixels(self.strategy) and self.hparams.combine == "best":
            raise ValueError("model.strategy: a Prefilter proposes classes, but combine best scores prompts; "
                             "use combine error with a prefilter")
        maps = self.candidate_maps(images.device)
        self._table = self.prompt_states(images.device)
        result = self.strategy.classify(self.scorer(), images, index, maps.ids, images=images)
        return elbo_scored(result, maps, self.elbo_scale() / self.scoring.temperature)

    def prompt_states(self, device: torch.device) -> Any:
        """The EMA text encoder's states of the prompts, encoded once per setup and device (not per batch)."""
        if self._prompt_states is None or self._prompt_states[0] != device:
            self._prompt_states = (device, self.ema.encode_text(self.prompt_tokens.to(device)))
        return self._prompt_states[1]

    @property
    def match_schedule(self) -> NoiseSchedule:
        return self.schedule

    def model_inputs(self, images: Tensor) -> Tensor:
        self._check_input(images)
        return images

    def caption_denoiser(self, captions: list[str], device: torch.device) -> Denoiser:
        text = self.ema.encode_text(self.tokenizer.tokenize(captions).to(device))
        return lambda x_t, t, rows: self.ema.denoise(x_t, t, text.select(rows))

    def on_test_epoch_start(self) -> None:
        super().on_test_epoch_start()
        self.ema.eval()

    def result_context(self) -> dict[str, Any]:
        hp = self.hparams
        return {
            "model": hp.label or hp.model,
            "strategy": describe_strategy(self.strategy),
            "seed": hp.seed,
            "scoring": self.scoring.record(self.device, self.strategy.antithetic),
            "combine": hp.combine,
            **self.base_context(),
        }


class ContrastiveClassifier(CaptionedTask):
    """A CLIP-style dual encoder (``diffclf.models.text_dit.ContrastiveModel``) trained with InfoNCE on captioned
    images, classifying zero-shot by the cosine to each class's prompt-ensembled text embedding.

    Args:
        image_encoder: a timm model built from scratch (``resnet10t``).
        image_encoder_kwargs: further ``timm.create_model`` arguments (narrower stages for CPU runs).
        in_channels: image channels.
        num_classes: the data's model-class count, linked by the CLI.
        vocabulary, max_tokens: as ``TextDiTClassifier``.
        embed_dim, text_width, text_depth, text_heads: the joint space and the text encoder.
        lr, weight_decay, betas, warmup_steps, lr_schedule, lr_final_ratio: AdamW (CLIP: betas (0.9, 0.98),
            weight decay 0.2) and the schedule.
        templates, prompt_file, class_names: the prompts (``PromptedTask``), in the model's words (default: the
            class names as they are, as ``TextDiTClassifier``).
        ci_level, results_dir, results_file, label, calibration: as the other kinds.
    """

    trains_ema: ClassVar[bool] = False  # ``cli.py publish`` keeps its weights as they are
    weight_hparams: ClassVar[frozenset[str]] = frozenset({
        "image_encoder", "image_encoder_kwargs", "in_channels", "vocabulary", "max_tokens", "embed_dim", "text_width", "text_depth", "text_heads",
    })
    kind: ClassVar[str] = "contrastive"

    def __init__(
        self,
        image_encoder: str = "resnet10t",
        image_encoder_kwargs: dict[str, Any] | None = None,
        in_channels: int = 3,
        num_classes: int | None = None,
        vocabulary: list[str] | None = None,
        max_tokens: int = 24,
        embed_dim: int = 128,
        text_width: int = 128,
        text_depth: int = 2,
        text_heads: int = 4,
        lr: float = 5e-4,
        weight_decay: float = 0.2,
        betas: tuple[float, float] = (0.9, 0.98),
        warmup_steps: int = 0,
        lr_schedule: LRSchedule = "constant",
        lr_final_ratio: float = 0.0,
        templates: str | None = None,
        prompt_file: str | None = None,
        class_names: str | None = None,
        ci_level: float = 0.95,
        results_dir: str | None = None,
        results_file: str | None = None,
        label: str | None = None,
        calibration: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        check_ci_level(ci_level)
        self.net: ContrastiveModel | None = None
        if vocabulary is not None:
            self.build()

    def build(self) -> None:
        hp = self.hparams
        self.net = ContrastiveModel(self.tokenizer.size, hp.max_tokens, hp.image_encoder, hp.in_channels, hp.embed_dim,
                                    hp.text_width, hp.text_depth, hp.text_heads, hp.image_encoder_kwargs)

    def rows_per_class(self) -> list[int]:
        """One row per class: CLIP ensembles a class's prompts in embedding space."""
        return [1] * len(self.prompts.prompts)

    def _loss(self, batch: tuple[Tensor, Tensor, Tensor]) -> Tensor:
        images, caption_ids, _ = batch
        self._check_channels(images)
        return info_nce(self.net(images, self.tokens_of(caption_ids)), groups=caption_ids)

    def training_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> Tensor:
        loss = self._loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch[0].shape[0])
        self.log("train/logit_scale", self.net.scale().detach(), batch_size=batch[0].shape[0])
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> None:
        self.log("val/loss", self._loss(batch), prog_bar=True, batch_size=batch[0].shape[0], sync_dist=True)

    def configure_optimizers(self) -> Any:
        return scheduled_adamw(self, list(self.net.parameters()))

    def class_embeddings(self, device: torch.device) -> Tensor:
        """``(K, E)`` unit class embeddings: each prompt embedded, a class's prompts averaged and renormalised
        (CLIP's prompt ensembling, ``diffclf.models.clip.ensemble_prompts``)."""
        if self._class_embeddings is None or self._class_embeddings.device != device:
            text = self.net.encode_text(self.prompt_tokens.to(device))
            self._class_embeddings = ensemble_prompts(text, self.prompts.owners, len(self.prompts.prompts)).to(device)
        return self._class_embeddings

    @torch.no_grad()
    def classify(self, images: Tensor, index: Tensor) -> Scored:
        """One image-tower forward per image; logits ``scale * cos(image, class)``."""
        self._check_channels(images)
        logits = (self.net.scale() * self.net.encode_image(images) @ self.class_embeddings(images.device).T).float()
        return Scored(scores=logits, logits=logits,
                      forwards=torch.ones(images.shape[0], dtype=torch.long, device=logits.device))

    @torch.no_grad()
    def match(self, images: Tensor, captions: Sequence[Sequence[str]], keys: Tensor) -> Tensor:
        """``(B, M)`` ``scale * cos(image b, caption)`` over each image's captions; ``keys`` are unused."""
        self._check_channels(images)
        flat, rows = caption_table(captions, len(images), images.device)
        text = self.net.encode_text(self.tokenizer.tokenize(flat).to(images.device))
        image = self.net.encode_image(images)
        return self.net.scale() * (image.unsqueeze(1) * text[rows]).sum(-1)

    def result_context(self) -> dict[str, Any]:
        hp = self.hparams
        seed = os.environ.get("PL_GLOBAL_SEED")
        return {
            "model": hp.label or f"contrastive-{hp.image_encoder}",
            "strategy": "contrastive-zero-shot",
            "seed": int(seed) if seed is not None else None,
            **self.base_context(),
        }
