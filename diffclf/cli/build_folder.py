"""The output folder of a ``build-*`` command: new, empty, or an earlier build of the same command, emptied.

A smaller rebuild must not keep stale images, and a folder some other program wrote must never be emptied:
an earlier build is recognised by the ``name`` its metadata file records.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from pathlib import Path


def clear_build_folder(out: Path, meta_file: str, name: str, folders: Iterable[str], files: Iterable[str]) -> None:
    """Make ``out`` ready for ``diffclf build-<name>``: create it, or remove the ``folders`` and ``files`` of an
    earlier build (its ``meta_file`` says ``"name": name``); anything else is refused in one line."""
    if not out.exists():
        out.mkdir(parents=True)
        return
    if not out.is_dir():
        raise SystemExit(f"error: --out {out} is a file")
    if not any(out.iterdir()):
        return
    try:
        earlier = json.loads((out / meta_file).read_text()).get("name") == name
    except (OSError, ValueError, AttributeError):
        earlier = False
    if not earlier:
        raise SystemExit(f"error: --out {out} is neither empty nor an earlier build-{name} folder")
    for folder in folders:
        shutil.rmtree(out / folder, ignore_errors=True)
    for file in (meta_file, *files):
        (out / file).unlink(missing_ok=True)
