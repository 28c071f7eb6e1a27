"""Geirhos et al.'s cue-conflict stimuli (texture-vs-shape, ICLR 2019) and their 16-category decision.

The stimuli folder as ``rgeirhos/texture-vs-shape`` ships it
(``stimuli/style-transfer-preprocessed-512/<shape>/<shape><i>-<texture><j>.png``, 80 per category,
1280 in all) and as model-vs-human's ``cue-conflict/`` download (the same names, optionally behind a
``<prefix>_``, which ``ShapeBias.get_texture_category`` strips). Images whose shape equals their texture
hold no conflict and are dropped, as model-vs-human's ``ShapeBias`` drops them: 80 of 1280 → 1200.

A 1000-class ImageNet model decides among the 16 categories through Geirhos' mapping of each category
to ImageNet classes (207 in all): :func:`cue_conflict_label_space`. Aggregate with
:func:`diffclf.metrics.compositional.mean_probability_scores` (the mean of the classes' probabilities,
model-vs-human's rule), not the label space's default best-id / sum rules. A text-prompted model
scores the 16 category names themselves (:func:`cue_conflict_names_label_space`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from diffclf.data.base import DataSourceError
from diffclf.data.folders import load_image
from diffclf.data.label_spaces import NUM_IMAGENET_CLASSES, LabelSpace
from diffclf.data.zero_shot import ResizeCenterCrop

#: The 16 entry-level categories in model-vs-human's order (``get_human_object_recognition_categories``:
#: sorted): label ``k`` of both cues is ``CUE_CONFLICT_CATEGORIES[k]``.
CUE_CONFLICT_CATEGORIES: tuple[str, ...] = (
    "airplane", "bear", "bicycle", "bird", "boat", "bottle", "car", "cat",
    "chair", "clock", "dog", "elephant", "keyboard", "knife", "oven", "truck",
)

#: ImageNet-1k indices (sorted-wnid order) of each category: ``HumanCategories.<category>_indices`` of
#: bethgelab/model-vs-human ``modelvshuman/helper/human_categories.py`` (commit 79ed7cd), 207 classes.
#: They equal the ILSVRC classes of that file's WNID sets (checked against timm's sorted wnids).
GEIRHOS_IMAGENET_INDICES: dict[str, tuple[int, ...]] = {
    "airplane": (404,),
    "bear": (294, 295, 296, 297),
    "bicycle": (444, 671),
    "bird": (8, 10, 11, 12, 13, 14, 15, 16, 18, 19, 20, 22, 23, 24, 80, 81, 82, 83, 87, 88, 89, 90, 91, 92, 93,
             94, 95, 96, 98, 99, 100, 127, 128, 129, 130, 131, 132, 133, 135, 136, 137, 138, 139, 140, 141, 142,
             143, 144, 145),
    "boat": (472, 554, 625, 814, 914),
    "bottle": (440, 720, 737, 898, 899, 901, 907),
    "car": (436, 511, 817),
    "cat": (281, 282, 283, 284, 285, 286),
    "chair": (423, 559, 765, 857),
    "clock": (409, 530, 892),
    "dog": (152, 153, 154, 155, 156, 157, 158, 159, 160, 161, 162, 163, 164, 165, 166, 167, 168, 169, 170, 171,
            172, 173, 174, 175, 176, 177, 178, 179, 180, 181, 182, 183, 184, 185, 186, 187, 188, 189, 190, 191,
            193, 194, 195, 196, 197, 198, 199, 200, 201, 202, 203, 205, 206, 207, 208, 209, 210, 211, 212, 213,
            214, 215, 216, 217, 218, 219, 220, 221, 222, 223, 224, 225, 226, 228, 229, 230, 231, 232, 233, 234,
            235, 236, 237, 238, 239, 240, 241, 243, 244, 245, 246, 247, 248, 249, 250, 252, 253, 254, 255, 256,
            257, 259, 261, 262, 263, 265, 266, 267, 268),
    "elephant": (385, 386),
    "keyboard": (508, 878),
    "knife": (499,),
    "oven": (766,),
    "truck": (555, 569, 656, 675, 717, 734, 864, 867),
}

CUE_CONFLICT_LAYOUT = ("a folder of the 16 category folders <shape>/<shape><i>-<texture><j>.png "
                       "(texture-vs-shape's stimuli/style-transfer-preprocessed-512/)")
_STIMULUS_RE = re.compile(r"^(?:.*_)?([a-z]+)(\d+)-([a-z]+)(\d+)\.png$")


def cue_conflict_label_space() -> LabelSpace:
    """The 16 categories of a 1000-class ImageNet model: each stands for its Geirhos ImageNet classes."""
    return LabelSpace(CUE_CONFLICT_CATEGORIES, tuple(GEIRHOS_IMAGENET_INDICES[c] for c in CUE_CONFLICT_CATEGORIES),
                      NUM_IMAGENET_CLASSES, "cue_conflict")


def cue_conflict_names_label_space() -> LabelSpace:
    """The 16 categories one to one: what a prompted (text-to-image, CLIP) model scores."""
    return LabelSpace.identity(CUE_CONFLICT_CATEGORIES, name="cue_conflict")


@dataclass(frozen=True)
class Stimulus:
    """One cue-conflict image: its file and its two cues as category indices."""

    path: Path
    shape: int
    texture: int


def read_cue_conflict(root: str | Path, categories: Sequence[str] = CUE_CONFLICT_CATEGORIES,
                      ) -> tuple[list[Stimulus], int]:
    """Every conflicting stimulus under ``root`` (category order, then file name) and how many
    shape == texture images were dropped. ``categories``: Geirhos' 16 by default; a generated set in the same
    layout (``diffclf build-scenes``' ``cue_conflict/``) names its own."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataSourceError(f"cue-conflict: {root} is not a folder; expected {CUE_CONFLICT_LAYOUT}")
    missing = [c for c in categories if not (root / c).is_dir()]
    if missing:
        raise DataSourceError(f"cue-conflict: {root} has no folder(s) {', '.join(missing)}; expected {CUE_CONFLICT_LAYOUT}")
    index = {c: k for k, c in enumerate(categories)}
    stimuli, dropped = [], 0
    for category in categories:
        for path in sorted((root / category).iterdir()):
            if path.name.startswith(".") or not path.is_file():
                continue
            m = _STIMULUS_RE.match(path.name)
            if m is None or m.group(1) not in index or m.group(3) not in index:
                raise DataSourceError(f"cue-conflict: {path} is not named <shape><i>-<texture><j>.png with two of "
                                      f"the {len(categories)} categories; expected {CUE_CONFLICT_LAYOUT}")
            if m.group(1) != category:
                raise DataSourceError(f"cue-conflict: {path} names shape '{m.group(1)}' but lies in {category}/; "
                                      f"expected {CUE_CONFLICT_LAYOUT}")
            if m.group(1) == m.group(3):
                dropped += 1
                continue
            stimuli.append(Stimulus(path, index[m.group(1)], index[m.group(3)]))
    if not stimuli:
        raise DataSourceError(f"cue-conflict: no cue-conflict images under {root}; expected {CUE_CONFLICT_LAYOUT}")
    return stimuli, dropped


class CueConflictDataset(Dataset):
    """``(image, shape, texture, index)`` per conflicting stimulus; images in [-1, 1].

    Args:
        root: the folder holding the category folders.
        image_size: side of the default transform (:class:`ResizeCenterCrop`; the stimuli are 224 px).
        transform: PIL image → tensor, instead of the default.
        categories: the category folders, in label order (default: Geirhos' 16, or when ``root`` holds none of
            them, its own subfolders sorted, as a generated set in the same layout).
    """

    def __init__(self, root: str | Path, image_size: int = 224,
                 transform: Callable[[Image.Image], Tensor] | None = None,
                 categories: Sequence[str] | None = None) -> None:
        if categories is None:
            folder = Path(root).expanduser()
            own = sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
            categories = CUE_CONFLICT_CATEGORIES if set(CUE_CONFLICT_CATEGORIES) & set(own) or not own else own
        self.categories = tuple(categories)
        self.stimuli, self.dropped = read_cue_conflict(root, self.categories)
        self.transform = transform if transform is not None else ResizeCenterCrop(image_size)

    @property
    def shapes(self) -> list[int]:
        return [s.shape for s in self.stimuli]

    @property
    def textures(self) -> list[int]:
        return [s.texture for s in self.stimuli]

    def __len__(self) -> int:
        return len(self.stimuli)

    def __getitem__(self, i: int) -> tuple[Tensor, int, int, int]:
        s = self.stimuli[i]
        return self.transform(load_image(s.path)), s.shape, s.texture, i
