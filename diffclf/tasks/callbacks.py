"""Lightning callbacks and logger helpers, in one place: checkpoints that keep the final step, resumable
prediction files, and CSV logs that survive a resume.

- :class:`ModelCheckpoint`: Lightning's writes ``last.ckpt`` only together with a periodic save, so a run
  whose ``max_steps`` is not a multiple of ``every_n_train_steps`` ended with a ``last.ckpt`` from the
  previous save (a 13,000-step Fashion-MNIST run saving every 2,000 steps left step 12,000 there).
- :class:`PredictionWriter`: every rank writes each batch's rows to its own shard; a restarted run with
  the same output skips the dataset indices already done and refuses to continue a run made with a
  different checkpoint, strategy, scoring or seed (the fingerprint in ``manifest.json``); rank 0 merges.
- :class:`CSVLogger`: Lightning's, logging straight into the run folder by default: its ``save_dir`` may be
  left unset, and the CLI fills in ``trainer.default_root_dir``, so one option moves a whole run.
- :func:`continue_csv_logs`: Lightning's ``CSVLogger`` deletes an existing ``metrics.csv`` when it starts,
  which loses the whole curve of a resumed run (``fit --ckpt_path``, a SLURM requeue). Rows up to the
  checkpoint's step are kept; rows the interrupted process wrote after it are dropped (logged again).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.callbacks import ModelCheckpoint as _LightningModelCheckpoint
from lightning.pytorch.loggers import CSVLogger as _LightningCSVLogger
from lightning.pytorch.loggers import Logger

from diffclf.data.winoground import parquet_engine_installed
from diffclf.metrics.predictions import (
    atomic_write_text,
    file_fingerprint,
    manifest_path,
    merge_predictions,
    read_shards,
)


class CSVLogger(_LightningCSVLogger):
    """``lightning.pytorch.loggers.CSVLogger`` whose folder defaults to the run folder.

    Args:
        save_dir: where ``metrics.csv`` and ``hparams.yaml`` go; ``None`` lets the CLI use
            ``trainer.default_root_dir`` (the current folder outside the CLI).
        name, version: sub-folders below ``save_dir``; empty (the default) logs into ``save_dir`` itself,
            beside the run's checkpoints. An evaluation run logs to ``<run>/<subcommand>/``.
        prefix, flush_logs_every_n_steps: as in Lightning's.
    """

    def __init__(self, save_dir: str | None = None, name: str = "", version: int | str | None = "",
                 prefix: str = "", flush_logs_every_n_steps: int = 100) -> None:
        super().__init__(save_dir if save_dir is not None else ".", name=name, version=version, prefix=prefix,
                         flush_logs_every_n_steps=flush_logs_every_n_steps)


class ModelCheckpoint(_LightningModelCheckpoint):
    """``lightning.pytorch.callbacks.ModelCheckpoint`` that also writes ``last`` at the end of training.

    Same arguments and files; with ``save_last`` the final step is saved when training stops (``max_steps``,
    ``max_epochs``, early stopping) between two periodic saves. With ``save_top_k: 0`` (the presets that keep
    only ``last.ckpt``) ``last`` is written at every period too: Lightning writes it only after a top-k save, so
    such a run had nothing to resume from until it ended.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._last_written_at: int | None = None

    def _save_topk_checkpoint(self, trainer: pl.Trainer, monitor_candidates: dict[str, Any]) -> None:
        super()._save_topk_checkpoint(trainer, monitor_candidates)
        if self.save_top_k == 0 and self.save_last:
            self._save_last_checkpoint(trainer, monitor_candidates)

    def _save_last_checkpoint(self, trainer: pl.Trainer, monitor_candidates: dict[str, Any]) -> None:
        if self._last_written_at == trainer.global_step and self.last_model_path:
            return  # written at this step already (a checkpoint of a large model is not written twice)
        super()._save_last_checkpoint(trainer, monitor_candidates)
        self._last_written_at = trainer.global_step

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        if self.save_last and not trainer.fast_dev_run and self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


class PredictionWriter(BasePredictionWriter):
    """Writes ``predict_step`` rows per batch into resumable shards, then one merged file.

    Args:
        output: the predictions file (``.jsonl``, ``.csv`` or ``.parquet``); shards live in
            ``<output>.parts/`` until the merge.
        keep_parts: keep the shard folder after a successful merge.
    """

    def __init__(self, output: str, keep_parts: bool = False) -> None:
        super().__init__(write_interval="batch")
        out = Path(output)
        if out.suffix.lower() not in (".jsonl", ".csv", ".parquet"):
            raise ValueError(f"prediction output {output}: expected a .jsonl, .csv or .parquet file name")
        if out.suffix.lower() == ".parquet" and not parquet_engine_installed():  # else found only at the merge
            raise ValueError(f"prediction output {output}: writing .parquet needs pyarrow (pip install pyarrow); "
                             "or name a .jsonl or .csv file")
        self.output = out
        self.parts_dir = out.with_name(out.name + ".parts")
        self.keep_parts = keep_parts
        self.done: set[int] = set()

    def fingerprint(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, Any]:
        ctx = pl_module.result_context() if hasattr(pl_module, "result_context") else {}
        dm = getattr(trainer, "datamodule", None)
        return {
            "checkpoint": file_fingerprint(getattr(trainer, "ckpt_path", None)),
            "model": str(ctx.get("model")),
            "strategy": str(ctx.get("strategy")),
            "seed": ctx.get("seed"),
            "scoring": ctx.get("scoring"),
            "dataset": getattr(dm, "name", None),
            "split": getattr(dm, "predict_split", "test"),
            # p(c|x) of rows written before and after a change of calibration would not agree
            "calibration": file_fingerprint(dict(getattr(pl_module, "hparams", {}) or {}).get("calibration")),
        }

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._check_writable()
        fp = self.fingerprint(trainer, pl_module)
        manifest = self.parts_dir / "manifest.json"
        if manifest.is_file():
            old = json.loads(manifest.read_text())
            diff = sorted(k for k in fp.keys() | old.keys() if fp.get(k) != old.get(k))
            if diff:
                raise ValueError(
                    f"{self.parts_dir} holds predictions of another run (differs in {', '.join(diff)}); "
                    "use another output or delete that folder"
                )
            self.done = set(read_shards(self.parts_dir))
        else:
            self.done = set()
        trainer.strategy.barrier()
        if trainer.is_global_zero and not manifest.is_file():
            atomic_write_text(manifest, json.dumps(fp, indent=1, sort_keys=True))

    def _check_writable(self) -> None:
        """Fail before hours of compute if the output folder cannot be written."""
        try:
            self.parts_dir.mkdir(parents=True, exist_ok=True)
            probe = self.parts_dir / f".probe{os.getpid()}"
            probe.write_text("ok")
            probe.unlink()
        except OSError as err:
            raise OSError(f"prediction output {self.output}: cannot write to {self.parts_dir} ({err.strerror})") from None

    def write_on_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        prediction: Any,
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        if not prediction:
            return
        first = prediction[0]["index"]
        shard = self.parts_dir / f"r{trainer.global_rank:04d}-i{first:09d}-b{batch_idx:07d}.jsonl"
        atomic_write_text(shard, "".join(json.dumps(r) + "\n" for r in prediction))

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        trainer.strategy.barrier()
        if not trainer.is_global_zero:
            return
        dm = getattr(trainer, "datamodule", None)
        full = trainer.limit_predict_batches in (None, 1.0)
        n = _predict_size(dm) if full else None
        n_rows = merge_predictions(self.parts_dir, self.output, range(n) if n is not None else None)
        print(f"predictions: {n_rows} rows written to {self.output}")
        # What the rows came from (checkpoint, strategy, scoring, split) travels with them: `calibrate` reads it.
        fp = json.loads((self.parts_dir / "manifest.json").read_text())
        atomic_write_text(manifest_path(self.output), json.dumps({**fp, "n": n_rows}, indent=1, sort_keys=True))
        if not self.keep_parts:
            for f in self.parts_dir.iterdir():
                f.unlink()
            self.parts_dir.rmdir()


def _predict_size(dm: Any) -> int | None:
    """Number of images the predict split holds, when the data module can tell."""
    ds = getattr(dm, "predict_dataset", None) or getattr(dm, "test_dataset", None)
    try:
        return len(ds) if ds is not None else None
    except TypeError:
        return None


def continue_csv_logs(loggers: list[Logger], resume_step: int) -> int:
    """Keep every CSV logger's rows with ``step < resume_step``; returns how many rows were kept.

    Call on global rank zero before training starts (CSVLogger writes on rank zero only).
    """
    kept = 0
    for logger in loggers:
        if not isinstance(logger, _LightningCSVLogger):
            continue
        path = Path(logger.log_dir) / "metrics.csv"
        if not path.is_file():
            continue
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            header = list(reader.fieldnames or [])
            rows = [row for row in reader if row.get("step") and int(row["step"]) < resume_step]
        writer = logger.experiment  # creating the writer deletes the file (CSVLogger's fresh-run rule)
        with open(writer.metrics_file_path, "w", newline="") as f:
            out = csv.DictWriter(f, fieldnames=header)
            out.writeheader()
            out.writerows(rows)
        writer.metrics_keys = header  # later rows append under this header, or rewrite it with new keys
        kept += len(rows)
    return kept
