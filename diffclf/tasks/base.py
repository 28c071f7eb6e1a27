"""``ClassifierTask``: what every diffclf classifier shares, so each kind implements only its scoring.

A classifier kind (the class-conditional DiT, a timm network, and next the text-conditional and
contrastive models) subclasses :class:`ClassifierTask` and implements :meth:`ClassifierTask.classify`
— images and their dataset indices in, label-space scores and logits of ``p(c|x)`` out — plus
:meth:`ClassifierTask.result_context` (what its records say about it). Everything after the scores is
here, written once: the data's label space (checked against the model's classes), the maps from model
ids to label-space classes, probes of every output folder before compute is spent, exact counts summed
over ranks, ``p(c|x)`` from the logits through a fitted calibration (``model.init_args.calibration``, a
file ``diffclf calibrate`` wrote from non-test images) with ECE, NLL and Brier and a reliability diagram,
the results record with its Clopper-Pearson interval, the printed summary, and the ``predict`` rows with
resume (indices a restarted run already wrote are skipped).

Each task class also says which hyperparameters its weights fix (:attr:`ClassifierTask.weight_hparams`):
those are what a checkpoint imposes on a later run; every evaluation option comes from the command line.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import torch
from lightning.pytorch import LightningModule
from torch import Tensor
from tqdm import tqdm

from diffclf.data.label_spaces import LabelSpace, group_index, label_space_scores
from diffclf.diffusion.scoring import ScoringOptions
from diffclf.metrics.calibration import Calibration, read_calibration, write_reliability_diagram
from diffclf.metrics.classification import ClassificationMetrics
from diffclf.metrics.predictions import file_fingerprint
from diffclf.metrics.provenance import device_name
from diffclf.metrics.results import (
    RESULTS_JSON,
    append_record,
    format_summary,
    make_record,
    write_results_json,
)

Batch = tuple[Tensor, Tensor, Tensor]
RELIABILITY_PNG = "reliability.png"


@dataclass
class Scored:
    """A batch classified over the label space.

    Attributes:
        scores: ``(B, K)`` ranking scores, higher is better (NaN ranks last).
        logits: ``(B, K)`` fp32 ``log p(c|x)`` up to a constant per image, before calibration (``-inf``
            for a class given probability 0).
        forwards: ``(B,)`` model evaluations spent per image.
        columns: further ``(B, K)`` per-class values that ``predict`` writes (e.g. ``mean_error``).
    """

    scores: Tensor
    logits: Tensor
    forwards: Tensor
    columns: dict[str, Tensor] = field(default_factory=dict)

    def ranked(self) -> Tensor:
        """``scores`` with NaN as ``-inf``: what a prediction or top-5 reads (``argmax`` and ``topk`` would take NaN
        as the largest)."""
        return torch.nan_to_num(self.scores.float(), nan=-math.inf)


@dataclass(frozen=True)
class CandidateMaps:
    """A label space seen from the model ids a classifier scores.

    Attributes:
        ids: ``(M,)`` the candidate model ids (every id some class uses, sorted).
        groups: ``(K, L)`` each class's positions among ``ids``, padded by repetition (see ``group_index``).
        member: ``(K, M)`` membership matrix: ``probs_M @ member.T`` sums a class's ids' probabilities.
    """

    ids: Tensor
    groups: Tensor
    member: Tensor


class ClassifierTask(LightningModule):
    """Base of every diffclf classifier: label space, output probes, test/predict bookkeeping, records.

    Subclasses call ``save_hyperparameters`` with at least ``num_classes``, ``ci_level``, ``results_dir``,
    ``results_file``, ``label`` and ``calibration``, and implement :meth:`classify` and :meth:`result_context`.
    """

    # Hyperparameters a checkpoint's weights fix (architecture, classes, noise schedule): a checkpoint
    # given with --ckpt_path imposes these and nothing else.
    weight_hparams: ClassVar[frozenset[str]] = frozenset({"num_classes"})
    # "generative", "discriminative" or "contrastive" (zero-shot CLIP): the report fits the effective-robustness
    # line on discriminative models only.
    kind: ClassVar[str] = "generative"

    def __init__(self) -> None:
        super().__init__()
        self.label_space: LabelSpace | None = None
        self.test_metrics: ClassificationMetrics | None = None
        self.test_record: dict[str, Any] | None = None
        self._maps_key: tuple[int, str] | None = None
        self._maps: CandidateMaps | None = None
        self._class_index_key: tuple[int, str] | None = None
        self._class_index: Tensor | None = None
        self._calibration: tuple[str, Calibration] | None = None

    # ------------------------------------------------------------------ what a kind implements
    def classify(self, images: Tensor, index: Tensor) -> Scored:
        """Classify a batch over ``self.label_space``; ``index`` holds the images' dataset indices."""
        raise NotImplementedError

    def set_scoring(self, **changes: Any) -> ScoringOptions:
        """Change a denoising task's scoring options between runs (analyses that compare them on one model, an
        evaluation that overrides a checkpoint's precision); the scorer is rebuilt on next use. Returns the new
        options; a task that does not score by denoising has none to change (one clear error)."""
        scoring = getattr(self, "scoring", None)
        if not isinstance(scoring, ScoringOptions):
            raise TypeError(f"{type(self).__name__} does not score by denoising: it has no scoring options to change")
        self.scoring = replace(scoring, **changes)
        self.hparams["scoring"] = asdict(self.scoring)
        self._scorer = None
        return self.scoring

    def result_context(self) -> dict[str, Any]:
        """Record fields of this run beside the metrics: ``model``, ``strategy``, ``seed``, ..."""
        raise NotImplementedError

    # ------------------------------------------------------------------ the label space
    @property
    def num_model_classes(self) -> int:
        return int(self.hparams.num_classes)

    def setup(self, stage: str) -> None:
        """Take the data's label space (identity over the model's classes when there is none)."""
        self.label_space = resolve_label_space(self, self.num_model_classes)

    def model_class_index(self, device: torch.device) -> Tensor:
        """``(K, L)`` model ids of each label-space class, for logits over all model classes."""
        key = (id(self.label_space), str(device))
        if self._class_index_key != key:
            self._class_index = group_index(self.label_space.model_classes).to(device)
            self._class_index_key = key
        return self._class_index

    def candidate_maps(self, device: torch.device) -> CandidateMaps:
        """The candidate model ids and their maps to label-space classes, built once per label space and
        device: a batch pays one gather and one matmul, not a loop over 1000 classes."""
        key = (id(self.label_space), str(device))
        if self._maps_key != key:
            space = self.label_space
            ids = space.all_model_ids()
            pos = {c: i for i, c in enumerate(ids)}
            positions = [[pos[c] for c in cls] for cls in space.model_classes]
            member = torch.zeros(space.num_classes, len(ids))
            for k, cols in enumerate(positions):
                member[k, cols] = 1.0
            self._maps = CandidateMaps(
                torch.tensor(ids, dtype=torch.long, device=device), group_index(positions).to(device), member.to(device)
            )
            self._maps_key = key
        return self._maps

    # ------------------------------------------------------------------ p(c|x)
    @property
    def calibration(self) -> Calibration | None:
        """The fitted calibration of ``model.init_args.calibration`` (read once), or None."""
        path = dict(self.hparams).get("calibration")
        if not path:
            return None
        if self._calibration is None or self._calibration[0] != path:
            self._calibration = (path, read_calibration(path))
        return self._calibration[1]

    def check_calibration(self) -> None:
        """Refuse a calibration fitted for another classifier: a temperature fitted on one strategy's or
        scoring's logits is wrong for another's, and the error would only show as bad probabilities."""
        cal = self.calibration
        if cal is None:
            return
        fitted = cal.fitted_on
        ctx = json.loads(json.dumps(self.result_context(), default=str))
        diff = [k for k in ("strategy", "scoring") if k in fitted and fitted[k] != ctx.get(k)]
        trainer = self._trainer
        ckpt = getattr(trainer, "ckpt_path", None) if trainer is not None else None
        if ckpt and fitted.get("checkpoint") not in (None, "none") and fitted["checkpoint"] != file_fingerprint(ckpt):
            diff.append("checkpoint")
        if diff:
            details = "; ".join(f"{k}: fitted {fitted.get(k)!r}, now {ctx.get(k, ckpt)!r}" for k in diff)
            raise ValueError(
                f"model.init_args.calibration {self.hparams.calibration} was fitted for another classifier ({details}); "
                "fit one for this run with `diffclf calibrate`"
            )

    def log_probs(self, scored: Scored) -> Tensor:
        """``(B, K)`` ``log p(c|x)``: the calibration's map of the logits, else their log-softmax."""
        cal = self.calibration
        if cal is None:
            return torch.log_softmax(scored.logits.double(), dim=1).float()
        return cal.log_probs(scored.logits, scored.forwards, scored.ranked().argmax(dim=1))

    def calibration_record(self) -> dict[str, Any] | None:
        """What a results record says of the calibration: which file, fit and images (None: uncalibrated)."""
        cal = self.calibration
        if cal is None:
            return None
        return {"file": str(self.hparams.calibration), "method": cal.method, "temperature": cal.temperature,
                "platt": list(cal.platt) if cal.platt is not None else None,
                "split": cal.fitted_on.get("split"), "n": cal.fitted_on.get("n")}

    # ------------------------------------------------------------------ output folders
    def on_fit_start(self) -> None:
        check_run_outputs(self, "fit")

    def on_test_start(self) -> None:
        check_ci_level(self.hparams.get("ci_level"))
        check_run_outputs(self, "test")
        self.check_calibration()

    def on_predict_start(self) -> None:
        self.check_calibration()

    # ------------------------------------------------------------------ test
    def on_test_epoch_start(self) -> None:
        self.test_metrics = ClassificationMetrics(self.label_space.num_classes).to(self.device)

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        images, targets, index = batch
        start = time.perf_counter()
        scored = self.classify(images, index)
        synchronize(scored.scores.device)  # charge each batch its own device time
        seconds = time.perf_counter() - start
        self.test_metrics.update(scored.scores, targets, scored.forwards, seconds, log_probs=self.log_probs(scored))

    def on_test_epoch_end(self) -> None:
        self.finish_test(self.test_metrics, self.result_context())

    def finish_test(self, metrics: ClassificationMetrics, context: Mapping[str, Any]) -> dict[str, Any]:
        """Compute, record, print and write (rank 0) at the end of a test epoch.

        ``context`` holds the record's context fields and may carry ``ci_level``, ``results_dir`` and
        ``results_file``; missing ones come from the hyperparameters. Dataset, checkpoint, class counts
        and skipped images come from the trainer and data module. Runs on every rank (the counts are
        summed across ranks); returns the record and keeps it as ``self.test_record``.
        """
        ctx = dict(context)
        hp = dict(self.hparams)
        level = ctx.pop("ci_level", None)
        level = check_ci_level(hp.get("ci_level") if level is None else level)
        results_dir = ctx.pop("results_dir", None) or hp.get("results_dir")
        results_file = ctx.pop("results_file", None) or hp.get("results_file")
        values = metrics.compute()
        bins = values.pop("reliability_bins", None)
        trainer = self._trainer
        dm = getattr(trainer, "datamodule", None) if trainer is not None else None
        space = self.label_space or getattr(dm, "label_space", None)
        if values["n"] == 0:
            raise RuntimeError("test saw no images: the test dataloader is empty, nothing to report")
        ctx.setdefault("kind", self.kind)
        ctx.setdefault("checkpoint", getattr(trainer, "ckpt_path", None) or hp.get("pretrained"))
        ctx.setdefault("dataset", getattr(dm, "name", None) or getattr(space, "name", None) or "unknown")
        ctx.setdefault("label_space", getattr(space, "name", None))
        ctx.setdefault("num_classes", hp.get("num_classes"))
        ctx.setdefault("label_space_size", metrics.num_classes)
        ctx.setdefault("skipped_images", _count(getattr(dm, "skipped_images", 0)))
        ctx.setdefault("world_size", getattr(trainer, "world_size", 1))
        if getattr(dm, "exclude_from_fit", None):
            ctx.setdefault("exclude_from_fit", list(dm.exclude_from_fit))
        ctx.setdefault("device", device_name(self.device))
        ctx.setdefault("calibration", self.calibration_record())
        record = make_record(values, level, **ctx)
        self.test_record = record
        if trainer is not None:
            for key in ("accuracy", "ci_low", "ci_high", "top5_accuracy", "mean_per_class_accuracy"):
                self.log(f"test/{key}", float(record[key]), sync_dist=True)
        if trainer is None or trainer.is_global_zero:
            # tqdm.write clears the progress bar first, so the table starts on a line of its own.
            tqdm.write(format_summary(record))
            out_dir = Path(
                results_dir or getattr(trainer, "log_dir", None) or getattr(trainer, "default_root_dir", ".")
            )
            path = write_results_json(record, out_dir / RESULTS_JSON)
            tqdm.write(f"results written to {path}")
            if bins:
                cal = record["calibration"]
                how = "uncalibrated" if cal is None else f"{cal['method']}, T={cal['temperature']:.4g}"
                title = f"{record['model']} on {record['dataset']} ({how})\nECE {record['ece']:.4f}, n={record['n']}"
                tqdm.write(f"reliability diagram written to "
                           f"{write_reliability_diagram(bins, out_dir / RELIABILITY_PNG, title)}")
            if results_file:
                tqdm.write(f"record appended to {append_record(record, results_file)}")
        return record

    # ------------------------------------------------------------------ predict
    def _done_indices(self) -> set[int]:
        """Dataset indices a resumed prediction run already wrote (see ``PredictionWriter``)."""
        from diffclf.tasks.callbacks import PredictionWriter

        if self._trainer is None:
            return set()
        for cb in self.trainer.callbacks:
            if isinstance(cb, PredictionWriter):
                return cb.done
        return set()

    def predict_step(self, batch: Batch, batch_idx: int) -> list[dict[str, Any]]:
        """One row per image: dataset index, target, prediction, top-5, forwards, the kind's per-class
        columns and ``p(c|x)`` over the label space."""
        images, targets, index = batch
        done = self._done_indices()
        if done:
            keep = torch.tensor([int(i) not in done for i in index.tolist()], device=index.device)
            if not keep.any():
                return []
            images, targets, index = images[keep], targets[keep], index[keep]
        scored = self.classify(images, index)
        probs = self.log_probs(scored).exp()
        top = scored.ranked().topk(min(5, scored.scores.shape[1]), dim=1).indices
        # One host transfer per tensor and batch, after classification.
        names = list(scored.columns)
        values = [c.tolist() for c in scored.columns.values()]
        # -inf (probability 0) is not JSON: such a logit is written as null.
        logits = torch.where(torch.isfinite(scored.logits), scored.logits, torch.nan).tolist()
        rows = []
        for b, (i, y, t5, f, p) in enumerate(zip(index.tolist(), targets.tolist(), top.tolist(),
                                                 scored.forwards.tolist(), probs.tolist())):
            row: dict[str, Any] = {"index": int(i), "target": int(y), "pred": t5[0], "top5": t5, "forwards": int(f)}
            row.update({name: v[b] for name, v in zip(names, values)})
            row["probs"] = p
            row["logits"] = [None if math.isnan(v) else v for v in logits[b]]
            rows.append(row)
        return rows


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on ``device`` (nothing to wait for on the CPU): kernels run
    asynchronously, so without it a batch's time is charged to the next one and the last is lost."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_of_ids(values: Tensor, groups: Tensor) -> Tensor:
    """Per-class *lowest* value over each class's candidate positions, NaN where none was scored
    (a class standing for several model ids reports its best error)."""
    low = -label_space_scores(-torch.nan_to_num(values, nan=math.inf), groups)
    return torch.where(torch.isinf(low), torch.full_like(low, math.nan), low)


def _count(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, (Sequence, set, frozenset, Mapping)) and not isinstance(value, str):
        return len(value)
    return int(value)


def resolve_label_space(module: LightningModule, num_model_classes: int) -> LabelSpace:
    """The data module's label space, or the identity over the model's classes when there is none.

    Checks that the label space is defined over this model's classes, so that a ``K``-way test can
    never silently index the wrong logits.
    """
    trainer = getattr(module, "_trainer", None)
    dm = getattr(trainer, "datamodule", None) if trainer is not None else None
    space = getattr(dm, "label_space", None)
    if space is None:
        space = LabelSpace.identity([str(i) for i in range(num_model_classes)], name="model")
    if space.num_model_classes != num_model_classes:
        raise ValueError(
            f"data label space '{space.name}' is defined over {space.num_model_classes} model classes "
            f"but the model has {num_model_classes} classes"
        )
    bad = sorted({c for ids in space.model_classes for c in ids if not 0 <= c < num_model_classes})
    if bad:
        raise ValueError(
            f"label space '{space.name}' names class ids {bad[:5]} "
            f"outside the model's 0..{num_model_classes - 1}"
        )
    if any(len(ids) == 0 for ids in space.model_classes):
        raise ValueError(f"label space '{space.name}' has a class with no model class ids")
    return space


def check_writable(folder: str | Path, what: str) -> None:
    """Fail now, naming the option, if ``folder`` cannot take a file (unwritable, full disk, not a folder).

    Classification runs for hours before it writes anything; a probe write at the start turns a lost
    result into an immediate one-line error.
    """
    path = Path(folder)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".diffclf-probe-{os.getpid()}"
        with open(probe, "wb") as fh:
            fh.write(b"\0" * 4096)
            fh.flush()
            os.fsync(fh.fileno())
        probe.unlink()
    except OSError as err:
        raise OSError(f"{what} {path}: cannot write there ({err.strerror or err}); fix it before spending compute") from None


def check_ci_level(level: float | None) -> float:
    """The interval level of a test record (None: 0.95), checked when the test starts: a bad level found only
    when the record is written would throw away every image already scored."""
    if level is None:
        return 0.95
    if not 0.0 < level < 1.0:
        raise ValueError(f"model.init_args.ci_level must be in (0, 1) (e.g. 0.95), got {level}")
    return float(level)


def check_run_outputs(module: LightningModule, stage: str) -> None:
    """Probe every folder this run will write results or checkpoints to (global rank 0 only)."""
    trainer = getattr(module, "_trainer", None)
    if trainer is None or not trainer.is_global_zero:
        return
    hp = dict(getattr(module, "hparams", {}) or {})
    if stage == "fit":
        from lightning.pytorch.callbacks import ModelCheckpoint

        for cb in trainer.callbacks:
            if isinstance(cb, ModelCheckpoint) and cb.dirpath:
                check_writable(cb.dirpath, "checkpoint folder (ModelCheckpoint dirpath)")
        return
    if hp.get("results_dir"):
        check_writable(hp["results_dir"], "model.results_dir")
    elif trainer.log_dir:
        check_writable(trainer.log_dir, "the logger's folder")
    if hp.get("results_file"):
        results_file = Path(hp["results_file"])
        if results_file.suffix != ".jsonl" or (results_file.exists() and not results_file.is_file()):
            # a .json name would be appended to as lines (the run's own results.json is pretty-printed JSON)
            raise ValueError(f"model.results_file {results_file}: expected a .jsonl file (one record a line, "
                             "appended by every run)")
        check_writable(results_file.parent, "model.results_file's folder")
