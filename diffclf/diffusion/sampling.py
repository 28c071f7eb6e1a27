"""Class-conditional sampling from a DiT-like eps model (DDIM and ancestral DDPM), in plain torch.

Both samplers follow facebookresearch/DiT: ``steps`` timesteps are picked by DiT's
``space_timesteps(T, str(steps))`` and the chain runs on the *respaced* process of
``SpacedDiffusion`` (betas rebuilt from ``alphas_cumprod`` at the kept timesteps), while the model
is always called with the original timestep indices. ``steps == T`` is the plain 1000-step chain.
DDPM uses the learned variance (``LEARNED_RANGE``) when the model outputs ``2C`` channels and a
fixed variance otherwise; DDIM ignores the variance channels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from diffclf.diffusion.schedule import NoiseSchedule


def space_timesteps(num_timesteps: int, steps: int) -> list[int]:
    """DiT's ``space_timesteps(num_timesteps, str(steps))``: ``steps`` evenly spaced indices from 0 to
    ``num_timesteps - 1`` (both ends kept), rounded the way DiT rounds them."""
    if not 1 <= steps <= num_timesteps:
        raise ValueError(f"steps must be in [1, {num_timesteps}], got {steps}")
    stride = 1.0 if steps == 1 else (num_timesteps - 1) / (steps - 1)
    taken, cur = [], 0.0
    for _ in range(steps):
        taken.append(round(cur))
        cur += stride
    return taken


def spaced_tables(schedule: NoiseSchedule, timesteps: Sequence[int]) -> dict[str, Tensor]:
    """float64 tables of DiT's ``SpacedDiffusion`` over the kept ``timesteps`` (ascending).

    ``betas[i] = 1 - abar[t_i] / abar[t_{i-1}]`` so that the respaced chain has the same marginals
    ``q(x_{t_i} | x_0)`` as the original one; the posterior terms are the usual ones on those betas.
    """
    idx = torch.as_tensor(list(timesteps), dtype=torch.long)
    if idx.numel() == 0 or (idx.diff() <= 0).any() or idx[0] < 0 or idx[-1] >= schedule.num_timesteps:
        raise ValueError(f"timesteps must be strictly increasing in [0, {schedule.num_timesteps}), got {idx}")
    abar = schedule.alphas_cumprod[idx]
    abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    betas = 1.0 - abar / abar_prev
    post_var = betas * (1.0 - abar_prev) / (1.0 - abar)
    # DiT clips the t=0 log-variance (posterior variance 0) to the t=1 value; with one step it is unused.
    post_log_var = torch.log(torch.cat([post_var[1:2], post_var[1:]])) if len(idx) > 1 else torch.log(betas)
    return {
        "timesteps": idx,
        "alphas_cumprod": abar,
        "alphas_cumprod_prev": abar_prev,
        "betas": betas,
        "posterior_variance": post_var,
        "posterior_log_variance_clipped": post_log_var,
        "posterior_mean_coef1": betas * abar_prev.sqrt() / (1.0 - abar),
        "posterior_mean_coef2": (1.0 - abar_prev) * (1.0 - betas).sqrt() / (1.0 - abar),
        "sqrt_recip_alphas_cumprod": (1.0 / abar).sqrt(),
        "sqrt_recipm1_alphas_cumprod": (1.0 / abar - 1.0).sqrt(),
    }


def guided_model_output(
    model: Any, x: Tensor, t: Tensor, labels: Tensor, cfg_scale: float, null_class: int, channels: int
) -> Tensor:
    """Classifier-free guidance as DiT's ``forward_with_cfg``: one doubled batch ``[cond, uncond]``,
    ``eps = uncond + s (cond - uncond)`` on the ``channels`` eps channels; any variance channels are
    the conditional half's."""
    null = torch.full_like(labels, null_class)
    out = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([labels, null]))
    cond, uncond = out.chunk(2)
    eps = uncond[:, :channels] + cfg_scale * (cond[:, :channels] - uncond[:, :channels])
    return torch.cat([eps, cond[:, channels:]], dim=1)


def _model_device(model: Any) -> torch.device | None:
    if isinstance(model, nn.Module):
        for p in model.parameters():
            return p.device
    return None


def _randn(shape: Sequence[int], generator: torch.Generator | None, device: torch.device) -> Tensor:
    """Normal noise drawn on the generator's device, so a CPU generator is reproducible on any device."""
    if generator is None:
        return torch.randn(*shape, device=device)
    return torch.randn(*shape, generator=generator, device=generator.device).to(device)


@torch.no_grad()
def sample(
    model: Any,
    labels: Tensor | Sequence[int],
    shape: Sequence[int],
    schedule: NoiseSchedule,
    method: Literal["ddim", "ddpm"] = "ddim",
    steps: int = 50,
    cfg_scale: float = 1.0,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    clip_denoised: bool = False,
    fixed_variance: Literal["small", "large"] = "small",
    null_class: int | None = None,
    in_channels: int | None = None,
) -> Tensor:
    """Draw ``len(labels)`` samples ``(N, C, H, W)`` with ``model(x, t, y)`` (put it in eval mode first:
    DiT drops labels at random in train mode).

    ``shape`` is ``(C, H, W)`` or ``(N, C, H, W)``. ``method="ddim"`` takes DDIM steps with noise scale
    ``eta`` (0: deterministic); ``"ddpm"`` takes ancestral steps with the learned variance for ``2C``
    outputs, else the fixed ``fixed_variance`` ("small" = posterior variance, "large" = beta as in DiT
    without learned sigma). ``cfg_scale != 1`` applies classifier-free guidance with the null class
    ``model.num_classes`` (or ``null_class``). ``clip_denoised`` clips each x0 prediction, and so the
    output, to [-1, 1] (pixels); leave it off for latents.
    """
    if method not in ("ddim", "ddpm"):
        raise ValueError(f"method must be 'ddim' or 'ddpm', got {method!r}")
    if fixed_variance not in ("small", "large"):
        raise ValueError(f"fixed_variance must be 'small' or 'large', got {fixed_variance!r}")
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    device = torch.device(device) if device is not None else _model_device(model)
    labels = torch.as_tensor(labels, dtype=torch.long)
    device = device if device is not None else labels.device
    labels = labels.to(device)
    shape = tuple(shape)
    if len(shape) == 3:
        shape = (labels.shape[0], *shape)
    if len(shape) != 4 or labels.shape != (shape[0],):
        raise ValueError(f"need shape (C, H, W) or (N, C, H, W) and labels (N,), got {shape} and "
                         f"{tuple(labels.shape)}")
    channels = shape[1]
    in_channels = in_channels if in_channels is not None else getattr(model, "in_channels", channels)
    if in_channels != channels:
        raise ValueError(f"the model takes {in_channels} channels but shape asks for {channels}")
    guided = cfg_scale != 1.0
    if guided:
        null_class = null_class if null_class is not None else getattr(model, "num_classes", None)
        if null_class is None:
            raise ValueError("classifier-free guidance needs model.num_classes or null_class=")

    tab = spaced_tables(schedule, space_timesteps(schedule.num_timesteps, steps))
    c = {k: v.tolist() for k, v in tab.items()}
    x = _randn(shape, generator, device)
    for i in reversed(range(len(c["timesteps"]))):
        t = torch.full((shape[0],), c["timesteps"][i], dtype=torch.long, device=device)
        if guided:
            out = guided_model_output(model, x, t, labels, cfg_scale, null_class, channels)
        else:
            out = model(x, t, labels)
        out = out.to(x.dtype)
        if out.shape[1] not in (channels, 2 * channels) or out.shape[0] != shape[0]:
            raise ValueError(f"model output {tuple(out.shape)} needs {channels} or {2 * channels} channels")
        eps = out[:, :channels]
        x0 = c["sqrt_recip_alphas_cumprod"][i] * x - c["sqrt_recipm1_alphas_cumprod"][i] * eps
        if clip_denoised:
            x0 = x0.clamp(-1, 1)
        if method == "ddim":
            eps = (c["sqrt_recip_alphas_cumprod"][i] * x - x0) / c["sqrt_recipm1_alphas_cumprod"][i]
            abar, abar_prev = c["alphas_cumprod"][i], c["alphas_cumprod_prev"][i]
            sigma = eta * ((1 - abar_prev) / (1 - abar)) ** 0.5 * (1 - abar / abar_prev) ** 0.5
            x = x0 * abar_prev**0.5 + (1 - abar_prev - sigma**2) ** 0.5 * eps
            if i > 0 and sigma > 0:
                x = x + sigma * _randn(shape, generator, device)
            continue
        mean = c["posterior_mean_coef1"][i] * x0 + c["posterior_mean_coef2"][i] * x
        if i == 0:
            x = mean
            continue
        if out.shape[1] == 2 * channels:
            frac = (out[:, channels:] + 1) / 2
            max_log, min_log = math.log(c["betas"][i]), c["posterior_log_variance_clipped"][i]
            std = torch.exp(0.5 * (frac * max_log + (1 - frac) * min_log))
        elif fixed_variance == "small":
            std = math.exp(0.5 * c["posterior_log_variance_clipped"][i])
        else:
            std = c["betas"][i] ** 0.5
        x = mean + std * _randn(shape, generator, device)
    return x


def class_grid(
    model: Any,
    class_ids: Sequence[int] | Tensor,
    per_class: int,
    shape: Sequence[int],
    schedule: NoiseSchedule,
    **sample_kwargs: Any,
) -> Tensor:
    """``per_class`` samples of each class, ordered class by class, so that a grid with
    ``nrow=per_class`` shows one class per row. ``shape`` is one sample's ``(C, H, W)``."""
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    labels = torch.as_tensor(class_ids, dtype=torch.long).repeat_interleave(per_class)
    return sample(model, labels, tuple(shape), schedule, **sample_kwargs)


def save_image_grid(images: Tensor, path: str | Path, nrow: int) -> Path:
    """Write ``(N, C, H, W)`` images in [-1, 1] as one PNG grid with ``nrow`` images per row."""
    from torchvision.utils import save_image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(((images.detach().float().cpu() + 1) / 2).clamp(0, 1), path, nrow=nrow)
    return path
