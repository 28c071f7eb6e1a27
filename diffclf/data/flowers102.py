"""Oxford Flowers-102 from its official files, 102-way, for zero-shot classification.

Read here with ``scipy.io.loadmat`` rather than by torchvision's ``Flowers102``, which checks the md5
sums of the ``.mat`` files. ``imagelabels.mat`` holds ``labels`` (1..102) of ``jpg/image_00001.jpg``,
…, in image-number order; ``setid.mat`` the image numbers of each split (``trnid``, ``valid``,
``tstid``: torchvision's train, val, test). The files carry no class names: :data:`FLOWERS102_NAMES`
are the official diffusion-classifier's (its ``templates.json``, = CLIP's), in label order, which its
``prompts/flowers_prompts.csv`` confirms (``classidx`` 0..101 in this order).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from diffclf.data.base import DataSourceError
from diffclf.data.folders import BadFile
from diffclf.data.label_spaces import LabelSpace
from diffclf.data.zero_shot import ZeroShotDataModule, check_on_bad_file

FLOWERS102_FOLDER = "flowers-102"
FLOWERS102_LAYOUT = f"{FLOWERS102_FOLDER}/{{jpg/image_00001.jpg…, imagelabels.mat, setid.mat}}"
FLOWERS102_SPLIT_KEYS = {"train": "trnid", "val": "valid", "test": "tstid"}
FLOWERS102_NAMES = (
    "pink primrose", "hard-leaved pocket orchid", "canterbury bells", "sweet pea", "english marigold",
    "tiger lily", "moon orchid", "bird of paradise", "monkshood", "globe thistle", "snapdragon", "colt's foot",
    "king protea", "spear thistle", "yellow iris", "globe flower", "purple coneflower", "peruvian lily",
    "balloon flower", "giant white arum lily", "fire lily", "pincushion flower", "fritillary", "red ginger",
    "grape hyacinth", "corn poppy", "prince of wales feathers", "stemless gentian", "artichoke",
    "sweet william", "carnation", "garden phlox", "love in the mist", "mexican aster", "alpine sea holly",
    "ruby-lipped cattleya", "cape flower", "great masterwort", "siam tulip", "lenten rose", "barbeton daisy",
    "daffodil", "sword lily", "poinsettia", "bolero deep blue", "wallflower", "marigold", "buttercup",
    "oxeye daisy", "common dandelion", "petunia", "wild pansy", "primula", "sunflower", "pelargonium",
    "bishop of llandaff", "gaura", "geranium", "orange dahlia", "pink and yellow dahlia", "cautleya spicata",
    "japanese anemone", "black-eyed susan", "silverbush", "californian poppy", "osteospermum", "spring crocus",
    "bearded iris", "windflower", "tree poppy", "gazania", "azalea", "water lily", "rose", "thorn apple",
    "morning glory", "passion flower", "lotus", "toad lily", "anthurium", "frangipani", "clematis", "hibiscus",
    "columbine", "desert-rose", "tree mallow", "magnolia", "cyclamen", "watercress", "canna lily",
    "hippeastrum", "bee balm", "air plant", "foxglove", "bougainvillea", "camellia", "mallow",
    "mexican petunia", "bromelia", "blanket flower", "trumpet creeper", "blackberry lily",
)


def read_mat(path: Path, key: str) -> np.ndarray:
    """One variable of a ``.mat`` file as a flat int64 array; a bad file is one line naming it."""
    from scipy.io import loadmat

    try:
        value = loadmat(str(path), squeeze_me=True)[key]
    except (KeyError, ValueError, OSError, TypeError) as err:
        raise DataSourceError(f"flowers102: cannot read '{key}' from {path} ({type(err).__name__}: {err}); "
                              f"expected {FLOWERS102_LAYOUT}") from None
    return np.atleast_1d(np.asarray(value)).astype(np.int64).ravel()


class Flowers102DataModule(ZeroShotDataModule):
    """Oxford Flowers-102: 1,020 train, 1,020 val and 6,149 test images, 102 classes.

    Args:
        root: the folder holding ``flowers-102/`` or that folder itself (default: ``$DATASET_ROOT``).
        image_size: side after the bicubic resize and center crop (the paper: 512; 256 its other setting).
        on_bad_file: ``error`` or ``skip`` (skipped files are listed in ``skipped_images``).
        **kwargs: ``batch_size``, ``eval_batch_size``, ``num_workers``, ``seed``, ``eval_limit``, ``flip``,
            ``predict_split``: see :class:`ClassificationDataModule` (``batch_size`` defaults to 8).
    """

    name = "flowers102"
    folder = FLOWERS102_FOLDER
    marker = "setid.mat"
    layout = FLOWERS102_LAYOUT
    splits = ("train", "val", "test")

    def __init__(self, root: str | None = None, image_size: int = 512, on_bad_file: BadFile = "error",
                 **kwargs: Any) -> None:
        super().__init__(root, image_size, **kwargs)
        self.on_bad_file = check_on_bad_file(on_bad_file)
        self.label_space = LabelSpace.identity(FLOWERS102_NAMES, name=self.name)

    def split_dataset(self, split: str) -> Dataset:
        labels_path = self.file("imagelabels.mat")
        labels = read_mat(labels_path, "labels") - 1
        if labels.size and not 0 <= labels.min() <= labels.max() < len(FLOWERS102_NAMES):
            raise DataSourceError(f"flowers102: {labels_path} has labels outside 1..{len(FLOWERS102_NAMES)}")
        ids = read_mat(self.file("setid.mat"), FLOWERS102_SPLIT_KEYS[split])
        if ids.size and not 1 <= ids.min() <= ids.max() <= len(labels):
            raise DataSourceError(f"flowers102: setid.mat lists images outside 1..{len(labels)} (imagelabels.mat)")
        jpg = self.root / "jpg"
        samples = [(str(jpg / f"image_{i:05d}.jpg"), int(labels[i - 1])) for i in ids]
        return self.image_dataset(samples, self.on_bad_file)
