"""Racing (diffclf.strategies.Racing) against an independent re-implementation, the exhaustive answer,
and the timestep profile it is fitted with."""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from diffclf.strategies import Exhaustive, Racing, fit_timestep_profile
from diffclf.strategies.replay import ReplayScorer

N, K, D = 60, 6, 40


def synthetic_table(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-draw errors whose scale falls with t (as a real denoiser's do) and whose class gaps are noisy:
    ``(N, K, D)`` errors in the replay scorer's draw order, and the true class per image."""
    g = torch.Generator().manual_seed(seed)
    scorer = ReplayScorer(torch.zeros(1, K, D), {0: 0}, K)
    t = scorer.timesteps(torch.tensor([0]))[0].double()
    scale = torch.exp(-t / 200.0)  # 1 at t=0 down to ~0.007 at t=1000
    target = torch.randint(0, K, (N,), generator=g)
    gap = 0.3 * torch.rand(N, K, 1, generator=g, dtype=torch.float64) + 0.05
    gap[torch.arange(N), target] = 0.0
    noise = torch.randn(N, K, D, generator=g, dtype=torch.float64)
    errors = (1.0 + gap + 0.4 * noise) * scale
    return errors.float(), target


def reference_racing(
    errors, timesteps, threshold, min_trials, round_size, scale=None, snr=None, T=1000, pooled=False, cap=None
):
    """An image-at-a-time racing loop written from the method's description, not from the package.

    ``pooled``: every rival is tested with the lower median of the rivals' paired variances; ``cap``: the
    most draws any class gets.
    """
    out_pred, out_fwd = [], []
    D = errors.shape[-1]
    last = D if cap is None else cap
    bins = len(scale or snr or [1])
    b = [min(int(float(t) * bins / T), bins - 1) for t in timesteps]
    w = [1.0 / scale[j] for j in b] if scale else [1.0] * D
    order = sorted(range(D), key=lambda k: -snr[b[k]]) if snr else list(range(D))
    for e in errors.double().tolist():
        alive = list(range(len(e)))
        n, fwd = 0, 0
        while n < last and len(alive) > 1:
            stop = min(max(n + round_size, min_trials), last)
            fwd += len(alive) * (stop - n)
            n = stop
            z = {c: [e[c][k] * w[k] for k in order[:n]] for c in alive}
            lead = min(alive, key=lambda c: sum(z[c]) / n)
            diffs = {c: [a - bb for a, bb in zip(z[c], z[lead])] for c in alive}
            var_of = {c: statistics.variance(d) for c, d in diffs.items()}
            if pooled:
                shared = statistics.median_low([var_of[c] for c in alive if c != lead])
                var_of = {c: shared for c in alive}
            keep = []
            for c in alive:
                d = diffs[c]
                m = sum(d) / n
                var = var_of[c]
                stat = m / math.sqrt(var / n) if var > 0 else (math.inf if m > 0 else math.nan)
                if not stat > threshold:
                    keep.append(c)
            alive = keep
        z = {c: sum(e[c][k] * w[k] for k in order[:n]) / n for c in alive}
        out_pred.append(min(alive, key=lambda c: z[c]))
        out_fwd.append(fwd)
    return torch.tensor(out_pred), torch.tensor(out_fwd)


def classify(strategy, errors):
    index = torch.arange(N)
    scorer = ReplayScorer.from_run(errors, index, K)
    return strategy.classify(scorer, torch.zeros(N, 1, 2, 2), index), scorer


@pytest.mark.parametrize("profile", [False, True])
@pytest.mark.parametrize("threshold,min_trials,round_size", [(2.0, 3, 1), (1.0, 2, 2), (3.0, 4, 3)])
def test_racing_matches_an_independent_reimplementation(profile, threshold, min_trials, round_size):
    errors, _ = synthetic_table()
    scorer = ReplayScorer(errors, {i: i for i in range(N)}, K)
    ts = scorer.timesteps(torch.tensor([0]))[0]
    scale, snr = fit_timestep_profile(errors, ts, num_bins=5) if profile else (None, None)
    strategy = Racing(threshold, min_trials, D, round_size, timestep_scale=scale, timestep_snr=snr)
    result, _ = classify(strategy, errors)
    pred, fwd = reference_racing(errors, ts.tolist(), threshold, min_trials, round_size, scale, snr)
    assert torch.equal(result.pred, pred)
    assert torch.equal(result.forwards, fwd)
    assert int(fwd.sum()) < N * K * D  # it did eliminate


@pytest.mark.parametrize("threshold,min_trials,round_size,cap", [(2.0, 3, 1, None), (1.5, 2, 2, 11), (2.5, 4, 1, 7)])
def test_pooled_racing_with_a_cap_matches_an_independent_reimplementation(threshold, min_trials, round_size, cap):
    errors, _ = synthetic_table(4)
    strategy = Racing(threshold, min_trials, D, round_size, variance="pooled", trial_cap=cap)
    result, scorer = classify(strategy, errors)
    ts = scorer.timesteps(torch.tensor([0]))[0].tolist()
    pred, fwd = reference_racing(errors, ts, threshold, min_trials, round_size, pooled=True, cap=cap)
    assert torch.equal(result.pred, pred)
    assert torch.equal(result.forwards, fwd)
    if cap is not None:
        assert int(result.num_draws.max()) == cap  # some image was still racing at the cap
    # pooling changes which classes go: the per-pair rule on the same table spends differently
    per_pair, _ = classify(Racing(threshold, min_trials, D, round_size, trial_cap=cap), errors)
    assert not torch.equal(per_pair.forwards, result.forwards)


def test_the_pooled_variance_loses_the_winner_less_often_at_the_same_cost():
    """The lever it is for: a pair's variance from three draws is heavy tailed (too small as often as too
    large), so per-pair racing drops the winner on a lucky-looking rival; the image's pooled variance is
    steady. Every rival difference here shares one noise level, the case pooling assumes."""
    n, k, d = 200, 8, 40
    agree = {"pair": 0.0, "pooled": 0.0}
    spent = {"pair": 0.0, "pooled": 0.0}
    for seed in range(3):
        g = torch.Generator().manual_seed(seed)
        base = 5 * torch.randn(n, 1, d, generator=g, dtype=torch.float64)  # shared by every class: cancels
        gap = 1.5 * torch.rand(n, k, 1, generator=g, dtype=torch.float64)
        gap[:, 0] = 0.0
        errors = (base + gap + torch.randn(n, k, d, generator=g, dtype=torch.float64)).float()
        index = torch.arange(n)
        exhaustive = Exhaustive(trials=d).classify(ReplayScorer.from_run(errors, index, k), torch.zeros(n, 1, 2, 2), index)
        for variance in agree:
            scorer = ReplayScorer.from_run(errors, index, k)
            raced = Racing(threshold=3.0, min_trials=3, max_trials=d, variance=variance).classify(
                scorer, torch.zeros(n, 1, 2, 2), index
            )
            agree[variance] += float((raced.pred == exhaustive.pred).double().mean()) / 3
            spent[variance] += float(raced.forwards.double().mean()) / 3
    assert agree["pooled"] >= agree["pair"] + 0.02
    assert spent["pooled"] <= 1.1 * spent["pair"]


def test_racing_spends_fewer_forwards_than_exhaustive_and_is_exhaustive_when_nothing_is_dropped():
    errors, _ = synthetic_table(1)
    exhaustive, _ = classify(Exhaustive(trials=D), errors)
    never, _ = classify(Racing(threshold=1e9, min_trials=2, max_trials=D), errors)
    assert torch.equal(never.pred, exhaustive.pred)  # unstandardised mean at the full grid
    assert torch.equal(never.forwards, exhaustive.forwards)
    raced, _ = classify(Racing(threshold=2.0, min_trials=3, max_trials=D), errors)
    assert raced.forwards.double().mean() < 0.9 * exhaustive.forwards.double().mean()
    assert (raced.pred == exhaustive.pred).double().mean() >= 0.9  # it drops classes, rarely the winner
    # the eliminated classes rank below every survivor, and logits stay paired with the prediction
    assert torch.all(raced.logits().gather(1, raced.pred.view(-1, 1)) == 0)


def test_standardising_and_the_fitted_order_pay_on_errors_whose_scale_falls_with_t():
    """The lever the strategy is for: same threshold, far fewer forwards, no loss of accuracy."""
    train, _ = synthetic_table(2)
    errors, target = synthetic_table(3)
    scorer = ReplayScorer(errors, {i: i for i in range(N)}, K)
    scale, snr = fit_timestep_profile(train, scorer.timesteps(torch.tensor([0]))[0], num_bins=5)
    raw, _ = classify(Racing(threshold=2.0, min_trials=3, max_trials=D), errors)
    std, _ = classify(Racing(threshold=2.0, min_trials=3, max_trials=D, timestep_scale=scale, timestep_snr=snr), errors)
    assert std.forwards.double().mean() < 0.8 * raw.forwards.double().mean()
    assert (std.pred == target).double().mean() >= (raw.pred == target).double().mean() - 0.05


def test_fit_timestep_profile_recovers_scale_and_signal():
    g = torch.Generator().manual_seed(0)
    n, d = 400, 20
    t = torch.arange(d) * 50  # bins of 500: the first 10 draws, the last 10
    sigma = torch.where(t < 500, 1.0, 0.01).double()
    base = torch.randn(n, 1, d, generator=g, dtype=torch.float64)
    winner = base
    runner = base + (0.5 + torch.randn(n, 1, d, generator=g, dtype=torch.float64)) * sigma
    far = base + 10.0
    errors = torch.cat([winner, runner, far], dim=1).float()
    scale, snr = fit_timestep_profile(errors, t, num_bins=2, num_timesteps=1000)
    assert scale[0] == pytest.approx(math.sqrt(1.25), rel=0.1)  # rms of N(0.5, 1)
    assert scale[1] == pytest.approx(0.01 * math.sqrt(1.25), rel=0.1)
    assert snr[0] == pytest.approx(0.5, abs=0.1) and snr[1] == pytest.approx(0.5, abs=0.1)
    with pytest.raises(ValueError, match="exhaustive table"):
        fit_timestep_profile(errors.masked_fill(torch.rand(errors.shape) < 0.1, math.nan), t)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"threshold": 0}, "threshold"),
        ({"min_trials": 1}, "min_trials"),
        ({"max_trials": 2, "min_trials": 3}, "max_trials"),
        ({"round_size": 0}, "round_size"),
        ({"timestep_scale": [1.0, 0.0]}, "timestep_scale"),
        ({"timestep_snr": []}, "timestep_snr"),
        ({"variance": "pairs"}, "variance"),
        ({"trial_cap": 2, "min_trials": 3}, "trial_cap"),
        ({"trial_cap": 300, "max_trials": 250}, "trial_cap"),
    ],
)
def test_racing_refuses_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Racing(**kwargs)


def test_racing_needs_a_scorer_with_its_draws():
    errors, _ = synthetic_table()
    with pytest.raises(ValueError, match="max_draws"):
        classify(Racing(max_trials=D + 10), errors)
