"""Oxford-IIIT Pets, 37 breeds, for zero-shot classification: ``trainval`` and ``test`` as torchvision splits them.

Labels are the class ids of ``annotations/{trainval,test}.txt`` (lines ``Abyssinian_100 1 1 1``: image,
class id 1..37, species, breed id), so the order is the data set's and torchvision's: alphabetical,
cats and dogs mixed (Abyssinian, american bulldog, …). A class's name is its images' breed prefix
in lower case with spaces (``american_pit_bull_terrier`` → ``american pit bull terrier``): the
``classname`` column of the official diffusion-classifier's ``prompts/pets_prompts.csv``, whose
``classidx`` is this order (its ``templates.json`` lists the same names cats first, which is not).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from diffclf.data.base import DataSourceError
from diffclf.data.folders import BadFile
from diffclf.data.label_spaces import LabelSpace
from diffclf.data.zero_shot import ZeroShotDataModule, check_on_bad_file, read_lines

PETS_FOLDER = "oxford-iiit-pet"
PETS_LAYOUT = f"{PETS_FOLDER}/images/<Breed>_<n>.jpg and {PETS_FOLDER}/annotations/{{trainval.txt,test.txt}}"
PETS_NUM_CLASSES = 37
PETS_SPLIT_FILES = {"train": "annotations/trainval.txt", "test": "annotations/test.txt"}


def read_pets_annotations(path: Path, layout: str = PETS_LAYOUT) -> list[tuple[str, int]]:
    """``(image id, 0-based class)`` of a split file, in its order."""
    rows = []
    for k, line in enumerate(read_lines(path, "pets", layout), start=1):
        parts = line.split()
        if len(parts) != 4 or not parts[1].isdigit() or not 1 <= int(parts[1]) <= PETS_NUM_CLASSES:
            raise DataSourceError(f"pets: {path}:{k}: '{line}' is not 'image_id class_id species breed_id' "
                                  f"with a class id 1..{PETS_NUM_CLASSES}")
        rows.append((parts[0], int(parts[1]) - 1))
    return rows


def pets_class_names(rows: list[tuple[str, int]]) -> tuple[str, ...]:
    """Class names in class-id order from the image ids' breed prefixes; every id must name one breed."""
    breeds: dict[int, set[str]] = {}
    for image_id, label in rows:
        breeds.setdefault(label, set()).add(image_id.rsplit("_", 1)[0].replace("_", " ").lower())
    missing = [k + 1 for k in range(PETS_NUM_CLASSES) if k not in breeds]
    mixed = {k + 1: sorted(b) for k, b in breeds.items() if len(b) > 1}
    if missing or mixed:
        raise DataSourceError(f"pets: the annotations name no images for class ids {missing} or several breeds "
                              f"for one id {mixed}; expected {PETS_LAYOUT}")
    return tuple(next(iter(breeds[k])) for k in range(PETS_NUM_CLASSES))


class PetsDataModule(ZeroShotDataModule):
    """Oxford-IIIT Pets: 3,680 ``trainval`` (our ``train``) and 3,669 ``test`` images, 37 breeds.

    Args:
        root: the folder holding ``oxford-iiit-pet/`` or that folder itself (default: ``$DATASET_ROOT``).
        image_size: side after the bicubic resize and center crop (the paper: 512; 256 its other setting).
        on_bad_file: ``error`` or ``skip`` (skipped files are listed in ``skipped_images``).
        **kwargs: ``batch_size``, ``eval_batch_size``, ``num_workers``, ``seed``, ``eval_limit``, ``flip``,
            ``predict_split``: see :class:`ClassificationDataModule` (``batch_size`` defaults to 8).
    """

    name = "pets"
    folder = PETS_FOLDER
    marker = "annotations/test.txt"
    layout = PETS_LAYOUT

    def __init__(self, root: str | None = None, image_size: int = 512, on_bad_file: BadFile = "error",
                 **kwargs: Any) -> None:
        super().__init__(root, image_size, **kwargs)
        self.on_bad_file = check_on_bad_file(on_bad_file)
        self.annotations = {s: read_pets_annotations(self.file(f)) for s, f in PETS_SPLIT_FILES.items()}
        names = pets_class_names(self.annotations["train"] + self.annotations["test"])
        self.label_space = LabelSpace.identity(names, name=self.name)

    def split_dataset(self, split: str) -> Dataset:
        images = self.root / "images"
        samples = [(str(images / f"{image_id}.jpg"), label) for image_id, label in self.annotations[split]]
        return self.image_dataset(samples, self.on_bad_file)
