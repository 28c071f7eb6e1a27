"""``diffclf build-fonts``: letters rendered from the system's fonts, an image folder split by font.

The folder (every file a function of the arguments and the fonts installed: the same seed and fonts give
the same bytes)::

    fonts.json, README.md            arguments, train/test fonts, dropped fonts and why, counts, the command
    train/<letter>/<font>_<v>.png    grey PNGs, light glyph on dark, v = 0 .. per_font - 1
    test/<letter>/<font>_<v>.png     fonts never seen in train

``--data fonts`` (``configs/data/fonts.yaml``) reads it with :class:`diffclf.data.ImageFolderDataModule`.
"""

from __future__ import annotations

import json
import shlex
import time
from pathlib import Path
from typing import Any

import PIL
from PIL import Image, features

from diffclf.cli.build_folder import clear_build_folder
from diffclf.data import fonts as fo

META_FILE = "fonts.json"
FORMAT_VERSION = 1


def _check(letters: str, size: int, per_font: int, test_fraction: float) -> None:
    if not letters:
        raise SystemExit("error: --letters is empty")
    bad = [c for c in letters if not c.isprintable() or c.isspace() or c in "/\\."]
    if bad:
        raise SystemExit(f"error: --letters {letters!r}: {''.join(bad)!r} cannot name a class folder "
                         "(each letter must be one printable, non-space character other than / \\ .)")
    folded = [c.casefold() for c in letters]
    repeated = sorted({c for c in letters if folded.count(c.casefold()) > 1})
    if repeated:
        raise SystemExit(f"error: --letters {letters!r}: {''.join(repeated)!r} repeated (case-insensitively: "
                         "the class folders would collide on a case-insensitive disk)")
    if size < 8:
        raise SystemExit(f"error: --size must be >= 8, got {size}")
    if per_font < 1:
        raise SystemExit(f"error: --per_font must be >= 1, got {per_font}")
    if not 0.0 < test_fraction < 1.0:
        raise SystemExit(f"error: --test_fraction must lie in (0, 1), got {test_fraction}")


def _command(out: str, letters: str, size: int, per_font: int, test_fraction: float, seed: int,
             font_dir: list[str] | None) -> str:
    args = ["diffclf", "build-fonts", "--out", out, "--letters", letters, "--size", str(size),
            "--per_font", str(per_font), "--test_fraction", str(test_fraction), "--seed", str(seed)]
    if font_dir is not None:
        args += ["--font_dir", json.dumps(font_dir)]
    return shlex.join(args)


def _readme(meta: dict[str, Any]) -> str:
    return "\n".join([
        "# Rendered letters (diffclf build-fonts)",
        "",
        (f"{len(meta['letters'])} classes ({meta['letters']}), one folder per letter: {meta['size']} px grey PNGs, "
         "a light glyph on a dark background, scaled to 55-85% of the canvas, rotated up to ±8°, shifted up to ±2 px."),
        (f"Split by font: {len(meta['train_fonts'])} training fonts, {len(meta['test_fonts'])} test fonts never seen "
         f"in training; {meta['per_font']} images per font and letter; counts {meta['counts']}."),
        f"{len(meta['dropped_fonts'])} fonts were dropped (missing letters, duplicates): see fonts.json.",
        "",
        f"Rebuild (same fonts installed) with: `{meta['command']}`",
        (f"Read it with: `--data fonts --data.init_args.root {meta['out']}/train --data.init_args.test_root "
         f"{meta['out']}/test`"),
        "",
    ])


def build_fonts(
    out: str,
    letters: str = "ABCDEFGHJK",
    size: int = 32,
    per_font: int = 8,
    test_fraction: float = 0.25,
    seed: int = 0,
    font_dir: list[str] | str | None = None,
) -> str:
    """Render letters from the installed fonts into ``out/train`` and ``out/test``, split by font.

    Args:
        out: folder to write (new, empty, or an earlier build-fonts folder, which is replaced).
        letters: the classes, one character each (unique, also case-insensitively).
        size: image side in pixels (at least 8).
        per_font: images per font and letter (each with its own scale, rotation and shift).
        test_fraction: share of the usable fonts held out as test fonts (at least one font each side).
        seed: seed of the font split and of every image's jitter; the same seed gives the same bytes.
        font_dir: folder(s) to find fonts in, ``DIR`` or ``'[DIR1, DIR2]'`` (default: the system font folders).
    """
    start = time.perf_counter()
    _check(letters, size, per_font, test_fraction)
    dirs = [font_dir] if isinstance(font_dir, str) else font_dir
    paths = fo.find_fonts(dirs)
    where = ", ".join(dirs if dirs is not None else fo.SYSTEM_FONT_DIRS)
    if not paths:
        raise SystemExit(f"error: no .ttf/.otf/.ttc fonts found in {where}")
    fonts, dropped = fo.usable_fonts(paths, letters, size * fo.SUPERSAMPLE)
    if len(fonts) < 2:
        raise SystemExit(f"error: {len(fonts)} of the {len(paths)} fonts in {where} draw every letter of "
                         f"{letters!r}; need at least 2 to split by font")
    train, test = fo.split_fonts(fonts, test_fraction, seed)
    root = Path(out)
    clear_build_folder(root, META_FILE, "fonts", ("train", "test"), ("README.md",))
    counts = {}
    for split, split_fonts in (("train", train), ("test", test)):
        for letter in letters:
            folder = root / split / letter
            folder.mkdir(parents=True)
            for font in split_fonts:
                for variant in range(per_font):
                    pixels = fo.render_letter(font.path, letter, size, variant, seed, font.name)
                    Image.fromarray(pixels).save(folder / f"{font.name}_{variant}.png", format="PNG")
        counts[split] = len(letters) * len(split_fonts) * per_font
    meta = {
        "name": "fonts",
        "format_version": FORMAT_VERSION,
        "out": out,
        "letters": letters,
        "size": size,
        "per_font": per_font,
        "seed": seed,
        "test_fraction": test_fraction,
        "font_dirs": list(dirs) if dirs is not None else list(fo.SYSTEM_FONT_DIRS),
        "train_fonts": [f.to_json() for f in train],
        "test_fonts": [f.to_json() for f in test],
        "dropped_fonts": [{"path": p, "reason": r} for p, r in dropped.items()],
        "counts": counts,
        "renderer": {"pillow": PIL.__version__, "freetype": features.version("freetype2")},
        "command": _command(out, letters, size, per_font, test_fraction, seed, dirs),
    }
    (root / META_FILE).write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (root / "README.md").write_text(_readme(meta), encoding="utf-8")
    print(f"fonts: {len(fonts)} of {len(paths)} fonts used ({len(train)} train, {len(test)} test; {len(dropped)} "
          f"dropped), {len(letters)} letters x {per_font}: {counts['train']} train / {counts['test']} test images "
          f"({size} px) written to {root} in {time.perf_counter() - start:.1f} s")
    return str(root)
