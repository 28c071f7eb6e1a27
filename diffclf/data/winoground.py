"""Winoground (Thrush et al. 2022) from a local copy of ``facebook/winoground`` in either published layout.

(a) The repository's files: ``data/examples.jsonl`` (one JSON object per line: ``id``, ``caption_0``,
    ``caption_1``, ``tag``, ``secondary_tag``, ``num_main_preds``, ``collapsed_tag``, ``image_0``,
    ``image_1``) and ``data/images.zip`` unpacked, which gives ``data/images/<image_0>.png`` (e.g.
    ``ex_0_img_0.png``: the dataset's loading script ``winoground.py`` joins the unpacked zip, ``images``
    and ``image_0 + ".png"``). ``images/`` is also accepted at the root.
(b) The Hub's parquet conversion: ``data/test-*.parquet`` with the same columns, the images as
    ``datasets.Image`` structs (a dict with ``bytes``).

Layout (a) is read when both are present. Examples keep the file's order; their index is that position.
Li et al. 2023 (Table 4) report the text / image / group scores per ``collapsed_tag`` (Object, Relation, Both).
"""

from __future__ import annotations

import importlib.util
import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from diffclf.data.base import DataSourceError
from diffclf.data.folders import UnreadableImageError, load_image, preview
from diffclf.data.zero_shot import ResizeCenterCrop

WINOGROUND_LAYOUT = ("data/examples.jsonl with data/images/ex_<id>_img_<0|1>.png (or images/ at the root), "
                     "or data/test-*.parquet (facebook/winoground)")
WINOGROUND_FIELDS = ("id", "caption_0", "caption_1", "tag", "secondary_tag", "num_main_preds", "collapsed_tag",
                     "image_0", "image_1")
IMAGE_EXTENSION = ".png"


@dataclass(frozen=True)
class WinogroundExample:
    """One example: two images (a file or the parquet's encoded bytes) and their two captions.

    Caption ``j`` describes image ``j``; ``index`` is the example's position in the file.
    """

    index: int
    id: int
    caption_0: str
    caption_1: str
    tag: str
    secondary_tag: str
    num_main_preds: int
    collapsed_tag: str
    image_0: Path | bytes = field(repr=False)
    image_1: Path | bytes = field(repr=False)


class WinogroundItem(NamedTuple):
    """What the dataset yields: ``images (2, C, H, W)`` (image 0, image 1), ``captions (caption_0, caption_1)``."""

    images: Tensor
    captions: tuple[str, str]
    index: int
    collapsed_tag: str


def _record(row: dict[str, Any], index: int, where: str) -> dict[str, Any]:
    missing = [f for f in WINOGROUND_FIELDS if f not in row]
    if missing:
        raise DataSourceError(f"winoground: {where} lacks field(s) {', '.join(missing)}; expected {WINOGROUND_LAYOUT}")
    try:
        return {"index": index, "id": int(row["id"]), "num_main_preds": int(row["num_main_preds"]),
                **{f: str(row[f]) for f in ("caption_0", "caption_1", "tag", "secondary_tag", "collapsed_tag")}}
    except (TypeError, ValueError) as exc:
        raise DataSourceError(f"winoground: {where}: id and num_main_preds must be integers ({exc}); "
                              f"expected {WINOGROUND_LAYOUT}") from exc


def read_winoground_jsonl(path: Path, images: Path) -> list[WinogroundExample]:
    """Layout (a): ``examples.jsonl`` with image names resolved under ``images`` (which must hold them)."""
    examples = []
    for k, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataSourceError(f"winoground: {path}:{k} is not JSON ({exc.msg}); expected {WINOGROUND_LAYOUT}") from exc
        if not isinstance(row, dict):
            raise DataSourceError(f"winoground: {path}:{k} is not a JSON object; expected {WINOGROUND_LAYOUT}")
        record = _record(row, len(examples), f"{path}:{k}")
        files = [images / f"{row[f]}{IMAGE_EXTENSION}" for f in ("image_0", "image_1")]
        examples.append(WinogroundExample(**record, image_0=files[0], image_1=files[1]))
    missing = [str(p) for e in examples for p in (e.image_0, e.image_1) if not Path(p).is_file()]  # type: ignore[arg-type]
    if missing:
        raise DataSourceError(f"winoground: {len(missing)} image(s) named in {path} missing: {preview(missing, 3)}; "
                              f"expected {WINOGROUND_LAYOUT}")
    return examples


def parquet_engine_installed() -> bool:
    """Whether pandas can read parquet here (it needs pyarrow or fastparquet, neither a diffclf requirement)."""
    return any(importlib.util.find_spec(m) is not None for m in ("pyarrow", "fastparquet"))


def _parquet_engine(path: Path) -> None:
    if not parquet_engine_installed():
        raise DataSourceError(f"winoground: reading {path} needs pandas' parquet engine: pip install pyarrow "
                              f"(or fastparquet), or use the data/examples.jsonl + data/images/ layout")


def _image_bytes(value: Any, where: str) -> bytes:
    data = value.get("bytes") if isinstance(value, dict) else value
    if not isinstance(data, (bytes, bytearray)) or not data:
        raise DataSourceError(f"winoground: {where} is not an encoded image (a struct with 'bytes'); "
                              f"expected {WINOGROUND_LAYOUT}")
    return bytes(data)


def read_winoground_parquet(files: list[Path]) -> list[WinogroundExample]:
    """Layout (b): the parquet shards in name order (``test-00000-of-00001.parquet``, …)."""
    import pandas as pd

    _parquet_engine(files[0])
    examples: list[WinogroundExample] = []
    for path in files:
        try:
            frame = pd.read_parquet(path)
        except Exception as exc:  # pyarrow / fastparquet raise their own error types
            raise DataSourceError(f"winoground: {path} is not a readable parquet file ({type(exc).__name__}: "
                                  f"{' '.join(str(exc).split())}); expected {WINOGROUND_LAYOUT}") from exc
        for k, row in enumerate(frame.to_dict("records")):
            where = f"{path} row {k}"
            record = _record(row, len(examples), where)
            images = [_image_bytes(row[f], f"{where} column {f}") for f in ("image_0", "image_1")]
            examples.append(WinogroundExample(**record, image_0=images[0], image_1=images[1]))
    return examples


def read_winoground(root: str | Path) -> list[WinogroundExample]:
    """Every example of the local copy at ``root`` (the repository folder, or its ``data/``)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataSourceError(f"winoground: {root} is not a folder; expected {WINOGROUND_LAYOUT}")
    for jsonl in (root / "data" / "examples.jsonl", root / "examples.jsonl"):
        if jsonl.is_file():
            folders = [p for p in (jsonl.parent / "images", root / "images") if p.is_dir()]
            if not folders:
                hint = " (unpack data/images.zip there)" if (jsonl.parent / "images.zip").is_file() else ""
                raise DataSourceError(f"winoground: {jsonl} has no images/ folder beside it or at {root}{hint}; "
                                      f"expected {WINOGROUND_LAYOUT}")
            return read_winoground_jsonl(jsonl, folders[0])
    shards = sorted((root / "data").glob("test-*.parquet")) or sorted(root.glob("test-*.parquet"))
    if shards:
        return read_winoground_parquet(shards)
    raise DataSourceError(f"winoground: {root} has neither data/examples.jsonl nor data/test-*.parquet; "
                          f"expected {WINOGROUND_LAYOUT}")


def _open(source: Path | bytes, where: str) -> Image.Image:
    if isinstance(source, Path):
        return load_image(source)
    try:
        with Image.open(io.BytesIO(source)) as img:
            img.load()
            return img
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, ...
        raise UnreadableImageError(f"{where}: not a readable image ({type(exc).__name__}: {exc})") from exc


class WinogroundDataset(Dataset):
    """:class:`WinogroundItem` per example: both images through ``transform`` (in [-1, 1]), both captions.

    Args:
        root: the local ``facebook/winoground`` folder (either layout, see the module docstring).
        image_size: side of the default transform, :class:`ResizeCenterCrop` (shorter side, bilinear as the
            official ``run_winoground.py``'s default interpolation, center crop).
        transform: PIL image → ``(C, S, S)`` tensor in [-1, 1], instead of the default.
    """

    def __init__(self, root: str | Path, image_size: int = 512,
                 transform: Callable[[Image.Image], Tensor] | None = None) -> None:
        self.examples = read_winoground(root)
        self.transform = transform if transform is not None else ResizeCenterCrop(image_size, interpolation="bilinear")

    @property
    def collapsed_tags(self) -> list[str]:
        return [e.collapsed_tag for e in self.examples]

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> WinogroundItem:
        e = self.examples[i]
        images = [self.transform(_open(src, f"winoground example {e.index} image_{j}"))
                  for j, src in enumerate((e.image_0, e.image_1))]
        return WinogroundItem(torch.stack(images), (e.caption_0, e.caption_1), e.index, e.collapsed_tag)
