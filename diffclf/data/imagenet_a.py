"""ImageNet-A: natural adversarial images of 200 ImageNet classes, scored over those 200 only.

Scored 1000-way, a model would lose images to classes ImageNet-A does not have; as the papers report
it, a 1000-class model is scored over the 200 only (:func:`~diffclf.data.label_spaces.imagenet_a_label_space`,
from timm's ``imagenet_a_indices.txt``). A root with wnid folders outside the 200 is refused: it is most
likely the ImageNet validation set.
"""

from __future__ import annotations

from typing import Any

from diffclf.data.eval_sets import EvalSetDataModule, check_wnid_folders
from diffclf.data.folders import BadFile, Sample, preview
from diffclf.data.label_spaces import imagenet_a_indices, imagenet_a_label_space, imagenet_wnids
from diffclf.data.transforms import Crop


class ImageNetADataModule(EvalSetDataModule):
    """ImageNet-A, scored as the 200-way problem over its classes (as the papers report it).

    Root: ``root``, else ``$IMAGENET_A_DIR`` (the ``imagenet-a`` folder of 200 wnid folders).
    Label-space class ``k`` is the ``k``-th entry of timm's ``imagenet_a_indices.txt``; targets are
    0..199 and ``label_space.model_classes[k]`` is the ImageNet index the model scores for it.

    Args:
        root: the folder holding the wnid folders.
        image_size, in_channels, crop: see :class:`ImageTransform`.
        subset_file: image paths relative to root, one per line: score exactly those.
        on_bad_file: ``error`` or ``skip`` (skipped files are listed in ``skipped_images``).
        **kwargs: ``batch_size``, ``eval_batch_size``, ``num_workers``, ``seed``, ``eval_limit``, ``flip``: see
            :class:`ClassificationDataModule` (``batch_size`` defaults to 32).
    """

    name = "imagenet_a"
    env_var = "IMAGENET_A_DIR"
    expects = "wnid folders n######## of ImageNet-A's 200 classes"
    accepted_layouts = ("wnid",)

    def __init__(
        self,
        root: str | None = None,
        image_size: int = 256,
        in_channels: int = 3,
        crop: Crop = "adm",
        subset_file: str | None = None,
        on_bad_file: BadFile = "error",
        **kwargs: Any,
    ) -> None:
        super().__init__(root, image_size, in_channels, crop, 0, subset_file, on_bad_file, **kwargs)
        wnids = imagenet_wnids()
        self.label_space = imagenet_a_label_space(self.name)
        self.wnid_to_target = {wnids[i]: k for k, i in enumerate(imagenet_a_indices())}
        folders = check_wnid_folders(self.scan, self.name)
        outside = [w for w in folders if w not in self.wnid_to_target]
        if outside:
            raise ValueError(
                f"root {self.root} has wnid folders outside ImageNet-A's 200 classes: {preview(outside)} "
                f"({len(folders)} wnid folders in all; the ImageNet validation set? use --data imagenet)"
            )

    def list_samples(self) -> list[Sample]:
        return self._class_folder_samples({w: self.wnid_to_target[w] for w in self.scan.wnid})
