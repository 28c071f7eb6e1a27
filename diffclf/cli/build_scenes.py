"""``diffclf build-scenes``: render the two-object scenes of :mod:`diffclf.data.scenes` into a folder.

The folder (every file a function of the arguments alone: the same seed gives the same bytes)::

    meta.json, README.md            seed, sizes, counts, the held-out rule, the grammar, the command
    train/images.npy                uint8 (N, S, S, 3); row i is line i of scenes.jsonl
    train/scenes.jsonl              index, objects (shape, color, size, position, box [x, y, r]), captions, held_out
    test/images.npy, test/scenes.jsonl
    winoground/data/examples.jsonl  Winoground's rows: id, caption_0, caption_1, tag, secondary_tag,
    winoground/images/ex_<id>_img_<0|1>.png    num_main_preds, collapsed_tag, image_0, image_1
    cue_train/images.npy, cue_train/items.jsonl   textured objects, 90% wearing their shape's texture
    cue_conflict/<shape>/<shape><i>-<texture><j>.png   Geirhos' layout; every image a conflict
    cue_conflict.jsonl              file, shape, texture, texture_shape, color, box per conflict image

``diffclf.data.winoground.read_winoground(DIR/winoground)`` reads the Winoground split as it reads the
real one; ``cue_conflict/`` follows the texture-vs-shape stimuli's names, textures named by the shape
owning them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from diffclf.cli.build_folder import clear_build_folder
from diffclf.data import scenes as sc

_SUBFOLDERS = ("train", "test", "winoground", "cue_train", "cue_conflict")


def _jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _npy(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, np.ascontiguousarray(array), allow_pickle=False)


def _png(path: Path, image: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")


def _readme(meta: dict[str, Any]) -> str:
    counts = ", ".join(f"{k} {v}" for k, v in meta["counts"].items())
    return "\n".join([
        "# Two-object scenes (diffclf build-scenes)",
        "",
        f"Rebuild byte for byte with: `{meta['command']}`",
        "",
        f"- seed {meta['seed']}, {meta['size']} px RGB, noise std {meta['noise']}; counts: {counts}",
        f"- held-out combinations (never in train; in every even-indexed test scene): {meta['held_out_rule']}",
        (f"- textures: {meta['shape_texture']}; cue_train {meta['cue_canonical_fraction']:.0%} canonical per shape, "
         "cue_conflict all conflicting (texture named by the shape owning it)"),
        f"- caption templates: {meta['templates']}",
        f"- vocabulary: {' '.join(meta['vocabulary'])}",
        "",
        ("Layout: train/ and test/ hold images.npy (uint8 N,S,S,3) and scenes.jsonl (row i = image i); "
         "winoground/ is Winoground's data/examples.jsonl + images/ex_<id>_img_<0|1>.png; "
         "cue_conflict/<shape>/<shape><i>-<texture><j>.png is Geirhos' layout, labelled in cue_conflict.jsonl; "
         "cue_train/ holds images.npy + items.jsonl."),
        "",
    ])


def build_scenes(
    out: str,
    seed: int = 0,
    size: int = 32,
    train: int = 5000,
    test: int = 1000,
    winoground: int = 200,
    cue_train: int | None = None,
    cue_conflict: int = 300,
    noise: float = 0.0,
) -> str:
    """Render two-object scenes into ``out`` (train / test arrays, Winoground-style and cue-conflict splits).

    Args:
        out: folder to write (new, empty, or an earlier build-scenes folder, which is replaced).
        seed: seed of every draw; the same seed gives byte-identical files.
        size: image side in pixels (made for 32-64; at least 32 so small objects stay readable).
        train: training scenes (never a held-out shape-colour pair).
        test: test scenes (even indices hold one held-out pair, odd ones none).
        winoground: Winoground-style examples (even ids Object swaps, odd ids Relation swaps).
        cue_train: textured training objects (default: ``train``).
        cue_conflict: cue-conflict test images (each shape with the other shapes' textures).
        noise: std of Gaussian pixel noise in 0-255 units (0: exact CLEVR colours).
    """
    if size < 32:
        raise SystemExit(f"error: --size must be >= 32, got {size}")
    cue_train = train if cue_train is None else cue_train
    counts = {"train": train, "test": test, "winoground": winoground, "cue_train": cue_train,
              "cue_conflict": cue_conflict}
    bad = [f"--{k} {v}" for k, v in counts.items() if v < (1 if k in ("train", "test") else 0)]
    if bad or noise < 0:
        raise SystemExit(f"error: {', '.join(bad) or f'--noise {noise}'}: counts must be >= 0 (train, test >= 1), "
                         "noise >= 0")
    root = Path(out)
    clear_build_folder(root, sc.META_FILE, "scenes", _SUBFOLDERS, ("README.md", "cue_conflict.jsonl"))
    for split in ("train", "test"):
        images, scenes = sc.make_split(split, counts[split], seed, size, noise)  # type: ignore[arg-type]
        _npy(root / split / sc.IMAGES_FILE, images)
        _jsonl(root / split / sc.SCENES_FILE, [s.to_json() for s in scenes])
    rows = []
    for k in range(winoground):
        pair, image_0, image_1 = sc.make_winoground(k, seed, size, noise)
        row = pair.to_json()
        for j, image in enumerate((image_0, image_1)):
            _png(root / "winoground" / "images" / f"{row[f'image_{j}']}.png", image)
        rows.append(row)
    _jsonl(root / "winoground" / "data" / "examples.jsonl", rows)
    cue_images = np.zeros((cue_train, size, size, 3), dtype=np.uint8)
    cue_rows = []
    for k in range(cue_train):
        item, image = sc.make_cue("cue_train", k, seed, size, noise)
        cue_images[k] = np.asarray(image)
        cue_rows.append(item.to_json())
    _npy(root / "cue_train" / sc.IMAGES_FILE, cue_images)
    _jsonl(root / "cue_train" / "items.jsonl", cue_rows)
    conflict_rows = []
    for k in range(cue_conflict):
        item, image = sc.make_cue("cue_conflict", k, seed, size, noise)
        _png(root / "cue_conflict" / item.file_name(), image)
        conflict_rows.append({"file": item.file_name(), **item.to_json()})
    _jsonl(root / "cue_conflict.jsonl", conflict_rows)
    meta = {
        "name": "scenes",
        "format_version": sc.FORMAT_VERSION,
        "seed": seed,
        "size": size,
        "noise": noise,
        "counts": counts,
        "held_out_rule": sc.HELD_OUT_RULE,
        "held_out_pairs": [list(p) for p in sc.HELD_OUT_PAIRS],
        "shapes": list(sc.SHAPES),
        "colors": {c: list(sc.CLEVR_RGB[c]) for c in sc.COLOR_NAMES},
        "sizes": list(sc.SIZES),
        "positions": list(sc.POSITIONS),
        "shape_texture": sc.SHAPE_TEXTURE,
        "cue_canonical_fraction": sc.CUE_CANONICAL_FRACTION,
        "background": list(sc.BACKGROUND),
        "templates": list(sc.TEMPLATES),
        "vocabulary": list(sc.VOCABULARY),
        "command": (f"diffclf build-scenes --out {out} --seed {seed} --size {size} --train {train} --test {test} "
                    f"--winoground {winoground} --cue_train {cue_train} --cue_conflict {cue_conflict} --noise {noise}"),
    }
    (root / sc.META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    (root / "README.md").write_text(_readme(meta))
    print(f"scenes: {train} train, {test} test, {winoground} Winoground-style pairs, {cue_train} cue_train, "
          f"{cue_conflict} cue-conflict images ({size} px, seed {seed}) written to {root}")
    return str(root)
