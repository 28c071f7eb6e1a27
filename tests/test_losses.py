"""DiT's eps-MSE + VLB loss, checked against closed forms and an independent float64 computation."""

import math

import numpy as np
import pytest
import torch
from torch.distributions import Normal, kl_divergence

from diffclf.diffusion.losses import (
    diffusion_loss,
    discretized_gaussian_log_likelihood,
    loss_weights,
    normal_kl,
    sample_timesteps,
    training_draws,
    training_key,
)
from diffclf.diffusion.schedule import NoiseSchedule

SCHEDULE = NoiseSchedule()


def _batch(n: int = 4, c: int = 2, t: list[int] | None = None, dtype=torch.float64):
    gen = torch.Generator().manual_seed(0)
    x0 = torch.rand(n, c, 4, 4, generator=gen, dtype=dtype) * 2 - 1
    noise = torch.randn(n, c, 4, 4, generator=gen, dtype=dtype)
    t = torch.tensor(t if t is not None else [1, 10, 500, 999])
    return x0, SCHEDULE.q_sample(x0, t, noise), t, noise


def _reference_posterior(t: int) -> tuple[float, float, float, float, float]:
    """abar_t, posterior coefs and clipped posterior log-variance, from numpy as in DiT."""
    betas = np.linspace(1e-4, 0.02, 1000, dtype=np.float64)
    abar = np.cumprod(1.0 - betas)
    abar_prev = np.append(1.0, abar[:-1])
    post_var = betas * (1.0 - abar_prev) / (1.0 - abar)
    post_log_var = np.log(np.append(post_var[1], post_var[1:]))
    coef1 = betas * np.sqrt(abar_prev) / (1.0 - abar)
    coef2 = (1.0 - abar_prev) * np.sqrt(1.0 - betas) / (1.0 - abar)
    return abar[t], coef1[t], coef2[t], post_log_var[t], math.log(betas[t])


def test_oracle_model_has_zero_mse() -> None:
    x0, x_t, t, noise = _batch()
    out = diffusion_loss(noise.clone(), x0, x_t, t, noise, SCHEDULE, learn_sigma=False)
    assert out["mse"].shape == (4,)
    assert out["mse"].abs().max().item() == 0.0
    assert out["loss"].dim() == 0 and out["loss"].item() == 0.0
    assert out["vb"].item() == 0.0


def test_wrong_model_gives_analytic_mse() -> None:
    x0, x_t, t, noise = _batch()
    shifted = diffusion_loss(noise + 0.5, x0, x_t, t, noise, SCHEDULE, learn_sigma=False)
    torch.testing.assert_close(shifted["mse"], torch.full((4,), 0.25, dtype=torch.float64))
    zero = diffusion_loss(torch.zeros_like(noise), x0, x_t, t, noise, SCHEDULE, learn_sigma=False)
    torch.testing.assert_close(zero["mse"], noise.pow(2).mean(dim=(1, 2, 3)))
    torch.testing.assert_close(zero["loss"], noise.pow(2).mean())


def test_true_eps_and_posterior_variance_give_zero_kl() -> None:
    """v = -1 selects the clipped posterior log-variance, so p equals q(x_{t-1} | x_t, x0) for t > 0."""
    x0, x_t, t, noise = _batch(t=[1, 2, 300, 999])
    out = torch.cat([noise, -torch.ones_like(noise)], dim=1)
    losses = diffusion_loss(out, x0, x_t, t, noise, SCHEDULE, learn_sigma=True)
    assert abs(losses["vb"].item()) < 1e-9
    assert losses["mse"].abs().max().item() == 0.0


def test_vb_matches_independent_kl() -> None:
    """KL in bits per dim against torch.distributions, with DiT's means and learned-range variance."""
    x0, x_t, t, noise = _batch(n=3, t=[5, 400, 999])
    gen = torch.Generator().manual_seed(1)
    eps = noise + 0.3 * torch.randn(noise.shape, generator=gen, dtype=torch.float64)
    v = torch.rand(noise.shape, generator=gen, dtype=torch.float64) * 2 - 1
    got = diffusion_loss(torch.cat([eps, v], 1), x0, x_t, t, noise, SCHEDULE, learn_sigma=True)

    per_example = []
    for i, t_i in enumerate(t.tolist()):
        abar, coef1, coef2, post_log_var, log_beta = _reference_posterior(t_i)
        pred_x0 = (x_t[i] - math.sqrt(1 - abar) * eps[i]) / math.sqrt(abar)
        q = Normal(coef1 * x0[i] + coef2 * x_t[i], math.exp(0.5 * post_log_var))
        frac = (v[i] + 1) / 2
        p_log_var = frac * log_beta + (1 - frac) * post_log_var
        p = Normal(coef1 * pred_x0 + coef2 * x_t[i], torch.exp(0.5 * p_log_var))
        per_example.append(kl_divergence(q, p).mean() / math.log(2))
    expected_vb = torch.stack(per_example).mean()
    torch.testing.assert_close(got["vb"], expected_vb, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(got["loss"], got["mse"].mean() + expected_vb, rtol=1e-8, atol=1e-10)


def test_vb_at_t0_is_decoder_nll() -> None:
    x0, x_t, t, noise = _batch(n=2, t=[0, 0])
    x0 = torch.round((x0 + 1) * 127.5) / 127.5 - 1
    x_t = SCHEDULE.q_sample(x0, t, noise)
    v = torch.zeros_like(noise)
    got = diffusion_loss(torch.cat([noise, v], 1), x0, x_t, t, noise, SCHEDULE, learn_sigma=True)
    _, _, _, post_log_var, log_beta = _reference_posterior(0)
    log_scale = torch.full_like(x0, 0.5 * (0.5 * log_beta + 0.5 * post_log_var))
    nll = -discretized_gaussian_log_likelihood(x0, means=x0, log_scales=log_scale)
    torch.testing.assert_close(got["vb"], nll.mean() / math.log(2))


def test_discretized_likelihood_is_a_distribution_over_bins() -> None:
    """Summed over the 256 bins of [-1, 1] the probabilities are 1, and inner bins match exact CDFs."""
    bins = torch.linspace(-1, 1, 256, dtype=torch.float64)
    for mean, scale in ((0.0, 0.1), (0.7, 0.05), (-0.95, 0.3)):
        means = torch.full_like(bins, mean)
        log_scales = torch.full_like(bins, math.log(scale))
        logp = discretized_gaussian_log_likelihood(bins, means=means, log_scales=log_scales)
        assert logp.exp().sum().item() == pytest.approx(1.0, abs=1e-9)
        exact = Normal(mean, scale)
        inner = slice(1, 255)
        width = exact.cdf(bins[inner] + 1 / 255) - exact.cdf(bins[inner] - 1 / 255)
        keep = width > 1e-3
        torch.testing.assert_close(logp[inner][keep].exp(), width[keep], rtol=0, atol=5e-4)


def test_normal_kl_closed_form() -> None:
    m1, m2 = torch.tensor([0.3, -1.0]), torch.tensor([0.0, 2.0])
    lv1, lv2 = torch.tensor([0.1, -2.0]), torch.tensor([0.0, 1.0])
    expected = kl_divergence(Normal(m1, (0.5 * lv1).exp()), Normal(m2, (0.5 * lv2).exp()))
    torch.testing.assert_close(normal_kl(m1, lv1, m2, lv2), expected)
    assert normal_kl(m1, lv1, m1, lv1).abs().max().item() < 1e-7


def test_vb_gradient_reaches_only_the_variance_channels() -> None:
    x0, x_t, t, noise = _batch(t=[0, 3, 500, 999])
    out = torch.cat([noise + 0.1, torch.zeros_like(noise)], 1).requires_grad_(True)
    losses = diffusion_loss(out, x0, x_t, t, noise, SCHEDULE, learn_sigma=True)
    (grad_vb,) = torch.autograd.grad(losses["vb"], out, retain_graph=True)
    assert grad_vb[:, :2].abs().max().item() == 0.0
    assert grad_vb[:, 2:].abs().max().item() > 0.0
    (grad_total,) = torch.autograd.grad(losses["loss"], out)
    # d mean(mse) / d eps = 2 (eps - noise) / (N C H W): the eps channels see the MSE alone.
    torch.testing.assert_close(grad_total[:, :2], torch.full_like(noise, 2 * 0.1 / (4 * 2 * 4 * 4)))


def test_channel_count_is_checked() -> None:
    x0, x_t, t, noise = _batch()
    with pytest.raises(ValueError):
        diffusion_loss(noise, x0, x_t, t, noise, SCHEDULE, learn_sigma=True)
    with pytest.raises(ValueError):
        diffusion_loss(torch.cat([noise, noise], 1), x0, x_t, t, noise, SCHEDULE, learn_sigma=False)


def test_low_precision_output_is_scored_in_float32() -> None:
    x0, x_t, t, noise = _batch(dtype=torch.float32)
    out = torch.cat([noise, torch.zeros_like(noise)], 1).to(torch.bfloat16)
    losses = diffusion_loss(out, x0, x_t, t, noise, SCHEDULE, learn_sigma=True)
    assert losses["loss"].dtype == torch.float32 and torch.isfinite(losses["loss"])


def test_sample_timesteps_uniform_and_reproducible() -> None:
    t = sample_timesteps(20_000, 1000, generator=torch.Generator().manual_seed(0))
    assert t.dtype == torch.long and t.min() >= 0 and t.max() <= 999
    assert t.float().mean().item() == pytest.approx(499.5, abs=10)
    again = sample_timesteps(20_000, 1000, generator=torch.Generator().manual_seed(0), device="cpu")
    assert torch.equal(t, again)
    assert torch.bincount(sample_timesteps(5000, 3), minlength=3).min() > 1400


def test_training_draws_depend_on_the_key_alone_and_each_stream_stands_alone() -> None:
    key = training_key(seed=0, world_size=2, rank=1, step=40)
    torch.manual_seed(0)
    a = training_draws(key, (512, 1, 4, 4), 1000, 0.1, "cpu")
    torch.manual_seed(1)
    b = training_draws(key, (512, 1, 4, 4), 1000, 0.1, "cpu")
    assert torch.equal(a.t, b.t) and torch.equal(a.noise, b.noise) and torch.equal(a.drop, b.drop)
    assert a.t.dtype == torch.long and 0 <= a.t.min() and a.t.max() < 1000 and a.drop.dtype == torch.bool
    assert 20 < a.drop.sum() < 90  # about 10% of 512
    assert abs(a.noise.mean()) < 0.05 and abs(a.noise.std() - 1) < 0.05
    # Another dropout rate (or none) changes the mask only; another rank or step changes everything.
    c = training_draws(key, (512, 1, 4, 4), 1000, 0.0, "cpu")
    assert c.drop is None and torch.equal(c.t, a.t) and torch.equal(c.noise, a.noise)
    for other in (training_key(0, 2, 0, 40), training_key(0, 2, 1, 41), training_key(0, 2, 1, 40, micro=1),
                  training_key(1, 2, 1, 40)):
        d = training_draws(other, (512, 1, 4, 4), 1000, 0.1, "cpu")
        assert (d.t != a.t).float().mean() > 0.9 and not torch.equal(d.noise, a.noise)
        assert not torch.equal(d.drop, a.drop)


def test_velocity_weighting_is_the_v_prediction_loss() -> None:
    """``loss_weights(..., "velocity") * mse`` equals ``||v - v_hat||^2`` written out from the v target
    ``sqrt(abar) eps - sqrt(1 - abar) x0`` and the x0 an eps prediction implies, with abar from numpy
    (tried: ``1 / sqrt(abar)`` fails by orders of magnitude at high t; ``1 / SNR`` fails at t = 1)."""
    x0, x_t, t, noise = _batch(t=[1, 10, 500, 999])
    eps_hat = noise + 0.1 * torch.randn(noise.shape, generator=torch.Generator().manual_seed(1), dtype=noise.dtype)
    mse = diffusion_loss(eps_hat, x0, x_t, t, noise, SCHEDULE, learn_sigma=False)["mse"]
    abar = torch.tensor(np.cumprod(1.0 - np.linspace(1e-4, 0.02, 1000))[t.numpy()]).view(-1, 1, 1, 1)
    x0_hat = (x_t - (1 - abar).sqrt() * eps_hat) / abar.sqrt()
    v_err = ((abar.sqrt() * noise - (1 - abar).sqrt() * x0) - (abar.sqrt() * eps_hat - (1 - abar).sqrt() * x0_hat))
    want = v_err.pow(2).mean(dim=(1, 2, 3))
    got = loss_weights(t, SCHEDULE, "velocity").double() * mse
    torch.testing.assert_close(got, want, rtol=1e-5, atol=0)
    assert torch.equal(loss_weights(t, SCHEDULE, "eps"), torch.ones(4))
    with pytest.raises(ValueError, match="velocity"):
        loss_weights(t, SCHEDULE, "x0")
