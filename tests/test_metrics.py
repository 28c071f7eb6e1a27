"""Clopper-Pearson intervals, test-time metrics (also under a real 2-process DDP), results IO, robustness."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import free_port
from scipy.stats import beta
from torchmetrics.classification import MulticlassAccuracy

from diffclf.data.label_spaces import group_index, label_space_scores
from diffclf.metrics.accuracy import clopper_pearson
from diffclf.metrics.classification import ClassificationMetrics
from diffclf.metrics.provenance import working_tree_dirty
from diffclf.metrics.results import (
    REQUIRED_FIELDS,
    ResultsError,
    append_record,
    load_records,
    make_record,
    write_results_json,
)
from diffclf.metrics.robustness import (
    effective_robustness,
    effective_robustness_interval,
    expit,
    fit_linear,
    logit,
)


@pytest.mark.parametrize("k,n", [(0, 1), (1, 1), (0, 10), (10, 10), (3, 10), (57, 100), (7731, 10000)])
@pytest.mark.parametrize("level", [0.95, 0.995])
def test_clopper_pearson_is_the_beta_quantile_interval(k: int, n: int, level: float) -> None:
    # The definition (Clopper & Pearson 1934), not the scipy call the function wraps: the bounds are Beta
    # quantiles, lower = Beta(k, n-k+1).ppf(a/2), upper = Beta(k+1, n-k).ppf(1-a/2); at k = 0 the lower
    # bound is 0 and the upper one solves (1-p)^n = a/2, at k = n symmetrically.
    a = 1 - level
    low, high = clopper_pearson(k, n, level)
    want_low = 0.0 if k == 0 else beta.ppf(a / 2, k, n - k + 1)
    want_high = 1.0 if k == n else beta.ppf(1 - a / 2, k + 1, n - k)
    assert low == pytest.approx(want_low, rel=1e-9, abs=1e-12)
    assert high == pytest.approx(want_high, rel=1e-9, abs=1e-12)
    if k == 0:
        assert low == 0.0 and high == pytest.approx(1 - (a / 2) ** (1 / n), rel=1e-9)
    if k == n:
        assert high == 1.0 and low == pytest.approx((a / 2) ** (1 / n), rel=1e-9)
    assert 0.0 <= low <= k / n <= high <= 1.0


@pytest.mark.parametrize(
    ("k", "n", "level", "want"),
    [
        (0, 10, 0.95, (0.0, 0.3085)),  # upper = 1 - 0.025^(1/10)
        (5, 10, 0.95, (0.1871, 0.8129)),
        (10, 10, 0.95, (0.6915, 1.0)),
        (1, 10, 0.95, (0.0025, 0.4450)),
        (3, 10, 0.95, (0.0667, 0.6525)),
    ],
)
def test_clopper_pearson_matches_published_exact_intervals(k: int, n: int, level: float, want: tuple) -> None:
    low, high = clopper_pearson(k, n, level)
    assert (round(low, 4), round(high, 4)) == want


def test_clopper_pearson_refuses_empty_and_bad_input() -> None:
    with pytest.raises(ValueError, match="n >= 1"):
        clopper_pearson(0, 0)
    with pytest.raises(ValueError, match="0 <= k <= n"):
        clopper_pearson(5, 4)
    with pytest.raises(ValueError, match="level"):
        clopper_pearson(1, 4, level=95)


def _example() -> tuple[torch.Tensor, torch.Tensor]:
    # 3 classes, imbalanced: class 0 has 6 images (5 right), class 1 has 2 (0 right), class 2 has 1 (1 right).
    target = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1, 2])
    pred = torch.tensor([0, 0, 0, 0, 0, 2, 0, 2, 2])
    scores = torch.nn.functional.one_hot(pred, 3).float() + 0.1 * torch.arange(3).float()
    return scores, target


def test_micro_macro_top5_against_torchmetrics() -> None:
    scores, target = _example()
    m = ClassificationMetrics(3)
    m.update(scores[:4], target[:4], torch.full((4,), 10), 0.5)
    m.update(scores[4:], target[4:], torch.full((5,), 20), 1.5)
    out = m.compute()
    assert out["n"] == 9 and out["correct"] == 6
    micro = MulticlassAccuracy(3, average="micro")(scores, target).item()
    macro = MulticlassAccuracy(3, average="macro")(scores, target).item()
    assert out["accuracy"] == pytest.approx(micro) == pytest.approx(6 / 9)
    assert out["mean_per_class_accuracy"] == pytest.approx(macro) == pytest.approx((5 / 6 + 0 + 1) / 3)
    assert out["top5_accuracy"] == 1.0  # K = 3 < 5: top-3 always hits
    assert out["forwards_per_image"] == pytest.approx((4 * 10 + 5 * 20) / 9)
    assert out["seconds_per_image"] == pytest.approx(2.0 / 9)


def test_macro_ignores_absent_classes_and_nan_scores_lose() -> None:
    m = ClassificationMetrics(6)
    scores = torch.tensor([[float("nan"), 1.0, 0, 0, 0, 0], [0.0, 2.0, 3.0, 0, 0, 0]])
    m.update(scores, torch.tensor([1, 1]))
    out = m.compute()
    assert out["correct"] == 1 and out["mean_per_class_accuracy"] == 0.5
    assert out["forwards_per_image"] is None
    assert out["top5_accuracy"] == 1.0
    with pytest.raises(ValueError, match="label-space indices"):
        m.update(scores, torch.tensor([0, 6]))
    with pytest.raises(ValueError, match=r"shape \(B, 6\)"):
        m.update(scores[:, :5], torch.tensor([0, 1]))


def _ddp_worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    scores, target = _example()
    part = slice(0, 2) if rank == 0 else slice(2, 9)  # uneven: 2 images on rank 0, 7 on rank 1
    m = ClassificationMetrics(3)
    m.update(scores[part], target[part], torch.ones(len(target[part])), 1.0)
    result = m.compute()
    if rank == 0:
        Path(out).write_text(json.dumps(result))
    dist.destroy_process_group()


def test_uneven_ranks_sum_counts_under_ddp(tmp_path: Path) -> None:
    out = tmp_path / "ddp.json"
    mp.spawn(_ddp_worker, args=(free_port(), str(out)), nprocs=2, join=True)
    got = json.loads(out.read_text())
    scores, target = _example()
    single = ClassificationMetrics(3)
    single.update(scores, target, torch.ones(9), 2.0)
    assert got == pytest.approx(single.compute())
    assert got["accuracy"] == pytest.approx(
        6 / 9
    )  # an average of per-rank means would give 0.5 * (1/2 + 5/7)


def test_label_space_scores_take_the_best_model_id() -> None:
    logits = torch.tensor([[0.0, 5.0, 1.0, 2.0], [3.0, -1.0, 4.0, 0.0]])
    index = group_index(((0,), (1, 2), (3,)))
    assert index.tolist() == [[0, 0], [1, 2], [3, 3]]
    assert label_space_scores(logits, index).tolist() == [[0.0, 5.0, 2.0], [3.0, 4.0, 0.0]]


def _record(**overrides: object) -> dict:
    metrics = {
        "n": 200,
        "correct": 150,
        "accuracy": 0.75,
        "top5_accuracy": 0.9,
        "mean_per_class_accuracy": 0.7,
        "forwards_per_image": 1.0,
        "seconds_per_image": 0.01,
    }
    context = {
        "model": "resnet18",
        "kind": "discriminative",
        "checkpoint": "a.ckpt",
        "dataset": "cifar10",
        "num_classes": 10,
        "label_space_size": 10,
        "strategy": "logits",
        "seed": 0,
    }
    return {**make_record(metrics, 0.95, **context), **overrides}


def test_make_record_has_every_field_and_the_interval() -> None:
    rec = _record()
    assert set(REQUIRED_FIELDS) <= set(rec)
    assert (rec["ci_low"], rec["ci_high"]) == clopper_pearson(150, 200, 0.95)
    assert rec["commit"] and rec["timestamp"] and rec["skipped_images"] == 0


def test_results_files_round_trip_and_dedupe(tmp_path: Path) -> None:
    rec = _record()
    write_results_json(rec, tmp_path / "run" / "results.json")
    append_record(rec, tmp_path / "all.jsonl")
    append_record(_record(dataset="cifar10_c", timestamp="later"), tmp_path / "all.jsonl")
    (tmp_path / "preds.jsonl").write_text(
        '{"index": 0, "pred": 1}\n'
    )  # a prediction file: skipped in folders
    df = load_records([tmp_path])
    assert sorted(df["dataset"]) == ["cifar10", "cifar10_c"]  # the run in both files counts once
    assert len(load_records([tmp_path / "all.jsonl"])) == 2


@pytest.mark.parametrize(
    "change,reason",
    [
        ({"schema_version": 99}, "schema_version 99"),
        ({"accuracy": 0.5}, "disagrees with correct/n"),
        ({"kind": "other"}, "kind 'other'"),
    ],
)
def test_load_refuses_bad_records_naming_the_file(tmp_path: Path, change: dict, reason: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(_record(**change)) + "\n")
    with pytest.raises(ResultsError, match=f"bad.jsonl:1: .*{reason}"):
        load_records([path])


def test_load_refuses_missing_fields(tmp_path: Path) -> None:
    rec = _record()
    del rec["ci_level"], rec["commit"]
    path = tmp_path / "results.json"
    path.write_text(json.dumps(rec))
    with pytest.raises(
        ResultsError, match="results.json: not a diffclf results record: missing ci_level, commit"
    ):
        load_records([path])
    with pytest.raises(ResultsError, match="missing"):
        write_results_json(rec, tmp_path / "again.json")


def test_logit_clips_and_inverts() -> None:
    assert np.isfinite(logit([0.0, 1.0])).all()
    assert expit(logit([0.2, 0.5, 0.9])) == pytest.approx([0.2, 0.5, 0.9])


def test_fit_recovers_a_known_line_and_effective_robustness() -> None:
    slope, intercept = 1.3, -0.8
    id_acc = np.array([0.55, 0.65, 0.72, 0.8, 0.86])
    ood_acc = expit(slope * logit(id_acc) + intercept)
    fit = fit_linear(id_acc, ood_acc, models=list("abcde"))
    assert (fit.slope, fit.intercept) == (pytest.approx(slope), pytest.approx(intercept))
    assert effective_robustness(id_acc, ood_acc, fit) == pytest.approx(np.zeros(5), abs=1e-9)
    point_id, point_ood = 0.7, 0.6
    expected = 100 * (point_ood - 1 / (1 + np.exp(-(slope * np.log(0.7 / 0.3) + intercept))))
    er = float(effective_robustness(point_id, point_ood, fit))
    assert er > 0 and er == pytest.approx(expected)
    low, high = effective_robustness_interval(point_id, 0.55, 0.65, fit)
    assert float(low) == pytest.approx(er - 5) and float(high) == pytest.approx(er + 5)


def test_fit_needs_two_distinct_models() -> None:
    with pytest.raises(ValueError, match="at least 2 models"):
        fit_linear([0.7], [0.5])
    with pytest.raises(ValueError, match="at least 2 models"):
        fit_linear([0.7, 0.7], [0.5, 0.4])


@pytest.mark.skipif(shutil.which("git") is None, reason="needs the git command")
def test_working_tree_dirty_is_false_on_a_clean_checkout_and_true_after_an_edit(tmp_path: Path) -> None:
    """A clean tree gives git's empty output, which must read as clean (``git()`` would answer ``unknown``)."""
    repo = tmp_path / "repo"
    repo.mkdir()
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    (repo / "a.txt").write_text("one\n")
    for cmd in (["init", "-q"], ["add", "a.txt"], ["commit", "-q", "-m", "first"]):
        subprocess.run(["git", "-C", str(repo), *cmd], check=True, env=env)
    (repo / "untracked.txt").write_text("new\n")
    assert working_tree_dirty(repo) is False
    (repo / "a.txt").write_text("two\n")
    assert working_tree_dirty(repo) is True
    assert working_tree_dirty(tmp_path / "not_a_repo_at_all") is None
