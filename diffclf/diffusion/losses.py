"""DiT's training objective in plain torch: eps-MSE, plus the VLB term that learns the variance.

The math follows facebookresearch/DiT ``diffusion/gaussian_diffusion.py`` with
``create_diffusion(learn_sigma=True)`` defaults: ``LossType.MSE`` (not ``RESCALED_MSE``),
``ModelMeanType.EPSILON`` and ``ModelVarType.LEARNED_RANGE``. With ``LossType.MSE`` the VLB term
is added as it is, in bits per dimension, without the ``num_timesteps / 1000`` rescaling.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, NamedTuple

import torch
from torch import Tensor

from diffclf.diffusion.schedule import NoiseSchedule
from diffclf.diffusion.scoring import mix_seed


def normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """Elementwise ``KL(N(mean1, e^logvar1) || N(mean2, e^logvar2))`` in nats (broadcasts)."""
    return 0.5 * (
        -1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2)
    )


def approx_standard_normal_cdf(x: Tensor) -> Tensor:
    """The tanh approximation of the standard normal CDF that ADM/DiT use (kept for exact parity)."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def discretized_gaussian_log_likelihood(x: Tensor, means: Tensor, log_scales: Tensor) -> Tensor:
    """Elementwise log-probability (nats) of ``x`` (8-bit data scaled to [-1, 1]) under a Gaussian
    discretised into 256 bins, with open-ended edge bins; ``log_scales`` is the log std."""
    if not x.shape == means.shape == log_scales.shape:
        raise ValueError(f"shapes differ: x {tuple(x.shape)}, means {tuple(means.shape)}, "
                         f"log_scales {tuple(log_scales.shape)}")
    centered = x - means
    inv_stdv = torch.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
    cdf_min = approx_standard_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_cdf_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(
        x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_cdf_delta)
    )


def mean_flat(x: Tensor) -> Tensor:
    """Mean over every dimension but the batch one."""
    return x.mean(dim=tuple(range(1, x.dim())))


def learned_range_log_variance(v: Tensor, t: Tensor, schedule: NoiseSchedule) -> Tensor:
    """DiT's ``LEARNED_RANGE`` log-variance: ``v`` in [-1, 1] interpolates, in log space, between the
    clipped posterior variance (``v = -1``) and ``beta_t`` (``v = +1``)."""
    min_log = schedule.extract(schedule.posterior_log_variance_clipped, t, v)
    max_log = schedule.extract(torch.log(schedule.betas), t, v)
    frac = (v + 1) / 2
    return frac * max_log + (1 - frac) * min_log


def vb_terms_bits(
    eps: Tensor, v: Tensor, x0: Tensor, x_t: Tensor, t: Tensor, schedule: NoiseSchedule
) -> Tensor:
    """Per-example VLB term in bits per dimension, shape ``(N,)``: ``KL(q(x_{t-1}|x_t,x_0) || p)`` for
    ``t > 0`` and the discretised decoder NLL for ``t == 0`` (DiT's ``_vb_terms_bpd``, unclipped)."""
    true_mean, _, true_log_var = schedule.q_posterior(x0, x_t, t)
    pred_x0 = schedule.predict_x0_from_eps(x_t, t, eps)
    model_mean, _, _ = schedule.q_posterior(pred_x0, x_t, t)
    model_log_var = learned_range_log_variance(v, t, schedule)
    kl = mean_flat(normal_kl(true_mean, true_log_var, model_mean, model_log_var)) / math.log(2.0)
    nll = -discretized_gaussian_log_likelihood(x0, means=model_mean, log_scales=0.5 * model_log_var)
    nll = mean_flat(nll) / math.log(2.0)
    return torch.where(t.to(kl.device) == 0, nll, kl)


def diffusion_loss(
    model_output: Tensor,
    x0: Tensor,
    x_t: Tensor,
    t: Tensor,
    noise: Tensor,
    schedule: NoiseSchedule,
    learn_sigma: bool,
) -> dict[str, Tensor]:
    """DiT's training loss for one batch of ``x_t = q_sample(x0, t, noise)``.

    Returns ``loss`` (scalar batch mean of ``mse + vb``, what to backpropagate), ``mse`` (shape
    ``(N,)``, the per-example eps error averaged over C, H, W) and ``vb`` (scalar batch mean of the
    VLB term in bits per dimension; zero without ``learn_sigma``). With ``learn_sigma`` the output
    has ``2C`` channels ``[eps, v]``; the VLB sees a detached ``eps`` so it trains only the
    variance channels and the eps channels are trained by the MSE alone (DiT's ``frozen_out``).
    Computed in at least float32 so that bf16 autocast outputs do not degrade the loss.
    """
    channels = x0.shape[1]
    want = 2 * channels if learn_sigma else channels
    if model_output.shape[0] != x0.shape[0] or model_output.shape[1] != want:
        raise ValueError(
            f"model output has shape {tuple(model_output.shape)} but learn_sigma={learn_sigma} with "
            f"{channels}-channel inputs needs {want} channels and batch {x0.shape[0]}"
        )
    dtype = torch.promote_types(x0.dtype, torch.float32)
    out, x0, x_t, noise = (a.to(dtype) for a in (model_output, x0, x_t, noise))
    eps = out[:, :channels]
    mse = mean_flat((noise - eps) ** 2)
    if learn_sigma:
        vb = vb_terms_bits(eps.detach(), out[:, channels:], x0, x_t, t, schedule).mean()
    else:
        vb = torch.zeros((), dtype=dtype, device=mse.device)
    return {"loss": mse.mean() + vb, "mse": mse, "vb": vb}


LossWeighting = Literal["eps", "velocity"]
LOSS_WEIGHTINGS: tuple[str, ...] = ("eps", "velocity")


def loss_weights(t: Tensor, schedule: NoiseSchedule, weighting: LossWeighting) -> Tensor:
    """Per-example factor on the eps-MSE of timesteps ``t``: ``eps`` (DDPM's simple loss, ones) or
    ``velocity``, ``1 / abar_t``, which turns it into the v-prediction loss ``||v - v_hat||^2`` (Salimans &
    Ho 2022, "Progressive Distillation", sec. 4: ``v - v_hat = (eps - eps_hat) / sqrt(abar)``).

    Why: the eps error of a nearly clean image hardly depends on the conditioning, and it is 100x the
    error of a noisy one, so the simple loss spends its gradient where a caption cannot help; the v loss
    equals the x0 error at high noise, where the caption decides what to draw. Scoring with the matching
    ``ScoringOptions(weighting="velocity")`` keeps classification on the objective the model trained on.
    """
    if weighting == "eps":
        return torch.ones(t.shape, dtype=torch.float32, device=t.device)
    if weighting == "velocity":
        return (1.0 / schedule.alphas_cumprod.to(t.device)[t.long()]).float()
    raise ValueError(f"loss weighting must be one of {', '.join(LOSS_WEIGHTINGS)}; got {weighting!r}")


TimestepDensity = Literal["uniform", "logit_normal"]


def sample_timesteps(
    batch: int,
    num_timesteps: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    density: TimestepDensity = "uniform",
    loc: float = 0.0,
    scale: float = 1.0,
) -> Tensor:
    """Training timesteps in ``[0, num_timesteps)``: uniform integers (DiT's ``torch.randint``) or
    logit-normal, ``t = floor(T * sigmoid(loc + scale * n))`` with ``n ~ N(0, 1)`` (Esser et al. 2024,
    "Scaling Rectified Flow Transformers", sec. 3.1), meant to put training where the class signal is
    (mid ``t``) rather than at the ends, where every class predicts the same eps (on digits it did not
    speed up learning the classes: ``benchmarks/results/time_to_accuracy/levers_digits.md``).

    Only the training density changes: scoring keeps its own timesteps, so the classifier's ELBO stays
    the uniform-``t`` one. Drawn on the generator's own device and then moved, so a CPU generator gives
    the same timesteps whether training runs on CPU or GPU.
    """
    draw_device = generator.device if generator is not None else device
    if density == "uniform":
        t = torch.randint(0, num_timesteps, (batch,), generator=generator, device=draw_device)
    elif density == "logit_normal":
        if scale <= 0:
            raise ValueError(f"model.timestep_scale must be > 0 for logit_normal timesteps, got {scale}")
        n = torch.randn(batch, generator=generator, device=draw_device, dtype=torch.float64)
        u = torch.sigmoid(loc + scale * n)
        t = (u * num_timesteps).long().clamp_(0, num_timesteps - 1)
    else:
        raise ValueError(f"model.timestep_density must be 'uniform' or 'logit_normal', got {density!r}")
    return t.to(device) if device is not None else t


# Stream ids of the training draws: each quantity has its own generator seed, so drawing one of them
# differently (another class-dropout rate, a latent posterior sample or not) never shifts the others.
TRAINING_STREAMS = {
    "t": 0x7470, "eps": 0x657073, "drop": 0x64726F70, "posterior": 0x706F7374, "hybrid": 0x6879627264,
}
# Tags the training keys, so that they never coincide with the scorer's keys (``scoring.py``), which mix
# the same seed.
_TRAIN_TAG = 0x747261696E


class TrainingDraws(NamedTuple):
    """The random inputs of one training micro-batch: timesteps, eps, and where the label is dropped."""

    t: Tensor  # (N,) long
    noise: Tensor  # like x0
    drop: Tensor | None  # (N,) bool, True: the label becomes the null class; None without class dropout


def training_key(
    seed: int, world_size: int, rank: int, step: int, micro: int = 0
) -> tuple[int, ...]:
    """The key of one training micro-batch's draws: ``(seed, world_size, rank, step, micro)``.

    ``step`` is the optimizer step (Lightning's ``global_step``) and ``micro`` the position of the
    micro-batch within gradient accumulation. DiT's ``train.py`` seeds rank ``r`` of ``W`` once with
    ``seed * W + r`` and lets the global RNG run; keying every micro-batch instead gives each rank its
    own stream as well, and a run resumed at step ``s`` draws exactly what the uninterrupted run drew
    at step ``s`` with no RNG state in the checkpoint (a global RNG is neither saved by Lightning nor
    safe from whatever else draws from it: augmentations, callbacks, sampling grids).
    """
    return (_TRAIN_TAG, seed, world_size, rank, step, micro)


def training_generator(key: Sequence[int], stream: str, device: torch.device | str) -> torch.Generator:
    """A generator on ``device`` for one ``stream`` (``TRAINING_STREAMS``: ``t``, ``eps``, ``drop``,
    ``posterior``, ``hybrid``) of a training key, seeded through a splitmix64 mixer so that nearby keys (consecutive
    steps, neighbouring ranks) give unrelated streams."""
    return torch.Generator(device=device).manual_seed(mix_seed(*key, TRAINING_STREAMS[stream]))


def training_draws(
    key: Sequence[int],
    shape: Sequence[int] | torch.Size,
    num_timesteps: int,
    dropout_prob: float,
    device: torch.device | str,
    dtype: torch.dtype = torch.float32,
    density: TimestepDensity = "uniform",
    loc: float = 0.0,
    scale: float = 1.0,
) -> TrainingDraws:
    """Timesteps, eps and class-dropout mask of one training micro-batch of ``shape = (N, C, H, W)``.

    Each comes from its own generator on ``device`` (CPU or CUDA; a CUDA generator's Philox draws
    differ from the CPU's, so a run on GPU does not repeat a CPU run's draws, but every run on the same
    kind of device does) seeded by :func:`training_generator`: the draws depend on ``key`` alone, never
    on the global RNG. The mask is DiT's rule, ``rand < dropout_prob``, and is ``None`` when
    ``dropout_prob`` is 0. ``density``, ``loc``, ``scale``: the timestep density (:func:`sample_timesteps`).
    """
    device = torch.device(device)
    n = shape[0]
    t = sample_timesteps(n, num_timesteps, generator=training_generator(key, "t", device), device=device,
                         density=density, loc=loc, scale=scale)
    noise = torch.randn(tuple(shape), generator=training_generator(key, "eps", device), device=device,
                        dtype=dtype)
    drop = None
    if dropout_prob > 0:
        u = torch.rand(n, generator=training_generator(key, "drop", device), device=device)
        drop = u < dropout_prob
    return TrainingDraws(t, noise, drop)
