"""Strategies against exact answers on synthetic score tables (a fake denoiser, no model).

``TableDenoiser`` predicts ``eps + sqrt(E[y, k])`` for draw ``k`` of a zero image, so the l2
error of class ``c`` on draw ``k`` is ``E[c, k]`` (up to float rounding). The reference answers are
computed in plain Python (and scipy) from the errors the engine actually produced, so decisions
are compared on identical numbers.
"""

from __future__ import annotations

import math
import statistics
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from scipy import stats
from torch import Tensor, nn

from diffclf.diffusion.schedule import NoiseSchedule
from diffclf.diffusion.scoring import Scorer
from diffclf.strategies import Adaptive, Classification, Exhaustive, PairedTTest, Prefilter, Strategy
from diffclf.strategies.ttest import critical_t, paired_t_statistic

SCHEDULE = NoiseSchedule()
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


class TableDenoiser:
    """Error ``E[y, k]`` for class ``y`` on draw ``k`` (draws told apart by their timestep)."""

    def __init__(self, table: Tensor) -> None:
        self.table = table.float()
        self.calls = 0
        self.k_of_t: Tensor | None = None

    def bind(self, scorer: Scorer) -> None:
        t = scorer.timesteps(torch.tensor([0]))[0]
        assert len(set(t.tolist())) == len(t), "draws need distinct timesteps"
        self.k_of_t = torch.full((SCHEDULE.num_timesteps,), -1, dtype=torch.long)
        self.k_of_t[t] = torch.arange(len(t))

    def __call__(self, x_t: Tensor, t: Tensor, y: Tensor) -> Tensor:
        self.calls += len(t)
        eps = x_t / SCHEDULE.sqrt_one_minus_alphas_cumprod.float()[t].view(-1, 1, 1, 1)
        return eps + self.table[y, self.k_of_t[t]].sqrt().view(-1, 1, 1, 1)


def setup(table: Tensor, strategy: Strategy, batch: int = 3) -> tuple[Scorer, TableDenoiser, Tensor, Tensor]:
    den = TableDenoiser(table)
    scorer = Scorer(den, SCHEDULE, 1, max_draws=strategy.max_draws, num_classes=table.shape[0], batch_size=37)
    den.bind(scorer)
    return scorer, den, torch.zeros(batch, 1, 2, 2), torch.arange(batch) + 100


def realized(scorer: Scorer, x: Tensor, index: Tensor, cand: Tensor) -> np.ndarray:
    """``(B, M, max_draws)`` errors the engine produces for every candidate and draw."""
    table = scorer.new_table(x, cand)
    scorer.score(table, x, index, 0, scorer.max_draws)
    return table.errors.double().numpy()


def random_table(k: int, n: int, seed: int, spread: float = 0.05) -> Tensor:
    """Per-draw errors with a shared draw difficulty (pairing matters) and class offsets."""
    g = torch.Generator().manual_seed(seed)
    mu = 1.0 + spread * torch.arange(k, dtype=torch.float64) ** 1.5
    mu = mu[torch.randperm(k, generator=g)]
    shared = 0.5 * torch.randn(n, generator=g, dtype=torch.float64)
    own = 0.1 * torch.randn(k, n, generator=g, dtype=torch.float64)
    return (mu[:, None] + shared[None, :] + own).clamp(min=0.05)


PER_IMAGE = torch.tensor([[0, 1, 2, 3, 4, 5, 6, 7], [7, 6, 5, 4, 3, 2, 1, 0], [3, 5, 0, 6, 1, 7, 2, 4]])


# ------------------------------------------------------------------ exhaustive
def test_exhaustive_is_the_argmin_of_the_full_table() -> None:
    table = random_table(8, 16, seed=0)
    strategy = Exhaustive(trials=16)
    scorer, den, x, index = setup(table, strategy)
    result = strategy.classify(scorer, x, index, PER_IMAGE)
    want = table[PER_IMAGE].mean(dim=-1)
    torch.testing.assert_close(result.mean_error.double(), want, rtol=1e-5, atol=1e-6)
    assert result.pred.tolist() == [int(table.mean(1).argmin())] * 3
    assert (result.num_draws == 16).all() and result.forwards.tolist() == [128] * 3 and den.calls == 384
    assert torch.equal(result.candidates, PER_IMAGE)
    # Ranks follow the mean error; the top-5 are the 5 lowest means.
    assert result.top5()[0].tolist() == table.mean(1).argsort()[:5].tolist()


# ------------------------------------------------------------------ adaptive
def algorithm2(errors: np.ndarray, keep: list[int], trials: list[int]) -> tuple[list, list, int]:
    """Algorithm 2 of Li et al. as printed, on one image's (M, n) errors (column j = the j-th (t, eps) drawn).

    Per-class error lists; stage i draws TrialList_i - PrevTrials new (t, eps), appends every remaining
    class's error on each, then keeps the KeepList_i classes of lowest mean error. Returns (stages each
    class survived, errors it got, forwards).
    """
    classes = list(range(errors.shape[0]))
    errs: dict[int, list[float]] = {c: [] for c in classes}
    survived = {c: 0 for c in classes}
    remaining, prev_trials, forwards = list(classes), 0, 0
    for keep_i, trials_i in zip(keep, trials):
        for j in range(prev_trials, trials_i):
            for c in remaining:
                errs[c].append(float(errors[c, j]))
                forwards += 1
        mean = {c: sum(errs[c]) / len(errs[c]) for c in remaining}
        remaining = sorted(remaining, key=lambda c: mean[c])[:keep_i]
        for c in remaining:
            survived[c] += 1
        prev_trials = trials_i
    return [survived[c] for c in classes], [len(errs[c]) for c in classes], forwards


def official_adaptive(err, num_classes: int, T: int, n_samples: list[int], to_keep: list[int]) -> dict:
    """A literal transcription of the official ``eval_prob_adaptive.py`` loop (Li et al.'s released code).

    ``err(c, t)`` is class ``c``'s error at timestep ``t``. Returns each stage's new timesteps (in the
    order evaluated), each timestep's noise index, the classes scored in each stage, the forwards and
    the survivors of each stage.
    """
    max_n_samples = max(n_samples)
    t_to_eval = list(range(T // max_n_samples // 2, T, T // max_n_samples))[:max_n_samples]
    t_evaluated: set[int] = set()
    remaining = list(range(num_classes))
    data: dict[int, list[float]] = {c: [] for c in remaining}
    out: dict = {"t_to_eval": t_to_eval, "stages": [], "noise_idx": {}, "scored": [], "kept": []}
    out["forwards"] = 0
    for n_samples_i, n_to_keep in zip(n_samples, to_keep):
        step = len(t_to_eval) // n_samples_i
        curr_t_to_eval = t_to_eval[len(t_to_eval) // n_samples_i // 2 :: step][:n_samples_i]
        curr_t_to_eval = [t for t in curr_t_to_eval if t not in t_evaluated]
        for c in remaining:
            for t_idx, t in enumerate(curr_t_to_eval, start=len(t_evaluated)):
                out["noise_idx"][t] = t_idx
                data[c].append(err(c, t))
                out["forwards"] += 1
        out["stages"].append(curr_t_to_eval)
        out["scored"].append(sorted(remaining))
        t_evaluated.update(curr_t_to_eval)
        errors = [-sum(data[c]) / len(data[c]) for c in remaining]
        best_idxs = sorted(range(len(remaining)), key=lambda i: errors[i], reverse=True)[:n_to_keep]
        remaining = [remaining[i] for i in best_idxs]
        out["kept"].append(sorted(remaining))
    return out


@pytest.mark.parametrize(("keep", "trials"), [([5, 2, 1], [4, 10, 30]), ([10, 3, 1], [3, 6, 12])])
def test_adaptive_keeps_exactly_the_reference_survivors(keep: list[int], trials: list[int]) -> None:
    table = random_table(8, trials[-1], seed=1, spread=0.02)
    strategy = Adaptive(keep=keep, trials=trials, schedule="nested")
    scorer, den, x, index = setup(table, strategy)
    errors = realized(scorer, x, index, PER_IMAGE)
    den.calls = 0
    result = strategy.classify(scorer, x, index, PER_IMAGE)
    for b in range(3):
        stage, draws, forwards = algorithm2(errors[b], keep, trials)
        assert result.stage[b].tolist() == stage
        assert result.num_draws[b].tolist() == draws
        assert int(result.forwards[b]) == forwards
        assert int(result.pred[b]) == int(PER_IMAGE[b, stage.index(len(keep))])
    assert den.calls == int(result.forwards.sum())
    # Survivors of a later stage rank above every class eliminated earlier, whatever their errors.
    rank = result.rank_scores()
    for b in range(3):
        for i in range(8):
            for j in range(8):
                if result.stage[b, i] > result.stage[b, j]:
                    assert rank[b, i] > rank[b, j]


class StageLog:
    """A :class:`TableDenoiser` that logs the (t, class) of every forward, one list per ``score`` call."""

    def __init__(self, den: TableDenoiser, scorer: Scorer) -> None:
        self.den, self.stages = den, []
        inner = scorer.score

        def score(*args, **kwargs):
            self.stages.append([])
            return inner(*args, **kwargs)

        scorer.score = score
        scorer.denoise = self

    def __call__(self, x_t: Tensor, t: Tensor, y: Tensor) -> Tensor:
        self.stages[-1].extend(zip(t.tolist(), y.tolist()))
        return self.den(x_t, t, y)


@pytest.mark.parametrize(
    ("keep", "trials", "num_classes"),
    [
        ([5, 2, 1], [10, 20, 100], 8),  # the 10- and 20-point grids share no timestep
        ([20, 10, 5, 1], [20, 50, 100, 500], 24),  # Flowers' schedule
        ([6, 5, 4, 1], [10, 11, 12, 20], 8),  # the third stage adds no timestep at all
        ([4, 2, 1], [3, 7, 30], 6),  # 30 does not divide T: the official grid is t = 16, 49, ...
    ],
)
def test_official_schedule_scores_what_eval_prob_adaptive_scores(
    keep: list[int], trials: list[int], num_classes: int
) -> None:
    table = random_table(num_classes, trials[-1], seed=11, spread=0.01)
    strategy = Adaptive(keep=keep, trials=trials, schedule="official")
    den = TableDenoiser(table)
    scorer = Scorer(
        den, SCHEDULE, 1, max_draws=strategy.max_draws, num_classes=num_classes, batch_size=64,
        order=strategy.draw_order,
    )
    den.bind(scorer)
    x, index = torch.zeros(1, 1, 2, 2), torch.tensor([7])
    errors = realized(scorer, x, index, torch.arange(num_classes))[0]
    t_draws = scorer.timesteps(index)[0].tolist()
    grid = sorted(t_draws)
    T = SCHEDULE.num_timesteps
    # Official timesteps as positions of its grid, and ours as positions of ours (identical grids when
    # max(trials) divides T).
    ref = official_adaptive(lambda c, t: 0.0, num_classes, T, trials, keep)
    divides = T % trials[-1] == 0
    assert (ref["t_to_eval"] == grid) == divides
    pos_of = {t: i for i, t in enumerate(ref["t_to_eval"])}
    # Draw k is the k-th timestep in order of first evaluation: the official noise index.
    assert [grid[p] for p in strategy.draw_order] == t_draws
    assert [pos_of[t] for stage in ref["stages"] for t in stage] == strategy.draw_order
    assert all(ref["noise_idx"][ref["t_to_eval"][p]] == k for k, p in enumerate(strategy.draw_order))

    # The same loop on the errors the engine produced: who is scored on what, and who survives.
    ref = official_adaptive(
        lambda c, t: float(errors[c, t_draws.index(grid[pos_of[t]])]), num_classes, T, trials, keep
    )
    log = StageLog(den, scorer)
    result = strategy.classify(scorer, x, index)
    assert len(log.stages) == len(trials)
    for i, (stage_t, scored, seen) in enumerate(zip(ref["stages"], ref["scored"], log.stages)):
        want = sorted((grid[pos_of[t]], c) for t in stage_t for c in scored)
        assert sorted(seen) == want, f"stage {i}"
        if divides:
            assert sorted({t for t, _ in seen}) == stage_t
    assert int(result.forwards[0]) == ref["forwards"] == sum(len(s) for s in log.stages)
    assert int(result.pred[0]) == ref["kept"][-1][0]
    stage = result.stage[0].tolist()
    for i, kept in enumerate(ref["kept"]):
        assert sorted(c for c in range(num_classes) if stage[c] >= i + 1) == kept


def test_official_and_nested_schedules_differ_where_the_grids_do_not_nest() -> None:
    official = Adaptive(keep=[5, 2, 1], trials=[10, 20, 100], schedule="official")
    nested = Adaptive(keep=[5, 2, 1], trials=[10, 20, 100], schedule="nested")
    assert nested.draw_order is None and nested.stage_draws == [10, 20, 100]
    assert official.stage_draws == [10, 30, 100] and sorted(official.draw_order) == list(range(100))
    assert Adaptive(keep=[3, 1], trials=[10, 100]).schedule == "nested"  # the default: recorded runs
    table = random_table(8, 100, seed=12, spread=0.05)
    scorer, _, x, index = setup(table, nested, batch=1)
    with pytest.raises(ValueError, match="own order"):
        official.classify(scorer, x, index)  # a scorer in the default order would score other timesteps
    prefilter = Prefilter(FixedLogits(torch.zeros(8)), top_k=4, inner=official)
    assert prefilter.draw_order == official.draw_order
    with pytest.raises(ValueError, match="schedule must be one of official, nested"):
        Adaptive(keep=[1], trials=[10], schedule="paper")


class ClassLevels(nn.Module):
    """A test instrument for counting forwards, not a model: predicts a class-dependent constant."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.register_buffer("level", torch.rand(num_classes, generator=g) - 0.5)
        self.num_classes = num_classes
        self.calls = 0

    def forward(self, x_t: Tensor, t: Tensor, y: Tensor) -> Tensor:
        self.calls += len(y)
        return self.level[y].view(-1, 1, 1, 1).expand_as(x_t)


def official_forwards(num_classes: int, T: int, n_samples: list[int], to_keep: list[int]) -> int:
    return official_adaptive(lambda c, t: float(c), num_classes, T, n_samples, to_keep)["forwards"]


@pytest.mark.parametrize(
    ("preset", "num_classes", "forwards", "nested"),
    [("adaptive_imagenet", 1000, 124_500, 100_000), ("adaptive_flowers", 102, 5_590, 5_140),
     ("adaptive_objectnet", 113, 14_400, 13_400)],
)
def test_paper_presets_cost_what_the_official_code_costs(
    preset: str, num_classes: int, forwards: int, nested: int
) -> None:
    from diffclf.configs import load_preset

    strategy = load_preset("strategy", preset, Strategy, "--strategies")
    assert isinstance(strategy, Adaptive) and strategy.schedule == "official"
    assert official_forwards(num_classes, SCHEDULE.num_timesteps, strategy.trials, strategy.keep) == forwards
    net = ClassLevels(num_classes)
    scorer = Scorer(
        net, SCHEDULE, 1, max_draws=strategy.max_draws, batch_size=1 << 14, order=strategy.draw_order
    )
    x, index = torch.zeros(2, 1, 2, 2), torch.tensor([3, 4])
    result = strategy.classify(scorer, x, index)
    assert result.forwards.tolist() == [forwards] * 2 and net.calls == 2 * forwards
    assert (result.num_draws.amax(dim=1) == strategy.max_draws).all()
    # The same keep/trials on nested prefixes (what diffclf did before the schedule option) cost less.
    prefixes = Adaptive(strategy.keep, strategy.trials, schedule="nested")
    net.calls = 0
    scorer = Scorer(net, SCHEDULE, 1, max_draws=strategy.max_draws, batch_size=1 << 14)
    assert prefixes.classify(scorer, x[:1], index[:1]).forwards.tolist() == [nested] == [net.calls]


def test_a_replay_recorded_in_the_strategys_order_reproduces_the_official_schedule() -> None:
    from diffclf.strategies.replay import ReplayScorer

    table = random_table(8, 100, seed=13, spread=0.02)
    strategy = Adaptive(keep=[5, 2, 1], trials=[10, 20, 100], schedule="official")
    den = TableDenoiser(table)
    scorer = Scorer(den, SCHEDULE, 1, max_draws=100, num_classes=8, order=strategy.draw_order)
    den.bind(scorer)
    x, index = torch.zeros(3, 1, 2, 2), torch.arange(3) + 100
    reference = scorer.new_table(x, PER_IMAGE)
    scorer.score(reference, x, index, 0, 100)
    live = strategy.classify(scorer, x, index, PER_IMAGE)
    replay = ReplayScorer.from_run(reference.errors, index, 8, order=strategy.draw_order)
    rep = strategy.classify(replay, x, index, PER_IMAGE)
    assert torch.equal(rep.pred, live.pred) and torch.equal(rep.forwards, live.forwards)
    assert torch.equal(rep.stage, live.stage)
    with pytest.raises(ValueError, match="own order"):  # a reference in the default order has other draws
        strategy.classify(ReplayScorer.from_run(reference.errors, index, 8), x, index, PER_IMAGE)


def test_pets_first_stage_is_the_official_25_point_grid() -> None:
    from diffclf.configs import load_preset

    strategy = load_preset("strategy", "adaptive_pets", Strategy, "--strategies")
    ref = official_adaptive(lambda c, t: float(c), 37, SCHEDULE.num_timesteps, strategy.trials, strategy.keep)
    assert ref["stages"][0] == list(range(22, 1000, 40))  # t = 22, 62, ..., 982
    scorer = Scorer(ClassLevels(37), SCHEDULE, 1, max_draws=strategy.max_draws, order=strategy.draw_order)
    assert scorer.timesteps(torch.tensor([0]))[0, :25].tolist() == ref["stages"][0]
    assert sorted(scorer.timesteps(torch.tensor([0]))[0].tolist()) == list(range(2, 1000, 4))
    assert strategy.stage_draws == [25, 250] and ref["forwards"] == 37 * 25 + 5 * 225


def test_adaptive_agrees_with_exhaustive_on_a_separated_table_and_spends_less() -> None:
    table = random_table(8, 60, seed=2, spread=0.3)
    exhaustive, adaptive = Exhaustive(trials=60), Adaptive(keep=[3, 1], trials=[10, 60])
    scorer, _, x, index = setup(table, exhaustive)
    ex = exhaustive.classify(scorer, x, index, PER_IMAGE)
    scorer, _, x, index = setup(table, adaptive)
    ad = adaptive.classify(scorer, x, index, PER_IMAGE)
    assert torch.equal(ad.pred, ex.pred)
    assert ad.forwards.tolist() == [8 * 10 + 3 * 50] * 3 and (ad.forwards < ex.forwards).all()


def test_adaptive_keep_clamps_to_the_candidates() -> None:
    table = random_table(4, 8, seed=3)
    strategy = Adaptive(keep=[500, 2, 1], trials=[2, 4, 8])
    scorer, _, x, index = setup(table, strategy, batch=1)
    result = strategy.classify(scorer, x, index)
    assert result.forwards.tolist() == [4 * 2 + 4 * 2 + 2 * 4]
    assert sorted(result.num_draws[0].tolist()) == [4, 4, 8, 8]
    one = strategy.classify(scorer, x, index, torch.tensor([2]))
    assert one.pred.tolist() == [2] and one.forwards.tolist() == [2]  # nothing left to decide after stage 0


@pytest.mark.parametrize(
    ("keep", "trials", "match"),
    [
        ([5, 1], [10], "same non-zero length"),
        ([], [], "same non-zero length"),
        ([5, 5, 1], [1, 2, 3], "keep must be strictly decreasing"),
        ([5, 0], [1, 2], "keep must be strictly decreasing and end at >= 1"),
        ([5, 1], [10, 10], "trials must be strictly increasing"),
        ([5, 1], [0, 10], "trials must be strictly increasing and >= 1"),
    ],
)
def test_adaptive_rejects_bad_stages(keep: list[int], trials: list[int], match: str) -> None:
    with pytest.raises(ValueError, match=match) as err:
        Adaptive(keep=keep, trials=trials)
    assert "\n" not in str(err.value)


# ------------------------------------------------------------------ paired t-test
SCIPY_ALTERNATIVE = {"one-sided": "greater", "two-sided": "two-sided"}


def ttest_reference(
    errors: np.ndarray, alpha: float, min_trials: int, max_trials: int, round_size: int, alternative: str
):
    """Clark & Jaini's pruning, round by round, with scipy's p-values on one image's realized (M, n) errors.

    A class is dropped when its paired test against the current best has ``p < alpha`` and it is worse
    (positive mean difference: a two-sided test could also reject for a class better than the best).
    """
    m = errors.shape[0]
    remaining, stage, draws = set(range(m)), [0.0] * m, [0] * m
    n, rounds, forwards = 0, 0, 0
    while n < max_trials and len(remaining) > 1:
        stop = min(n + round_size, max_trials)
        forwards += len(remaining) * (stop - n)
        n, rounds = stop, rounds + 1
        for c in remaining:
            draws[c], stage[c] = n, float(rounds)
        if n >= min_trials:
            best = min(remaining, key=lambda c: errors[c, :n].mean())
            dropped = set()
            for c in remaining - {best}:
                res = stats.ttest_rel(
                    errors[c, :n], errors[best, :n], alternative=SCIPY_ALTERNATIVE[alternative]
                )
                if res.pvalue < alpha and res.statistic > 0:
                    dropped.add(c)
            remaining -= dropped
    for c in remaining:
        stage[c] += 1.0
    return stage, draws, forwards


@pytest.mark.parametrize("alternative", ["one-sided", "two-sided"])
@pytest.mark.parametrize("alpha", [0.002, 0.05])
def test_paired_ttest_prunes_exactly_like_scipy(alpha: float, alternative: str) -> None:
    table = random_table(8, 120, seed=4, spread=0.004)
    strategy = PairedTTest(alpha=alpha, min_trials=12, max_trials=120, round_size=6, alternative=alternative)
    scorer, den, x, index = setup(table, strategy)
    errors = realized(scorer, x, index, PER_IMAGE)
    den.calls = 0
    result = strategy.classify(scorer, x, index, PER_IMAGE)
    drop_rounds, other = set(), []
    for b in range(3):
        stage, draws, forwards = ttest_reference(errors[b], alpha, 12, 120, 6, alternative)
        assert result.stage[b].tolist() == stage
        assert result.num_draws[b].tolist() == draws
        assert int(result.forwards[b]) == forwards
        drop_rounds |= set(draws)
        flip = "two-sided" if alternative == "one-sided" else "one-sided"
        other.append(ttest_reference(errors[b], alpha, 12, 120, 6, flip)[1])
    assert len(drop_rounds) >= 3  # classes really were dropped at different rounds
    assert other != result.num_draws.tolist()  # and the alternative made a difference on this table
    assert den.calls == int(result.forwards.sum())


def pooled_ttest_reference(
    errors: np.ndarray, alpha: float, min_trials: int, cap: int, times: list[int] | None = None
) -> tuple[list[int], int]:
    """The pooled variant from its description: every rival of the best is tested (two-sided, ``n - 1``
    dof, scipy's t distribution) with the lower median of the rivals' own paired variances; with ``times``
    (each draw's timestep) those variances are half the mean squared successive difference in timestep order."""
    m = errors.shape[0]
    remaining, draws = set(range(m)), [0] * m
    n, forwards = 0, 0
    while n < cap and len(remaining) > 1:
        forwards += len(remaining)
        n += 1
        for c in remaining:
            draws[c] = n
        if n >= min_trials:
            best = min(remaining, key=lambda c: errors[c, :n].mean())
            rivals = sorted(remaining - {best})
            diffs = {c: errors[c, :n].astype(np.float64) - errors[best, :n] for c in rivals}
            if times is None:
                own = [float(np.var(diffs[c], ddof=1)) for c in rivals]
            else:
                by_t = np.argsort(np.asarray(times[:n]), kind="stable")
                own = [float(np.sum(np.diff(diffs[c][by_t]) ** 2) / (2 * (n - 1))) for c in rivals]
            shared = statistics.median_low(own)
            for c in rivals:
                t = diffs[c].mean() / math.sqrt(shared / n)
                if 2 * stats.t.sf(abs(t), n - 1) < alpha and t > 0:
                    remaining.discard(c)
    return draws, forwards


@pytest.mark.parametrize("cap", [None, 25])
def test_pooled_paired_ttest_with_a_cap_matches_its_description(cap: int | None) -> None:
    table = random_table(8, 120, seed=4, spread=0.004)
    strategy = PairedTTest(alpha=0.05, min_trials=3, max_trials=120, round_size=1, variance="pooled", trial_cap=cap)
    scorer, den, x, index = setup(table, strategy)
    errors = realized(scorer, x, index, PER_IMAGE)
    den.calls = 0
    result = strategy.classify(scorer, x, index, PER_IMAGE)
    per_pair = PairedTTest(alpha=0.05, min_trials=3, max_trials=120, round_size=1, trial_cap=cap)
    pair_scorer, _, _, _ = setup(table, per_pair)
    pair_result = per_pair.classify(pair_scorer, x, index, PER_IMAGE)
    for b in range(3):
        draws, forwards = pooled_ttest_reference(errors[b], 0.05, 3, cap or 120)
        assert result.num_draws[b].tolist() == draws
        assert int(result.forwards[b]) == forwards
    assert den.calls == int(result.forwards.sum())
    assert not torch.equal(pair_result.num_draws, result.num_draws)  # pooling changed the drops
    if cap is not None:
        assert int(result.num_draws.max()) == cap


def test_stratified_pooled_paired_ttest_matches_its_description() -> None:
    table = random_table(8, 120, seed=4, spread=0.004)
    strategy = PairedTTest(alpha=0.05, min_trials=3, max_trials=120, round_size=1, variance="pooled",
                           standard_error="stratified")
    scorer, _, x, index = setup(table, strategy)
    errors = realized(scorer, x, index, PER_IMAGE)
    times = scorer.timesteps(index)
    result = strategy.classify(scorer, x, index, PER_IMAGE)
    for b in range(3):
        draws, forwards = pooled_ttest_reference(errors[b], 0.05, 3, 120, times[b].tolist())
        assert result.num_draws[b].tolist() == draws
        assert int(result.forwards[b]) == forwards
    iid = PairedTTest(alpha=0.05, min_trials=3, max_trials=120, round_size=1, variance="pooled")
    iid_scorer, _, _, _ = setup(table, iid)
    assert not torch.equal(iid.classify(iid_scorer, x, index, PER_IMAGE).num_draws, result.num_draws)


def test_critical_t_of_each_alternative() -> None:
    one, two = critical_t(0.002, 30, "one-sided"), critical_t(0.002, 30, "two-sided")
    assert one == pytest.approx(stats.t.ppf(1 - 0.002, 29), rel=1e-9) and f"{one:.3f}" == "3.127"
    assert two == pytest.approx(stats.t.ppf(1 - 0.002 / 2, 29), rel=1e-9) and f"{two:.3f}" == "3.396"
    # At the critical t, scipy's p-value of each alternative is alpha.
    assert 2 * stats.t.sf(two, 29) == pytest.approx(0.002, rel=1e-9)
    assert stats.t.sf(one, 29) == pytest.approx(0.002, rel=1e-9)
    assert critical_t(0.002, 30) == two  # the helper's default is the strategy's
    strategy = PairedTTest()
    assert strategy.alternative == "two-sided" and vars(strategy)["alternative"] == "two-sided"  # in results
    with pytest.raises(ValueError, match="alternative must be one of one-sided, two-sided"):
        PairedTTest(alternative="greater")


def test_paired_ttest_agrees_with_exhaustive_on_a_separated_table_and_spends_less() -> None:
    table = random_table(8, 200, seed=5, spread=0.3)
    strategy = PairedTTest(min_trials=20, max_trials=200, round_size=10)
    scorer, _, x, index = setup(table, strategy)
    tt = strategy.classify(scorer, x, index, PER_IMAGE)
    exhaustive = Exhaustive(trials=200)
    scorer, _, x, index = setup(table, exhaustive)
    ex = exhaustive.classify(scorer, x, index, PER_IMAGE)
    assert torch.equal(tt.pred, ex.pred)
    assert (tt.forwards >= 8 * 20).all() and (tt.forwards < ex.forwards // 3).all()
    assert (tt.num_draws.amax(dim=1) < 200).all()  # every image stopped early at one class


def test_t_statistic_makes_scipys_decisions_on_random_paired_data() -> None:
    rng = np.random.default_rng(0)
    disagreements, drops, cases = 0, 0, 0
    for n in (2, 3, 5, 20, 57, 300):
        for alpha in (0.002, 0.05):
            b = rng.normal(size=(400, n))
            effect = rng.uniform(-0.2, 1.5, size=(400, 1)) / math.sqrt(n) * 3
            a = b + effect + rng.normal(scale=1.0, size=(400, n))
            t = paired_t_statistic(torch.from_numpy(a), torch.from_numpy(b))
            for alternative in ("one-sided", "two-sided"):
                ours = (t > critical_t(alpha, n, alternative)).numpy()
                res = stats.ttest_rel(a, b, axis=1, alternative=SCIPY_ALTERNATIVE[alternative])
                theirs = (res.pvalue < alpha) & (res.statistic > 0)  # worse, significantly
                disagreements += int((ours != theirs).sum())
                drops += int(theirs.sum())
                cases += 400
    assert disagreements == 0 and 0.2 * cases < drops < 0.9 * cases
    # Zero variance of the differences: identical draws are never dropped; a constant worse one is.
    base = np.arange(10.0)
    for a, dropped in ((base, False), (base + 0.5, True)):
        t = paired_t_statistic(torch.from_numpy(a), torch.from_numpy(base))
        ours = bool(t > critical_t(0.002, 10, "one-sided"))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scipy warns about the zero variance it then handles
            theirs = bool(stats.ttest_rel(a, base, alternative="greater").pvalue < 0.002)
        assert ours == theirs == dropped


def test_paired_ttest_keeps_identical_classes_to_the_end() -> None:
    table = torch.stack([random_table(1, 40, seed=6)[0]] * 2 + [random_table(1, 40, seed=6)[0] + 1.0])
    strategy = PairedTTest(min_trials=10, max_trials=40, round_size=10)
    scorer, _, x, index = setup(table, strategy, batch=1)
    result = strategy.classify(scorer, x, index)
    assert result.num_draws[0].tolist() == [40, 40, 10]
    assert result.forwards.tolist() == [3 * 10 + 2 * 30]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"alpha": 0.0}, "alpha"),
        ({"min_trials": 1}, "min_trials"),
        ({"min_trials": 30, "max_trials": 20}, "max_trials"),
        ({"round_size": 0}, "round_size"),
        ({"variance": "median"}, "variance"),
        ({"trial_cap": 10, "min_trials": 20}, "trial_cap"),
        ({"standard_error": "von_neumann"}, "standard_error"),
    ],
)
def test_paired_ttest_rejects_bad_options(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        PairedTTest(**kwargs)


# ------------------------------------------------------------------ prefilter
class FixedLogits(nn.Module):
    """A 'classifier' whose logits are a fixed preference plus the image's mean pixel times a direction."""

    def __init__(self, prefs: Tensor) -> None:
        super().__init__()
        self.prefs = nn.Parameter(prefs.float())
        self.num_classes = len(prefs)

    def forward(self, images: Tensor) -> Tensor:
        return self.prefs.expand(images.shape[0], -1) + images.mean(dim=(1, 2, 3)).view(-1, 1)


def test_prefilter_proposes_the_top_k_and_reports_every_candidate() -> None:
    table = random_table(8, 20, seed=7, spread=0.2)
    prefs = torch.tensor([0.0, 5.0, 1.0, 4.0, 2.0, 3.0, -1.0, 6.0])
    strategy = Prefilter(FixedLogits(prefs), top_k=3, inner=Exhaustive(trials=20))
    scorer, den, x, index = setup(table, strategy)
    cand = torch.tensor([0, 1, 2, 3, 4, 5, 6])  # class 7 (the classifier's favourite) is not a candidate
    result = strategy.classify(scorer, x, index, cand)
    proposed = [1, 3, 5]
    assert torch.equal(result.candidates, cand.expand(3, -1))
    for b in range(3):
        scored = [int(c) for c in cand if result.num_draws[b, c] > 0]
        assert scored == proposed
        assert torch.isnan(result.mean_error[b, [0, 2, 4, 6]]).all()
        best = min(proposed, key=lambda c: float(table[c].mean()))
        assert int(result.pred[b]) == best
        rank = result.rank_scores()[b]
        assert rank[proposed].min() > rank[[0, 2, 4, 6]].max()
        assert rank[[4, 2, 0, 6]].tolist() == sorted(rank[[0, 2, 4, 6]].tolist(), reverse=True)  # by logits
        torch.testing.assert_close(result.probs()[b, proposed].sum(), torch.tensor(1.0))
    assert result.forwards.tolist() == [3 * 20] * 3 and den.calls == 180
    with pytest.raises(ValueError, match="top_k=3 exceeds the 2 candidate"):
        strategy.classify(scorer, x, index, torch.tensor([0, 1]))
    wrong = Prefilter(FixedLogits(torch.zeros(5)), top_k=2, inner=Exhaustive(trials=20))
    with pytest.raises(ValueError, match="has 5 classes but the diffusion model has 8"):
        wrong.classify(scorer, x, index)


def test_prefilter_loads_a_classifier_checkpoint_lazily(tmp_path: Path) -> None:
    from diffclf.models.classifiers import create_classifier

    missing = Prefilter(str(tmp_path / "missing.ckpt"), top_k=2, inner=Exhaustive(trials=4))
    table = random_table(6, 4, seed=8)
    scorer, _, x, index = setup(table, missing, batch=2)
    with pytest.raises(FileNotFoundError):
        missing.classify(scorer, x, index)
    torch.manual_seed(0)
    clf = create_classifier("test_resnet", num_classes=6, in_chans=1, img_size=8).eval()
    ckpt = tmp_path / "clf.ckpt"
    hp = {"model_name": "test_resnet", "num_classes": 6, "in_chans": 1, "img_size": 8}
    torch.save(
        {"hyper_parameters": hp, "state_dict": {f"model.{k}": v for k, v in clf.state_dict().items()}}, ckpt
    )
    strategy = Prefilter(str(ckpt), top_k=2, inner=Exhaustive(trials=4))
    pixels = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    result = strategy.classify(scorer, x, index, images=pixels)
    with torch.no_grad():
        want = clf(pixels).topk(2, dim=1).indices.sort(dim=1).values
    got = torch.stack([torch.nonzero(result.num_draws[b]).flatten() for b in range(2)])
    assert torch.equal(got, want)


# ------------------------------------------------------------------ the result type and the presets
def test_classification_ranks_by_stage_then_error_and_softmaxes_scored_classes() -> None:
    inf = math.inf
    result = Classification(
        candidates=torch.tensor([[10, 11, 12, 13, 14]]),
        mean_error=torch.tensor([[0.5, 0.1, 0.3, math.nan, 0.2]]),
        num_draws=torch.tensor([[50, 10, 50, 0, 10]]),
        forwards=torch.tensor([120]),
        stage=torch.tensor([[1.0, 0.0, 1.0, -inf, 0.0]]),
    )
    assert result.pred.tolist() == [12]
    assert result.rank_scores()[0].tolist() == [4.0, 3.0, 5.0, -inf, 2.0]
    assert result.top5()[0].tolist() == [12, 10, 11, 14, 13]
    p = result.probs(temperature=0.5)[0]
    want = torch.softmax(-torch.tensor([0.5, 0.1, 0.3, 0.2]) / 0.5, dim=0)
    torch.testing.assert_close(p[[0, 1, 2, 4]], want)
    assert p[3] == 0


def test_strategy_needs_a_scorer_with_enough_draws() -> None:
    table = random_table(3, 10, seed=9)
    scorer, _, x, index = setup(table, Exhaustive(trials=10))
    with pytest.raises(ValueError, match="needs 20 draws"):
        Exhaustive(trials=20).classify(scorer, x, index)


def _build(path: Path) -> Strategy:
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_argument("--strategy", type=Strategy, sub_configs=True)
    return parser.instantiate(parser.parse_args(["--strategy", str(path)])).strategy


@pytest.mark.parametrize("preset", sorted(p.stem for p in (CONFIG_DIR / "strategy").glob("*.yaml")))
def test_every_strategy_preset_builds(preset: str) -> None:
    strategy = _build(CONFIG_DIR / "strategy" / f"{preset}.yaml")
    spec = yaml.safe_load((CONFIG_DIR / "strategy" / f"{preset}.yaml").read_text())
    _assert_built_as(strategy, spec)


def _assert_built_as(strategy: Strategy, spec: dict) -> None:
    """Class and every init arg as the YAML says, nested strategies (a prefilter's ``inner``) included."""
    assert type(strategy).__name__ == spec["class_path"].rsplit(".", 1)[1]
    for key, want in spec["init_args"].items():
        if isinstance(want, dict) and "class_path" in want:
            _assert_built_as(getattr(strategy, key), want)
        else:
            assert getattr(strategy, key) == want, key


def test_a_prefilter_config_builds_with_its_inner_strategy(tmp_path: Path) -> None:
    spec = {
        "class_path": "diffclf.strategies.Prefilter",
        "init_args": {
            "classifier": "clf.ckpt",
            "top_k": 20,
            "inner": {
                "class_path": "diffclf.strategies.Adaptive",
                "init_args": {"keep": [5, 1], "trials": [10, 50]},
            },
        },
    }
    path = tmp_path / "prefilter.yaml"
    path.write_text(yaml.safe_dump(spec))
    strategy = _build(path)
    assert isinstance(strategy, Prefilter) and isinstance(strategy.inner, Adaptive)
    assert strategy.classifier == "clf.ckpt" and strategy.max_draws == 50
