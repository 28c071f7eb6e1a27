"""The DDPM noise schedule that DiT was trained with, in plain torch.

Everything here is float64 internally (the reference DiT code uses numpy float64) and
cast to the data's dtype when applied, so that training, sampling and the classifier's
ELBO all see exactly the same ``alphas_cumprod``.
"""

from __future__ import annotations

import torch
from torch import Tensor


def linear_betas(num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    """DiT's linear schedule; equal to ``diffusers.DDPMScheduler()`` defaults."""
    return torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)


class NoiseSchedule:
    """Forward process ``q(x_t | x_0)`` and the posterior terms that DiT's losses and samplers need.

    Not an ``nn.Module``: it holds no parameters, and keeping it out of the state dict means a
    checkpoint never silently carries a different schedule than the config names.
    """

    def __init__(
        self, num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02
    ) -> None:
        if num_timesteps < 2:
            raise ValueError(f"num_timesteps must be >= 2, got {num_timesteps}")
        if not 0 < beta_start < beta_end < 1:
            raise ValueError(f"need 0 < beta_start < beta_end < 1, got {beta_start}, {beta_end}")
        self.num_timesteps = num_timesteps
        self.beta_start = beta_start
        self.beta_end = beta_end
        self._set_betas(linear_betas(num_timesteps, beta_start, beta_end))

    @classmethod
    def from_alphas_cumprod(cls, alphas_cumprod: Tensor) -> NoiseSchedule:
        """The schedule of a table ``abar_t`` (a diffusers scheduler's ``alphas_cumprod``: SD's scaled-linear
        betas, cosine, zero terminal SNR, trained betas — whatever the model was trained with)."""
        abar = torch.as_tensor(alphas_cumprod, dtype=torch.float64).flatten()
        if abar.numel() < 2 or not bool(((abar > 0) & (abar < 1)).all()) or not bool((abar[1:] <= abar[:-1]).all()):
            raise ValueError("alphas_cumprod must be a decreasing table of at least 2 values in (0, 1)")
        self = cls.__new__(cls)
        self.num_timesteps = int(abar.numel())
        prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
        betas = 1.0 - abar / prev
        self.beta_start, self.beta_end = float(betas[0]), float(betas[-1])
        self._set_betas(betas, abar)
        return self

    def _set_betas(self, betas: Tensor, abar: Tensor | None = None) -> None:
        alphas = 1.0 - betas
        abar = torch.cumprod(alphas, dim=0) if abar is None else abar
        abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
        self.betas = betas
        self.alphas_cumprod = abar
        self.alphas_cumprod_prev = abar_prev
        self.sqrt_alphas_cumprod = abar.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1.0 - abar).sqrt()
        self.sqrt_recip_alphas_cumprod = (1.0 / abar).sqrt()
        self.sqrt_recipm1_alphas_cumprod = (1.0 / abar - 1.0).sqrt()
        # Posterior q(x_{t-1} | x_t, x_0), as in DiT's gaussian_diffusion.py.
        self.posterior_variance = betas * (1.0 - abar_prev) / (1.0 - abar)
        self.posterior_log_variance_clipped = torch.log(
            torch.cat([self.posterior_variance[1:2], self.posterior_variance[1:]])
        )
        self.posterior_mean_coef1 = betas * abar_prev.sqrt() / (1.0 - abar)
        self.posterior_mean_coef2 = (1.0 - abar_prev) * alphas.sqrt() / (1.0 - abar)

    @property
    def model_timesteps(self) -> Tensor:
        """``(T,)`` float64: the time value the denoiser is given at each index (the index itself)."""
        return torch.arange(self.num_timesteps, dtype=torch.float64)

    def config(self) -> dict:
        return {"num_timesteps": self.num_timesteps, "beta_start": self.beta_start, "beta_end": self.beta_end}

    @staticmethod
    def extract(values: Tensor, t: Tensor, like: Tensor) -> Tensor:
        """Gather ``values[t]`` and broadcast to ``like``'s shape, in ``like``'s dtype and device."""
        out = values.to(device=t.device)[t.long()].to(like.dtype)
        return out.view(-1, *([1] * (like.dim() - 1))).expand_as(like)

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps``."""
        return (
            self.extract(self.sqrt_alphas_cumprod, t, x0) * x0
            + self.extract(self.sqrt_one_minus_alphas_cumprod, t, x0) * noise
        )

    def predict_x0_from_eps(self, x_t: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        return (
            self.extract(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t
            - self.extract(self.sqrt_recipm1_alphas_cumprod, t, x_t) * eps
        )

    def q_posterior(self, x0: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Mean, variance and clipped log-variance of ``q(x_{t-1} | x_t, x_0)``."""
        mean = (
            self.extract(self.posterior_mean_coef1, t, x_t) * x0
            + self.extract(self.posterior_mean_coef2, t, x_t) * x_t
        )
        var = self.extract(self.posterior_variance, t, x_t)
        log_var = self.extract(self.posterior_log_variance_clipped, t, x_t)
        return mean, var, log_var

    def snr(self, t: Tensor) -> Tensor:
        """Signal-to-noise ratio ``abar_t / (1 - abar_t)`` (float64)."""
        abar = self.alphas_cumprod.to(t.device)[t.long()]
        return abar / (1.0 - abar)


class FlowSchedule:
    """A rectified-flow path ``x_t = (1 - sigma_t) x_0 + sigma_t eps`` (SD3's flow matching), on a table of
    ``sigma``s indexed like DDPM timesteps, with the attributes the ELBO scorer reads.

    The scorer builds ``x_t = a_t x_0 + b_t eps`` from ``sqrt_alphas_cumprod`` (``a_t = 1 - sigma_t``) and
    ``sqrt_one_minus_alphas_cumprod`` (``b_t = sigma_t``), and weights by the signal-to-noise ratio
    ``a_t^2 / b_t^2``; ``alphas_cumprod`` is defined as ``a^2 / (a^2 + b^2)`` so that its SNR is that one.
    (It is not the variance-preserving ``abar``: ``a_t + b_t = 1``, not ``a_t^2 + b_t^2 = 1``.)

    Args:
        sigmas: ``(T,)`` increasing noise levels in ``(0, 1]`` (index ``t`` = the ``t``-th smallest).
        timestep_scale: the denoiser is given ``sigma * timestep_scale`` as its time (1000 for SD3).
    """

    def __init__(self, sigmas: Tensor, timestep_scale: float = 1000.0) -> None:
        sig = torch.as_tensor(sigmas, dtype=torch.float64).flatten()
        if sig.numel() < 2 or not bool(((sig > 0) & (sig <= 1)).all()) or not bool((sig[1:] > sig[:-1]).all()):
            raise ValueError("flow sigmas must be an increasing table of at least 2 values in (0, 1]")
        self.num_timesteps = int(sig.numel())
        self.sigmas = sig
        self.timestep_scale = float(timestep_scale)
        a, b = 1.0 - sig, sig
        self.sqrt_alphas_cumprod = a
        self.sqrt_one_minus_alphas_cumprod = b
        self.alphas_cumprod = a.square() / (a.square() + b.square())

    @classmethod
    def shifted(cls, num_timesteps: int = 1000, shift: float = 3.0) -> FlowSchedule:
        """SD3's training schedule: ``s = (i+1)/T`` shifted to ``shift*s / (1 + (shift-1)*s)``, as diffusers'
        ``FlowMatchEulerDiscreteScheduler`` builds it without dynamic shifting."""
        s = torch.arange(1, num_timesteps + 1, dtype=torch.float64) / num_timesteps
        return cls(shift * s / (1.0 + (shift - 1.0) * s), float(num_timesteps))

    @property
    def model_timesteps(self) -> Tensor:
        """``(T,)`` float64: the time value the denoiser is given at each index (``sigma * scale``)."""
        return self.sigmas * self.timestep_scale

    def snr(self, t: Tensor) -> Tensor:
        """Signal-to-noise ratio ``(1 - sigma)^2 / sigma^2`` (float64)."""
        a = self.sqrt_alphas_cumprod.to(t.device)[t.long()]
        b = self.sqrt_one_minus_alphas_cumprod.to(t.device)[t.long()]
        return a.square() / b.square()
