"""Prediction files: crash-safe shards, their merge, and the merged file's reader (plain IO, no Lightning).

``predict`` writes each batch's rows to a shard file of its own (temp file + atomic rename), so a
killed run loses at most the batch in flight; a restarted run reads the shards back and skips what is
done (``diffclf.tasks.callbacks.PredictionWriter``). The merge checks that every dataset index
appears exactly once; :func:`read_predictions` reads the merged file back for analyses.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

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


def manifest_path(output: str | Path) -> Path:
    """The manifest written beside a merged predictions file: ``<output>.manifest.json``."""
    output = Path(output)
    return output.with_name(output.name + ".manifest.json")


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
        want = {int(i) for i in expected}
        missing = sorted(want - rows.keys())
        extra = sorted(rows.keys() - want)
        if missing or extra:
            raise ValueError(
                f"{parts_dir}: {len(missing)} dataset indices missing (first {missing[:5]}) and "
                f"{len(extra)} unexpected (first {extra[:5]}); the run is incomplete or mixed"
            )
    write_rows([rows[i] for i in sorted(rows)], Path(output))
    return len(rows)


def read_predictions(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a merged ``.jsonl`` or ``.parquet`` prediction file, sorted by dataset index.

    ``.csv`` files hold only the scalar columns, so analyses that need errors or probabilities are
    refused with one line rather than handed half a row.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such prediction file")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        rows = []
        with open(path) as fh:
            for line_no, line in enumerate(fh, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as err:
                        raise ValueError(f"{path}:{line_no}: not a JSON row ({err.msg})") from None
    elif suffix == ".parquet":
        import pandas as pd

        rows = pd.read_parquet(path).to_dict(orient="records")
    else:
        raise ValueError(f"{path}: expected a .jsonl or .parquet prediction file (a .csv holds only scalar columns)")
    for row in rows:
        if "index" not in row or "pred" not in row:
            raise ValueError(f"{path}: not a diffclf prediction file (rows need 'index' and 'pred')")
    return sorted(rows, key=lambda r: int(r["index"]))

