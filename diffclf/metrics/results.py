"""Test-run records: one flat JSON object per ``test`` run, and their files.

Every ``test`` (generative, discriminative or contrastive) produces one record with the fields in
:data:`REQUIRED_FIELDS`. It is written as ``results.json`` (one record, replaced atomically) and
appended to a JSON Lines results file that collects many runs; the report reads either. Records
carry ``schema_version`` so that a report never silently mixes files written under another schema.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from diffclf.metrics.accuracy import clopper_pearson
from diffclf.metrics.provenance import repo_commit, utc_now

SCHEMA_VERSION = 1
KINDS = ("generative", "discriminative", "contrastive")
# Every field a record can have, in the order results files show them: (name, required, may be null).
# The one list of record fields: what is required, what may be null and the order all come from it.
RECORD_FIELDS: tuple[tuple[str, bool, bool], ...] = (
    ("schema_version", True, False),
    ("model", True, False),
    ("kind", True, False),
    ("checkpoint", True, True),
    ("dataset", True, False),
    ("label_space", False, True),
    ("num_classes", True, False),
    ("label_space_size", True, False),
    ("n", True, False),
    ("correct", True, False),
    ("accuracy", True, False),
    ("ci_low", True, False),
    ("ci_high", True, False),
    ("ci_level", True, False),
    ("top5_accuracy", True, False),
    ("mean_per_class_accuracy", True, False),
    ("forwards_per_image", True, True),
    ("seconds_per_image", True, True),
    ("ece", False, True),
    ("nll", False, True),
    ("brier", False, True),
    ("calibration", False, True),
    ("strategy", True, False),
    ("seed", True, True),
    ("commit", True, False),
    ("timestamp", False, True),
    ("skipped_images", False, True),
)
RECORD_ORDER: tuple[str, ...] = tuple(name for name, _, _ in RECORD_FIELDS)
REQUIRED_FIELDS: tuple[str, ...] = tuple(name for name, required, _ in RECORD_FIELDS if required)
NULLABLE_FIELDS = frozenset(name for name, required, nullable in RECORD_FIELDS if required and nullable)
RESULTS_JSON = "results.json"


class ResultsError(ValueError):
    """A results file that cannot be used; the message is one line naming the file and the reason."""


def to_jsonable(value: Any) -> Any:
    """Plain JSON types: NaN/inf become ``null``, numpy/torch scalars become Python numbers."""
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist") and callable(value.tolist):
        value = value.tolist()
        if isinstance(value, list):
            return to_jsonable(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def validate_record(record: Mapping[str, Any], source: str) -> None:
    """Refuse a record that lacks a field, has another schema version, or is inconsistent."""
    missing = [f for f in REQUIRED_FIELDS if f not in record]
    if missing:
        raise ResultsError(f"{source}: not a diffclf results record: missing {', '.join(missing)}")
    if record["schema_version"] != SCHEMA_VERSION:
        raise ResultsError(
            f"{source}: schema_version {record['schema_version']!r} but this diffclf reads {SCHEMA_VERSION}"
        )
    nulls = [f for f in REQUIRED_FIELDS if record[f] is None and f not in NULLABLE_FIELDS]
    if nulls:
        raise ResultsError(f"{source}: fields {', '.join(nulls)} are null")
    if record["kind"] not in KINDS:
        raise ResultsError(f"{source}: kind {record['kind']!r} is not one of {', '.join(KINDS)}")
    n, correct = record["n"], record["correct"]
    if not isinstance(n, int) or not isinstance(correct, int) or n < 1 or not 0 <= correct <= n:
        raise ResultsError(
            f"{source}: need integers 0 <= correct <= n and n >= 1, got correct={correct}, n={n}"
        )
    if abs(record["accuracy"] - correct / n) > 1e-9:
        raise ResultsError(
            f"{source}: accuracy {record['accuracy']} disagrees with correct/n = {correct}/{n}"
        )
    if not 0.0 < record["ci_level"] < 1.0:
        raise ResultsError(f"{source}: ci_level {record['ci_level']} is not in (0, 1)")


def make_record(metrics: Mapping[str, Any], ci_level: float, **context: Any) -> dict[str, Any]:
    """A results record: the metrics, their Clopper-Pearson interval at ``ci_level`` and the context.

    ``context`` carries model, checkpoint, dataset, num_classes (model classes), label_space_size,
    strategy, seed, kind and anything else worth keeping; ``commit``, ``timestamp`` and
    ``skipped_images`` are filled in when not given. Fields come in :data:`RECORD_ORDER`, others after.
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
        "timestamp": context.get("timestamp") or utc_now(),
        "skipped_images": context.get("skipped_images", 0),
    }
    ordered = {k: record[k] for k in RECORD_ORDER if k in record}
    return {**ordered, **record}


def format_summary(record: Mapping[str, Any]) -> str:
    """The two-line table ``test`` prints (fractions, interval at the record's level; ECE and NLL of
    ``p(c|x)`` when the run measured them), and under it the scoring precision ``auto`` chose, and why."""
    fwd = record.get("forwards_per_image")
    sec = record.get("seconds_per_image")
    head = ["dataset", "n", "accuracy", f"{100 * record['ci_level']:g}% CI", "top-5", "mean/class",
            "forwards/img", "s/img"]
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
    if record.get("ece") is not None:
        head += ["ECE", "NLL"]
        row += [f"{record['ece']:.4f}", f"{record['nll']:.4f}"]
    widths = [max(len(h), len(r)) for h, r in zip(head, row)]
    table = "\n".join("  ".join(x.ljust(w) for x, w in zip(line, widths)).rstrip() for line in (head, row))
    scoring = record.get("scoring")
    if isinstance(scoring, Mapping) and scoring.get("precision_auto"):
        table += f"\nscoring precision {scoring['precision']} ({scoring['precision_auto']})"
    return table


def _dumps(record: Mapping[str, Any], indent: int | None = None) -> str:
    return json.dumps(to_jsonable(record), indent=indent, allow_nan=False, sort_keys=indent is not None)


def write_results_json(record: Mapping[str, Any], path: str | Path) -> Path:
    """Write one record to ``path`` via a temp file and ``os.replace``: readers never see half a file."""
    path = Path(path)
    validate_record(to_jsonable(record), str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as fh:
        fh.write(_dumps(record, indent=2) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


def append_record(record: Mapping[str, Any], results_file: str | Path) -> Path:
    """Append one record as a JSON line with a single ``O_APPEND`` write, then fsync.

    One ``write`` of a whole line to a file opened with ``O_APPEND`` is not interleaved with other
    writers on a local file system, so concurrent test runs can share one results file.
    """
    path = Path(results_file)
    validate_record(to_jsonable(record), str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    data = (_dumps(record) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        written = os.write(fd, data)
        if written != len(data):
            raise OSError(f"{path}: short write ({written} of {len(data)} bytes)")
        os.fsync(fd)
    finally:
        os.close(fd)
    return path


def _read_file(path: Path) -> list[dict[str, Any]]:
    if path.suffix == ".jsonl":
        rows = []
        with open(path) as fh:
            for line_no, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as err:
                    raise ResultsError(f"{path}:{line_no}: not a JSON line ({err.msg})") from None
                if not isinstance(rec, dict):
                    raise ResultsError(f"{path}:{line_no}: a JSON line that is not an object")
                validate_record(rec, f"{path}:{line_no}")
                rows.append({**rec, "source": f"{path}:{line_no}"})
        return rows
    try:
        rec = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ResultsError(f"{path}: not a JSON file ({err.msg})") from None
    if not isinstance(rec, dict):
        raise ResultsError(f"{path}: a JSON file that is not one record (object)")
    validate_record(rec, str(path))
    return [{**rec, "source": str(path)}]


def _looks_like_results(path: Path) -> bool:
    """A ``.jsonl`` found while scanning a folder is read only if its first line is a record."""
    with open(path) as fh:
        for line in fh:
            if line.strip():
                try:
                    first = json.loads(line)
                except json.JSONDecodeError:
                    return False
                return isinstance(first, dict) and "schema_version" in first
    return False


def find_results_files(paths: Iterable[str | Path]) -> list[Path]:
    """Files named directly, plus ``results.json`` and results ``.jsonl`` files under folders."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(p.rglob(RESULTS_JSON)) + [
                f for f in sorted(p.rglob("*.jsonl")) if _looks_like_results(f)
            ]
            if not found:
                raise ResultsError(f"{p}: no results.json or results .jsonl file under this folder")
            files += found
        elif p.is_file():
            if p.suffix not in (".json", ".jsonl"):
                raise ResultsError(f"{p}: not a results file (expected .json or .jsonl)")
            files.append(p)
        else:
            raise ResultsError(f"{p}: no such file or folder")
    return list(dict.fromkeys(files))


IDENTITY_FIELDS = ("model", "checkpoint", "dataset", "strategy", "seed", "n", "correct", "timestamp")


def load_records(paths: Iterable[str | Path]) -> pd.DataFrame:
    """All records in ``paths`` (files or folders) as one DataFrame, one row per test run.

    The same run found twice (its ``results.json`` and its line in a results file) is kept once;
    the ``source`` column says where each row was read.
    """
    paths = list(paths)
    unique: dict[str, dict[str, Any]] = {}
    for f in find_results_files(paths):
        for row in _read_file(f):
            unique.setdefault(json.dumps([row.get(k) for k in IDENTITY_FIELDS], default=str), row)
    if not unique:
        raise ResultsError(f"{', '.join(map(str, paths))}: no records found")
    return pd.DataFrame(list(unique.values()))
