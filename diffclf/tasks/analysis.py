"""Task-driven analyses outside Lightning: fixed image batches, strategies run through a task, per-image results.

The benchmark scripts (``benchmarks/strategies.py``, ``eval_choices.py``, ``training_curve.py``) compare
strategies, scoring options and checkpoints on the *same* images through the *same*
:meth:`DiffusionClassifier.classify` that ``cli.py test`` uses, so a benchmark figure and a test record
can never disagree about what was classified or how. What they share lives here rather than in one
script that the others import:

- :func:`split_batches`: the first ``limit`` images of a data preset's test (or unflipped training)
  split, materialised once, so every run of an analysis sees identical batches;
- :func:`load_diffusion_task`: a checkpoint as a diffusion task over the data's label space;
- :func:`run_live` / :func:`run_replay`: one strategy over those batches, live (timed, optionally keeping
  every per-draw error) or replayed from recorded errors (``diffclf.strategies.replay``), with the
  per-image predictions, targets and forwards that the comparisons are made of;
- :func:`summarise` / :func:`mark_pareto`: a run as a table row against the exhaustive reference (exact
  interval, agreement, forwards) and the Pareto flags of a table (``strategies.py``, ``error_control.py``).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader

from diffclf.configs import load_preset
from diffclf.diffusion.scoring import Scorer, ScoreTable
from diffclf.metrics.accuracy import clopper_pearson
from diffclf.strategies import Classification, PairedTTest, Strategy
from diffclf.strategies.ttest import critical_t
from diffclf.tasks.base import Batch
from diffclf.tasks.checkpoints import load_task
from diffclf.tasks.diffusion import DiffusionClassifier, describe_strategy


def pct(x: float) -> str:
    """A fraction as a percentage with two decimals: how every benchmark table prints accuracies, so
    figures copied between tables and READMEs read the same."""
    return f"{100 * x:.2f}"


def parse_overrides(pairs: Sequence[str], option: str = "--data_arg") -> dict[str, str]:
    """``KEY=VALUE`` command-line pairs as ``init_args`` overrides (values stay strings: jsonargparse
    parses them against the class's signature, as on the ``cli.py`` command line)."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"{option} {pair!r}: expected KEY=VALUE (an init_arg of the data module)")
        out[key] = value
    return out


def split_batches(
    data: str,
    overrides: Mapping[str, Any] | None = None,
    limit: int | None = None,
    split: str = "test",
    skip: int = 0,
) -> tuple[LightningDataModule, list[Batch]]:
    """The data module of preset (or YAML) ``data`` and the first ``limit`` images of ``split`` after its
    first ``skip`` as ``(images, target, index)`` batches: every run of an analysis classifies exactly these.
    ``skip`` lets a long recording run in parts (one per core) whose draws are those of one run, since the
    noise is keyed by each image's dataset index.

    ``split="train"`` reads training images in file order without flips: a place to choose scoring
    options that is not the test split (the denoiser has seen these images, so absolute accuracy there
    is optimistic; paired differences between options are what it is for).
    """
    if split not in ("test", "train"):
        raise ValueError(f"--split {split!r}: expected 'test' or 'train'")
    if skip < 0:
        raise ValueError(f"--skip {skip}: expected a count of images >= 0")
    dm = load_preset("data", data, LightningDataModule, "--data", dict(overrides or {}))
    if split == "test":
        dm.setup("test")
        loader = dm.test_dataloader()
    else:
        dm.setup("fit")
        dm.train_dataset.flip = False
        loader = DataLoader(dm.train_dataset, batch_size=dm.eval_batch_size, shuffle=False)
    batches: list[Batch] = []
    seen = 0
    for images, target, index in loader:
        drop = min(skip, len(index))
        skip -= drop
        images, target, index = images[drop:], target[drop:], index[drop:]
        take = len(index) if limit is None else min(len(index), limit - seen)
        if take > 0:
            batches.append((images[:take], target[:take], index[:take]))
        seen += take
        if limit is not None and seen >= limit:
            break
    return dm, batches


def load_diffusion_task(
    path: str | Path, dm: LightningDataModule | None = None, option: str = "--ckpt_path"
) -> DiffusionClassifier:
    """The diffusion task a checkpoint holds (eval mode, CPU), classifying over ``dm``'s label space.

    The analyses change strategies and scoring options on it, which only a diffusion task has; a
    label space over another number of model classes would index the wrong scores, so both are
    refused with one line here instead of failing (or not) deep inside a strategy.
    """
    task = load_task(path, option=option)
    if not isinstance(task, DiffusionClassifier):
        raise TypeError(f"{option} {path}: a {type(task).__name__} checkpoint; this needs a DiffusionClassifier")
    if dm is not None:
        space = dm.label_space
        if space.num_model_classes != task.num_model_classes:
            raise ValueError(
                f"{option} {path}: the model has {task.num_model_classes} classes but the data's label space "
                f"'{space.name}' is defined over {space.num_model_classes}"
            )
        task.label_space = space
    return task


@contextlib.contextmanager
def _keeping_tables(scorer: Scorer, tables: list[ScoreTable]) -> Iterator[None]:
    """Append every table the strategy creates on ``scorer`` to ``tables`` (its per-draw errors, for a
    later replay or reweighting), and leave the scorer as it was afterwards: the task reuses it."""
    had = "new_table" in vars(scorer)
    previous = scorer.new_table

    def capture(*args: Any, **kwargs: Any) -> ScoreTable:
        table = previous(*args, **kwargs)
        tables.append(table)
        return table

    scorer.new_table = capture
    try:
        yield
    finally:
        if had:
            scorer.new_table = previous
        else:
            del scorer.new_table


@contextlib.contextmanager
def _keeping_results(strategy: Strategy, results: list[Classification]) -> Iterator[None]:
    """Append every :class:`Classification` ``strategy.classify`` returns to ``results`` (what survived to
    the end, which the label-space scores of ``task.classify`` no longer say), and leave the strategy as it was."""
    previous = strategy.classify

    def capture(*args: Any, **kwargs: Any) -> Classification:
        results.append(previous(*args, **kwargs))
        return results[-1]

    strategy.classify = capture
    try:
        yield
    finally:
        del strategy.classify


def _class_of_id(task: DiffusionClassifier) -> Tensor:
    """``(num_model_classes,)`` the label-space class of each model id (its first), -1 for ids outside it."""
    owner = torch.full((task.num_model_classes,), -1, dtype=torch.long)
    for k, ids in enumerate(task.label_space.model_classes):
        owner[list(ids)] = torch.where(owner[list(ids)] < 0, k, owner[list(ids)])
    return owner


def _finalists(task: DiffusionClassifier, result: Classification, owner: Tensor) -> Tensor:
    """``(B,)`` label-space classes still in at the end of ``result``: those with an id at the image's highest
    stage (a t-test's or Racing's survivors; a class dropped by the last test has the draws but not the stage).
    A class counts once whatever its model ids (``owner``: :func:`_class_of_id`)."""
    stage = result.stage
    still_in = (stage == stage.amax(dim=1, keepdim=True)) & ~torch.isneginf(stage)
    cls = owner[result.candidates.cpu()].to(stage.device)
    hits = torch.zeros(stage.shape[0], task.label_space.num_classes + 1, device=stage.device)
    hits.scatter_reduce_(1, torch.where(cls < 0, task.label_space.num_classes, cls), still_in.float(), reduce="amax")
    return hits[:, :-1].sum(dim=1).long().cpu()


@contextlib.contextmanager
def _scorer_installed(task: DiffusionClassifier, scorer: Scorer) -> Iterator[None]:
    """Make ``task`` score with ``scorer`` (a replay) so that the replay runs through the same
    ``classify`` as a live run; the task's own scorer is back afterwards. The task has no public
    setter for its scorer, hence the private attribute."""
    previous = task._scorer
    task._scorer = scorer
    try:
        if task.scorer() is not scorer:  # the task would rebuild it (another device or max_draws)
            raise ValueError(
                f"the replay scorer (max_draws {scorer.max_draws}, antithetic {scorer.antithetic}, {scorer.device}) "
                f"does not fit the task's strategy (max_draws {task.strategy.max_draws}, its own draw order: "
                f"{task.strategy.draw_order is not None}, antithetic {task.strategy.antithetic}; scoring antithetic "
                f"{task.scoring.antithetic}) on {task.device}"
            )
        yield
    finally:
        task._scorer = previous


def last_draw(strategy: Strategy) -> int:
    """The most draws a class of this strategy can get: its ``trial_cap`` where it has one, else ``max_draws``."""
    return getattr(strategy, "trial_cap", None) or strategy.max_draws


def _classify_all(task: DiffusionClassifier, strategy: Strategy, batches: Sequence[Batch]) -> dict[str, Any]:
    """Per-image predictions, targets, forwards, indices and finalists of ``batches`` under ``task``'s
    current scorer, and the seconds spent in ``classify``."""
    preds, targets, forwards, indices, finalists = [], [], [], [], []
    results: list[Classification] = []
    owner = _class_of_id(task)
    elapsed = 0.0
    for images, target, index in batches:
        start = time.perf_counter()
        with _keeping_results(strategy, results):
            scored = task.classify(images, index)
        elapsed += time.perf_counter() - start
        preds.append(scored.ranked().argmax(dim=1))
        targets.append(target)
        forwards.append(scored.forwards)
        indices.append(index)
        finalists.append(_finalists(task, results[-1], owner))
    return {
        "pred": torch.cat(preds),
        "target": torch.cat(targets),
        "forwards": torch.cat(forwards),
        "index": torch.cat(indices),
        "finalists": torch.cat(finalists),
        "num_candidates": len(task.label_space.all_model_ids()),
        "seconds": elapsed,
    }


def run_live(
    task: DiffusionClassifier, strategy: Strategy, batches: Sequence[Batch], keep_table: bool = False
) -> dict[str, Any]:
    """Classify every batch with ``strategy`` through ``task.classify`` (the path ``cli.py test`` uses).

    Returns per-image tensors ``pred``, ``target``, ``forwards``, ``index`` and ``finalists`` (classes
    still in at the end, :func:`_finalists`: two or more means a strategy never settled the image), plus
    ``num_candidates`` (model ids scored per image), ``seconds`` (time in ``classify``) and
    ``loadavg_1min`` before/after (the machine may be shared; a timing needs its context). With
    ``keep_table`` also ``errors`` ``(N, M, D)``, every per-draw error the strategy scored (NaN where it
    scored none), and ``candidates`` ``(M,)``, their model ids: what :func:`run_replay` replays.
    """
    task.strategy = strategy  # the scorer is rebuilt when the strategy's max_draws differ
    scorer = task.scorer()
    tables: list[ScoreTable] = []
    load0 = os.getloadavg()[0]
    with _keeping_tables(scorer, tables) if keep_table else contextlib.nullcontext():
        out = _classify_all(task, strategy, batches)
    out["loadavg_1min"] = [round(load0, 2), round(os.getloadavg()[0], 2)]
    out["antithetic"] = scorer.antithetic
    if keep_table:
        out["errors"] = torch.cat([t.errors for t in tables])
        out["candidates"] = tables[0].candidates[0]
    return out


def run_replay(
    task: DiffusionClassifier, strategy: Strategy, batches: Sequence[Batch], scorer: Scorer
) -> dict[str, Any]:
    """The same loop as :func:`run_live` with ``scorer`` (e.g. a ``ReplayScorer``) in place of the
    task's: predictions and forwards without denoiser calls, so no ``seconds`` or load averages."""
    task.strategy = strategy
    with _scorer_installed(task, scorer):
        out = _classify_all(task, strategy, batches)
    del out["seconds"]
    out["antithetic"] = scorer.antithetic
    return out


def summarise(name: str, strategy: Strategy, run: dict, ref: dict | None, level: float = 0.95) -> dict:
    """One table row of a live or replayed run: accuracy with its exact interval, forwards, and the
    paired comparison with the exhaustive reference (a strategy is judged by what it changes on the
    same images, not by two accuracies side by side); t-tests add where their forwards go."""
    pred, target, fwd = run["pred"], run["target"], run["forwards"].double()
    n = int(target.numel())
    k = int((pred == target).sum())
    low, high = clopper_pearson(k, n, level)
    row = {
        "name": name,
        "strategy": describe_strategy(strategy),
        "images": n,
        "correct": k,
        "accuracy": k / n,
        "ci_low": low,
        "ci_high": high,
        "forwards_per_image": float(fwd.mean()),
        "forwards_min": int(fwd.min()),
        "forwards_median": float(fwd.median()),
        "forwards_max": int(fwd.max()),
    }
    if "seconds" in run:
        row["seconds_per_image"] = run["seconds"] / n
        row["loadavg_1min_before_after"] = run["loadavg_1min"]
    if ref is not None:
        ref_ok = ref["pred"] == ref["target"]
        ok = pred == target
        row["forwards_pct_of_exhaustive"] = 100 * float(fwd.mean()) / float(ref["forwards"].double().mean())
        row["agreement"] = float((pred == ref["pred"]).double().mean())
        row["accuracy_diff_points"] = 100 * (k / n - float(ref_ok.double().mean()))
        row["fixed_vs_exhaustive"] = int((ok & ~ref_ok).sum())
        row["broken_vs_exhaustive"] = int((~ok & ref_ok).sum())
    if isinstance(strategy, PairedTTest):
        # images the tests never settled: two or more classes still in at the last draw (decided by mean error)
        undecided = run["finalists"] >= 2
        K = int(run["num_candidates"])
        last = last_draw(strategy)
        first = min(-(-strategy.min_trials // strategy.round_size) * strategy.round_size, last)  # first tested prefix
        units = 2 if strategy.antithetic or run.get("antithetic") else 1  # the tests count antithetic pairs
        row["candidates"] = K
        row["floor_forwards"] = first * K
        row["floor_pct_of_exhaustive"] = (
            100 * first * K / float(ref["forwards"].double().mean()) if ref is not None else None
        )
        # the thresholds the strategy's own tests use: its alternative, on the units it counts
        row["critical_t_first_test"] = critical_t(strategy.alpha, first // units, strategy.alternative)
        row["critical_t_at_max_trials"] = critical_t(strategy.alpha, last // units, strategy.alternative)
        row["images_undecided_at_max_trials"] = int(undecided.sum())
        row["forwards_per_image_undecided"] = float(fwd[undecided].mean()) if undecided.any() else None
        row["forwards_per_image_decided"] = float(fwd[~undecided].mean()) if (~undecided).any() else None
        row["correct_among_undecided"] = int((pred == target)[undecided].sum())
        if ref is not None:
            row["exhaustive_errors_among_undecided"] = int((ref["pred"] != ref["target"])[undecided].sum())
    return row


def mark_pareto(rows: list[dict]) -> None:
    """Flag each row ``pareto``: no other row has both fewer-or-equal forwards and higher-or-equal accuracy
    (and is better in one)."""
    for r in rows:
        r["pareto"] = not any(
            o is not r
            and o["forwards_per_image"] <= r["forwards_per_image"]
            and o["accuracy"] >= r["accuracy"]
            and (o["forwards_per_image"] < r["forwards_per_image"] or o["accuracy"] > r["accuracy"])
            for o in rows
        )
