"""Racing (diffclf.strategies.Racing) against an independent re-implementation, the exhaustive answer,
and the timestep profile it is fitted with."""

from __future__ import annotations

import itertools
import math
import statistics

import pytest
import torch
from scipy import stats as scipy_stats

from diffclf.diffusion.schedule import NoiseSchedule
from diffclf.diffusion.scoring import Scorer, antithetic_order
from diffclf.strategies import Exhaustive, PairedTTest, Prefilter, Racing, fit_timestep_profile
from diffclf.strategies.base import successive_difference_variance
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


def von_neumann_variance(diffs, times):
    """Half the mean squared successive difference of ``diffs`` ordered by ``times`` (ties in input order)."""
    ordered = [d for _, _, d in sorted(zip(times, range(len(diffs)), diffs))]
    return sum((b - a) ** 2 for a, b in itertools.pairwise(ordered)) / (2 * (len(ordered) - 1))


def reference_racing(
    errors, timesteps, threshold, min_trials, round_size, scale=None, snr=None, T=1000, pooled=False, cap=None,
    stratified=False, t_critical=False, antithetic=False, screen=None,
):
    """An image-at-a-time racing loop written from the method's description, not from the package.

    ``pooled``: every rival is tested with the lower median of the rivals' paired variances; ``cap``: the
    most draws any class gets; ``stratified``: variances are von Neumann's, over the scored draws in
    timestep order; ``t_critical``: the threshold is scipy's Student-t quantile (``n - 1`` dof) at the
    threshold's normal tail probability; ``antithetic``: draws ``2m, 2m + 1`` are partners, ordered by the pair's
    best priority, and every statistic is over the pair means (``n`` = pairs, a pair's time its first draw's);
    ``screen`` ``(limit, sd)``: from the first round on, a class also goes when the sum of its draws' differences
    to the leader, each over ``sd`` at its timestep bin, exceeds ``limit * sqrt(n)`` (a z-test of known variance).
    """
    out_pred, out_fwd = [], []
    D = errors.shape[-1]
    last = D if cap is None else cap
    bins = len(scale or snr or [1])
    b = [min(int(float(t) * bins / T), bins - 1) for t in timesteps]
    w = [1.0 / scale[j] for j in b] if scale else [1.0] * D
    if antithetic:
        prio = [max(snr[b[2 * m]], snr[b[2 * m + 1]]) if snr else 0.0 for m in range(D // 2)]
        order = [k for m in sorted(range(D // 2), key=lambda m: -prio[m]) for k in (2 * m, 2 * m + 1)]
    else:
        order = sorted(range(D), key=lambda k: -snr[b[k]]) if snr else list(range(D))
    first = round_size if screen else min_trials
    for e in errors.double().tolist():
        alive = list(range(len(e)))
        n, fwd = 0, 0
        while n < last and len(alive) > 1:
            stop = min(max(n + round_size, first), last)
            fwd += len(alive) * (stop - n)
            n = stop
            z = {c: [e[c][k] * w[k] for k in order[:n]] for c in alive}
            lead = min(alive, key=lambda c: sum(z[c]) / n)
            diffs = {c: [a - bb for a, bb in zip(z[c], z[lead])] for c in alive}
            screened = set()
            if screen:  # tested on the same round's leader and rivals as the rule below, and dropped with its drops
                bound, sd = screen
                sb = [min(int(float(t) * len(sd) / T), len(sd) - 1) for t in timesteps]
                known = {c: sum(d / (sd[sb[k]] * w[k]) for d, k in zip(diffs[c], order[:n])) for c in alive}
                screened = {c for c in alive if known[c] > bound * math.sqrt(n)}
            if n < min_trials:
                alive = [c for c in alive if c not in screened]
                continue
            times = [timesteps[k] for k in order[:n]]
            if antithetic:
                diffs = {c: [(d[i] + d[i + 1]) / 2 for i in range(0, n, 2)] for c, d in diffs.items()}
                times = times[::2]
            units = len(times)
            if stratified:
                var_of = {c: von_neumann_variance(d, times) for c, d in diffs.items()}
            else:
                var_of = {c: statistics.variance(d) for c, d in diffs.items()}
            if pooled:
                shared = statistics.median_low([var_of[c] for c in alive if c != lead])
                var_of = {c: shared for c in alive}
            keep = []
            for c in alive:
                d = diffs[c]
                m = sum(d) / units
                var = var_of[c]
                stat = m / math.sqrt(var / units) if var > 0 else (math.inf if m > 0 else math.nan)
                limit = scipy_stats.t.ppf(scipy_stats.norm.cdf(threshold), units - 1) if t_critical else threshold
                if not stat > limit and c not in screened:
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


@pytest.mark.parametrize(
    "threshold,min_trials,round_size,bound,kwargs",
    [
        (2.0, 2, 1, 2.0, {"variance": "pooled", "critical": "t", "standard_error": "stratified", "tiers": True}),
        (1.5, 3, 2, 1.5, {"profile": True}),
        (2.5, 4, 1, 3.0, {"variance": "pooled", "trial_cap": 13}),
    ],
)
def test_screened_racing_matches_an_independent_reimplementation(threshold, min_trials, round_size, bound, kwargs):
    errors, _ = synthetic_table(7)
    scorer = ReplayScorer(errors, {i: i for i in range(N)}, K)
    ts = scorer.timesteps(torch.tensor([0]))[0]
    sd, _ = fit_timestep_profile(errors, ts, num_bins=4)  # the screen's bins need not be the profile's
    scale, snr = fit_timestep_profile(errors, ts, num_bins=5)
    kw = dict(kwargs)
    profile, tiers = kw.pop("profile", False), kw.pop("tiers", False)
    if tiers:
        snr = [1.0 if v >= 0.1 * max(scale) else 0.0 for v in scale]
    use_scale, use_snr = (scale, snr) if profile else (None, snr if tiers else None)
    strategy = Racing(threshold, min_trials, D, round_size, timestep_scale=use_scale, timestep_snr=use_snr,
                      screen=bound, screen_scale=sd, **kw)
    result, _ = classify(strategy, errors)
    pred, fwd = reference_racing(
        errors, ts.tolist(), threshold, min_trials, round_size, use_scale, use_snr, pooled=kw.get("variance") == "pooled",
        cap=kw.get("trial_cap"), stratified=kw.get("standard_error") == "stratified", t_critical=kw.get("critical") == "t",
        screen=(bound, sd),
    )
    assert torch.equal(result.pred, pred)
    assert torch.equal(result.forwards, fwd)
    unscreened, _ = classify(
        Racing(threshold, min_trials, D, round_size, timestep_scale=use_scale, timestep_snr=use_snr, **kw), errors
    )
    assert int(result.forwards.sum()) < int(unscreened.forwards.sum())  # the screen did drop classes earlier


def test_a_screen_that_never_fires_changes_nothing():
    """Its first rounds are shorter (the screen tests from draw one), but with nothing screened every class
    gets the same draws and the rule after ``min_trials`` sees the same table."""
    errors, _ = synthetic_table(2)
    ts = ReplayScorer(errors, {i: i for i in range(N)}, K).timesteps(torch.tensor([0]))[0]
    sd, _ = fit_timestep_profile(errors, ts, num_bins=5)
    plain, _ = classify(Racing(2.0, 4, D, 1, variance="pooled", critical="t"), errors)
    silent, _ = classify(Racing(2.0, 4, D, 1, variance="pooled", critical="t", screen=1e9, screen_scale=sd), errors)
    assert torch.equal(plain.pred, silent.pred)
    assert torch.equal(plain.forwards, silent.forwards)


def test_the_screen_saves_forwards_on_far_classes_and_keeps_the_answers():
    """The case it is for: the pooled t rule's critical value is 12.7 after two draws, so classes far behind
    wait for draw three or four; a known per-draw scale lets them go after one or two. Close calls stay with
    the t rule (the scale is the decisive pairs' root mean square, which overstates a close pair's noise)."""
    n, k, d = 300, 10, 60
    g = torch.Generator().manual_seed(11)
    base = 3 * torch.randn(n, 1, d, generator=g, dtype=torch.float64)  # shared by every class: cancels
    gap = torch.cat([torch.zeros(n, 1, 1), 0.6 + 0.4 * torch.rand(n, 1, 1, generator=g, dtype=torch.float64),
                     2.0 + 2.0 * torch.rand(n, k - 2, 1, generator=g, dtype=torch.float64)], dim=1)
    errors = (base + gap + torch.randn(n, k, d, generator=g, dtype=torch.float64)).float()
    index = torch.arange(n)
    ts = ReplayScorer.from_run(errors, index, k).timesteps(index[:1])[0]
    sd, _ = fit_timestep_profile(errors[: n // 2], ts, num_bins=5)  # fitted on one half
    z = statistics.NormalDist().inv_cdf(1 - 0.02 / 2)
    runs = {}
    for name, extra in (("t", {}), ("screened", {"screen": 2.0, "screen_scale": sd})):
        scorer = ReplayScorer.from_run(errors, index, k)
        strategy = Racing(z, 2, d, 1, variance="pooled", critical="t", **extra)
        runs[name] = strategy.classify(scorer, torch.zeros(n, 1, 2, 2), index)
    far = runs["t"].num_draws[:, 2:].double().mean()
    assert float(runs["screened"].num_draws[:, 2:].double().mean()) < 0.7 * float(far)
    held_out = slice(n // 2, n)  # class 0 is right; the runner-up trails by 0.6-1.0, the others by 2-4
    accuracy = {name: float((run.pred[held_out] == 0).double().mean()) for name, run in runs.items()}
    assert accuracy["t"] >= 0.99 and accuracy["screened"] >= 0.98  # raw differences against 2.0: 0.94


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


def test_successive_difference_variance_is_von_neumanns_in_timestep_order():
    g = torch.Generator().manual_seed(7)
    diff = torch.randn(3, 4, 9, generator=g, dtype=torch.float64)
    times = torch.stack([torch.randperm(1000, generator=g)[:9] for _ in range(3)])
    times[0, 3] = times[0, 5]  # a tie keeps draw order
    got = successive_difference_variance(diff, times)
    for b in range(3):
        for m in range(4):
            want = von_neumann_variance(diff[b, m].tolist(), times[b].tolist())
            assert float(got[b, m]) == pytest.approx(want, rel=1e-12)
    # two draws: the ordinary sample variance; a gap that only changes with t: (almost) no variance
    assert torch.allclose(successive_difference_variance(diff[..., :2], times[:, :2]), diff[..., :2].var(dim=-1))
    t = torch.arange(50).unsqueeze(0)
    smooth = (t.double() / 10).sin().view(1, 1, 50)
    assert float(successive_difference_variance(smooth, t)) < 0.01 * float(smooth.var())


@pytest.mark.parametrize("critical", ["z", "t"])
@pytest.mark.parametrize("pooled", [False, True])
@pytest.mark.parametrize("profile", [False, True])
def test_stratified_racing_matches_an_independent_reimplementation(pooled, profile, critical):
    errors, _ = gap_profile_table(5)
    scorer = ReplayScorer(errors, {i: i for i in range(N)}, K)
    ts = scorer.timesteps(torch.tensor([0]))[0]
    scale, snr = fit_timestep_profile(errors, ts, num_bins=5) if profile else (None, None)
    variance = "pooled" if pooled else "pair"
    strategy = Racing(2.0, 3, D, 1, timestep_scale=scale, timestep_snr=snr, variance=variance,
                      standard_error="stratified", critical=critical)
    result, _ = classify(strategy, errors)
    pred, fwd = reference_racing(errors, ts.tolist(), 2.0, 3, 1, scale, snr, pooled=pooled, stratified=True,
                                 t_critical=critical == "t")
    assert torch.equal(result.pred, pred)
    assert torch.equal(result.forwards, fwd)
    iid, _ = classify(Racing(2.0, 3, D, 1, timestep_scale=scale, timestep_snr=snr, variance=variance,
                             critical=critical), errors)
    assert not torch.equal(iid.forwards, result.forwards)  # the estimator changed the drops


def gap_profile_table(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Errors whose class gaps change smoothly and strongly with t (as Fashion-MNIST's and digits' do: most of a
    pair's spread over draws is the gap's profile, not noise), ``(N, K, D)`` and the true class."""
    g = torch.Generator().manual_seed(seed)
    scorer = ReplayScorer(torch.zeros(1, K, D), {0: 0}, K)
    t = scorer.timesteps(torch.tensor([0]))[0].double()
    profile = 1.0 + 1.5 * torch.cos(2 * math.pi * t / 1000)  # from 2.5 down to -0.5 and back
    target = torch.randint(0, K, (N,), generator=g)
    gap = 0.2 * torch.rand(N, K, 1, generator=g, dtype=torch.float64) + 0.05
    gap[torch.arange(N), target] = 0.0
    noise = 0.3 * torch.randn(N, K, D, generator=g, dtype=torch.float64)
    return (2.0 + gap * profile + noise * gap.sqrt()).float(), target


def test_the_stratified_standard_error_pays_where_the_gap_changes_with_t():
    """The lever it is for: at the same threshold the spread-out draws' own (local) variance drops rivals sooner,
    and the answer stays the exhaustive one as often."""
    spent, agree = {}, {}
    for se in ("iid", "stratified"):
        spent[se] = agree[se] = 0.0
        for seed in (6, 7, 8):
            errors, _ = gap_profile_table(seed)
            exhaustive, _ = classify(Exhaustive(trials=D), errors)
            raced, _ = classify(Racing(2.5, 3, D, variance="pooled", standard_error=se), errors)
            spent[se] += float(raced.forwards.double().mean()) / 3
            agree[se] += float((raced.pred == exhaustive.pred).double().mean()) / 3
    assert spent["stratified"] < 0.8 * spent["iid"]
    assert agree["stratified"] >= agree["iid"] - 0.02


def test_the_t_critical_value_is_the_pooled_t_tests_rule():
    """``critical="t"`` at a threshold of the normal quantile of alpha / 2 drops exactly where the pooled two-sided
    t-test at alpha does, round by round, when both score the same draws."""
    errors, _ = synthetic_table(9)
    for alpha in (0.02, 0.1):
        z = float(scipy_stats.norm.isf(alpha / 2))
        raced, _ = classify(Racing(z, 2, D, variance="pooled", critical="t"), errors)
        tested, _ = classify(PairedTTest(alpha=alpha, min_trials=2, max_trials=D, round_size=1, variance="pooled"), errors)
        assert torch.equal(raced.num_draws, tested.num_draws) and torch.equal(raced.pred, tested.pred)
    assert Racing(2.0, critical="t").critical_value(3) > 2.0 * 1.5 and Racing(2.0).critical_value(3) == 2.0


def test_the_stratified_standard_error_refuses_iid_timesteps():
    scorer = Scorer(lambda x, t, y: x, NoiseSchedule(), 1, max_draws=D, num_classes=K, design="uniform")
    for strategy in (Racing(max_trials=D, standard_error="stratified"),
                     PairedTTest(max_trials=D, min_trials=2, standard_error="stratified")):
        with pytest.raises(ValueError, match="standard_error=stratified needs draws spread over t"):
            strategy.classify(scorer, torch.zeros(2, 1, 2, 2), torch.arange(2))


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
        ({"standard_error": "successive"}, "standard_error"),
        ({"critical": "student"}, "critical"),
        ({"screen": 2.0}, "screen and screen_scale"),
        ({"screen_scale": [1.0]}, "screen and screen_scale"),
        ({"screen": 0.0, "screen_scale": [1.0]}, "screen must be > 0"),
        ({"screen": 2.0, "screen_scale": [1.0, -1.0]}, "screen_scale"),
    ],
)
def test_racing_refuses_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Racing(**kwargs)


def test_racing_needs_a_scorer_with_its_draws():
    errors, _ = synthetic_table()
    with pytest.raises(ValueError, match="max_draws"):
        classify(Racing(max_trials=D + 10), errors)


def antithetic_table(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Errors of antithetic draws: a partner's noise is -0.6 times its pair's first draw's plus fresh noise, on
    top of a gap that changes with t; ``(N, K, D)`` in an antithetic replay's draw order, and the true class."""
    g = torch.Generator().manual_seed(seed)
    t = ReplayScorer(torch.zeros(1, K, D), {0: 0}, K, antithetic=True).timesteps(torch.tensor([0]))[0].double()
    target = torch.randint(0, K, (N,), generator=g)
    gap = 0.2 * torch.rand(N, K, 1, generator=g, dtype=torch.float64) + 0.05
    gap[torch.arange(N), target] = 0.0
    noise = torch.randn(N, K, D, generator=g, dtype=torch.float64)
    noise[..., 1::2] = -0.6 * noise[..., 0::2] + 0.8 * noise[..., 1::2]
    return (2.0 + gap * (1.0 + torch.cos(2 * math.pi * t / 1000)) + 0.5 * noise * gap.sqrt()).float(), target


def classify_antithetic(strategy, errors, antithetic=True):
    index = torch.arange(N)
    order = None if antithetic else antithetic_order(D)
    scorer = ReplayScorer.from_run(errors, index, K, order=order, antithetic=antithetic)
    return strategy.classify(scorer, torch.zeros(N, 1, 2, 2), index), scorer


@pytest.mark.parametrize("stratified,critical,profile", [(False, "z", False), (True, "t", True), (True, "z", False)])
def test_antithetic_racing_matches_an_independent_reimplementation(stratified, critical, profile):
    errors, _ = antithetic_table(11)
    ts = ReplayScorer(errors, {i: i for i in range(N)}, K, antithetic=True).timesteps(torch.tensor([0]))[0]
    snr = [1.0, 0.0, 1.0, 1.0, 0.0] if profile else None  # a pair straddles a bin edge: it keeps the higher
    se = "stratified" if stratified else "iid"
    strategy = Racing(2.0, 4, D, 2, timestep_snr=snr, variance="pooled", critical=critical, standard_error=se,
                      antithetic=True)
    result, _ = classify_antithetic(strategy, errors)
    pred, fwd = reference_racing(errors, ts.tolist(), 2.0, 4, 2, None, snr, pooled=True, stratified=stratified,
                                 t_critical=critical == "t", antithetic=True)
    assert torch.equal(result.pred, pred)
    assert torch.equal(result.forwards, fwd)
    # Counting pairs as units is what pays: the same draws tested as if independent keep rivals longer.
    plain = Racing(2.0, 4, D, 2, timestep_snr=snr, variance="pooled", critical=critical, standard_error=se)
    as_iid, _ = classify_antithetic(plain, errors, antithetic=False)
    assert fwd.sum() < as_iid.forwards.sum()


def test_antithetic_t_test_is_the_pooled_t_racing_rule_on_pairs():
    errors, _ = antithetic_table(12)
    for alpha in (0.02, 0.1):
        z = float(scipy_stats.norm.isf(alpha / 2))
        raced, _ = classify_antithetic(Racing(z, 4, D, 2, variance="pooled", critical="t", antithetic=True), errors)
        tested, _ = classify_antithetic(
            PairedTTest(alpha=alpha, min_trials=4, max_trials=D, round_size=2, variance="pooled", antithetic=True),
            errors,
        )
        assert torch.equal(raced.num_draws, tested.num_draws) and torch.equal(raced.pred, tested.pred)


def test_antithetic_strategies_refuse_half_pairs_and_plain_scorers():
    for kwargs in ({"min_trials": 2}, {"min_trials": 5}, {"round_size": 3}, {"trial_cap": 7}):
        with pytest.raises(ValueError, match="tests whole pairs"):
            Racing(max_trials=D, antithetic=True, **{"min_trials": 4, "round_size": 2, **kwargs})
    with pytest.raises(ValueError, match="tests whole pairs"):
        PairedTTest(max_trials=D, min_trials=4, round_size=1, antithetic=True)
    errors, _ = antithetic_table(13)
    with pytest.raises(ValueError, match="build the scorer with antithetic=True"):
        classify(Racing(2.0, 4, D, 2, antithetic=True), errors)
    # A plain strategy on an antithetic scorer still tests pairs, and refuses odd counts there.
    with pytest.raises(ValueError, match="tests whole pairs"):
        classify_antithetic(Racing(2.0, 3, D, 1), errors)


def test_a_task_builds_the_scorer_its_strategy_asks_for():
    from diffclf.diffusion.scoring import ScoringOptions
    from diffclf.tasks.diffusion import DiffusionClassifier

    anti = Racing(2.0, 4, 8, 2, variance="pooled", antithetic=True)
    task = DiffusionClassifier(model="DiT-T/2", input_size=8, in_channels=1, num_classes=10, learn_sigma=False,
                               strategy=anti)
    assert task.scorer().antithetic
    x, index = torch.randn(3, 1, 8, 8), torch.arange(3)
    scored = anti.classify(task.scorer(), x, index)
    assert (scored.num_draws % 2 == 0).all() and scored.num_draws.max() >= 4
    task.strategy = Racing(2.0, 4, 8, 2, variance="pooled")
    assert not task.scorer().antithetic  # rebuilt for the plain strategy
    task.strategy = Prefilter(torch.nn.Identity(), top_k=3, inner=anti)
    assert task.scorer().antithetic  # a prefilter asks for what its inner strategy needs
    task.strategy = Racing(2.0, 4, 8, 2, variance="pooled")
    task.set_scoring(antithetic=True)
    assert task.scorer().antithetic
    assert ScoringOptions().record("cpu", antithetic=True)["antithetic"] is True
    assert "antithetic" not in ScoringOptions().record("cpu")
