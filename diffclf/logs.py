"""A resumed training run continues its CSV log.

Lightning's ``CSVLogger`` deletes an existing ``metrics.csv`` when it starts writing, which is right
for a fresh run into the same folder but loses the whole curve of a resumed one (``fit --ckpt_path``,
or a SLURM requeue restoring ``hpc_ckpt_N.ckpt``): diffclf's presets log to a fixed folder so that
curve and checkpoints stay together. Rows up to the checkpoint's step are kept; rows written after it
by the interrupted process are dropped, since the resumed run logs those steps again.
"""

from __future__ import annotations

import csv
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger, Logger


def continue_csv_logs(loggers: list[Logger], resume_step: int) -> int:
    """Keep every CSV logger's rows with ``step < resume_step``; returns how many rows were kept.

    Call on global rank zero before training starts (CSVLogger writes on rank zero only).
    """
    kept = 0
    for logger in loggers:
        if not isinstance(logger, CSVLogger):
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
