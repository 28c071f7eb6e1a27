"""Test-time bookkeeping shared by both LightningModules (diffusion and timm baselines).

Both classifiers produce, per batch, scores over the data's label space; from there on they are
evaluated identically: :class:`ClassificationMetrics` accumulates integer counts (correct under DDP
with uneven per-rank counts, unlike averaged per-rank means), :func:`make_record` turns them into a
results record with an exact Clopper-Pearson interval, and :func:`finish_test` prints the summary and
writes the files on global rank 0 only.
"""

from __future__ import annotations

import datetime as _dt
import functools
import os
import platform
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torchmetrics import Metric

from diffclf.metrics.accuracy import clopper_pearson
from diffclf.metrics.results import RESULTS_JSON, SCHEMA_VERSION, append_record, write_results_json

if TYPE_CHECKING:
    from lightning.pytorch import LightningModule

RECORD_ORDER = (
    "schema_version",
    "model",
    "kind",
    "checkpoint",
    "dataset",
    "label_space",
    "num_classes",
    "label_space_size",
    "n",
    "correct",
    "accuracy",
    "ci_low",
    "ci_high",
    "ci_level",
    "top5_accuracy",
    "mean_per_class_accuracy",
    "forwards_per_image",
    "seconds_per_image",
    "strategy",
    "seed",
    "commit",
    "timestamp",
    "skipped_images",
)


class _Counts(Metric):
    """Sum-reduced integer counts: every rank adds what it saw, nothing is averaged."""

    full_state_update = False

    def __init__(self, num_classes: int, top_k: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.top_k = top_k
        self.add_state("class_correct", torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("class_support", torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("topk_correct", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("forwards", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("forwards_images", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("seconds", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, scores: Tensor, target: Tensor, forwards: Tensor | None, seconds: float) -> None:
        scores = torch.nan_to_num(scores.detach().float(), nan=-torch.inf)
        target = target.detach().long().to(scores.device)
        pred = scores.argmax(dim=1)
        hit = pred == target
        self.class_support += torch.bincount(target, minlength=self.num_classes)
        self.class_correct += torch.bincount(target[hit], minlength=self.num_classes)
        topk = scores.topk(self.top_k, dim=1).indices
        self.topk_correct += (topk == target[:, None]).any(dim=1).sum()
        if forwards is not None:
            self.forwards += torch.as_tensor(forwards, device=scores.device).detach().double().sum()
            self.forwards_images += target.numel()
        self.seconds += float(seconds)

    def compute(self) -> dict[str, Tensor]:
        return {
            "class_correct": self.class_correct,
            "class_support": self.class_support,
            "topk_correct": self.topk_correct,
            "forwards": self.forwards,
            "forwards_images": self.forwards_images,
            "seconds": self.seconds,
        }


class ClassificationMetrics(torch.nn.Module):
    """Top-1 (micro), top-5, mean per-class accuracy, forwards and seconds per image over a label space.

    ``update`` takes label-space scores ``(B, K)`` (higher is better; NaN counts as worst), targets
    ``(B,)``, the denoiser/classifier forwards spent per image ``(B,)`` (or None when not counted) and
    this rank's wall time for the batch. ``compute`` sums over ranks, so it must be called on all.
    ``seconds_per_image`` is device-seconds per image (the sum of every rank's time over all images),
    the cost one device pays per image. With ``K < 5`` "top-5" is top-K.
    """

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"a label space needs at least one class, got {num_classes}")
        self.num_classes = num_classes
        self.top_k = min(5, num_classes)
        self.counts = _Counts(num_classes, self.top_k)

    def update(
        self, scores: Tensor, target: Tensor, forwards: Tensor | None = None, seconds: float = 0.0
    ) -> None:
        if scores.ndim != 2 or scores.shape[1] != self.num_classes:
            raise ValueError(
                f"scores must have shape (B, {self.num_classes}) over the label space, "
                f"got {tuple(scores.shape)}"
            )
        if target.shape != scores.shape[:1]:
            raise ValueError(f"targets must have shape ({scores.shape[0]},), got {tuple(target.shape)}")
        if target.numel() and (int(target.min()) < 0 or int(target.max()) >= self.num_classes):
            raise ValueError(
                f"targets must be label-space indices in 0..{self.num_classes - 1}, "
                f"got values in {int(target.min())}..{int(target.max())}"
            )
        self.counts.update(scores, target, forwards, seconds)

    def compute(self) -> dict[str, Any]:
        c = {k: v.detach().cpu() for k, v in self.counts.compute().items()}
        support, class_correct = c["class_support"], c["class_correct"]
        n, correct = int(support.sum()), int(class_correct.sum())
        present = support > 0
        nan = float("nan")
        per_class = class_correct[present].double() / support[present].double()
        fwd_images = int(c["forwards_images"])
        return {
            "n": n,
            "correct": correct,
            "accuracy": correct / n if n else nan,
            "top5_accuracy": int(c["topk_correct"]) / n if n else nan,
            "mean_per_class_accuracy": float(per_class.mean()) if n else nan,
            "forwards_per_image": float(c["forwards"]) / fwd_images if fwd_images else None,
            "seconds_per_image": float(c["seconds"]) / n if n else nan,
        }

    def reset(self) -> None:
        self.counts.reset()


@functools.lru_cache(maxsize=1)
def repo_commit() -> str:
    """``git describe`` of the checkout diffclf is imported from, or ``unknown`` (e.g. a wheel install)."""
    try:
        out = subprocess.run(
            ["git", "-C", str(Path(__file__).resolve().parent), "describe", "--always", "--dirty", "--tags"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def make_record(metrics: Mapping[str, Any], ci_level: float, **context: Any) -> dict[str, Any]:
    """A results record: the metrics, their Clopper-Pearson interval at ``ci_level`` and the context.

    ``context`` carries model, checkpoint, dataset, num_classes (model classes), label_space_size,
    strategy, seed, kind and anything else worth keeping; ``commit``, ``timestamp`` and
    ``skipped_images`` are filled in when not given.
    """
    low, high = clopper_pearson(metrics["correct"], metrics["n"], ci_level)
    record: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        **context,
        **metrics,
        "ci_low": low,
        "ci_high": high,
        "ci_level": float(ci_level),
        "commit": context.get("commit") or repo_commit(),
        "timestamp": context.get("timestamp")
        or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "skipped_images": context.get("skipped_images", 0),
    }
    ordered = {k: record[k] for k in RECORD_ORDER if k in record}
    return {**ordered, **record}


def format_summary(record: Mapping[str, Any]) -> str:
    """The two-line table ``test`` prints (fractions, interval at the record's level)."""
    fwd = record.get("forwards_per_image")
    sec = record.get("seconds_per_image")
    head = [
        "dataset",
        "n",
        "accuracy",
        f"{100 * record['ci_level']:g}% CI",
        "top-5",
        "mean/class",
        "forwards/img",
        "s/img",
    ]
    row = [
        str(record["dataset"]),
        str(record["n"]),
        f"{record['accuracy']:.4f}",
        f"[{record['ci_low']:.4f}, {record['ci_high']:.4f}]",
        f"{record['top5_accuracy']:.4f}",
        f"{record['mean_per_class_accuracy']:.4f}",
        "-" if fwd is None else f"{fwd:.6g}",
        "-" if sec is None else f"{sec:.4g}",
    ]
    widths = [max(len(h), len(r)) for h, r in zip(head, row)]
    return "\n".join("  ".join(x.ljust(w) for x, w in zip(line, widths)).rstrip() for line in (head, row))


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type}:{platform.processor() or platform.machine()}"


def _count(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, (Sequence, set, frozenset, Mapping)) and not isinstance(value, str):
        return len(value)
    return int(value)


def resolve_label_space(module: LightningModule, num_model_classes: int) -> Any:
    """The data module's label space, or the identity over the model's classes when there is none.

    Checks that the label space is defined over this model's classes, so that a ``K``-way test can
    never silently index the wrong logits.
    """
    trainer = getattr(module, "_trainer", None)
    dm = getattr(trainer, "datamodule", None) if trainer is not None else None
    space = getattr(dm, "label_space", None)
    if space is None:
        from diffclf.data.label_spaces import LabelSpace

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


def group_index(model_classes: Sequence[Sequence[int]]) -> Tensor:
    """``(K, L)`` model ids per label-space class, padded by repeating the class's first id.

    Repeating an id leaves a max unchanged, so ``logits[:, index].amax(-1)`` is the best logit of
    each class's model ids in one gather.
    """
    width = max(len(ids) for ids in model_classes)
    rows = [list(ids) + [ids[0]] * (width - len(ids)) for ids in model_classes]
    return torch.tensor(rows, dtype=torch.long)


def label_space_scores(logits: Tensor, index: Tensor) -> Tensor:
    """Model-class logits ``(B, M)`` → label-space scores ``(B, K)``: each class takes its best id."""
    return logits[:, index.to(logits.device)].amax(dim=-1)


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
        check_writable(Path(hp["results_file"]).parent, "model.results_file's folder")


def finish_test(module: LightningModule, metrics: ClassificationMetrics, context: Mapping[str, Any]) -> dict:
    """End of a test epoch, for either LightningModule: compute, record, print, write (rank 0).

    ``context`` holds the record's context fields (model, kind, strategy, seed, ...) and may carry
    ``ci_level``, ``results_dir`` and ``results_file``; missing ones come from ``module.hparams``.
    Dataset, checkpoint, class counts and skipped images come from the trainer and data module.
    Must run on every rank (the counts are summed across ranks); returns the record on every rank
    and keeps it as ``module.test_record``.
    """
    ctx = dict(context)
    hp = dict(getattr(module, "hparams", {}) or {})
    level = ctx.pop("ci_level", None) or hp.get("ci_level") or 0.95
    results_dir = ctx.pop("results_dir", None) or hp.get("results_dir")
    results_file = ctx.pop("results_file", None) or hp.get("results_file")
    values = metrics.compute()
    trainer = getattr(module, "_trainer", None)
    dm = getattr(trainer, "datamodule", None) if trainer is not None else None
    space = getattr(module, "label_space", None) or getattr(dm, "label_space", None)
    if values["n"] == 0:
        raise RuntimeError("test saw no images: the test dataloader is empty, nothing to report")
    ctx.setdefault("checkpoint", getattr(trainer, "ckpt_path", None) or hp.get("pretrained"))
    ctx.setdefault("dataset", getattr(dm, "name", None) or getattr(space, "name", None) or "unknown")
    ctx.setdefault("label_space", getattr(space, "name", None))
    ctx.setdefault("num_classes", hp.get("num_classes"))
    ctx.setdefault("label_space_size", metrics.num_classes)
    ctx.setdefault("skipped_images", _count(getattr(dm, "skipped_images", 0)))
    ctx.setdefault("world_size", getattr(trainer, "world_size", 1))
    if getattr(dm, "exclude_from_fit", None):
        ctx.setdefault("exclude_from_fit", list(dm.exclude_from_fit))
    ctx.setdefault("device", _device_name(module.device))
    record = make_record(values, level, **ctx)
    module.test_record = record
    if trainer is not None:
        for key in ("accuracy", "ci_low", "ci_high", "top5_accuracy", "mean_per_class_accuracy"):
            module.log(f"test/{key}", float(record[key]), sync_dist=True)
    if trainer is None or trainer.is_global_zero:
        print(format_summary(record))
        out_dir = Path(
            results_dir or getattr(trainer, "log_dir", None) or getattr(trainer, "default_root_dir", ".")
        )
        path = write_results_json(record, out_dir / RESULTS_JSON)
        print(f"results written to {path}")
        if results_file:
            print(f"record appended to {append_record(record, results_file)}")
    return record
