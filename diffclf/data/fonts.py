"""Letters rendered from the system's fonts: a real, deterministic image-classification set split by font.

Images are light glyphs (255) on a dark background (0), MNIST's polarity. Each image's jitter (scale,
rotation, shift) comes from ``numpy.random.default_rng`` seeded by a SHA-256 of (seed, font name,
letter, variant) — never Python's ``hash()``, which is salted per process — so the same arguments give
the same bytes in any process. Text is laid out with PIL's BASIC engine (no raqm), so machines with and
without raqm agree. ``diffclf build-fonts`` (:mod:`diffclf.cli.build_fonts`) writes the folder.

No Lightning here: PIL and numpy only.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

#: Where fonts live on Linux when no folder is given.
SYSTEM_FONT_DIRS = ("/usr/share/fonts", "/usr/local/share/fonts", "~/.fonts", "~/.local/share/fonts")
FONT_EXTENSIONS = frozenset({".ttf", ".otf", ".ttc"})
#: Characters no Latin text font maps (private use, a noncharacter, unassigned code points): a font draws
#: its ``.notdef`` glyph (the "tofu" box) for them, the reference a missing letter is recognised by.
TOFU_PROBES = ("\ue000", "\U0010fffd", "\u0378", "\u0380", "\u05ff", "\U000e0fff")
SCALE_RANGE = (0.55, 0.85)  # share of the canvas the glyph's bounding box fills (its longer side)
MAX_ANGLE = 8.0             # degrees, either way
MAX_SHIFT = 2.0             # pixels of the output image, either way
SUPERSAMPLE = 4             # drawn at 4x, then box-filtered down: anti-aliased edges


@dataclass(frozen=True)
class Font:
    """A usable font: ``name`` (file stem, made unique and file-name safe) names its images."""

    name: str
    path: Path
    family: str = ""
    style: str = ""

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "path": str(self.path), "family": self.family, "style": self.style}


def find_fonts(dirs: list[str] | None = None) -> list[Path]:
    """``.ttf``/``.otf``/``.ttc`` files under ``dirs`` (default: the system font folders), sorted by path.

    Sorting makes the font list, hence the split, independent of the order the disk lists files in.
    """
    found: set[Path] = set()
    for d in (SYSTEM_FONT_DIRS if dirs is None else dirs):
        root = Path(d).expanduser()
        if root.is_file() and root.suffix.lower() in FONT_EXTENSIONS:
            found.add(root)
            continue
        for dirpath, _, filenames in os.walk(root, followlinks=True):
            found.update(Path(dirpath) / f for f in filenames if Path(f).suffix.lower() in FONT_EXTENSIONS)
    return sorted(found)


@lru_cache(maxsize=32)
def _load(path: str, px: int) -> ImageFont.FreeTypeFont:
    # index 0: the first face of a .ttc collection
    return ImageFont.truetype(path, px, index=0, layout_engine=ImageFont.Layout.BASIC)


def _glyph(font: ImageFont.FreeTypeFont, char: str) -> Image.Image:
    """``char`` drawn at the font's size, cropped to its ink (an empty 0x0 image when it has none)."""
    left, top, right, bottom = font.getbbox(char)
    pad = 2
    canvas = Image.new("L", (max(1, right - left) + 2 * pad, max(1, bottom - top) + 2 * pad), 0)
    ImageDraw.Draw(canvas).text((pad - left, pad - top), char, fill=255, font=font)
    box = canvas.getbbox()
    return canvas.crop(box) if box else Image.new("L", (0, 0))


@lru_cache(maxsize=256)
def _big_glyph(path: str, px: int, char: str) -> Image.Image:
    # Variants of one letter share this drawing (callers never modify it: PIL operations return copies).
    return _glyph(_load(path, px), char)


def _resize(image: Image.Image, ratio: float) -> Image.Image:
    size = (max(1, round(image.width * ratio)), max(1, round(image.height * ratio)))
    return image if size == image.size else image.resize(size, Image.LANCZOS)


def _mask(glyph: Image.Image) -> bytes:
    return f"{glyph.size}".encode() + glyph.tobytes()


_NO_INK = _mask(Image.new("L", (0, 0)))


def _safe_name(stem: str, taken: set[str]) -> str:
    name = re.sub(r"[^A-Za-z0-9._+-]+", "-", stem).strip("-.") or "font"
    unique, k = name, 2
    while unique in taken:
        unique, k = f"{name}-{k}", k + 1
    return unique


def usable_fonts(paths: list[Path], letters: str, size: int = 64) -> tuple[list[Font], dict[str, str]]:
    """The fonts that draw every letter, and ``{path: reason}`` for the others.

    A font is dropped when PIL cannot load it, when a letter has no ink or draws the same mask as a
    character the font lacks (its ``.notdef`` tofu box: many Noto fonts for other scripts have no Latin
    letters), or when its letters at ``size`` px are pixel-identical to an earlier kept font's (the same
    design in two files would put one font in both splits).
    """
    kept: list[Font] = []
    dropped: dict[str, str] = {}
    seen: dict[bytes, str] = {}
    for path in paths:
        try:
            font = _load(str(path), size)
            family, style = font.getname()
            tofu = {_mask(_glyph(font, c)) for c in TOFU_PROBES}
            masks = [_mask(_glyph(font, c)) for c in letters]
        except Exception as exc:  # noqa: BLE001 - FreeType's OSError, ValueError, ...: every bad file is dropped
            dropped[str(path)] = "unreadable: " + " ".join(f"{type(exc).__name__}: {exc}".split())
            continue
        empty = "".join(c for c, m in zip(letters, masks) if m == _NO_INK)
        missing = "".join(c for c, m in zip(letters, masks) if m in tofu and c not in empty)
        if empty or missing:
            why = ([f"no ink for {empty!r}"] if empty else []) + ([f"no glyph (tofu) for {missing!r}"] if missing else [])
            dropped[str(path)] = "; ".join(why)
            continue
        digest = hashlib.sha256(b"".join(masks)).digest()
        if digest in seen:
            dropped[str(path)] = f"duplicate of {seen[digest]} (pixel-identical letters)"
            continue
        name = _safe_name(path.stem, {f.name for f in kept})
        seen[digest] = name
        kept.append(Font(name, path, family or "", style or ""))
    return kept, dropped


def split_fonts(fonts: list[Font], test_fraction: float, seed: int) -> tuple[list[Font], list[Font]]:
    """``(train, test)``: a seeded permutation of the font *families* (a family's weights and slants all go to
    one side, so a test font is a design training never saw, not the bold of a training font), at least one
    family in each; about ``test_fraction`` of the fonts in test; each side sorted by name."""
    if len(fonts) < 2:
        raise ValueError(f"need at least 2 usable fonts to split by font, got {len(fonts)}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    families: dict[str, list[Font]] = {}
    for f in sorted(fonts, key=lambda f: f.name):
        families.setdefault(f.family or f.name, []).append(f)
    names = sorted(families)
    if len(names) < 2:  # one family: split its fonts instead
        families = {f.name: [f] for f in fonts}
        names = sorted(families)
    order = np.random.default_rng(seed).permutation(len(names))
    want = len(fonts) * test_fraction
    test: list[Font] = []
    for i in order[:-1]:  # the last family of the permutation always trains
        if test and len(test) + len(families[names[i]]) / 2 > want:
            continue
        test += families[names[i]]
    train = [f for f in fonts if f not in test]
    return sorted(train, key=lambda f: f.name), sorted(test, key=lambda f: f.name)


def jitter_rng(seed: int, font_name: str, letter: str, variant: int) -> np.random.Generator:
    """A generator seeded by a stable hash (SHA-256) of the arguments: the same in every process."""
    key = f"{seed}\0{font_name}\0{letter}\0{variant}".encode()
    return np.random.default_rng(int.from_bytes(hashlib.sha256(key).digest()[:8], "little"))


def render_letter(font_path: str | os.PathLike, letter: str, size: int, variant: int, seed: int,
                  name: str | None = None) -> np.ndarray:
    """``letter`` in the font as a ``(size, size)`` uint8 image: light glyph on a dark background.

    The glyph's bounding box fills a random 55-85% of the canvas (its longer side), it is rotated by up
    to ±8° and shifted by up to ±2 px (less when that would cut it); it is drawn at 4× and box-filtered
    down. ``name`` (default: the file stem) seeds the jitter with ``seed``, ``letter`` and ``variant``.
    """
    rng = jitter_rng(seed, Path(font_path).stem if name is None else name, letter, variant)
    scale, angle = rng.uniform(*SCALE_RANGE), rng.uniform(-MAX_ANGLE, MAX_ANGLE)
    shift = rng.uniform(-MAX_SHIFT, MAX_SHIFT, size=2)
    big = size * SUPERSAMPLE
    # Drawn at twice the output's supersampled side, so every later resize shrinks (sharp edges).
    glyph = _big_glyph(str(font_path), 2 * big, letter)
    if glyph.width == 0:
        raise ValueError(f"{font_path}: no ink for {letter!r}")
    # Shrink first so the rotated box fits the target (rotating the small glyph is what keeps this fast),
    # then bring the rotated ink's own box to the target exactly.
    cos, sin = abs(math.cos(math.radians(angle))), abs(math.sin(math.radians(angle)))
    target = scale * big
    glyph = _resize(glyph, target / max(glyph.width * cos + glyph.height * sin, glyph.width * sin + glyph.height * cos))
    glyph = glyph.rotate(angle, resample=Image.BICUBIC, expand=True)
    glyph = glyph.crop(glyph.getbbox())
    glyph = _resize(glyph, target / max(glyph.size))
    canvas = Image.new("L", (big, big), 0)
    x, y = [(big - side) / 2 for side in glyph.size]
    dx, dy = [float(np.clip(s * SUPERSAMPLE, -m, m)) for s, m in zip(shift, (x, y))]
    canvas.paste(glyph, (round(x + dx), round(y + dy)))
    return np.asarray(canvas.resize((size, size), Image.BOX), dtype=np.uint8)
