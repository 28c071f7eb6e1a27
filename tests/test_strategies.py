"""Strategies against exact answers on synthetic score tables (a fake denoiser, no model).

``TableDenoiser`` predicts ``eps + sqrt(E[y, k])`` for draw ``k`` of a zero image, so the l2
error of class ``c`` on draw ``k`` is ``E[c, k]`` (up to float rounding). The reference answers are
computed in plain Python (and scipy) from the errors the engine actually produced, so decisions
are compared on identical numbers.
"""

from __future__ import annotations

import math
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
def adaptive_reference(errors: np.ndarray, keep: list[int], trials: list[int]) -> tuple[list, list, int]:
    """Successive elimination on one image's realized (M, n) errors: (stage, draws, forwards)."""
    m = errors.shape[0]
    alive, stage, draws, forwards, done = list(range(m)), [0] * m, [0] * m, 0, 0
    for i, (k, n) in enumerate(zip(keep, trials)):
        if len(alive) > 1 or i == 0:
            for c in alive:
                draws[c] = n
            forwards += len(alive) * (n - done)
            done = n
        alive = sorted(alive, key=lambda c: errors[c, : draws[c]].mean())[: min(k, len(alive))]
        for c in alive:
            stage[c] = i + 1
    return stage, draws, forwards


@pytest.mark.parametrize(("keep", "trials"), [([5, 2, 1], [4, 10, 30]), ([10, 3, 1], [3, 6, 12])])
def test_adaptive_keeps_exactly_the_reference_survivors(keep: list[int], trials: list[int]) -> None:
    table = random_table(8, trials[-1], seed=1, spread=0.02)
    strategy = Adaptive(keep=keep, trials=trials)
    scorer, den, x, index = setup(table, strategy)
    errors = realized(scorer, x, index, PER_IMAGE)
    den.calls = 0
    result = strategy.classify(scorer, x, index, PER_IMAGE)
    for b in range(3):
        stage, draws, forwards = adaptive_reference(errors[b], keep, trials)
        assert result.stage[b].tolist() == stage
        assert result.num_draws[b].tolist() == draws
        assert int(result.forwards[b]) == forwards
    assert den.calls == int(result.forwards.sum())
    # Survivors of a later stage rank above every class eliminated earlier, whatever their errors.
    rank = result.rank_scores()
    for b in range(3):
        for i in range(8):
            for j in range(8):
                if result.stage[b, i] > result.stage[b, j]:
                    assert rank[b, i] > rank[b, j]


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
def ttest_reference(errors: np.ndarray, alpha: float, min_trials: int, max_trials: int, round_size: int):
    """Clark & Jaini's pruning with scipy on one image's realized (M, n) errors."""
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
            dropped = {
                c
                for c in remaining
                if stats.ttest_rel(errors[c, :n], errors[best, :n], alternative="greater").pvalue < alpha
            }
            remaining -= dropped
    for c in remaining:
        stage[c] += 1.0
    return stage, draws, forwards


@pytest.mark.parametrize("alpha", [0.002, 0.05])
def test_paired_ttest_prunes_exactly_like_scipy(alpha: float) -> None:
    table = random_table(8, 120, seed=4, spread=0.004)
    strategy = PairedTTest(alpha=alpha, min_trials=12, max_trials=120, round_size=6)
    scorer, den, x, index = setup(table, strategy)
    errors = realized(scorer, x, index, PER_IMAGE)
    den.calls = 0
    result = strategy.classify(scorer, x, index, PER_IMAGE)
    drop_rounds = set()
    for b in range(3):
        stage, draws, forwards = ttest_reference(errors[b], alpha, 12, 120, 6)
        assert result.stage[b].tolist() == stage
        assert result.num_draws[b].tolist() == draws
        assert int(result.forwards[b]) == forwards
        drop_rounds |= set(draws)
    assert len(drop_rounds) >= 3  # classes really were dropped at different rounds
    assert den.calls == int(result.forwards.sum())


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
            ours = (
                paired_t_statistic(torch.from_numpy(a), torch.from_numpy(b)) > critical_t(alpha, n)
            ).numpy()
            theirs = stats.ttest_rel(a, b, axis=1, alternative="greater").pvalue < alpha
            disagreements += int((ours != theirs).sum())
            drops += int(theirs.sum())
            cases += 400
    assert disagreements == 0 and 0.2 * cases < drops < 0.9 * cases
    # Zero variance of the differences: identical draws are never dropped; a constant worse one is.
    base = np.arange(10.0)
    for a, dropped in ((base, False), (base + 0.5, True)):
        ours = bool(paired_t_statistic(torch.from_numpy(a), torch.from_numpy(base)) > critical_t(0.002, 10))
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
    assert type(strategy).__name__ == spec["class_path"].rsplit(".", 1)[1]
    assert {k: getattr(strategy, k) for k in spec["init_args"]} == spec["init_args"]


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
