"""NoiseSchedule against diffusers' DDPMScheduler and against its own closed forms."""

import math

import pytest
import torch
from diffusers import DDPMScheduler

from diffclf.diffusion.schedule import NoiseSchedule


@pytest.fixture(scope="module")
def schedule() -> NoiseSchedule:
    return NoiseSchedule()


def test_tables_are_float64_and_match_diffusers(schedule: NoiseSchedule) -> None:
    ref = DDPMScheduler()
    assert schedule.alphas_cumprod.dtype == torch.float64
    assert schedule.num_timesteps == ref.config.num_train_timesteps == 1000
    torch.testing.assert_close(schedule.alphas_cumprod, ref.alphas_cumprod.double(), atol=1e-6, rtol=0)
    torch.testing.assert_close(schedule.betas, ref.betas.double(), atol=1e-8, rtol=0)
    assert schedule.alphas_cumprod_prev[0] == 1.0
    assert torch.all(schedule.alphas_cumprod.diff() < 0)


def test_q_sample_statistics(schedule: NoiseSchedule) -> None:
    gen = torch.Generator().manual_seed(0)
    n = 20_000
    for t_val in (0, 250, 999):
        t = torch.full((n,), t_val, dtype=torch.long)
        noise = torch.randn(n, 1, generator=gen, dtype=torch.float64)
        abar = schedule.alphas_cumprod[t_val].item()
        x_t = schedule.q_sample(torch.zeros(n, 1, dtype=torch.float64), t, noise)
        assert x_t.var().item() == pytest.approx(1 - abar, rel=0.05)
        x_t = schedule.q_sample(torch.full((n, 1), 0.5, dtype=torch.float64), t, noise)
        assert x_t.mean().item() == pytest.approx(0.5 * math.sqrt(abar), abs=4 * math.sqrt((1 - abar) / n) + 1e-12)


def test_q_sample_keeps_dtype_and_predict_x0_inverts(schedule: NoiseSchedule) -> None:
    x0 = torch.randn(3, 2, 4, 4)
    noise = torch.randn_like(x0)
    t = torch.tensor([0, 500, 999])
    x_t = schedule.q_sample(x0, t, noise)
    assert x_t.dtype == torch.float32
    torch.testing.assert_close(schedule.predict_x0_from_eps(x_t, t, noise), x0, atol=2e-4, rtol=1e-4)


def test_posterior_matches_diffusers_step(schedule: NoiseSchedule) -> None:
    """q(x_{t-1} | x_t, x0) is what diffusers' DDPM step samples with fixed_small variance and eps input."""
    ref = DDPMScheduler(clip_sample=False, variance_type="fixed_small")
    ref.set_timesteps(1000)
    x0 = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    eps = torch.randn_like(x0)
    for t_val in (1, 10, 500, 999):
        t = torch.full((2,), t_val)
        x_t = schedule.q_sample(x0, t, eps)
        mean, var, log_var = schedule.q_posterior(x0, x_t, t)
        # diffusers keeps float32 tables: 1 - abar loses ~1e-7 absolute, ~1e-3 relative at t = 1.
        assert var[0, 0, 0, 0].item() == pytest.approx(ref._get_variance(t_val).item(), rel=1e-3)
        torch.testing.assert_close(log_var, var.log())
        gen = torch.Generator().manual_seed(t_val)
        got = ref.step(eps.float(), t_val, x_t.float(), generator=gen).prev_sample.double()
        z = torch.randn(x0.shape, generator=torch.Generator().manual_seed(t_val))
        torch.testing.assert_close(got, mean + var.sqrt() * z, atol=1e-4, rtol=1e-4)


def test_posterior_at_zero_is_x0_and_log_variance_clipped(schedule: NoiseSchedule) -> None:
    x0 = torch.randn(1, 1, 2, 2, dtype=torch.float64)
    x_t = torch.randn_like(x0)
    mean, var, log_var = schedule.q_posterior(x0, x_t, torch.tensor([0]))
    torch.testing.assert_close(mean, x0)
    assert var.abs().max().item() == 0.0
    assert log_var[0, 0, 0, 0].item() == pytest.approx(math.log(schedule.posterior_variance[1].item()))


def test_snr_is_decreasing(schedule: NoiseSchedule) -> None:
    snr = schedule.snr(torch.arange(1000))
    assert snr.dtype == torch.float64 and torch.all(snr.diff() < 0)


@pytest.mark.parametrize(
    "kwargs", [{"num_timesteps": 1}, {"beta_start": 0.0}, {"beta_start": 0.03}, {"beta_end": 1.0}]
)
def test_bad_arguments_raise(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        NoiseSchedule(**kwargs)
