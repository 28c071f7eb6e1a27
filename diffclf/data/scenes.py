"""Generated two-object scenes: small, exact, compositional data this CPU machine can train on.

Each scene holds two objects, one per side (``left`` first), each with a shape (``cube``, ``sphere``,
``cylinder``, drawn in 2-D as a square, a circle, and an upright narrow rectangle with a lighter
elliptical top and rounded bottom), one of CLEVR's 8 colours (its exact RGB values, :data:`CLEVR_RGB`), a size (``small`` /
``large``) and a position (``left`` / ``right``, with a little jitter), on a plain light-grey background —
the attributes of Clark & Jaini 2023 (App. D, after Lewis et al. 2022). Everything is drawn from
``(seed, split, index)`` alone, so scene ``i`` does not depend on how many scenes a build asks for, and
the same seed gives the same bytes.

**Captions.** Every scene has the captions of :data:`TEMPLATES`, then every description in Clark &
Jaini's grammar (:func:`diffclf.data.binding.describe`) that is true of it: one object or both (joined by
"and", leftmost first), naming every non-empty subset of size, colour and shape, with and without the
"on the {position} is a" prefix (:func:`scene_descriptions`). All are lower-cased, duplicates dropped.
Real captions name some of a scene's objects and attributes, never all; the binding tasks' true
descriptions are phrased this way, so a model trained on these captions reads the tasks' words in
their own grammar, while their false descriptions never occur with the image. The 22 words of
:data:`VOCABULARY` (``a``, ``and``, ``is``, ``of``, ``on``, ``the``, ``left``, ``right``, ``object``,
the shapes, colours and sizes; the article is always ``a``, since no attribute word starts with a
vowel) make a word-level tokenizer a lookup in that list.

**Held-out combinations.** A (shape, colour) pair is held out when the colour's index in
:data:`COLOR_NAMES` (sorted, as :mod:`diffclf.data.binding`: blue 0, brown 1, cyan 2, gray 3, green 4,
purple 5, red 6, yellow 7) is ``(2 * shape index + 4) mod 8`` (:data:`SHAPES`: cube 0, sphere 1,
cylinder 2): cube-green, sphere-red, cylinder-blue (:data:`HELD_OUT_PAIRS`). Training scenes never contain them, yet every shape and every
colour occurs in training. Even-indexed test scenes hold exactly one held-out object (``held_out``
true), odd ones none: the test split halves into seen and unseen combinations.

**Winoground-style pairs.** Two images whose correct captions are each other's word-order swaps (same
multiset of words, template ``a C S left of a C S``): ``Object`` swaps exchange the two colours
between the shapes (attribute binding), ``Relation`` swaps exchange the sides (word order / relation).
Only combinations seen in training appear, so the pairs test binding, not unseen combinations.

**Cue conflict.** One large textured object per image. Each shape owns a texture
(:data:`SHAPE_TEXTURE`: cube stripes, sphere dots, cylinder checks). In ``cue_train`` exactly 90% of each
shape's images (items ``k`` with ``(k // 3) % 10 != 9``) carry its own texture, the rest another shape's;
in the conflict split every shape carries another shape's texture, both other shapes equally often.
Textures are named by the shape that owns them (``cube1-sphere3.png``: a cube with dots), as Geirhos'
stimuli name textures by category, so shape-bias readers compare the two cues in one class space.
A ``cue_train`` item's captions (:func:`cue_captions`) name its shape and colour, never its texture:
the texture is a cue only through its correlation with the shape, as texture is in natural images.

The files are written by ``diffclf build-scenes`` (:mod:`diffclf.cli.build_scenes`); :class:`ScenesDataModule`
serves the train / val / test arrays.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from diffclf.data.arrays import stratified_subset
from diffclf.data.base import (
    ClassificationDataModule,
    DataSourceError,
    ResumableLoader,
    ResumableSampler,
    stage_splits,
)
from diffclf.data.binding import COLORS, POSITIONS, SHAPES, SIZES, SceneObject, describe, join_descriptions
from diffclf.data.label_spaces import LabelSpace
from diffclf.data.transforms import to_model_range

#: CLEVR's RGB values (``properties.json`` of the CLEVR generator) of :data:`COLOR_NAMES`.
CLEVR_RGB: dict[str, tuple[int, int, int]] = {
    "blue": (42, 75, 215),
    "brown": (129, 74, 25),
    "cyan": (41, 208, 208),
    "gray": (87, 87, 87),
    "green": (29, 105, 20),
    "purple": (129, 38, 192),
    "red": (173, 35, 35),
    "yellow": (255, 238, 51),
}
COLOR_NAMES: tuple[str, ...] = COLORS
TEXTURES: tuple[str, ...] = ("solid", "stripes", "dots", "checks")
SHAPE_TEXTURE: dict[str, str] = {"cube": "stripes", "sphere": "dots", "cylinder": "checks"}
BACKGROUND: tuple[int, int, int] = (220, 220, 220)

HELD_OUT_PAIRS: tuple[tuple[str, str], ...] = tuple(
    (s, COLOR_NAMES[(2 * k + 4) % len(COLOR_NAMES)]) for k, s in enumerate(SHAPES)
)
HELD_OUT_RULE = ("(shape, colour) is held out when colour index = (2 * shape index + 4) mod 8 "
                 f"(shapes {list(SHAPES)}, colours {list(COLOR_NAMES)}): "
                 + ", ".join(f"{s}-{c}" for s, c in HELD_OUT_PAIRS))
SEEN_PAIRS: tuple[tuple[str, str], ...] = tuple(
    (s, c) for s in SHAPES for c in COLOR_NAMES if (s, c) not in HELD_OUT_PAIRS
)

#: The caption grammar: ``l_*`` / ``r_*`` are the left / right object's attributes.
TEMPLATES: tuple[str, ...] = (
    "a {l_color} {l_shape} and a {r_color} {r_shape}",
    "a {r_color} {r_shape} and a {l_color} {l_shape}",
    "a {l_color} {l_shape} left of a {r_color} {r_shape}",
    "a {r_color} {r_shape} right of a {l_color} {l_shape}",
    "a {l_size} {l_color} {l_shape} on the left and a {r_size} {r_color} {r_shape} on the right",
    "a {r_size} {r_color} {r_shape} on the right and a {l_size} {l_color} {l_shape} on the left",
    "a {l_color} object and a {r_color} object",
    "a {l_shape} and a {r_shape}",
)
#: The Winoground-style captions' template (index into :data:`TEMPLATES`).
WINOGROUND_TEMPLATE = 2
_GRAMMAR_WORDS = ("a", "and", "is", "left", "of", "on", "right", "the", "object")
VOCABULARY: tuple[str, ...] = tuple(sorted({*_GRAMMAR_WORDS, *SHAPES, *COLOR_NAMES, *SIZES}))

#: Entropy tags of the splits: a scene's draws come from ``SeedSequence([seed, tag, index])``.
SPLIT_TAGS: dict[str, int] = {"train": 0, "test": 1, "winoground": 2, "cue_train": 3, "cue_conflict": 4}
CUE_CANONICAL_FRACTION = 0.9

META_FILE = "meta.json"
IMAGES_FILE = "images.npy"
SCENES_FILE = "scenes.jsonl"
#: 2: captions hold Clark & Jaini's descriptions (``is`` joined the vocabulary); a version-1 build lacks them.
FORMAT_VERSION = 2

#: An object's place: centre pixel ``(x, y)`` and half-extent ``r`` in pixels.
Box = tuple[int, int, int]


# --------------------------------------------------------------------------- geometry and drawing
def object_radius(size: str, image_size: int) -> int:
    """Half-extent of a ``small`` / ``large`` object: 3 / 6 px at 32 px, 6 / 13 at 64."""
    return max(2, round(0.1 * image_size)) if size == "small" else round(0.2 * image_size)


def layout(objects: Sequence[SceneObject], image_size: int, rng: np.random.Generator) -> tuple[Box, ...]:
    """Boxes of objects: centred in their half (``x`` = S/4 or 3S/4, ±S/32) at mid-height ± up to S/8.

    Two draws per object whatever its size, so images that share ``rng``'s state share the jitter.
    """
    boxes = []
    for obj in objects:
        dx, dy = rng.uniform(-1.0, 1.0, size=2)
        r = object_radius(obj.size, image_size)
        x = (image_size // 4 if obj.position == POSITIONS[0] else 3 * image_size // 4) + round(dx * (image_size // 32))
        y = image_size // 2 + round(dy * min(image_size // 8, image_size // 2 - r - 1))
        boxes.append((x, y, r))
    return tuple(boxes)


def _masks(shape: str, box: Box, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """``(body, cap)`` boolean masks: the object's pixels, and the cylinder's lighter top (else empty)."""
    x, y, r = box
    body = Image.new("L", (image_size, image_size), 0)
    cap = Image.new("L", (image_size, image_size), 0)
    draw = ImageDraw.Draw(body)
    if shape == "cube":
        draw.rectangle((x - r, y - r, x + r, y + r), fill=255)
    elif shape == "sphere":
        draw.ellipse((x - r, y - r, x + r, y + r), fill=255)
    elif shape == "cylinder":
        w, e = max(1, round(0.6 * r)), max(1, round(0.3 * r))
        draw.rectangle((x - w, y - r + e, x + w, y + r - e), fill=255)
        draw.ellipse((x - w, y + r - 2 * e, x + w, y + r), fill=255)
        draw.ellipse((x - w, y - r, x + w, y - r + 2 * e), fill=255)
        ImageDraw.Draw(cap).ellipse((x - w, y - r, x + w, y - r + 2 * e), fill=255)
    else:
        raise ValueError(f"unknown shape {shape!r}; shapes are {', '.join(SHAPES)}")
    return np.asarray(body) > 0, np.asarray(cap) > 0


def texture_mask(texture: str, box: Box, image_size: int) -> np.ndarray:
    """Pixels a texture darkens, in the object's own frame (so jitter does not shift the pattern):
    2-px diagonal stripes, 2×2 dots every 4 px, 3-px checks; ``solid`` darkens none."""
    x, y, r = box
    yy, xx = np.mgrid[0:image_size, 0:image_size]
    u, v = xx - (x - r), yy - (y - r)
    if texture == "solid":
        return np.zeros((image_size, image_size), dtype=bool)
    if texture == "stripes":
        return ((u + v) // 2) % 2 == 1
    if texture == "dots":
        return (u % 4 >= 2) & (v % 4 >= 2)
    if texture == "checks":
        return ((u // 3) + (v // 3)) % 2 == 1
    raise ValueError(f"unknown texture {texture!r}; textures are {', '.join(TEXTURES)}")


def shade(rgb: tuple[int, int, int], toward: int, amount: float) -> np.ndarray:
    """``rgb`` moved ``amount`` of the way to grey level ``toward`` (texture ink: 0, cylinder top: 255)."""
    c = np.asarray(rgb, dtype=np.float64)
    return np.round(c + (toward - c) * amount).astype(np.uint8)


def draw_object(canvas: np.ndarray, shape: str, color: str, box: Box, texture: str = "solid") -> None:
    """Paint one object onto an ``(S, S, 3)`` uint8 canvas in place."""
    size = canvas.shape[0]
    body, cap = _masks(shape, box, size)
    rgb = CLEVR_RGB[color]
    ink = texture_mask(texture, box, size) & body & ~cap
    canvas[body] = rgb
    canvas[ink] = shade(rgb, 0, 0.6)
    canvas[cap] = shade(rgb, 255, 0.45)


def _finish(canvas: np.ndarray, noise: float, rng: np.random.Generator | None) -> Image.Image:
    if noise > 0:
        if rng is None:
            raise ValueError("noise > 0 needs an rng")
        canvas = np.clip(np.round(canvas + rng.normal(0.0, noise, canvas.shape)), 0, 255).astype(np.uint8)
    return Image.fromarray(canvas, "RGB")


def draw_scene(objects: Sequence[SceneObject], boxes: Sequence[Box], image_size: int,
               textures: Sequence[str] | None = None, noise: float = 0.0,
               rng: np.random.Generator | None = None) -> Image.Image:
    """The objects at given boxes on the background, then Gaussian pixel noise of std ``noise`` (0: none)."""
    canvas = np.empty((image_size, image_size, 3), dtype=np.uint8)
    canvas[:] = BACKGROUND
    for k, (obj, box) in enumerate(zip(objects, boxes)):
        draw_object(canvas, obj.shape, obj.color, box, textures[k] if textures else "solid")
    return _finish(canvas, noise, rng)


def render_scene(objects: Sequence[SceneObject], size: int, rng: np.random.Generator,
                 textures: Sequence[str] | None = None, noise: float = 0.0) -> Image.Image:
    """An ``size``-px RGB image of ``objects``: positions jittered from ``rng``, then noise from it."""
    return draw_scene(objects, layout(objects, size, rng), size, textures, noise, rng)


# --------------------------------------------------------------------------- scenes and captions
#: Attribute subsets a description names (Clark & Jaini's size, colour, shape; the prefix adds position).
DESCRIBED: tuple[frozenset[str], ...] = tuple(
    frozenset(a for a, bit in zip(("size", "color", "shape"), (4, 2, 1)) if mask & bit) for mask in range(1, 8)
)


def scene_descriptions(objects: Sequence[SceneObject]) -> list[str]:
    """Every description of a ``(left, right)`` pair in :func:`diffclf.data.binding.describe`'s grammar:
    each object alone, then both joined (leftmost first), for each subset of :data:`DESCRIBED`, without
    and with position."""
    left, right = objects
    out = []
    for attributes in DESCRIBED:
        for named in (attributes, attributes | {"position"}):
            out += [describe(left, named), describe(right, named),
                    join_descriptions(describe(left, named), describe(right, named))]
    return out


def scene_captions(objects: Sequence[SceneObject]) -> tuple[str, ...]:
    """The captions of :data:`TEMPLATES` for a ``(left, right)`` pair, then :func:`scene_descriptions`;
    lower-cased (the tokenizer's case), duplicates dropped, in that order."""
    left, right = objects
    words = {f"{side}_{attr}": getattr(obj, attr) for side, obj in (("l", left), ("r", right))
             for attr in ("shape", "color", "size")}
    captions = [t.format(**words) for t in TEMPLATES] + scene_descriptions(objects)
    return tuple(dict.fromkeys(c.lower() for c in captions))


def cue_captions(item: CueItem) -> tuple[str, ...]:
    """A ``cue_train`` item's captions: its shape, its colour, or both (``a cube``, ``a red object``,
    ``a red cube``), never its texture."""
    obj = SceneObject(shape=item.shape, color=item.color, size="large", position="left")
    return tuple(dict.fromkeys(describe(obj, a).lower() for a in DESCRIBED if "size" not in a))


def is_held_out(obj: SceneObject) -> bool:
    return (obj.shape, obj.color) in HELD_OUT_PAIRS


@dataclass(frozen=True)
class Scene:
    """One rendered scene: row ``index`` of its split's image array."""

    index: int
    objects: tuple[SceneObject, SceneObject]
    boxes: tuple[Box, Box]
    captions: tuple[str, ...]

    @property
    def held_out(self) -> bool:
        """Whether an object is a held-out (shape, colour) pair."""
        return any(is_held_out(o) for o in self.objects)

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "objects": [{"shape": o.shape, "color": o.color, "size": o.size, "position": o.position,
                         "box": list(b)} for o, b in zip(self.objects, self.boxes)],
            "captions": list(self.captions),
            "held_out": self.held_out,
        }

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> Scene:
        objs = tuple(SceneObject(shape=o["shape"], color=o["color"], size=o["size"], position=o["position"])
                     for o in row["objects"])
        boxes = tuple(tuple(int(v) for v in o["box"]) for o in row["objects"])
        return cls(int(row["index"]), objs, boxes, tuple(row["captions"]))  # type: ignore[arg-type]


def split_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of item ``index`` of ``split``: independent of the split's length."""
    return np.random.default_rng(np.random.SeedSequence([seed, SPLIT_TAGS[split], index]))


def _object(pairs: Sequence[tuple[str, str]], position: str, rng: np.random.Generator) -> SceneObject:
    shape, color = pairs[int(rng.integers(len(pairs)))]
    return SceneObject(shape=shape, color=color, size=SIZES[int(rng.integers(len(SIZES)))], position=position)


def make_scene(split: Literal["train", "test"], index: int, seed: int, image_size: int,
               noise: float = 0.0) -> tuple[Scene, Image.Image]:
    """Scene ``index`` of ``split`` and its image. Train: seen pairs only; test: even indices hold one
    held-out object (side drawn), odd ones only seen pairs."""
    rng = split_rng(seed, split, index)
    pools = [SEEN_PAIRS, SEEN_PAIRS]
    if split == "test" and index % 2 == 0:
        pools[int(rng.integers(2))] = HELD_OUT_PAIRS
    objects = (_object(pools[0], "left", rng), _object(pools[1], "right", rng))
    boxes = layout(objects, image_size, rng)
    image = draw_scene(objects, boxes, image_size, noise=noise, rng=rng)
    return Scene(index, objects, boxes, scene_captions(objects)), image  # type: ignore[arg-type]


def make_split(split: Literal["train", "test"], n: int, seed: int, image_size: int,
               noise: float = 0.0) -> tuple[np.ndarray, list[Scene]]:
    """``(images (n, S, S, 3) uint8, scenes)`` of a split."""
    images = np.zeros((n, image_size, image_size, 3), dtype=np.uint8)
    scenes = []
    for i in range(n):
        scene, image = make_scene(split, i, seed, image_size, noise)
        images[i] = np.asarray(image)
        scenes.append(scene)
    return images, scenes


# --------------------------------------------------------------------------- Winoground-style pairs
@dataclass(frozen=True)
class WinogroundPair:
    """Example ``id``: ``objects_j`` is image ``j`` (left, right) and ``caption_j`` its correct caption."""

    id: int
    collapsed_tag: str
    objects_0: tuple[SceneObject, SceneObject]
    objects_1: tuple[SceneObject, SceneObject]
    caption_0: str
    caption_1: str

    def to_json(self) -> dict[str, Any]:
        """The row of Winoground's ``examples.jsonl`` (its fields, its image names)."""
        return {
            "id": self.id,
            "caption_0": self.caption_0,
            "caption_1": self.caption_1,
            "tag": "color-swap" if self.collapsed_tag == "Object" else "left-right-swap",
            "secondary_tag": "",
            "num_main_preds": 1,
            "collapsed_tag": self.collapsed_tag,
            "image_0": f"ex_{self.id}_img_0",
            "image_1": f"ex_{self.id}_img_1",
        }


def winoground_caption(objects: Sequence[SceneObject]) -> str:
    """The ``a C S left of a C S`` caption of a ``(left, right)`` pair."""
    left, right = objects
    return TEMPLATES[WINOGROUND_TEMPLATE].format(l_color=left.color, l_shape=left.shape,
                                                 r_color=right.color, r_shape=right.shape)


def make_winoground(example: int, seed: int, image_size: int,
                    noise: float = 0.0) -> tuple[WinogroundPair, Image.Image, Image.Image]:
    """Example ``example``: even ids swap colours between the shapes (``Object``), odd ids swap sides
    (``Relation``). Shapes and colours of the two objects differ, and all four (shape, colour) pairs
    involved are seen in training; the second image repeats the first's jitter draws."""
    rng = split_rng(seed, "winoground", example)
    relation = example % 2 == 1
    while True:
        (s0, c0), (s1, c1) = (SEEN_PAIRS[int(i)] for i in rng.integers(len(SEEN_PAIRS), size=2))
        if s0 != s1 and c0 != c1 and (relation or {(s0, c1), (s1, c0)} <= set(SEEN_PAIRS)):
            break
    z0, z1 = (SIZES[int(i)] for i in rng.integers(len(SIZES), size=2))
    first = (SceneObject(shape=s0, color=c0, size=z0, position="left"),
             SceneObject(shape=s1, color=c1, size=z1, position="right"))
    if relation:
        second = (SceneObject(shape=s1, color=c1, size=z1, position="left"),
                  SceneObject(shape=s0, color=c0, size=z0, position="right"))
    else:
        second = (SceneObject(shape=s0, color=c1, size=z0, position="left"),
                  SceneObject(shape=s1, color=c0, size=z1, position="right"))
    state = rng.bit_generator.state
    image_0 = render_scene(first, image_size, rng, noise=noise)
    rng.bit_generator.state = state
    image_1 = render_scene(second, image_size, rng, noise=noise)
    pair = WinogroundPair(example, "Relation" if relation else "Object", first, second,
                          winoground_caption(first), winoground_caption(second))
    return pair, image_0, image_1


# --------------------------------------------------------------------------- cue conflict
@dataclass(frozen=True)
class CueItem:
    """One textured object: ``texture_shape`` is the shape whose texture it wears."""

    index: int
    shape: str
    texture_shape: str
    color: str
    box: Box

    @property
    def texture(self) -> str:
        return SHAPE_TEXTURE[self.texture_shape]

    @property
    def conflict(self) -> bool:
        return self.shape != self.texture_shape

    def file_name(self) -> str:
        """Geirhos' ``<shape>/<shape><i>-<texture><j>.png``: ``i`` counts per shape from 1, ``j`` is 1 + the colour index."""
        i = self.index // len(SHAPES) + 1
        return f"{self.shape}/{self.shape}{i}-{self.texture_shape}{COLOR_NAMES.index(self.color) + 1}.png"

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "shape": self.shape, "texture": self.texture, "texture_shape": self.texture_shape,
                "color": self.color, "box": list(self.box), "conflict": self.conflict}


def make_cue(split: Literal["cue_train", "cue_conflict"], index: int, seed: int, image_size: int,
             noise: float = 0.0) -> tuple[CueItem, Image.Image]:
    """Item ``index``: shape ``SHAPES[index % 3]``; its own texture in ``cue_train`` unless
    ``(index // 3) % 10 == 9``; otherwise another shape's, alternating between the two."""
    rng = split_rng(seed, split, index)
    shape = SHAPES[index % len(SHAPES)]
    others = [s for s in SHAPES if s != shape]
    if split == "cue_train" and (index // len(SHAPES)) % 10 != 9:
        texture_shape = shape
    else:
        turn = index // len(SHAPES) // (10 if split == "cue_train" else 1)
        texture_shape = others[turn % 2]
    color = COLOR_NAMES[int(rng.integers(len(COLOR_NAMES)))]
    dx, dy = (round(d * (image_size // 32)) for d in rng.uniform(-1.0, 1.0, size=2))
    box = (image_size // 2 + dx, image_size // 2 + dy, round(0.3 * image_size))
    canvas = np.empty((image_size, image_size, 3), dtype=np.uint8)
    canvas[:] = BACKGROUND
    item = CueItem(index, shape, texture_shape, color, box)
    draw_object(canvas, shape, color, box, item.texture)
    return item, _finish(canvas, noise, rng)


# --------------------------------------------------------------------------- reading
def _hint(folder: Path) -> str:
    return f"build it with: diffclf build-scenes --out {folder} --seed 0 --size 32 --train N --test M"


def read_meta(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """``(folder, meta)`` of a build; one-line errors that say how to build one."""
    folder = Path(path)
    try:
        meta = json.loads((folder / META_FILE).read_text())
    except (OSError, ValueError) as err:
        raise DataSourceError(f"no scenes build at {folder} ({META_FILE}: {err}); {_hint(folder)}") from None
    if not isinstance(meta, dict) or meta.get("name") != "scenes":
        raise DataSourceError(f"{folder / META_FILE}: not a scenes build; {_hint(folder)}")
    if meta.get("format_version") != FORMAT_VERSION:
        raise DataSourceError(f"{folder / META_FILE}: format_version {meta.get('format_version')}, this diffclf reads "
                              f"{FORMAT_VERSION} (its captions changed); rebuild: {meta.get('command') or _hint(folder)}")
    return folder, meta


def read_cue_items(folder: Path) -> list[CueItem]:
    """The ``cue_train`` items in image order."""
    def parse(r: dict[str, Any]) -> CueItem:
        return CueItem(int(r["index"]), r["shape"], r["texture_shape"], r["color"], tuple(int(v) for v in r["box"]))  # type: ignore[arg-type]

    return _read_rows(folder, folder / "cue_train" / "items.jsonl", parse)


def read_scenes(folder: Path, split: str) -> list[Scene]:
    """The scenes of ``split`` (``train`` / ``test``) in image order."""
    return _read_rows(folder, folder / split / SCENES_FILE, Scene.from_json)


def _read_rows(folder: Path, path: Path, parse: Any) -> list[Any]:
    """The parsed rows of a jsonl file whose ``index`` fields run 0..N-1; one-line errors with the rebuild hint."""
    try:
        items = [parse(json.loads(line)) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DataSourceError(f"{path}: unreadable ({err}); {_hint(folder)}") from None
    if [it.index for it in items] != list(range(len(items))):
        raise DataSourceError(f"{path}: indices are not 0..{len(items) - 1} in order; {_hint(folder)}")
    return items


def read_images(folder: Path, split: str, count: int, image_size: int) -> np.ndarray:
    path = folder / split / IMAGES_FILE
    try:
        images = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise DataSourceError(f"{path}: unreadable ({err}); {_hint(folder)}") from None
    if images.dtype != np.uint8 or images.shape != (count, image_size, image_size, 3):
        raise DataSourceError(f"{path}: {images.shape} {images.dtype}, expected ({count}, {image_size}, "
                              f"{image_size}, 3) uint8; {_hint(folder)}")
    return images


# --------------------------------------------------------------------------- data module
def caption_pick(seed: int, index: int, epoch: int, count: int) -> int:
    """Which of an item's ``count`` captions epoch ``epoch`` shows: a seeded start, then one step per epoch,
    so any ``count`` consecutive epochs show every phrasing once."""
    start = int(np.random.default_rng([seed, index]).integers(count))
    return (start + epoch) % count


class SceneDataset(Dataset):
    """``(image (3, S, S) in [-1, 1], target)``; with ``choices`` the target is caption ``choices[i][pick]``,
    the pick following the shared ``epoch`` counter, else ``targets[i]``."""

    def __init__(self, images: np.ndarray, targets: Sequence[int], choices: Sequence[Sequence[int]] | None = None,
                 epoch: Tensor | None = None, seed: int = 0) -> None:
        self.images, self.targets = images, list(targets)
        self.choices, self.epoch, self.seed = choices, epoch, seed

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        target = self.targets[i]
        if self.choices is not None and self.epoch is not None:
            ids = self.choices[i]
            target = ids[caption_pick(self.seed, i, int(self.epoch), len(ids))]
        return to_model_range(self.images[i]), int(target)


class EpochSampler(ResumableSampler):
    """The training shuffle that also writes its epoch into a shared counter when an epoch starts, so
    dataloader workers (persistent ones too) pick that epoch's captions whoever called ``set_epoch``."""

    def __init__(self, dataset: Dataset, counter: Tensor, **kwargs: Any) -> None:
        super().__init__(dataset, **kwargs)
        self.counter = counter

    def __iter__(self) -> Iterator[int]:
        self.counter.fill_(self.epoch)
        return super().__iter__()


class ScenesDataModule(ClassificationDataModule):
    """A ``diffclf build-scenes`` folder as train / val / test splits of two-object scenes.

    ``targets`` depend on ``label``: ``caption`` (text-conditional training) — an id into
    :attr:`captions`, every distinct caption of the build's train and test scenes, sorted; a training item
    shows its scene's captions in turn (:func:`caption_pick` of ``(seed, epoch, index)``), a val / test item
    its first caption (``a C S and a C S``); ``shape_left`` / ``color_left`` — a K-way label (3 shapes /
    8 colours) of the left object, for a standard ``test``. :attr:`scene_captions` ``[split][i]`` holds
    every caption id of item ``i`` of that split (the index the batches carry).

    Args:
        path: folder written by ``diffclf build-scenes``.
        label: ``caption``, ``shape_left`` or ``color_left``.
        val_size: training scenes held out as ``val`` (fixed seed 0, stratified by left shape);
            default a tenth of the training split.
        test_scenes: ``all`` test scenes, only ``seen`` combinations, or only ``held_out`` ones.
        cue_train: also train on the build's textured ``cue_train`` objects (``label: caption`` only), with
            :func:`cue_captions`: what the cue-conflict shape-bias test needs a model to have seen.
        **kwargs: ``batch_size``, ``eval_batch_size``, ``num_workers``, ``seed``, ``eval_limit``,
            ``predict_split``: see :class:`ClassificationDataModule`. ``flip`` must stay off: a mirrored
            scene swaps left and right, so its captions would be wrong.
    """

    default_flip: ClassVar[bool] = False

    def __init__(self, path: str, label: Literal["caption", "shape_left", "color_left"] = "caption",
                 val_size: int | None = None, test_scenes: Literal["all", "seen", "held_out"] = "all",
                 cue_train: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if self.flip:
            raise ValueError("data.flip must be false for scenes: a mirrored scene swaps left and right")
        if label not in ("caption", "shape_left", "color_left"):
            raise ValueError(f"data.label must be caption, shape_left or color_left, got {label!r}")
        if test_scenes not in ("all", "seen", "held_out"):
            raise ValueError(f"data.test_scenes must be all, seen or held_out, got {test_scenes!r}")
        if cue_train and label != "caption":
            raise ValueError(f"data.cue_train needs data.label caption (the textured objects have no {label}), got {label!r}")
        self.folder, self.meta = read_meta(path)
        self.path, self.label, self.test_scenes, self.cue_train = path, label, test_scenes, cue_train
        self.image_size, self.in_channels = int(self.meta["size"]), 3
        self.name = "scenes" if test_scenes == "all" else f"scenes-{test_scenes}"
        self.vocabulary: tuple[str, ...] = VOCABULARY
        train, test = read_scenes(self.folder, "train"), read_scenes(self.folder, "test")
        self.cue_items: tuple[CueItem, ...] = tuple(read_cue_items(self.folder)) if cue_train else ()
        cue = [cue_captions(it) for it in self.cue_items]
        self.captions: tuple[str, ...] = tuple(sorted({c for s in train + test for c in s.captions}
                                                      | {c for cs in cue for c in cs}))
        n = len(train)
        val_size = max(1, n // 10) if val_size is None else val_size
        if not 1 <= val_size < n:
            raise ValueError(f"data.val_size must be in 1..{n - 1} for {n} training scenes, got {val_size}")
        val = stratified_subset(np.array([SHAPES.index(s.objects[0].shape) for s in train]), val_size)
        keep = np.setdiff1d(np.arange(n), val).tolist()
        wanted = {"all": (True, False), "seen": (False,), "held_out": (True,)}[test_scenes]
        tests = [s.index for s in test if s.held_out in wanted]
        self.positions: dict[str, list[int]] = {"train": keep, "val": val.tolist(), "test": tests}
        self.scenes: dict[str, tuple[Scene, ...]] = {
            split: tuple((train if split != "test" else test)[i] for i in pos) for split, pos in self.positions.items()
        }
        ids = {c: k for k, c in enumerate(self.captions)}
        self.scene_captions: dict[str, tuple[tuple[int, ...], ...]] = {
            split: tuple(tuple(ids[c] for c in s.captions) for s in scenes) for split, scenes in self.scenes.items()
        }
        self.scene_captions["train"] += tuple(tuple(ids[c] for c in cs) for cs in cue)
        if label == "caption":
            self.label_space = LabelSpace.identity(self.captions, name="scene_captions")
        else:
            self.label_space = LabelSpace.identity(SHAPES if label == "shape_left" else COLOR_NAMES, name=f"scenes_{label}")
        self._epoch = torch.zeros((), dtype=torch.long).share_memory_()

    def targets(self, split: str) -> list[int]:
        """The fixed target of every item of ``split`` (for ``caption``: its first caption's id)."""
        scenes = self.scenes[split]
        if self.label == "shape_left":
            return [SHAPES.index(s.objects[0].shape) for s in scenes]
        if self.label == "color_left":
            return [COLOR_NAMES.index(s.objects[0].color) for s in scenes]
        return [ids[0] for ids in self.scene_captions[split]]  # train: the cue items' too

    def build_datasets(self, stage: str) -> dict[str, Dataset]:
        out: dict[str, Dataset] = {}
        for split in ("train", "val", "test"):
            if split not in stage_splits(stage):
                continue
            source = "test" if split == "test" else "train"
            images = read_images(self.folder, source, int(self.meta["counts"][source]), self.image_size)[self.positions[split]]
            if split == "train" and self.cue_items:
                cue = read_images(self.folder, "cue_train", len(self.cue_items), self.image_size)
                images = np.concatenate([images, cue])
            choices = self.scene_captions[split] if split == "train" and self.label == "caption" else None
            out[split] = SceneDataset(images, self.targets(split), choices, self._epoch, self.seed)
        return out

    def train_dataloader(self) -> DataLoader:
        """The base's training loader, with :class:`EpochSampler` for its shuffle."""
        dataset = self.train_dataset
        if dataset is None:
            raise RuntimeError(f"{self.name}: no train split (setup was not called for this stage)")
        world, rank = self._world()
        self._train_sampler = EpochSampler(dataset, self._epoch, num_replicas=world, rank=rank, shuffle=True,
                                           seed=self.seed)
        return ResumableLoader(dataset, batch_size=self.batch_size, sampler=self._train_sampler,
                               drop_last=len(dataset) >= self.batch_size * world,  # type: ignore[arg-type]
                               num_workers=self.num_workers, persistent_workers=self.num_workers > 0)
