"""Text-to-image diffusion models from local diffusers folders, as conditional denoisers for the ELBO scorer.

Two families, one contract (``denoise(x_t, t, rows) -> eps_hat``, on a table of text conditionings):

- **Stable Diffusion 1.x / 2.x** (``StableDiffusionPipeline``: ``unet/``, ``vae/``, ``text_encoder/``,
  ``tokenizer/``, ``scheduler/``). The noise schedule is the scheduler's own ``alphas_cumprod`` (SD's
  scaled-linear betas); prompts are encoded as the official Diffusion Classifier does (padded to the
  tokenizer's length, the text encoder's last hidden state). Epsilon- and v-prediction UNets are both
  scored in **one target, eps**: a v output becomes ``eps_hat = a_t v_hat + b_t x_t`` (``a_t = sqrt(abar_t)``,
  ``b_t = sqrt(1 - abar_t)``; Salimans & Ho 2022), so an eps model and the same model reparametrised to v
  give the same errors.
- **Rectified-flow models of the SD3 family** (``StableDiffusion3Pipeline``: ``transformer/``
  ``SD3Transformer2DModel``, ``FlowMatchEulerDiscreteScheduler``). ``x_t = (1 - s) x0 + s eps`` with the
  scheduler's shifted sigmas; the model predicts the velocity ``v = eps - x0``. Scored in eps units too:
  ``eps_hat = x_t + (1 - s) v_hat``, so ``eps - eps_hat = (1 - s)(v - v_hat)``. This is the error whose
  uniform-in-``t`` mean Li et al. score for DDPM models (their ELBO up to its weighting); the raw velocity error
  (what a direct port scores, ``scoring.weighting: velocity``) multiplies it by ``1 / (1 - s)^2``, which puts
  almost all weight on the noisiest draws, where every class looks alike and the variance is largest.
  Prompts are encoded by diffusers' own ``StableDiffusion3Pipeline.encode_prompt`` (CLIP-L + CLIP-G hidden
  states, T5 when the folder has it and zeros where it does not, the pooled projections).

Latents are the VAE posterior **mean**, ``(z - shift_factor) * scaling_factor`` (``LatentCodec``).
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from diffclf.diffusion.schedule import FlowSchedule, NoiseSchedule
from diffclf.models.latents import LatentCodec
from diffclf.models.text_cache import files_fingerprint

PredictionType = Literal["auto", "epsilon", "v_prediction", "flow"]

# Components each pipeline needs (SD3 also uses text_encoder_3/tokenizer_3, T5, when the folder has them).
PIPELINE_COMPONENTS: dict[str, tuple[str, ...]] = {
    "StableDiffusionPipeline": ("unet", "vae", "text_encoder", "tokenizer", "scheduler"),
    "StableDiffusion3Pipeline": (
        "transformer", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "scheduler",
    ),
}
OPTIONAL_COMPONENTS = ("text_encoder_3", "tokenizer_3")
SD3_MAX_SEQUENCE_LENGTH = 256  # diffusers' StableDiffusion3Pipeline default for the T5 tokens


def read_model_index(folder: str | Path) -> tuple[str, dict[str, tuple[str | None, str | None]]]:
    """The pipeline class and its components (library, class) from ``model_index.json``."""
    folder = Path(folder)
    index = folder / "model_index.json"
    if not index.is_file():
        raise FileNotFoundError(
            f"model.init_args.pretrained {folder}: no model_index.json (expected a local diffusers pipeline folder, "
            "e.g. stabilityai/stable-diffusion-2-base saved with save_pretrained)"
        )
    data = json.loads(index.read_text())
    name = data.get("_class_name")
    if name not in PIPELINE_COMPONENTS:
        raise ValueError(
            f"{index}: pipeline {name!r} is not a text-to-image pipeline diffclf scores "
            f"({', '.join(PIPELINE_COMPONENTS)})"
        )
    components = {k: tuple(v) for k, v in data.items() if not k.startswith("_") and isinstance(v, list) and len(v) == 2}
    return name, components


def _load_component(folder: Path, name: str, spec: tuple[str | None, str | None], dtype: torch.dtype) -> Any:
    """One component with the class ``model_index.json`` names; models frozen in eval mode."""
    library, cls_name = spec
    try:
        cls = getattr(importlib.import_module(library), cls_name)
    except (ImportError, AttributeError, TypeError):
        raise ValueError(f"pipeline folder {folder}: component {name!r} is {library}.{cls_name}, which is not installed") from None
    path = str(folder / name)
    if name.startswith("tokenizer") or name == "scheduler":
        return cls.from_pretrained(path)
    # Cast after loading: the dtype argument's name differs across transformers/diffusers versions.
    kwargs = {"low_cpu_mem_usage": False} if library == "diffusers" else {}
    model = cls.from_pretrained(path, **kwargs)
    return (model if dtype == torch.float32 else model.to(dtype)).eval().requires_grad_(False)


def read_schedule(scheduler: Any, folder: Path) -> tuple[NoiseSchedule | FlowSchedule, str]:
    """The training schedule and prediction target a diffusers scheduler object describes."""
    cfg = dict(scheduler.config)
    name = type(scheduler).__name__
    where = folder / "scheduler" / "scheduler_config.json"
    if "FlowMatch" in name:
        if cfg.get("use_dynamic_shifting"):
            raise ValueError(f"{where}: use_dynamic_shifting (the shift depends on the image size) is not supported; "
                             "set a fixed shift")
        sigmas = torch.as_tensor(scheduler.sigmas, dtype=torch.float64).flip(0)
        sigmas = sigmas[sigmas > 0]
        return FlowSchedule(sigmas, float(cfg.get("num_train_timesteps", 1000))), "flow"
    abar = getattr(scheduler, "alphas_cumprod", None)
    if abar is None:
        raise ValueError(f"{where}: scheduler {name} has no alphas_cumprod (expected a DDPM-family scheduler)")
    prediction = cfg.get("prediction_type", "epsilon")
    if prediction not in ("epsilon", "v_prediction"):
        raise ValueError(f"{where}: prediction_type {prediction!r}; diffclf scores epsilon and v_prediction models")
    return NoiseSchedule.from_alphas_cumprod(torch.as_tensor(abar)), prediction


@dataclass
class Conditioning:
    """A table of text conditionings, one row per prompt (or per class when merged).

    Attributes:
        hidden: ``(R, L, D)`` the cross-attention states.
        pooled: ``(R, P)`` SD3's pooled text projections (None for SD).
    """

    hidden: Tensor
    pooled: Tensor | None = None

    def tensors(self) -> dict[str, Tensor]:
        return {"hidden": self.hidden, **({"pooled": self.pooled} if self.pooled is not None else {})}

    @classmethod
    def from_tensors(cls, values: dict[str, Tensor]) -> Conditioning:
        return cls(values["hidden"], values.get("pooled"))

    def to(self, device: torch.device, dtype: torch.dtype) -> Conditioning:
        pooled = self.pooled.to(device, dtype) if self.pooled is not None else None
        return Conditioning(self.hidden.to(device, dtype), pooled)

    def merged(self, groups: Sequence[Sequence[int]]) -> Conditioning:
        """One row per group: the mean of its rows (prompt templates averaged in embedding space)."""
        def mean(t: Tensor) -> Tensor:
            return torch.stack([t[list(g)].float().mean(0) for g in groups]).to(t.dtype)

        return Conditioning(mean(self.hidden), mean(self.pooled) if self.pooled is not None else None)

    def __len__(self) -> int:
        return int(self.hidden.shape[0])


class TextToImageModel(nn.Module):
    """A local SD or SD3 pipeline folder: latents, text conditionings and the eps prediction in one place.

    Args:
        folder: the pipeline folder (``model_index.json`` and its components).
        dtype: weights' dtype (``float32``; ``float16`` / ``bfloat16`` on devices that run them fast).
        prediction_type: ``auto`` reads it from ``scheduler/``; naming one checks that the scheduler agrees
            (a v-prediction scheduler config paired with an eps model would score nonsense without an error).
    """

    def __init__(self, folder: str | Path, dtype: torch.dtype = torch.float32, prediction_type: PredictionType = "auto") -> None:
        super().__init__()
        folder = Path(folder)
        self.folder = folder
        self.pipeline, components = read_model_index(folder)
        for name in PIPELINE_COMPONENTS[self.pipeline]:
            spec = components.get(name)
            if spec is None or spec[0] is None:
                raise ValueError(f"pipeline folder {folder}: model_index.json lists no {name!r}, which a "
                                 f"{self.pipeline} needs ({', '.join(PIPELINE_COMPONENTS[self.pipeline])})")
            if not (folder / name).is_dir():
                raise FileNotFoundError(
                    f"pipeline folder {folder}: component {name!r} is missing (no {folder / name}/); a {self.pipeline} "
                    f"folder has {', '.join(n + '/' for n in PIPELINE_COMPONENTS[self.pipeline])}"
                )
        wanted = list(PIPELINE_COMPONENTS[self.pipeline]) + [
            n for n in OPTIONAL_COMPONENTS if components.get(n, (None, None))[0] is not None and self.pipeline.endswith("3Pipeline")
        ]
        parts = {name: _load_component(folder, name, components[name], dtype) for name in wanted}
        self.is_flow = self.pipeline == "StableDiffusion3Pipeline"
        self.denoiser = parts["transformer" if self.is_flow else "unet"]
        self.codec = LatentCodec(parts["vae"])
        self.text_encoders = nn.ModuleList([parts[n] for n in ("text_encoder", "text_encoder_2", "text_encoder_3") if n in parts])
        self.tokenizers = [parts[n] for n in ("tokenizer", "tokenizer_2", "tokenizer_3") if n in parts]
        self._parts = parts
        self.schedule, scheduled = read_schedule(parts["scheduler"], folder)
        if self.is_flow != (scheduled == "flow"):
            model_kind = "an SD3 flow transformer" if self.is_flow else "a DDPM UNet"
            raise ValueError(f"pipeline folder {folder}: scheduler {type(parts['scheduler']).__name__} does not fit "
                             f"{model_kind}; the folder mixes model families")
        if prediction_type not in ("auto", scheduled):
            raise ValueError(
                f"model.init_args.prediction_type {prediction_type} but {folder}/scheduler/scheduler_config.json says "
                f"{scheduled}: the model was trained for one target; fix whichever is wrong"
            )
        self.prediction_type = scheduled
        self.dtype = dtype
        self._tables: dict[torch.device, tuple[Tensor, Tensor, Tensor]] = {}
        self._check_widths()

    def _device_tables(self, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        """``a_t``, ``b_t`` and the model's time values as fp32 tables on ``device``, made once per device so
        that the denoiser calls of a classification only gather on the device (no host copies per batch)."""
        if device not in self._tables:
            s = self.schedule
            self._tables[device] = tuple(v.to(device=device, dtype=torch.float32) for v in (
                s.sqrt_alphas_cumprod, s.sqrt_one_minus_alphas_cumprod, s.model_timesteps))
        return self._tables[device]

    # ------------------------------------------------------------------ shapes
    @property
    def latent_channels(self) -> int:
        return int(self.denoiser.config.in_channels)

    def latent_shape(self, image_size: int) -> tuple[int, int, int]:
        factor = 2 ** (len(self.codec.vae.config.block_out_channels) - 1)
        return (self.latent_channels, image_size // factor, image_size // factor)

    def _check_widths(self) -> None:
        """The text encoder must give the states the denoiser's cross-attention was built for."""
        if self.is_flow:
            return  # checked on the encoded prompts (the T5 padding decides the width), see encode_prompts
        width = int(self.text_encoders[0].config.hidden_size)
        want = self.denoiser.config.cross_attention_dim
        want = int(want[0] if isinstance(want, (list, tuple)) else want)
        if width != want:
            raise ValueError(
                f"pipeline folder {self.folder}: text_encoder gives {width}-wide states but the UNet's cross-attention "
                f"takes {want} (cross_attention_dim): the text encoder is not this UNet's"
            )

    def fingerprint(self) -> str:
        """Of the tokenizer and text-encoder files: what the text embeddings depend on."""
        names = [n for n in self._parts if n.startswith(("tokenizer", "text_encoder"))]
        return files_fingerprint([self.folder / n for n in sorted(names)])

    # ------------------------------------------------------------------ text
    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str], batch_size: int = 100) -> Conditioning:
        """Text conditionings of ``prompts`` (CPU, fp32), in chunks of ``batch_size`` as the official code does."""
        device = next(self.text_encoders[0].parameters()).device
        rows = [self._encode(list(prompts[i: i + batch_size]), device) for i in range(0, len(prompts), batch_size)]
        hidden = torch.cat([r.hidden for r in rows]).float().cpu()
        pooled = torch.cat([r.pooled for r in rows]).float().cpu() if rows[0].pooled is not None else None
        cond = Conditioning(hidden, pooled)
        if self.is_flow:
            cfg = self.denoiser.config
            if hidden.shape[-1] != cfg.joint_attention_dim or pooled.shape[-1] != cfg.pooled_projection_dim:
                raise ValueError(
                    f"pipeline folder {self.folder}: the text encoders give {hidden.shape[-1]}-wide states and "
                    f"{pooled.shape[-1]}-wide pooled projections but the transformer takes {cfg.joint_attention_dim} "
                    f"(joint_attention_dim) and {cfg.pooled_projection_dim} (pooled_projection_dim)"
                )
        return cond

    def _encode(self, prompts: list[str], device: torch.device) -> Conditioning:
        if not self.is_flow:
            tok = self.tokenizers[0]
            ids = tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True,
                      return_tensors="pt").input_ids
            return Conditioning(self.text_encoders[0](ids.to(device))[0])
        from diffusers import StableDiffusion3Pipeline

        parts = self._parts
        pipe = StableDiffusion3Pipeline(
            transformer=parts["transformer"], scheduler=parts["scheduler"], vae=parts["vae"],
            text_encoder=parts["text_encoder"], tokenizer=parts["tokenizer"],
            text_encoder_2=parts["text_encoder_2"], tokenizer_2=parts["tokenizer_2"],
            text_encoder_3=parts.get("text_encoder_3"), tokenizer_3=parts.get("tokenizer_3"),
        )
        embeds, _, pooled, _ = pipe.encode_prompt(
            prompt=prompts, prompt_2=None, prompt_3=None, device=device, num_images_per_prompt=1,
            do_classifier_free_guidance=False, max_sequence_length=SD3_MAX_SEQUENCE_LENGTH,
        )
        return Conditioning(embeds, pooled)

    # ------------------------------------------------------------------ images and noise
    @torch.no_grad()
    def encode_images(self, images: Tensor) -> Tensor:
        """Images in [-1, 1] → fp32 latents (posterior mean, shifted and scaled)."""
        self.codec.to(images.device)
        return self.codec.encode_mean(images).float()

    @torch.no_grad()
    def eps(self, x_t: Tensor, t: Tensor, cond: Conditioning, rows: Tensor) -> Tensor:
        """The eps prediction at integer timestep indices ``t`` for conditioning ``rows`` (fp32)."""
        inputs = x_t.to(self.dtype)
        hidden = cond.hidden[rows]
        a_table, b_table, times = self._device_tables(x_t.device)
        a = a_table[t].view(-1, 1, 1, 1)
        if self.is_flow:
            # fp32 times, as StableDiffusion3Pipeline passes them: in bf16, 647 of the 1000 values sigma * 1000
            # would round onto a neighbour's (up to 2 units off), in fp16 by up to 0.25
            out = self.denoiser(hidden_states=inputs, timestep=times[t], encoder_hidden_states=hidden,
                                pooled_projections=cond.pooled[rows], return_dict=False)[0].float()
            return x_t + a * out  # eps = x_t + (1 - sigma) v for x_t = (1 - sigma) x0 + sigma eps, v = eps - x0
        # Integer timesteps, as the official loop passes them.
        out = self.denoiser(inputs, t, encoder_hidden_states=hidden).sample.float()
        if self.prediction_type == "v_prediction":
            b = b_table[t].view(-1, 1, 1, 1)
            return a * out + b * x_t  # eps = a v + b x_t for v = a eps - b x0 (Salimans & Ho 2022)
        return out


def read_noise_bank(path: str | Path) -> Tensor:
    """An official ``--noise_path`` file: one ``torch.save``d tensor ``(n, C, h, w)``; draw ``k`` = row ``k``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model.init_args.noise_path {path}: no such file")
    bank = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(bank, Tensor) or bank.dim() != 4:
        shape = tuple(bank.shape) if isinstance(bank, Tensor) else type(bank).__name__
        raise ValueError(f"model.init_args.noise_path {path}: expected one tensor of shape (n, C, h, w), got {shape}")
    return bank.float()
