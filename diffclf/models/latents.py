"""The SD-VAE as a frozen codec between [-1, 1] images and the scaled latents a latent DiT sees.

Latents are ``posterior × scaling_factor`` (0.18215 for the SD VAE), as in DiT. Classification uses the
posterior **mean** (deterministic: the same image always gets the same scores); training uses a posterior
**sample**, as DiT's ``train.py`` does.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

DEFAULT_SCALING_FACTOR = 0.18215
_WEIGHT_SUFFIXES = (".safetensors", ".bin")


def _vae_config(path: str | Path) -> dict[str, Any]:
    folder = Path(path)
    config = folder / "config.json"
    if not config.is_file():
        raise FileNotFoundError(
            f"VAE folder {folder}: no config.json (expected a diffusers AutoencoderKL folder)"
        )
    cfg = json.loads(config.read_text())
    if cfg.get("_class_name") != "AutoencoderKL":
        raise ValueError(
            f"VAE folder {folder}: config.json describes {cfg.get('_class_name')!r}, expected 'AutoencoderKL'"
        )
    return cfg


def load_vae(path: str | Path) -> Any:
    """A diffusers ``AutoencoderKL`` from a local folder, in eval mode with gradients off."""
    from diffusers import AutoencoderKL

    _vae_config(path)
    vae = AutoencoderKL.from_pretrained(str(path), low_cpu_mem_usage=False)  # no accelerate needed, no notice
    vae.eval().requires_grad_(False)
    return vae


def vae_fingerprint(path: str | Path) -> str:
    """A short sha256 of the VAE's ``config.json`` and weight files, so a latent cache can tell
    whether it is read with the VAE that made it (the path alone may point at other weights later)."""
    folder = Path(path)
    _vae_config(folder)
    digest = hashlib.sha256()
    files = [folder / "config.json"] + sorted(
        f for f in folder.iterdir() if f.is_file() and f.name.endswith(_WEIGHT_SUFFIXES)
    )
    for f in files:
        digest.update(f.name.encode())
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:16]


class LatentCodec(nn.Module):
    """Frozen VAE: ``encode_mean`` / ``encode_sample`` / ``decode`` between images in [-1, 1] and scaled latents
    (``(z - shift_factor) * scaling_factor``; the shift is 0 but for SD3's VAE).

    The VAE's weights are kept out of ``state_dict()`` (they are frozen and reloaded from the VAE folder
    that the owner records), so checkpoints do not carry ~330 MB of SD-VAE each; loading a state dict
    without them leaves the VAE as it is, and one that has them (older checkpoints) still loads.

    Args:
        vae: a diffusers ``AutoencoderKL``.
        scaling_factor: latent scale; default ``vae.config.scaling_factor``, else 0.18215.
    """

    def __init__(self, vae: Any, scaling_factor: float | None = None) -> None:
        super().__init__()
        self.vae = vae.eval().requires_grad_(False)
        if scaling_factor is None:
            scaling_factor = getattr(vae.config, "scaling_factor", None) or DEFAULT_SCALING_FACTOR
        self.scaling_factor = float(scaling_factor)
        # SD3's VAE centres its latents before scaling: latents = (z - shift_factor) * scaling_factor.
        self.shift_factor = float(getattr(vae.config, "shift_factor", None) or 0.0)
        self.image_channels = int(vae.config.in_channels)
        self.latent_channels = int(vae.config.latent_channels)
        self.register_state_dict_post_hook(_drop_vae_weights)
        self.register_load_state_dict_pre_hook(_keep_vae_weights)

    def train(self, mode: bool = True) -> LatentCodec:
        """The VAE stays in eval mode whatever the owner does."""
        super().train(mode)
        self.vae.eval()
        return self

    def _prepare(self, images: Tensor) -> Tensor:
        if images.shape[1] != self.image_channels:
            if images.shape[1] == 1:
                images = images.expand(-1, self.image_channels, -1, -1)
            else:
                raise ValueError(
                    f"the VAE takes {self.image_channels}-channel images, got {images.shape[1]} channels"
                )
        return images.to(self.vae.dtype)

    @torch.no_grad()
    def encode_moments(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Posterior mean and standard deviation, both × scale (a sample is ``mean + std * eps``)."""
        posterior = self.vae.encode(self._prepare(images)).latent_dist
        return (posterior.mean - self.shift_factor) * self.scaling_factor, posterior.std * self.scaling_factor

    @torch.no_grad()
    def encode_mean(self, images: Tensor) -> Tensor:
        """Posterior mean × scale: deterministic latents for classification."""
        return (self.vae.encode(self._prepare(images)).latent_dist.mean - self.shift_factor) * self.scaling_factor

    @torch.no_grad()
    def encode_sample(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Posterior sample × scale: the training target, as in DiT's ``train.py``."""
        return (self.vae.encode(self._prepare(images)).latent_dist.sample(generator) - self.shift_factor) * self.scaling_factor

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """Scaled latents → images (roughly [-1, 1]) with the VAE's channels."""
        return self.vae.decode(latents.to(self.vae.dtype) / self.scaling_factor + self.shift_factor).sample


def _drop_vae_weights(
    module: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: Any
) -> None:
    for key in [k for k in state_dict if k.startswith(prefix + "vae.")]:
        del state_dict[key]


def _keep_vae_weights(module: LatentCodec, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
    for name, tensor in module.vae.state_dict().items():
        state_dict.setdefault(f"{prefix}vae.{name}", tensor)
