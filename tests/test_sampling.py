"""DDIM/DDPM sampling with oracle denoisers whose right answer is known in closed form."""

import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor

from diffclf.diffusion.sampling import (
    class_grid,
    guided_model_output,
    sample,
    save_image_grid,
    space_timesteps,
    spaced_tables,
)
from diffclf.diffusion.schedule import NoiseSchedule

SCHEDULE = NoiseSchedule()
SHAPE = (2, 4, 4)


class PointMassOracle:
    """The exact eps for data that is a point mass at ``targets[y]``: ``(x_t - sqrt(abar) c) / sqrt(1 - abar)``.

    ``learn_sigma`` appends ``v`` channels; ``calls`` records the batch sizes seen.
    """

    def __init__(self, targets: Tensor, learn_sigma: bool = False, v: float = 0.0) -> None:
        self.targets = targets
        self.num_classes = targets.shape[0] - 1  # the last row is the null class's target
        self.in_channels = targets.shape[1]
        self.learn_sigma = learn_sigma
        self.v = v
        self.calls: list[int] = []

    def __call__(self, x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        self.calls.append(x.shape[0])
        abar = SCHEDULE.extract(SCHEDULE.alphas_cumprod, t, x)
        eps = (x - abar.sqrt() * self.targets[y].to(x)) / (1 - abar).sqrt()
        if self.learn_sigma:
            eps = torch.cat([eps, torch.full_like(eps, self.v)], dim=1)
        return eps


def _targets(k: int = 3) -> Tensor:
    return torch.randn(k + 1, *SHAPE, generator=torch.Generator().manual_seed(7)).clamp(-1, 1)


def test_space_timesteps_matches_dit() -> None:
    assert space_timesteps(1000, 1000) == list(range(1000))
    assert space_timesteps(1000, 2) == [0, 999]
    assert space_timesteps(1000, 1) == [0]
    grid = space_timesteps(1000, 250)
    assert grid[0] == 0 and grid[-1] == 999 and len(set(grid)) == 250
    assert space_timesteps(10, 4) == [0, 3, 6, 9]
    with pytest.raises(ValueError):
        space_timesteps(1000, 0)
    with pytest.raises(ValueError):
        space_timesteps(1000, 1001)


def test_full_spacing_reproduces_the_schedule_and_respacing_keeps_marginals() -> None:
    full = spaced_tables(SCHEDULE, range(1000))
    torch.testing.assert_close(full["betas"], SCHEDULE.betas)
    torch.testing.assert_close(full["posterior_log_variance_clipped"], SCHEDULE.posterior_log_variance_clipped)
    torch.testing.assert_close(full["posterior_mean_coef2"], SCHEDULE.posterior_mean_coef2)
    idx = space_timesteps(1000, 25)
    spaced = spaced_tables(SCHEDULE, idx)
    torch.testing.assert_close(torch.cumprod(1 - spaced["betas"], 0), SCHEDULE.alphas_cumprod[idx])
    with pytest.raises(ValueError):
        spaced_tables(SCHEDULE, [5, 3])


@pytest.mark.parametrize("method,steps", [("ddim", 10), ("ddim", 1000), ("ddpm", 10), ("ddpm", 1000)])
def test_oracle_lands_on_the_point_mass(method: str, steps: int) -> None:
    targets = _targets()
    labels = torch.tensor([0, 1, 2, 1])
    out = sample(PointMassOracle(targets), labels, SHAPE, SCHEDULE, method=method, steps=steps,
                 generator=torch.Generator().manual_seed(0))
    assert out.shape == (4, *SHAPE)
    torch.testing.assert_close(out, targets[labels], atol=1e-4, rtol=0)


def test_ddpm_intermediate_marginal_is_the_forward_marginal() -> None:
    """With the oracle and the fixed small variance each DDPM step samples q(x_{t-1} | x_t, c) exactly,
    so the state the model sees at the middle of a 3-step chain is N(sqrt(abar) c, 1 - abar)."""
    target = torch.full((2, 1, 1, 1), 0.5)
    oracle = PointMassOracle(target)
    seen: dict[int, Tensor] = {}

    def model(x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        seen[int(t[0])] = x.clone()
        return oracle(x, t, y)

    n = 20_000
    sample(model, torch.zeros(n, dtype=torch.long), (1, 1, 1), SCHEDULE, method="ddpm", steps=3,
           generator=torch.Generator().manual_seed(0))
    middle = space_timesteps(1000, 3)[1]
    abar = SCHEDULE.alphas_cumprod[middle].item()
    assert seen[middle].var().item() == pytest.approx(1 - abar, rel=0.03)  # "large" would give ~0.999
    assert seen[middle].mean().item() == pytest.approx(0.5 * math.sqrt(abar), abs=4 * math.sqrt(1 / n))


def test_ddpm_learned_variance_step_matches_hand_computation() -> None:
    """Two respaced steps (t = 999, 0) with a constant model output [e, v], in numpy float64 as DiT does."""
    e, v = 0.3, 0.4

    def model(x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        return torch.cat([torch.full_like(x, e), torch.full_like(x, v)], dim=1)

    got = sample(model, torch.tensor([0]), (1, 1, 1), SCHEDULE, method="ddpm", steps=2,
                 generator=torch.Generator().manual_seed(3))
    gen = torch.Generator().manual_seed(3)
    x_T = torch.randn(1, 1, 1, 1, generator=gen).item()
    z = torch.randn(1, 1, 1, 1, generator=gen).item()

    betas = np.linspace(1e-4, 0.02, 1000)
    abar = np.cumprod(1 - betas)[[0, 999]]
    new_betas = 1 - abar / np.append(1.0, abar[:-1])
    abar_prev = np.append(1.0, abar[:-1])
    post_var = new_betas * (1 - abar_prev) / (1 - abar)
    min_log, max_log = np.log(post_var[1]), np.log(new_betas[1])
    log_var = (v + 1) / 2 * max_log + (1 - (v + 1) / 2) * min_log
    x0 = np.sqrt(1 / abar[1]) * x_T - np.sqrt(1 / abar[1] - 1) * e
    mean = (new_betas[1] * np.sqrt(abar_prev[1]) * x0 + (1 - abar_prev[1]) * np.sqrt(1 - new_betas[1]) * x_T) / (
        1 - abar[1]
    )
    x_mid = mean + np.exp(0.5 * log_var) * z
    expected = np.sqrt(1 / abar[0]) * x_mid - np.sqrt(1 / abar[0] - 1) * e
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_cfg_scale_one_is_unguided_and_guidance_formula() -> None:
    targets = _targets()
    labels = torch.tensor([0, 2])
    plain = sample(PointMassOracle(targets), labels, SHAPE, SCHEDULE, steps=5,
                   generator=torch.Generator().manual_seed(1))
    one = sample(PointMassOracle(targets), labels, SHAPE, SCHEDULE, steps=5, cfg_scale=1.0,
                 generator=torch.Generator().manual_seed(1))
    assert torch.equal(plain, one)

    oracle = PointMassOracle(targets, learn_sigma=True, v=0.5)
    x = torch.randn(2, *SHAPE)
    t = torch.tensor([400, 400])
    cond, uncond = oracle(x, t, labels), oracle(x, t, torch.full_like(labels, 3))
    for scale in (1.0, 4.0):
        out = guided_model_output(oracle, x, t, labels, scale, null_class=3, channels=2)
        torch.testing.assert_close(out[:, :2], uncond[:, :2] + scale * (cond[:, :2] - uncond[:, :2]))
        torch.testing.assert_close(out[:, 2:], cond[:, 2:])


def test_guided_oracle_lands_on_the_extrapolated_point() -> None:
    """Guidance on a point-mass oracle is the oracle of ``c_null + s (c_y - c_null)``."""
    targets = _targets()
    labels = torch.tensor([0, 1])
    oracle = PointMassOracle(targets)
    out = sample(oracle, labels, SHAPE, SCHEDULE, steps=8, cfg_scale=2.0,
                 generator=torch.Generator().manual_seed(0))
    expected = targets[3] + 2.0 * (targets[labels] - targets[3])
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=0)
    assert set(oracle.calls) == {4}, "guidance runs the conditional and null halves in one doubled batch"


def test_null_class_and_in_channels_kwargs_for_plain_callables() -> None:
    targets = _targets()
    oracle = PointMassOracle(targets)

    def bare(x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        return oracle(x, t, y)

    with pytest.raises(ValueError):
        sample(bare, torch.tensor([0]), SHAPE, SCHEDULE, steps=2, cfg_scale=3.0)
    out = sample(bare, torch.tensor([0]), SHAPE, SCHEDULE, steps=2, cfg_scale=3.0, null_class=3, in_channels=2)
    torch.testing.assert_close(out, targets[3] + 3.0 * (targets[[0]] - targets[3]), atol=1e-4, rtol=0)
    with pytest.raises(ValueError):
        sample(bare, torch.tensor([0]), SHAPE, SCHEDULE, in_channels=4)


@pytest.mark.parametrize("method,eta", [("ddim", 0.0), ("ddim", 1.0), ("ddpm", 0.0)])
def test_seeded_generator_is_deterministic(method: str, eta: float) -> None:
    targets = _targets()

    def noisy(x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        return 0.5 * PointMassOracle(targets, learn_sigma=True)(x, t, y)

    kwargs = {"method": method, "steps": 6, "eta": eta}
    a = sample(noisy, [0, 1], SHAPE, SCHEDULE, generator=torch.Generator().manual_seed(5), **kwargs)
    b = sample(noisy, [0, 1], SHAPE, SCHEDULE, generator=torch.Generator().manual_seed(5), **kwargs)
    c = sample(noisy, [0, 1], SHAPE, SCHEDULE, generator=torch.Generator().manual_seed(6), **kwargs)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


@pytest.mark.parametrize("method", ["ddim", "ddpm"])
def test_learned_sigma_outputs_give_c_channel_samples(method: str) -> None:
    targets = _targets()
    oracle = PointMassOracle(targets, learn_sigma=True, v=0.2)
    out = sample(oracle, torch.tensor([1, 2, 0]), (3, *SHAPE), SCHEDULE, method=method, steps=4,
                 generator=torch.Generator().manual_seed(0))
    assert out.shape == (3, *SHAPE)
    torch.testing.assert_close(out, targets[[1, 2, 0]], atol=1e-4, rtol=0)


def test_clip_denoised_bounds_the_output() -> None:
    far = torch.full((2, *SHAPE), 3.0)
    out = sample(PointMassOracle(far), [0], SHAPE, SCHEDULE, steps=4, clip_denoised=True,
                 generator=torch.Generator().manual_seed(0))
    assert out.abs().max().item() <= 1.0
    unclipped = sample(PointMassOracle(far), [0], SHAPE, SCHEDULE, steps=4,
                       generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(unclipped, far[:1], atol=1e-3, rtol=0)


def test_bad_arguments_raise() -> None:
    oracle = PointMassOracle(_targets())
    for kwargs in ({"method": "euler"}, {"steps": 0}, {"eta": -1.0}, {"fixed_variance": "medium"}):
        with pytest.raises(ValueError):
            sample(oracle, [0], SHAPE, SCHEDULE, **kwargs)
    with pytest.raises(ValueError):
        sample(oracle, [0, 1], (3, *SHAPE), SCHEDULE)


def test_class_grid_rows_are_ordered_by_class(tmp_path) -> None:
    targets = _targets()
    out = class_grid(PointMassOracle(targets), [2, 0], 3, SHAPE, SCHEDULE, steps=4,
                     generator=torch.Generator().manual_seed(0))
    assert out.shape == (6, *SHAPE)
    torch.testing.assert_close(out, targets[[2, 2, 2, 0, 0, 0]], atol=1e-4, rtol=0)

    images = torch.linspace(-1, 1, 6).view(6, 1, 1, 1).expand(6, 3, 8, 8)
    path = save_image_grid(images, tmp_path / "grid" / "g.png", nrow=3)
    with Image.open(path) as img:
        assert img.size == (3 * 8 + 4 * 2, 2 * 8 + 3 * 2)  # make_grid's default 2-pixel padding
        pixels = np.asarray(img.convert("L"))
    assert pixels[2 + 4, 2 + 4] == 0 and pixels[2 + 8 + 2 + 4, 2 + 2 * 10 + 4] == 255
