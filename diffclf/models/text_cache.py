"""Text embeddings computed once per (prompts, text encoder) and kept on disk.

A zero-shot run encodes every prompt of its label set (1000 ImageNet classes × templates) before it scores
an image; a second run with the same prompts and encoder reads them back instead. The file holds what it
was computed from (the prompts, how they were encoded and a fingerprint of the tokenizer and encoder
files): read with another encoder or other prompts it is refused with one line, never silently used.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from torch import Tensor

_KEY = "diffclf_text_cache"


def files_fingerprint(folders: Iterable[str | Path]) -> str:
    """sha256 (16 hex digits) of every file of the folders: names and contents (configs, vocabularies,
    weights). Contents, not dates: a fine-tune written over the same path has the same size and names."""
    digest = hashlib.sha256()
    for folder in folders:
        folder = Path(folder)
        for f in sorted(p for p in folder.rglob("*") if p.is_file()):
            digest.update(str(f.relative_to(folder)).encode())
            with f.open("rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 22), b""):
                    digest.update(chunk)
    return digest.hexdigest()[:16]


def default_cache_path(key: dict[str, Any]) -> Path:
    """``$DIFFCLF_CACHE/text/<hash>.safetensors`` (default ``~/.cache/diffclf``), named by what the
    embeddings are of (not by the encoder's fingerprint, so that changed weights are found and refused)."""
    root = Path(os.environ.get("DIFFCLF_CACHE") or Path.home() / ".cache" / "diffclf") / "text"
    named = {k: v for k, v in key.items() if k != "fingerprint"}
    name = hashlib.sha256(json.dumps(named, sort_keys=True).encode()).hexdigest()[:20]
    return root / f"{name}.safetensors"


def cached_embeddings(
    path: str | Path | None, key: dict[str, Any], compute: Callable[[], dict[str, Tensor]]
) -> tuple[dict[str, Tensor], bool]:
    """The embeddings ``compute()`` gives for ``key``, read from ``path`` when it holds them.

    Args:
        path: the cache file (``None``: :func:`default_cache_path`).
        key: what the embeddings depend on, JSON-serialisable: prompts, encoding method and the encoder's
            ``fingerprint``; a file made for another key is refused.
        compute: makes the embeddings (CPU tensors are written; the caller moves them).

    Returns the embeddings and whether they came from the file.
    """
    from safetensors import safe_open
    from safetensors.torch import save_file

    path = Path(path) if path is not None else default_cache_path(key)
    want = json.dumps(key, sort_keys=True)
    if path.is_file():
        with safe_open(str(path), framework="pt") as fh:
            got = (fh.metadata() or {}).get(_KEY)
            if got != want:
                raise ValueError(f"text cache {path} holds embeddings of {_describe_difference(got, key)}; "
                                 "delete it or set model.init_args.text_cache to another file")
            # safetensors' handle has keys() but no __iter__
            return {name: fh.get_tensor(name) for name in fh.keys()}, True  # noqa: SIM118
    values = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    save_file({k: v.detach().cpu().contiguous() for k, v in values.items()}, str(tmp), metadata={_KEY: want})
    tmp.replace(path)
    return values, False


def _describe_difference(stored: str | None, key: dict[str, Any]) -> str:
    if stored is None:
        return "unknown origin (not a diffclf text cache)"
    theirs = json.loads(stored)
    differ = sorted(k for k in set(theirs) | set(key) if theirs.get(k) != key.get(k))
    if "fingerprint" in differ:
        return (f"another text encoder or tokenizer (fingerprint {theirs.get('fingerprint')}, "
                f"this one {key.get('fingerprint')})")
    return "other " + ", ".join(differ)
