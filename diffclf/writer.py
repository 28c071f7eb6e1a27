"""Crash-safe, resumable prediction files.

Every rank writes each batch's rows to its own shard file (temp file + atomic rename), so a
killed run loses at most the batch in flight. A restarted run with the same output reads the
shards back, skips the dataset indices already done, and refuses to continue a run made with a
different checkpoint, strategy or seed (the fingerprint in ``manifest.json``). At the end, rank 0
merges the shards into the file the user named and checks that every index appears exactly once.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter

SCALAR_COLUMNS = ("index", "target", "pred", "top5", "forwards")


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def file_fingerprint(path: str | None) -> str:
    """Size plus a hash of the first and last MiB: cheap for multi-GB checkpoints, changes with them."""
    if not path:
        return "none"
    p = Path(path)
    if not p.is_file():
        return f"missing:{p}"
    h = hashlib.sha256()
    size = p.stat().st_size
    with open(p, "rb") as fh:
        h.update(fh.read(1 << 20))
        if size > 2 << 20:
            fh.seek(-(1 << 20), os.SEEK_END)
            h.update(fh.read())
    return f"{size}:{h.hexdigest()[:16]}"


def read_shards(parts_dir: Path) -> dict[int, dict[str, Any]]:
    """All rows found in ``parts_dir``; a duplicated index must carry the same prediction."""
    rows: dict[int, dict[str, Any]] = {}
    for shard in sorted(parts_dir.glob("*.jsonl")):
        with open(shard) as fh:
            for line_no, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise ValueError(f"{shard}:{line_no}: not a JSON row ({err})") from None
                prev = rows.get(row["index"])
                if prev is not None and prev["pred"] != row["pred"]:
                    raise ValueError(
                        f"{shard}: index {row['index']} appears twice with different predictions "
                        f"({prev['pred']} vs {row['pred']}); the shards come from different runs"
                    )
                rows[row["index"]] = row
    return rows


def write_rows(rows: Sequence[dict[str, Any]], out: Path) -> None:
    """Write rows sorted by index as ``.jsonl``, ``.csv`` (scalar columns) or ``.parquet``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    suffix = out.suffix.lower()
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    if suffix == ".jsonl":
        with open(tmp, "w") as fh:
            fh.writelines(json.dumps(row) + "\n" for row in rows)
    elif suffix == ".csv":
        with open(tmp, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(SCALAR_COLUMNS)
            for row in rows:
                w.writerow([row["index"], row["target"], row["pred"], " ".join(map(str, row["top5"])), row["forwards"]])
    elif suffix == ".parquet":
        import pandas as pd

        pd.DataFrame(list(rows)).to_parquet(tmp)
    else:
        raise ValueError(f"prediction output {out}: expected a .jsonl, .csv or .parquet file name")
    os.replace(tmp, out)


def merge_predictions(parts_dir: str | Path, output: str | Path, expected: Iterable[int] | None = None) -> int:
    """Join shards into ``output``; with ``expected`` indices, every one must appear exactly once."""
    rows = read_shards(Path(parts_dir))
    if expected is not None:
        want = set(int(i) for i in expected)
        missing = sorted(want - rows.keys())
        extra = sorted(rows.keys() - want)
        if missing or extra:
            raise ValueError(
                f"{parts_dir}: {len(missing)} dataset indices missing (first {missing[:5]}) and "
                f"{len(extra)} unexpected (first {extra[:5]}); the run is incomplete or mixed"
            )
    write_rows([rows[i] for i in sorted(rows)], Path(output))
    return len(rows)


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
