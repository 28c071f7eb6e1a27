"""The class-conditional DiT task: a trainable generative model and a Bayes classifier in one.

``fit`` trains the denoiser with the epsilon loss (plus DiT's VLB term when sigma is learned),
class dropout to the null class, and an EMA copy. ``test`` and ``predict`` classify with the EMA
weights through a selection strategy (``diffclf.strategies``) over the data's label space; the
bookkeeping around the scores is the task base's (``diffclf.tasks.base``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any, ClassVar

import torch
from lightning.pytorch import LightningModule
from torch import Tensor

from diffclf.data.label_spaces import label_space_logits, label_space_scores
from diffclf.diffusion.compiled import FrozenCompiled
from diffclf.diffusion.hybrid import elbo_cross_entropy, hybrid_candidates
from diffclf.diffusion.losses import (
    TimestepDensity,
    diffusion_loss,
    training_draws,
    training_generator,
    training_key,
)
from diffclf.diffusion.schedule import NoiseSchedule
from diffclf.diffusion.scoring import Scorer, ScoringOptions
from diffclf.models.checkpoints import read_checkpoint
from diffclf.models.dit import DiT, create_dit
from diffclf.models.ema import ema_decay_at, make_ema, update_ema
from diffclf.strategies import Classification, Exhaustive, Prefilter, Strategy
from diffclf.strategies.recheck import recheck_close_calls
from diffclf.tasks.base import CandidateMaps, ClassifierTask, Scored, best_of_ids, check_ci_level
from diffclf.tasks.optim import LRSchedule, lr_factor

# Hyperparameters that decide whether one DiT's weights fit another (``init_from`` checks them).
ARCH_HPARAMS = ("model", "input_size", "in_channels", "num_classes", "learn_sigma", "model_kwargs")


class DiffusionClassifier(ClassifierTask):
    """Class-conditional DiT: trainable generative model and Bayes classifier in one.

    Args:
        model: DiT preset name (``diffclf.models.dit.DIT_PRESETS``).
        input_size: spatial size the DiT sees (pixels, or latents when ``vae`` is set).
        in_channels: channels the DiT sees.
        num_classes: classes of the model; the CLI links it to the data's ``num_model_classes``.
        learn_sigma: predict the variance too (2C output channels), trained with DiT's VLB term.
        model_kwargs: overrides of the preset (e.g. ``{"depth": 4}``).
        pretrained: a DiT checkpoint (original ``.pt`` or a diffusers folder) to start from.
        init_from: a diffclf checkpoint (a training or a published one) whose EMA weights start this
            training run: a fine-tune or a warm restart with a new schedule. Its architecture must equal
            this model's. Copied in when ``fit`` starts, so resuming with ``--ckpt_path`` still restores
            the run's own weights, and evaluation never needs the file.
        vae: local SD-VAE folder; images are then encoded to latents (mean for scoring,
            a posterior sample for training).
        class_dropout_prob: probability of replacing the label by the null class while training.
        timestep_density, timestep_loc, timestep_scale: the training timesteps' density, ``uniform`` (DiT's)
            or ``logit_normal`` with that location and scale (``diffclf.diffusion.losses.sample_timesteps``);
            scoring keeps its own timesteps.
        hybrid_weight: weight of the cross-entropy on the shared-noise ELBO logits added to the eps loss
            (``diffclf.diffusion.hybrid``; 0 turns it off). It trains the class differences the classifier
            reads, which the eps loss learns late.
        hybrid_images, hybrid_classes: the first ``hybrid_images`` images of each batch (reusing their
            ``t`` and eps) against their true class and ``hybrid_classes - 1`` others at random (all classes
            when null): ``hybrid_images * hybrid_classes`` extra forwards per step.
        hybrid_temperature: the logits are ``-err / temperature`` with ``err`` summed over dimensions.
        cond_lr_mult: learning-rate multiplier of the class-embedding table, the only class-specific
            weights of a DiT.
        lr, weight_decay, betas, warmup_steps: AdamW with a linear warmup, then constant (DiT).
        lr_schedule, lr_final_ratio: ``cosine`` anneals the rate to ``lr * lr_final_ratio`` by the
            trainer's last step (short budgets); ``constant`` is DiT's.
        ema_decay, ema_warmup: EMA of the weights; evaluation and sampling use it.
        val_timesteps: fixed timesteps of the validation eps-loss, so curves compare across runs.
        strategy: how to spend denoiser calls when classifying (default: exhaustive, 100 draws).
        scoring: how draws are made and scored, how the denoiser runs and how errors become
            ``p(c|x)`` (``diffclf.diffusion.scoring.ScoringOptions``: design, noise, error, weighting,
            weight_rate, t_range, flip_views, batch_size, precision, compile, temperature), e.g.
            ``--model.init_args.scoring.error l1``. ``compile`` fuses the small elementwise ops of
            narrow DiTs (1.36x forwards/s for DiT-T/4 on one CPU core); ``flip_views`` only suits
            models trained with random horizontal flips.
        seed: the scoring draws of an image depend only on this seed and the image's dataset index; the
            training draws (t, eps, class-dropout mask) of a step only on it, the rank and the step
            (``diffclf.diffusion.losses.training_draws``: different on every rank, resume-exact).
            ``seed_everything`` sets the initial weights.
        ci_level: level of the Clopper-Pearson interval reported by ``test``.
        results_dir: where ``test`` writes ``results.json`` (default: the logger's directory).
        results_file: a JSON Lines file every ``test`` run appends one record to.
        sample_every_n_epochs: log a sample grid (one row per class) every n validation epochs
            (0 turns it off).
        sample_steps, sample_cfg_scale: sampler settings for those grids.
        label: the model's name in results files and reports (default: the preset or checkpoint).
        class_names: names of the model's classes; taken from the training data when not given and
            kept in checkpoints (exported as diffusers ``id2label``).
        calibration: a calibration file from ``diffclf calibrate`` (a temperature, or Platt scaling of the
            calls spent, fitted on non-test images for this checkpoint, strategy and scoring) that maps
            the ELBO logits to ``p(c|x)``; without it ``p(c|x)`` is their softmax (see :meth:`elbo_scale`).
    """

    weight_hparams: ClassVar[frozenset[str]] = frozenset({
        *ARCH_HPARAMS, "class_dropout_prob", "num_timesteps", "beta_start", "beta_end", "class_names",
    })
    kind: ClassVar[str] = "generative"

    def __init__(
        self,
        model: str = "DiT-S/2",
        input_size: int = 32,
        in_channels: int = 4,
        num_classes: int = 1000,
        learn_sigma: bool = False,
        model_kwargs: dict[str, Any] | None = None,
        pretrained: str | None = None,
        init_from: str | None = None,
        vae: str | None = None,
        class_dropout_prob: float = 0.1,
        timestep_density: TimestepDensity = "uniform",
        timestep_loc: float = 0.0,
        timestep_scale: float = 1.0,
        hybrid_weight: float = 0.0,
        hybrid_images: int = 16,
        hybrid_classes: int | None = None,
        hybrid_temperature: float = 1.0,
        cond_lr_mult: float = 1.0,
        lr: float = 1e-4,
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
        strategy: Strategy | None = None,
        scoring: ScoringOptions | None = None,
        seed: int = 0,
        ci_level: float = 0.95,
        results_dir: str | None = None,
        results_file: str | None = None,
        sample_every_n_epochs: int = 0,
        sample_steps: int = 50,
        sample_cfg_scale: float = 1.0,
        label: str | None = None,
        class_names: list[str] | None = None,
        calibration: str | None = None,
    ) -> None:
        super().__init__()
        # The scoring options are stored as a plain dict, so checkpoints load with weights_only.
        self.scoring = scoring_options(scoring)
        self.save_hyperparameters(ignore=["strategy", "scoring"])
        self.hparams["scoring"] = asdict(self.scoring)
        check_ci_level(ci_level)
        if not 0.0 <= class_dropout_prob < 1.0:
            raise ValueError(f"model.class_dropout_prob must be in [0, 1), got {class_dropout_prob}")
        if not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"model.ema_decay must be in [0, 1), got {ema_decay}")
        check_hybrid(hybrid_weight, hybrid_images, hybrid_classes, hybrid_temperature, cond_lr_mult)
        if sample_every_n_epochs and not 1 <= sample_steps <= num_timesteps:  # found only at the first grid
            raise ValueError(f"model.sample_steps must be in [1, {num_timesteps}] (DDIM steps of the sample grids), "
                             f"got {sample_steps}")
        self.schedule = NoiseSchedule(num_timesteps, beta_start, beta_end)
        self.codec = None
        if vae is not None:
            from diffclf.models.latents import LatentCodec, load_vae

            # Not a registered submodule: the VAE's weights stay in its own folder, not in every checkpoint.
            object.__setattr__(self, "codec", LatentCodec(load_vae(vae)))
        self.dit: DiT = self._build_dit()
        self.ema: DiT = make_ema(self.dit)
        self.strategy: Strategy = strategy if strategy is not None else Exhaustive(trials=100)
        self.val_timesteps = list(val_timesteps or [50, 250, 500, 750, 950])
        if any(not 0 <= t < num_timesteps for t in self.val_timesteps):
            raise ValueError(f"model.val_timesteps must lie in [0, {num_timesteps}), got {self.val_timesteps}")
        self.inputs_are_latents = False
        self._scorer: Scorer | None = None

    def _build_dit(self) -> DiT:
        hp = self.hparams
        if hp.pretrained is not None:
            from diffclf.models.formats import load_dit

            dit = load_dit(hp.pretrained, num_classes=hp.num_classes)
            self._check_pipeline_schedule(hp.pretrained)
            for name, want, got in (
                ("input_size", hp.input_size, dit.input_size),
                ("in_channels", hp.in_channels, dit.in_channels),
                ("learn_sigma", hp.learn_sigma, dit.learn_sigma),
            ):
                if want != got:
                    raise ValueError(
                        f"model.pretrained {hp.pretrained} has {name}={got} but model.{name}={want} was given"
                    )
            dit.class_dropout_prob = hp.class_dropout_prob
            dit.y_embedder.dropout_prob = hp.class_dropout_prob
            dit.train()
            return dit
        kwargs = dict(hp.model_kwargs or {})
        kwargs.setdefault("class_dropout_prob", hp.class_dropout_prob)
        return create_dit(
            hp.model,
            input_size=hp.input_size,
            in_channels=hp.in_channels,
            num_classes=hp.num_classes,
            learn_sigma=hp.learn_sigma,
            **kwargs,
        )

    def _check_pipeline_schedule(self, pretrained: str) -> None:
        """A diffusers folder names the schedule its model was trained with; scoring with another is wrong."""
        if not Path(pretrained).is_dir():
            return
        from diffclf.models.formats import read_pipeline_info

        info = read_pipeline_info(pretrained)
        theirs = info["schedule"]
        if theirs is not None and theirs != self.schedule.config():
            raise ValueError(
                f"model.pretrained {pretrained}: its scheduler was trained with {theirs} but the model is set to "
                f"{self.schedule.config()}; set model.num_timesteps/beta_start/beta_end to agree"
            )
        if self.hparams.class_names is None and info["id2label"]:
            labels = info["id2label"]
            self.hparams.class_names = [labels.get(i, str(i)) for i in range(self.hparams.num_classes)]

    # ------------------------------------------------------------------ data in model space
    def encode(self, images: Tensor, sample: bool) -> Tensor:
        """Pixels → what the DiT sees: identity in pixel space, SD-VAE latents otherwise."""
        if self.codec is None or self.inputs_are_latents:
            return images
        self.codec.to(images.device)
        with torch.no_grad():
            return self.codec.encode_sample(images) if sample else self.codec.encode_mean(images)

    def _check_input(self, x: Tensor) -> None:
        want = (self.hparams.in_channels, self.hparams.input_size, self.hparams.input_size)
        if tuple(x.shape[1:]) != want:
            raise ValueError(
                f"the DiT expects inputs of shape (C, H, W) = {want} but the data gives {tuple(x.shape[1:])}; "
                "set model.input_size / model.in_channels (or data.image_size) to agree"
            )

    # ------------------------------------------------------------------ training
    def _training_key(self, batch_idx: int) -> tuple[int, ...]:
        """The key of this micro-batch's training draws (``diffclf.diffusion.losses.training_key``).

        Made of the model's ``seed``, the world size, this process's global rank, the optimizer step
        (``global_step``) and the micro-batch's position within gradient accumulation. So ranks draw
        different timesteps, eps and dropout masks (with the global RNG every rank drew the same: Lightning
        seeds all ranks alike), a resumed run repeats the uninterrupted run's draws from its step on with no
        RNG state saved, and ``seed_everything`` still decides the initial weights and the data order.
        """
        return step_training_key(self, self.hparams.seed, batch_idx)

    def training_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> Tensor:
        images, labels, _ = batch
        key = self._training_key(batch_idx)
        if self.codec is not None and not self.inputs_are_latents:
            # As ``encode(images, sample=True)``, with the posterior sample drawn from this step's stream.
            self.codec.to(images.device)
            with torch.no_grad():
                x0 = self.codec.encode_sample(images, training_generator(key, "posterior", images.device))
        else:
            x0 = self.encode(images, sample=True)
        self._check_input(x0)
        dropout = self.dit.y_embedder.dropout_prob if self.dit.training else 0.0
        hp = self.hparams
        t, noise, drop = training_draws(
            key, x0.shape, self.schedule.num_timesteps, dropout, x0.device, x0.dtype,
            density=hp.timestep_density, loc=hp.timestep_loc, scale=hp.timestep_scale,
        )
        x_t = self.schedule.q_sample(x0, t, noise)
        out = self.dit(x_t, t, labels, force_drop_ids=drop)  # drop: label -> null class (None: no dropout)
        losses = diffusion_loss(out, x0, x_t, t, noise, self.schedule, hp.learn_sigma)
        loss = losses["loss"]
        if hp.hybrid_weight > 0:
            loss = loss + hp.hybrid_weight * self._hybrid_loss(key, x_t, t, noise, labels)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"training loss became {loss.item()} at global step {self.global_step} "
                f"(epoch {self.current_epoch}, batch {batch_idx}); the last good checkpoint was not overwritten"
            )
        self.log("train/loss", loss, prog_bar=True, batch_size=x0.shape[0])
        if self.hparams.learn_sigma:
            self.log("train/mse", losses["mse"].mean(), batch_size=x0.shape[0])
        return loss

    def _hybrid_loss(self, key: tuple[int, ...], x_t: Tensor, t: Tensor, noise: Tensor, labels: Tensor) -> Tensor:
        """Cross-entropy on the ELBO logits of the batch's first ``hybrid_images`` images, on their own draws
        (``diffclf.diffusion.hybrid``); candidates come from the step's ``hybrid`` stream, so resumes repeat them."""
        hp = self.hparams
        m = min(hp.hybrid_images, x_t.shape[0])
        cands = hybrid_candidates(labels[:m], hp.num_classes, hp.hybrid_classes,
                                  training_generator(key, "hybrid", x_t.device))
        channels = x_t.shape[1]

        def denoise(x: Tensor, tt: Tensor, y: Tensor) -> Tensor:
            keep = torch.zeros_like(y)  # explicit candidates: never the null class
            return self.dit(x, tt, y, force_drop_ids=keep)[:, :channels]

        ce, err = elbo_cross_entropy(denoise, x_t[:m], t[:m], noise[:m], cands, hp.hybrid_temperature)
        self.log("train/hybrid_ce", ce, batch_size=m)
        self.log("train/hybrid_acc", (err.argmin(dim=1) == 0).float().mean(), batch_size=m)
        return ce

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        update_ema_after_step(self, self.ema, self.dit)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        ema_as_training_weights(checkpoint)

    def on_train_epoch_start(self) -> None:
        set_data_epoch(self)

    def configure_optimizers(self) -> Any:
        return scheduled_adamw(self, conditioning_groups(self.dit, self.hparams.lr, self.hparams.cond_lr_mult))

    # ------------------------------------------------------------------ validation
    def validation_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> None:
        """EMA eps-loss at fixed timesteps with noise fixed per image, so curves are comparable."""
        images, labels, index = batch
        x0 = self.encode(images, sample=False)
        self._check_input(x0)
        noise = per_index_noise(index, x0.shape[1:], self.hparams.seed).to(x0)
        total = torch.zeros((), device=x0.device)
        for t_val in self.val_timesteps:
            t = torch.full((x0.shape[0],), t_val, device=x0.device, dtype=torch.long)
            eps = self.ema(self.schedule.q_sample(x0, t, noise), t, labels)[:, : x0.shape[1]]
            mse = (eps.float() - noise.float()).pow(2).mean()
            self.log(f"val/loss_t{t_val}", mse, batch_size=x0.shape[0], sync_dist=True)
            total = total + mse
        self.log("val/loss", total / len(self.val_timesteps), prog_bar=True, batch_size=x0.shape[0], sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        every = self.hparams.sample_every_n_epochs
        if every <= 0 or self.trainer.sanity_checking or (self.current_epoch + 1) % every:
            return
        if self.trainer.is_global_zero:
            path = Path(self.trainer.log_dir or ".") / "samples" / f"epoch{self.current_epoch:04d}.png"
            self.write_sample_grid(path, per_class=4)

    @torch.no_grad()
    def write_sample_grid(
        self, path: str | Path, per_class: int = 4, class_ids: list[int] | None = None, seed: int = 0
    ) -> Path:
        """One row per class from the EMA weights, written as a PNG (decoded when latent)."""
        from diffclf.diffusion.sampling import class_grid, save_image_grid

        classes = class_ids if class_ids is not None else list(range(min(self.hparams.num_classes, 16)))
        shape = (self.hparams.in_channels, self.hparams.input_size, self.hparams.input_size)
        gen = torch.Generator().manual_seed(seed)
        imgs = class_grid(
            self.ema, classes, per_class, shape, self.schedule, method="ddim",
            steps=self.hparams.sample_steps, cfg_scale=self.hparams.sample_cfg_scale,
            generator=gen, device=self.device,
        )
        if self.codec is not None:
            imgs = self.codec.to(imgs.device).decode(imgs)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_image_grid(imgs.clamp(-1, 1), path, nrow=per_class)
        return path

    def load_init_weights(self, path: str) -> None:
        """Copy a diffclf checkpoint's EMA weights into both the trained and the EMA DiT."""
        ckpt = read_checkpoint(path, option="model.init_from")
        ema = ckpt.prefixed("ema.")
        if not ema:
            raise ValueError(f"model.init_from {path}: no EMA weights (ema.*); expected a diffclf DiffusionClassifier checkpoint")
        theirs = {k: v for k, v in ckpt.hparams.items() if k in ARCH_HPARAMS}
        ours = {k: self.hparams[k] for k in theirs}
        if theirs != ours:
            diff = ", ".join(f"{k}={theirs[k]!r} (this model: {ours[k]!r})" for k in theirs if theirs[k] != ours[k])
            raise ValueError(f"model.init_from {path}: its architecture differs: {diff}")
        for target in (self.dit, self.ema):
            missing, unexpected = target.load_state_dict(ema, strict=False)
            if missing or unexpected:
                raise ValueError(
                    f"model.init_from {path}: weights do not fit this model (missing {missing[:3]}, "
                    f"unexpected {unexpected[:3]})"
                )

    # ------------------------------------------------------------------ classification
    def setup(self, stage: str) -> None:
        if stage == "fit" and self.hparams.init_from is not None:
            # Before Lightning restores a --ckpt_path (it does so after setup), so a resume wins.
            self.load_init_weights(self.hparams.init_from)
        super().setup(stage)
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        space = getattr(dm, "label_space", None)
        if self.hparams.class_names is None and space is not None and space.num_classes == self.hparams.num_classes:
            self.hparams.class_names = list(space.names)
        self.inputs_are_latents = getattr(dm, "input_space", "pixels") == "latents"

    def _denoise(self, x_t: Tensor, t: Tensor, y: Tensor) -> Tensor:
        if not self.scoring.compile:
            return self.ema(x_t, t, y)
        if getattr(self, "_compiled_ema", None) is None:
            # Not a registered submodule: checkpoints keep one copy of the weights under ``ema.``.
            object.__setattr__(self, "_compiled_ema", FrozenCompiled(self.ema))
        return self._compiled_ema(x_t, t, y)

    def scorer(self) -> Scorer:
        """The shared-noise scorer, sized for the strategy (rebuilt when the device or the strategy's draws
        or draw order change)."""
        order, pairs = self.strategy.draw_order, self.strategy.antithetic
        anti = self.scoring.antithetic or pairs
        if self._scorer is None or not self._scorer.serves(self.strategy.max_draws, order, anti, self.device):
            self._scorer = Scorer(
                self._denoise, self.schedule, self.hparams.in_channels, max_draws=self.strategy.max_draws,
                seed=self.hparams.seed, num_classes=self.hparams.num_classes, order=order,
                **self.scoring.scorer_kwargs(self.device, pairs),
            )
        return self._scorer

    @torch.no_grad()
    def run_strategy(self, images: Tensor, index: Tensor) -> Classification:
        """The strategy's result over the candidate model ids (per-draw errors and all), for analyses
        that need more than the label-space scores."""
        x = self.encode(images, sample=False)
        self._check_input(x)
        maps = self.candidate_maps(x.device)
        latent = self.codec is not None or self.inputs_are_latents
        if self.inputs_are_latents and uses_pixels(self.strategy):
            raise ValueError(
                "model.strategy: a Prefilter classifies pixels but this data gives cached latents; "
                "score the images through model.init_args.vae (the prefilter then sees the pixels) or drop the prefilter"
            )
        if not (self.scoring.flip_views and latent):
            scorer = self.scorer()
            return self._rechecked(self.strategy.classify(scorer, x, index, maps.ids, images=images), scorer, x, index)
        if self.inputs_are_latents:
            raise ValueError(
                "model.init_args.scoring.flip_views: the mirror image of cached latents is the encoding of the "
                "mirrored pixels, which an evaluation split of the cache does not give; score the images through "
                "model.init_args.vae or turn flip_views off"
            )
        # The mirror view of a latent model is the encoding of the mirrored image (the VAE is not
        # flip-equivariant, and training saw encoded mirror images), not the mirrored latents.
        scorer = self.scorer()
        with scorer.mirrored_views(x, self.encode(images.flip(-1), sample=False)):
            return self._rechecked(self.strategy.classify(scorer, x, index, maps.ids, images=images), scorer, x, index)

    def _rechecked(self, result: Classification, scorer: Scorer, x: Tensor, index: Tensor) -> Classification:
        """``result`` with its close calls re-scored in fp32 (``scoring.recheck``), where the scorer runs in bf16."""
        if self.scoring.recheck <= 0 or scorer.autocast_dtype is None:
            return result
        result, _ = recheck_close_calls(result, scorer, x, index, self.scoring.recheck)
        return result

    def elbo_scale(self) -> float:
        """Nats per unit of mean error: ``D * T / 2`` for ``D`` dimensions and ``T`` timesteps.

        The eps error is a mean over the ``D = C*H*W`` dimensions and over timesteps drawn uniformly,
        while the ELBO sums over both; Ho et al.'s simple loss gives every step the weight the bound gives
        its first one, ``beta_1 / (2 sigma_1^2 alpha_1 (1 - abar_1)) = 1 / (2 alpha_1) ~ 1/2`` per dimension
        (``sigma_t^2 = beta_t``). So ``-D T / 2 * err_c`` is ``log p(x|c)`` up to a constant in the units
        of log-likelihood (Li et al. eq. 3 with those units kept), where the mean error alone gives
        probabilities near uniform. The bound and its Monte Carlo estimate are not calibrated:
        ``diffclf calibrate`` fits a temperature on top, on images that are not the test split.
        """
        hp = self.hparams
        return hp.in_channels * hp.input_size * hp.input_size * self.schedule.num_timesteps / 2

    @torch.no_grad()
    def classify(self, images: Tensor, index: Tensor) -> Scored:
        """Label-space scores (a class takes the best of its model ids), logits of ``p(c|x)`` (ELBO gaps
        to the prediction on shared draws, see :meth:`Classification.logits` and :meth:`elbo_scale`; a
        class sums its ids' probabilities), and per class the best mean error and the most draws."""
        result = self.run_strategy(images, index)
        return elbo_scored(result, self.candidate_maps(result.forwards.device), self.elbo_scale() / self.scoring.temperature)

    def on_test_epoch_start(self) -> None:
        super().on_test_epoch_start()
        self.ema.eval()

    def result_context(self) -> dict[str, Any]:
        hp = self.hparams
        return {
            "model": hp.label or hp.pretrained or hp.model,
            "strategy": describe_strategy(self.strategy),
            "seed": hp.seed,
            "scoring": self.scoring.record(self.device, self.strategy.antithetic),
            "ci_level": hp.ci_level,
            "results_dir": hp.results_dir,
            "results_file": hp.results_file,
        }


def step_training_key(module: LightningModule, seed: int, batch_idx: int) -> tuple[int, ...]:
    """The key of a micro-batch's training draws: seed, world size, global rank, optimizer step and the
    micro-batch's place within gradient accumulation (``diffclf.diffusion.losses.training_key``)."""
    trainer = module._trainer
    world = trainer.world_size if trainer is not None else 1
    accumulate = trainer.accumulate_grad_batches if trainer is not None else 1
    micro = batch_idx % accumulate  # Lightning steps the optimizer after every ``accumulate`` batches
    return training_key(seed, world, module.global_rank, module.global_step, micro)


def ema_as_training_weights(checkpoint: dict[str, Any]) -> None:
    """A published checkpoint (``cli.py publish``) holds only the EMA weights (``ema.*``): copy them in as the
    training weights (``dit.*``) too, so loading is strict and a fine-tune starts from them."""
    state = checkpoint.get("state_dict", {})
    if any(k.startswith("ema.") for k in state) and not any(k.startswith("dit.") for k in state):
        state.update({"dit." + k[len("ema."):]: v.clone() for k, v in list(state.items()) if k.startswith("ema.")})


def set_data_epoch(module: LightningModule) -> None:
    """Tell the data module the epoch (its distributed training sampler's shuffle, caption rotation)."""
    dm = getattr(module.trainer, "datamodule", None)
    if dm is not None and hasattr(dm, "set_epoch"):
        dm.set_epoch(module.current_epoch)


def check_hybrid(weight: float, images: int, classes: int | None, temperature: float, cond_lr_mult: float) -> None:
    """One line per bad option of the hybrid objective and the conditioning rate, before any training."""
    if weight < 0:
        raise ValueError(f"model.hybrid_weight must be >= 0, got {weight}")
    if images < 1:
        raise ValueError(f"model.hybrid_images must be >= 1, got {images}")
    if classes is not None and classes < 2:
        raise ValueError(f"model.hybrid_classes must be null (all classes) or >= 2, got {classes}")
    if temperature <= 0:
        raise ValueError(f"model.hybrid_temperature must be > 0, got {temperature}")
    if cond_lr_mult <= 0:
        raise ValueError(f"model.cond_lr_mult must be > 0, got {cond_lr_mult}")


def conditioning_groups(
    dit: torch.nn.Module, lr: float, cond_lr_mult: float, table: torch.nn.Parameter | None = None
) -> list[torch.nn.Parameter] | list[dict[str, Any]]:
    """AdamW parameter groups: the conditioning's embedding table (default: DiT's class-embedding table; a
    TextDiT passes its word-embedding table) at ``lr * cond_lr_mult``, the rest at ``lr``.

    Adam moves every weight by about ``lr`` per step whatever its gradient, and DiT initialises the table at
    std 0.02, so at ``lr = 1e-3`` the class embedding needs hundreds of steps to matter beside the timestep
    embedding it is added to; a larger rate for the table alone speeds that up. With ``cond_lr_mult = 1``
    one group, as before, so the optimizer states of earlier training checkpoints still resume."""
    params = [p for p in dit.parameters() if p.requires_grad]
    table = dit.y_embedder.embedding_table.weight if table is None else table
    if cond_lr_mult == 1.0 or not table.requires_grad:
        return params
    return [{"params": [p for p in params if p is not table], "lr": lr}, {"params": [table], "lr": lr * cond_lr_mult}]


def update_ema_after_step(module: LightningModule, ema: torch.nn.Module, model: torch.nn.Module) -> None:
    """DiT's ``train.py`` update of ``ema`` towards ``model`` right after ``opt.step()``: call it from the
    module's ``optimizer_step``, after the step.

    Why there: Lightning calls ``optimizer_step`` once per optimizer step, so under ``accumulate_grad_batches`` k
    the EMA does not decay k times a step (0.9999 ** 4 = 0.9996: a four times shorter average) as it would in
    ``on_train_batch_end``; and it runs before the callbacks' ``on_train_batch_end``, so a checkpoint saved
    every N steps holds the EMA of step N, not of N - 1 (whose missing update a resume never made up).
    ``global_step`` counts completed steps, so this step is ``global_step + 1``, the count the decay's warmup
    has always used."""
    step = module.global_step + 1
    update_ema(ema, model, ema_decay_at(step, module.hparams.ema_decay, module.hparams.ema_warmup))


def scheduled_adamw(module: LightningModule, params: list[torch.nn.Parameter] | list[dict[str, Any]]) -> Any:
    """AdamW with the module's ``lr``, ``weight_decay``, ``betas``, a linear warmup of ``warmup_steps``, then a
    constant rate (DiT's) or a cosine to ``lr * lr_final_ratio`` by the trainer's last step. ``params``: the
    parameters, or parameter groups with their own ``lr`` (the schedule scales every group alike)."""
    hp = module.hparams
    opt = torch.optim.AdamW(params, lr=hp.lr, weight_decay=hp.weight_decay, betas=tuple(hp.betas))
    if hp.warmup_steps <= 0 and hp.lr_schedule == "constant":
        return opt
    total = module.trainer.estimated_stepping_batches if hp.lr_schedule == "cosine" else 0
    if hp.lr_schedule == "cosine" and not 0 < total < float("inf"):
        raise ValueError("model.lr_schedule=cosine needs a finite trainer.max_steps or trainer.max_epochs")
    args = (hp.warmup_steps, int(total), hp.lr_schedule, hp.lr_final_ratio)
    lr_factor(0, *args)  # validates the options before any training
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(step, *args))
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def elbo_scored(result: Classification, maps: CandidateMaps, scale: float) -> Scored:
    """A strategy's result over candidate ids as label-space scores: a class ranks by the best of its ids,
    its logit of ``p(c|x)`` is ``scale`` × the paired ELBO gaps of its ids, log-sum-exp'ed (the probability of
    all of them), and ``predict`` rows get each class's best mean error and most draws."""
    return Scored(
        scores=label_space_scores(result.rank_scores(), maps.groups),
        logits=label_space_logits(result.logits() * scale, maps.groups),
        forwards=result.forwards,
        columns={
            "mean_error": best_of_ids(result.mean_error, maps.groups),
            "num_draws": label_space_scores(result.num_draws, maps.groups),
        },
    )


def scoring_options(scoring: ScoringOptions | Mapping[str, Any] | None) -> ScoringOptions:
    """Options given as the dataclass, as a mapping (a checkpoint's saved hyperparameters), or not at all."""
    if scoring is None:
        return ScoringOptions()
    if isinstance(scoring, ScoringOptions):
        return scoring
    t_range = scoring.get("t_range")
    return ScoringOptions(**{**scoring, "t_range": tuple(t_range) if t_range is not None else None})


def uses_pixels(strategy: Strategy) -> bool:
    """Whether a strategy (or one it wraps) feeds the images to a pixel classifier (a ``Prefilter``)."""
    if isinstance(strategy, Prefilter):
        return True
    inner = getattr(strategy, "inner", None)
    return isinstance(inner, Strategy) and uses_pixels(inner)


def per_index_noise(index: Tensor, shape: tuple[int, ...] | torch.Size, seed: int) -> Tensor:
    """Gaussian noise that depends only on (seed, dataset index): stable across batching and ranks."""
    out = torch.empty((len(index), *shape))
    for i, idx in enumerate(index.tolist()):
        gen = torch.Generator().manual_seed((seed * 1_000_003 + 7919 * idx + 17) % (2**63))
        out[i] = torch.randn(tuple(shape), generator=gen)
    return out


def describe_strategy(strategy: Strategy) -> str:
    """A short, stable text of the strategy and its arguments, for results files."""
    args = {k: v for k, v in vars(strategy).items() if not k.startswith("_") and not isinstance(v, torch.nn.Module)}
    inner = ", ".join(f"{k}={describe_strategy(v) if isinstance(v, Strategy) else v}" for k, v in sorted(args.items()))
    return f"{type(strategy).__name__}({inner})"
