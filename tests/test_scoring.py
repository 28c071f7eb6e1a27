"""The scoring engine against hand computations: x_t, per-draw errors, weighting, draws and batching."""

from __future__ import annotations

import math
from itertools import pairwise

import pytest
import torch
from torch import Tensor, nn

from diffclf.diffusion.schedule import NoiseSchedule
from diffclf.diffusion.scoring import Scorer, spread_order

SCHEDULE = NoiseSchedule()
SHAPE = (2, 4, 4)
NUM_CLASSES = 7


def smooth_denoiser(x_t: Tensor, t: Tensor, y: Tensor) -> Tensor:
    """Elementwise in the sample, so its output never depends on which batch a sample is in."""
    return 0.9 * x_t + 0.05 * y.view(-1, 1, 1, 1).float() + t.view(-1, 1, 1, 1).float() / 2000


def hand_errors(
    scorer: Scorer, x: Tensor, index: Tensor, cand: Tensor, stop: int, error: str = "l2"
) -> Tensor:
    """``(B, M, stop)`` errors of ``smooth_denoiser`` computed in float64 from the scorer's own draws."""
    t = scorer.timesteps(index, 0, stop)  # (B, D)
    eps = scorer.noise(index, 0, stop, x.shape[1:]).double()  # (B, D, C, H, W)
    abar = SCHEDULE.alphas_cumprod[t].view(*t.shape, 1, 1, 1)
    x_t = abar.sqrt() * x.double().unsqueeze(1) + (1 - abar).sqrt() * eps
    out = []
    for m in cand.tolist():
        pred = 0.9 * x_t + 0.05 * m + t.view(*t.shape, 1, 1, 1).double() / 2000
        diff = pred - eps
        out.append(diff.square().mean(dim=(2, 3, 4)) if error == "l2" else diff.abs().mean(dim=(2, 3, 4)))
    return torch.stack(out, dim=1)


def make(denoise=smooth_denoiser, max_draws: int = 12, **kwargs: object) -> Scorer:
    kwargs.setdefault("num_classes", NUM_CLASSES)
    return Scorer(denoise, SCHEDULE, SHAPE[0], max_draws=max_draws, **kwargs)


def images(n: int, seed: int = 0) -> Tensor:
    return torch.rand(n, *SHAPE, generator=torch.Generator().manual_seed(seed)) * 2 - 1


class Recorder:
    """Remembers every (x_t, t, y) it was called with."""

    def __init__(self) -> None:
        self.calls: list[tuple[Tensor, Tensor, Tensor]] = []

    def __call__(self, x_t: Tensor, t: Tensor, y: Tensor) -> Tensor:
        self.calls.append((x_t.clone(), t.clone(), y.clone()))
        return smooth_denoiser(x_t, t, y)


@pytest.mark.parametrize("error", ["l2", "l1"])
def test_x_t_and_per_draw_errors_match_a_hand_computation(error: str) -> None:
    rec = Recorder()
    scorer = make(rec, max_draws=6, error=error, batch_size=5)
    x, index, cand = images(2), torch.tensor([3, 8]), torch.tensor([4, 0, 6])
    table = scorer.new_table(x, cand)
    spent = scorer.score(table, x, index, 0, 6)
    assert spent == 2 * 3 * 6 and table.forwards.tolist() == [18, 18]
    assert all(len(c[0]) <= 5 for c in rec.calls) and sum(len(c[0]) for c in rec.calls) == 36
    torch.testing.assert_close(
        table.errors.double(), hand_errors(scorer, x, index, cand, 6, error), rtol=1e-5, atol=1e-6
    )
    # Each x_t is sqrt(abar_t) x + sqrt(1 - abar_t) eps for one of the image's draws.
    t_all = scorer.timesteps(index, 0, 6)
    eps = scorer.noise(index, 0, 6, SHAPE)
    x_t, t, y = (torch.cat(v) for v in zip(*rec.calls))
    abar = SCHEDULE.alphas_cumprod.float()
    for b in range(2):
        want = (
            abar[t_all[b]].sqrt().view(-1, 1, 1, 1) * x[b]
            + (1 - abar[t_all[b]]).sqrt().view(-1, 1, 1, 1) * eps[b]
        )
        for k in range(6):
            hits = [(x_t[j] - want[k]).abs().max() < 1e-5 and t[j] == t_all[b, k] for j in range(len(t))]
            assert sum(hits) == 3  # once per candidate class
    assert sorted(y.tolist()) == sorted([4, 0, 6] * 12)


class FixedNet(nn.Module):
    """A small deterministic denoiser (seeded conv + class embedding + timestep term)."""

    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(3)
        self.conv = nn.Conv2d(SHAPE[0], SHAPE[0], 3, padding=1)
        with torch.no_grad():
            self.conv.weight.copy_(0.3 * torch.randn(self.conv.weight.shape, generator=gen))
            self.conv.bias.copy_(0.1 * torch.randn(SHAPE[0], generator=gen))
        self.emb = nn.Parameter(0.2 * torch.randn(NUM_CLASSES, SHAPE[0], generator=gen))

    def forward(self, x_t: Tensor, t: Tensor, y: Tensor) -> Tensor:
        return self.conv(x_t) + self.emb[y].view(-1, SHAPE[0], 1, 1) + (t.float() / 1000).view(-1, 1, 1, 1)


@pytest.mark.parametrize("error", ["l2", "l1"])
def test_exp_weighting_is_exp_rate_t_over_snr(error: str) -> None:
    # The stored error is the x0-space error of the denoiser's own output, times exp(-rate t / T), for
    # both errors: x0_hat = (x_t - sqrt(1-abar) eps_hat) / sqrt(abar), then mean |x0 - x0_hat| (l1) or
    # mean (x0 - x0_hat)^2 (l2). Nothing here uses the scorer's SNR factors.
    net = FixedNet()
    x, index, cand = images(2, seed=5), torch.tensor([2, 9]), torch.tensor([6, 1, 3])
    scorer = make(net, max_draws=16, error=error, weighting="exp", weight_rate=6.0, batch_size=11)
    table = scorer.new_table(x, cand)
    scorer.score(table, x, index, 0, 16)
    t = scorer.timesteps(index, 0, 16)
    eps = scorer.noise(index, 0, 16, SHAPE)
    abar = SCHEDULE.alphas_cumprod.double()
    want = torch.empty(2, 3, 16, dtype=torch.float64)
    for b in range(2):
        for k in range(16):
            a = abar[t[b, k]]
            x0 = x[b].double()
            x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps[b, k].double()
            for j, c in enumerate(cand.tolist()):
                with torch.no_grad():
                    eps_hat = net(x_t.float()[None], t[b, k : k + 1], torch.tensor([c]))[0].double()
                x0_hat = (x_t - (1 - a).sqrt() * eps_hat) / a.sqrt()
                gap = x0 - x0_hat
                per_draw = gap.abs().mean() if error == "l1" else gap.square().mean()
                want[b, j, k] = math.exp(-6.0 * int(t[b, k]) / 1000) * per_draw
    torch.testing.assert_close(table.errors.double(), want, rtol=2e-4, atol=0)
    # The x0-space weight is tiny at t=0 relative to the noisy end: the weighting really applies.
    assert scorer.weights()[0] < 0.02 < scorer.weights()[999]


@pytest.mark.parametrize("error", ["l2", "l1"])
def test_exp_weighting_is_the_x0_space_error_times_exp_rate_t(error: str) -> None:
    # Independent of the scorer's formula: x0_hat recovered from the prediction, the error taken in x0-space.
    x, index, cand = images(2), torch.tensor([3, 4]), torch.tensor([0, 5])
    scorer = make(weighting="exp", weight_rate=7.0, error=error)
    table = scorer.new_table(x, cand)
    scorer.score(table, x, index, 0, 12)
    t = scorer.timesteps(index, 0, 12)
    eps = scorer.noise(index, 0, 12, x.shape[1:]).double()
    abar = SCHEDULE.alphas_cumprod[t].view(*t.shape, 1, 1, 1)
    x0 = x.double().unsqueeze(1)
    x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * eps
    want = []
    for m in cand.tolist():
        eps_hat = 0.9 * x_t + 0.05 * m + t.view(*t.shape, 1, 1, 1).double() / 2000
        x0_hat = (x_t - (1 - abar).sqrt() * eps_hat) / abar.sqrt()
        diff = x0 - x0_hat
        per_draw = diff.square().mean(dim=(2, 3, 4)) if error == "l2" else diff.abs().mean(dim=(2, 3, 4))
        want.append(torch.exp(-7.0 * t.double() / 1000) * per_draw)
    torch.testing.assert_close(table.errors.double(), torch.stack(want, dim=1), rtol=1e-4, atol=0)


def test_learned_sigma_uses_only_the_first_in_channels() -> None:
    def two_c(x_t: Tensor, t: Tensor, y: Tensor) -> Tensor:
        return torch.cat([smooth_denoiser(x_t, t, y), torch.full_like(x_t, 1e3)], dim=1)

    x, index = images(2), torch.tensor([5, 6])
    ta, tb = make().new_table(x), make(two_c).new_table(x)
    make().score(ta, x, index, 0, 4)
    make(two_c).score(tb, x, index, 0, 4)
    torch.testing.assert_close(ta.errors, tb.errors, rtol=0, atol=0, equal_nan=True)
    too_few = make(lambda x_t, t, y: x_t[:, :1])
    with pytest.raises(ValueError, match="fewer than in_channels"):
        too_few.score(too_few.new_table(x), x, index, 0, 1)


@pytest.mark.parametrize("noise", ["per_image", "shared"])
@pytest.mark.parametrize("design", ["even", "stratified"])
def test_tables_do_not_depend_on_batch_size_or_batch_company(noise: str, design: str) -> None:
    x, index = images(4), torch.tensor([11, 3, 7, 0])
    cand = torch.tensor([[0, 1, 2], [3, 4, 5], [6, 0, 1], [2, 3, 4]])
    tables = []
    for bs in (1, 64):
        scorer = make(batch_size=bs, noise=noise, design=design)
        table = scorer.new_table(x, cand)
        scorer.score(table, x, index, 0, 12)
        tables.append(table.errors)
    assert torch.equal(tables[0], tables[1])
    # Image 7 alone, scored in two pieces by a fresh scorer (a restart), gets its row of the batch.
    scorer = make(batch_size=7, noise=noise, design=design)
    alone = scorer.new_table(x[2:3], cand[2:3])
    scorer.score(alone, x[2:3], index[2:3], 0, 5)
    scorer.score(alone, x[2:3], index[2:3], 5, 12)
    assert torch.equal(alone.errors[0], tables[0][2])
    assert alone.forwards.tolist() == [36]


def test_draws_depend_on_the_index_unless_shared() -> None:
    idx = torch.tensor([1, 2])
    per_image = make(design="uniform").noise(idx, 0, 3, SHAPE)
    assert not torch.equal(per_image[0], per_image[1])
    assert not torch.equal(make(design="uniform").timesteps(idx)[0], make(design="uniform").timesteps(idx)[1])
    assert torch.equal(make(seed=0).noise(idx, 0, 3, SHAPE), per_image)  # a restart draws the same
    assert not torch.equal(make(seed=1).noise(idx, 0, 3, SHAPE), per_image)
    shared = make(noise="shared", design="uniform")
    assert torch.equal(shared.noise(idx, 0, 3, SHAPE)[0], shared.noise(idx, 0, 3, SHAPE)[1])
    assert torch.equal(shared.timesteps(idx)[0], shared.timesteps(idx)[1])
    # Draw k is the same whether asked for alone or in a range.
    assert torch.equal(make().noise(idx, 2, 3, SHAPE)[:, 0], make().noise(idx, 0, 3, SHAPE)[:, 2])


def test_bf16_autocast_runs_and_accumulates_in_fp32() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.conv = nn.Conv2d(2, 2, 3, padding=1)
            self.emb = nn.Embedding(NUM_CLASSES, 2)
            self.dtypes: list[torch.dtype] = []

        def forward(self, x_t: Tensor, t: Tensor, y: Tensor) -> Tensor:
            h = self.conv(x_t)
            self.dtypes.append(h.dtype)
            return h + self.emb(y)[:, :, None, None]

    net = Net()
    x, index = images(3), torch.arange(3)
    fp32, bf16 = make(net), make(net, autocast_dtype=torch.bfloat16)
    t32, t16 = fp32.new_table(x), bf16.new_table(x)
    fp32.score(t32, x, index, 0, 12)
    net.dtypes.clear()
    bf16.score(t16, x, index, 0, 12)
    assert set(net.dtypes) == {torch.bfloat16}
    assert t16.errors.dtype == torch.float32 and t16.mean_error().dtype == torch.float32
    assert not torch.equal(t16.errors, t32.errors)
    torch.testing.assert_close(t16.mean_error(), t32.mean_error(), rtol=3e-2, atol=1e-3)


def test_even_design_is_the_reference_grid_and_every_prefix_is_spread() -> None:
    for n, (lo, hi) in [(250, (0, 1000)), (100, (0, 1000)), (1000, (0, 1000)), (50, (200, 700))]:
        scorer = make(max_draws=n, t_range=None if (lo, hi) == (0, 1000) else (lo, hi))
        t = scorer.timesteps(torch.tensor([0]))[0].tolist()
        step = (hi - lo) // n
        assert sorted(t) == [lo + step // 2 + k * step for k in range(n)]
        for m in range(1, n + 1):
            s = sorted(t[:m])
            gaps = [s[0] - lo] + [b - a for a, b in pairwise(s)] + [hi - s[-1]]
            assert max(gaps) <= 4 * (hi - lo) / m, (n, m, max(gaps))
    assert scorer.timesteps(torch.tensor([0]))[0, :4].tolist() == [205, 525, 365, 685]
    assert spread_order(8) == [0, 4, 2, 6, 1, 5, 3, 7]
    # 250 draws (the paper's DiT setting): t = 2, 6, ..., 998.
    assert sorted(make(max_draws=250).timesteps(torch.tensor([0]))[0].tolist()) == list(range(2, 1000, 4))


def test_stratified_and_uniform_designs_stay_in_range() -> None:
    n = 40
    strat = make(max_draws=n, design="stratified", t_range=(100, 500))
    for i in range(3):
        t = strat.timesteps(torch.tensor([i]))[0]
        strata = sorted(((t - 100) * n // 400).tolist())
        assert strata == list(range(n))  # one draw per stratum
        for m in range(1, n + 1):  # every prefix is spread like the even grid's (plus one stratum)
            s = sorted(t[:m].tolist())
            gaps = [s[0] - 100] + [b - a for a, b in pairwise(s)] + [500 - s[-1]]
            assert max(gaps) <= 4 * 400 / m + 400 / n
    uni = make(max_draws=500, design="uniform", t_range=(10, 20)).timesteps(torch.tensor([0, 1]))
    assert uni.min() >= 10 and uni.max() <= 19 and len(set(uni.flatten().tolist())) == 10


def test_table_helpers_and_partial_scoring() -> None:
    x, index = images(2), torch.tensor([0, 1])
    scorer = make()
    table = scorer.new_table(x, torch.tensor([1, 2, 3]))
    active = torch.tensor([[True, False, True], [False, False, False]])
    assert scorer.score(table, x, index, 0, 4, active) == 8
    assert table.forwards.tolist() == [8, 0]
    assert table.counts.tolist() == [[4, 0, 4], [0, 0, 0]]
    err = table.errors[0, 0, :4]
    torch.testing.assert_close(table.sums()[0, 0], err.sum())
    torch.testing.assert_close(table.sq_sums()[0, 0], err.square().sum())
    mean = table.mean_error()
    assert torch.isnan(mean[0, 1]) and torch.isnan(mean[1]).all()
    torch.testing.assert_close(mean[0, 2], table.errors[0, 2, :4].mean())
    assert torch.isnan(table.errors[0, 0, 4:]).all()
    assert scorer.score(table, x, index, 0, 4, torch.zeros(2, 3, dtype=torch.bool)) == 0


def test_bad_class_ids_and_ranges_are_rejected() -> None:
    scorer, x = make(), images(2)
    with pytest.raises(ValueError, match=r"class id 7 is outside the model's classes \[0, 7\)"):
        scorer.new_table(x, torch.tensor([0, 7]))
    with pytest.raises(ValueError, match=r"class id -1 is outside"):
        scorer.new_table(x, torch.tensor([[0, 1], [-1, 2]]))
    with pytest.raises(ValueError, match="candidates must be"):
        scorer.new_table(x, torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="max_draws"):
        scorer.score(scorer.new_table(x), x, torch.arange(2), 0, 13)
    with pytest.raises(ValueError, match="t_range"):
        make(t_range=(500, 500))
    with pytest.raises(ValueError, match="design"):
        make(design="grid")
    with pytest.raises(ValueError, match="num_classes"):
        Scorer(smooth_denoiser, SCHEDULE, 2, max_draws=3)


def test_device_follows_the_denoiser_or_the_last_call() -> None:
    net = nn.Linear(1, 1)
    assert make(net).device == torch.device("cpu")
    plain = make()
    assert plain.device == torch.device("cpu")
    x = images(1)
    plain.score(plain.new_table(x), x, torch.tensor([0]), 0, 1)
    assert plain.device == x.device
    assert make(net).num_classes == NUM_CLASSES and make(max_draws=9).max_draws == 9
    assert math.isclose(
        float(make(weighting="exp").weights()[500]),
        math.exp(-3.5) / float(SCHEDULE.snr(torch.tensor(500))),
        rel_tol=1e-6,
    )


@pytest.mark.parametrize("max_draws", [8, 12, 100, 250])
def test_mirrored_views_split_every_prefix_and_every_quarter_of_the_range(max_draws: int) -> None:
    scorer = make(max_draws=max_draws, flip_views=True)
    views = scorer.mirrored()
    t = scorer.timesteps(torch.tensor([0]))[0]
    for k in range(1, max_draws + 1):  # every prefix: half of each view, to within two draws
        assert abs(2 * int(views[:k].sum()) - k) <= 3, k
    for lo in range(0, SCHEDULE.num_timesteps, 250):  # every quarter of the range: half, to within one draw
        quarter = (t >= lo) & (t < lo + 250)
        assert abs(2 * int(views[quarter].sum()) - int(quarter.sum())) <= 1, lo
    assert not make(max_draws=max_draws).mirrored().any()


def test_a_mirrored_draw_scores_the_mirror_image_and_the_others_the_image() -> None:
    x, index, cand = images(3), torch.arange(3), torch.arange(NUM_CLASSES)
    # A denoiser that is not mirror-symmetric, so a wrong view would change the errors.
    def lopsided(x_t: Tensor, t: Tensor, y: Tensor) -> Tensor:
        return smooth_denoiser(x_t, t, y) + 0.3 * x_t.cumsum(-1)

    tables = {}
    for name, img, flip in (("views", x, True), ("plain", x, False), ("mirror", x.flip(-1), False)):
        scorer = make(lopsided, max_draws=16, flip_views=flip, batch_size=29)
        table = scorer.new_table(img, cand)
        scorer.score(table, img, index, 0, 16)
        tables[name] = table.errors
    views = make(max_draws=16, flip_views=True).mirrored()
    assert 0 < int(views.sum()) < 16
    assert torch.equal(tables["views"][:, :, views], tables["mirror"][:, :, views])
    assert torch.equal(tables["views"][:, :, ~views], tables["plain"][:, :, ~views])
    assert not torch.allclose(tables["plain"][:, :, views], tables["mirror"][:, :, views])


def test_a_custom_draw_order_moves_the_grid_positions_and_nothing_else() -> None:
    n, index, x = 12, torch.tensor([4, 7]), images(2)
    order = [5, 11, 0, 6, 1, 2, 3, 4, 7, 8, 9, 10]
    default, explicit = make(max_draws=n), make(max_draws=n, order=spread_order(n))
    custom = make(max_draws=n, order=order)
    assert default.has_order(None) and explicit.has_order(None) and not custom.has_order(None)
    assert custom.has_order(order) and not custom.has_order(spread_order(n))
    assert default.has_order(spread_order(n))
    # The default order passed explicitly is the default, byte for byte (views included).
    assert torch.equal(explicit.timesteps(index), default.timesteps(index))
    a, b = make(max_draws=n, flip_views=True), make(max_draws=n, flip_views=True, order=spread_order(n))
    assert torch.equal(a.mirrored(), b.mirrored())
    ta, tb = a.new_table(x), b.new_table(x)
    a.score(ta, x, index, 0, n)
    b.score(tb, x, index, 0, n)
    assert torch.equal(ta.errors, tb.errors)
    # Draw k lies at grid position order[k]; its noise is still that of (seed, index, k).
    grid = sorted(default.timesteps(index)[0].tolist())
    assert custom.timesteps(index)[0].tolist() == [grid[p] for p in order]
    assert torch.equal(custom.noise(index, 0, n, SHAPE), default.noise(index, 0, n, SHAPE))
    # Stratified: draw k falls in stratum order[k].
    strat = make(max_draws=n, design="stratified", order=order).timesteps(index)
    assert (strat * n // 1000).tolist() == [order, order]
    # Views of a custom order follow the draw index (Thue-Morse of k): every run of draws is split in half.
    views = make(max_draws=n, flip_views=True, order=order).mirrored()
    assert views.tolist() == [k.bit_count() % 2 == 1 for k in range(n)]
    for bad in ([0] * n, list(range(n - 1)), list(range(1, n + 1))):
        with pytest.raises(ValueError, match=r"permutation of range\(max_draws=12\)"):
            make(max_draws=n, order=bad)


@pytest.mark.parametrize("max_draws", [12, 13])
def test_antithetic_pairs_negate_the_noise_at_neighbouring_timesteps_and_share_a_view(max_draws: int) -> None:
    index, x, cand = torch.tensor([2, 9]), images(2), torch.tensor([1, 5])
    anti = make(max_draws=max_draws, antithetic=True, flip_views=True)
    plain = make(max_draws=max_draws)
    eps, t, views = anti.noise(index, 0, max_draws, SHAPE), anti.timesteps(index), anti.mirrored()
    pairs = max_draws // 2
    grid = sorted(plain.timesteps(index)[0].tolist())
    # Same grid, all draws together; partners at neighbouring grid positions, pairs spread like the plain order.
    assert sorted(t[0].tolist()) == grid
    for m in range(pairs):
        assert torch.equal(eps[:, 2 * m + 1], -eps[:, 2 * m])
        assert grid.index(int(t[0, 2 * m + 1])) == grid.index(int(t[0, 2 * m])) + 1
        assert views[2 * m] == views[2 * m + 1]
    assert [grid.index(int(v)) // 2 for v in t[0, : 2 * pairs : 2]] == spread_order(pairs)
    # The first draw of each pair keeps its own noise; an odd last draw is unpaired.
    assert torch.equal(eps[:, ::2], plain.noise(index, 0, max_draws, SHAPE)[:, ::2])
    if max_draws % 2:
        assert t[0, -1] == grid[-1] and not torch.equal(eps[:, -1], -eps[:, -2])
    # Pairs split the two views evenly; a partial call is the slice of a full one.
    assert abs(2 * int(views.sum()) - max_draws) <= 2
    assert torch.equal(anti.noise(index, 3, 7, SHAPE), eps[:, 3:7])
    # The errors are those of the draws: partners (same x, -eps) give different errors.
    table = anti.new_table(x, cand)
    anti.score(table, x, index, 0, max_draws)
    hand = hand_errors(make(max_draws=max_draws, antithetic=True), x, index, cand, max_draws)
    torch.testing.assert_close(table.errors[..., ~views].double(), hand[..., ~views], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(table.errors[..., 0], table.errors[..., 1])


def test_antithetic_refuses_what_it_cannot_pair() -> None:
    with pytest.raises(ValueError, match="design even or stratified"):
        make(antithetic=True, design="uniform")
    with pytest.raises(ValueError, match="no noise bank"):
        make(antithetic=True, noise_bank=torch.zeros(12, *SHAPE))
    with pytest.raises(ValueError, match="own pair order"):
        make(antithetic=True, order=spread_order(12))
    assert make(max_draws=12, antithetic=True, design="stratified").timesteps(torch.tensor([0])).shape == (1, 12)


def _variant_draws(max_draws: int, variants: int, order: list[int] | None = None) -> list[tuple[int, int]]:
    """(timestep, variant) of every draw of one candidate, in draw order, from what the denoiser was given."""
    seen: list[tuple[Tensor, Tensor]] = []

    def record(x_t: Tensor, t: Tensor, y: Tensor) -> Tensor:
        seen.append((t.clone(), y.clone()))
        return torch.zeros_like(x_t)

    scorer = Scorer(record, SCHEDULE, SHAPE[0], max_draws=max_draws, num_classes=1, variants=variants, order=order)
    x = images(1)
    for k in range(max_draws):  # one call per draw keeps the draw order in what was recorded
        scorer.score(scorer.new_table(x, torch.tensor([0])), x, torch.tensor([0]), k, k + 1)
    return [(int(t), int(y) % variants) for ts, ys in seen for t, y in zip(ts, ys)]


@pytest.mark.parametrize(("max_draws", "variants", "ascending"), [(128, 2, False), (100, 3, False), (100, 18, True)])
def test_every_template_covers_the_whole_timestep_range(max_draws: int, variants: int, ascending: bool) -> None:
    # With `k % V` in the default (bit-reversed) order, two templates split the range: one saw only t < 500.
    draws = _variant_draws(max_draws, variants, list(range(max_draws)) if ascending else None)
    by_t = sorted(draws)
    full = max_draws // variants * variants
    for s in range(0, full, variants):  # every V neighbouring timesteps take every template once
        assert sorted(v for _, v in by_t[s:s + variants]) == list(range(variants)), by_t[s:s + variants]
    grid = [t for t, _ in by_t]
    for v in range(variants):  # from the first block to the last full one
        ts = [t for t, w in draws if w == v]
        assert min(ts) <= grid[variants - 1] and max(ts) >= grid[full - variants]
    if variants == 2 and not ascending:  # and every even prefix of the draw order is balanced (Thue-Morse)
        for n in range(2, max_draws + 1, 2):
            assert sum(v for _, v in draws[:n]) == n // 2
