"""ImageNet-V2, 1000-way: its folders are named by class *index*, which is the trap.

The target is ``int(folder name)``; sorting the names as strings (``ImageFolder``) would put ``"10"``
at position 2 and scramble the labels, so the folders are ordered numerically and any folder that
is not a class index 0..999 is refused.
"""

from __future__ import annotations

from typing import Any

from diffclf.data.eval_sets import EvalSetDataModule
from diffclf.data.folders import BadFile, Sample, preview
from diffclf.data.label_spaces import NUM_IMAGENET_CLASSES, imagenet_label_space
from diffclf.data.transforms import Crop


class ImageNetV2DataModule(EvalSetDataModule):
    """ImageNet-V2 (any of its three variants), 1000-way: folders ``0``…``999`` named by class *index*.

    The target is ``int(folder name)``: sorting the names as strings (``ImageFolder``) would put
    ``"10"`` at position 2 and scramble the labels. Root: ``root``, else ``$IMAGENET_V2_DIR``
    (e.g. ``imagenetv2-matched-frequency-format-val``).

    Args:
        root: the folder holding ``0``…``999``.
        image_size, in_channels, crop: see :class:`ImageTransform`.
        subset_file: image paths relative to root, one per line: score exactly those.
        on_bad_file: ``error`` or ``skip`` (skipped files are listed in ``skipped_images``).
        **kwargs: ``batch_size``, ``eval_batch_size``, ``num_workers``, ``seed``, ``eval_limit``, ``flip``: see
            :class:`ClassificationDataModule` (``batch_size`` defaults to 32).
    """

    name = "imagenet_v2"
    env_var = "IMAGENET_V2_DIR"
    expects = "numeric class folders 0…999 named by ImageNet class index (imagenetv2-*-format-val)"
    accepted_layouts = ("numeric",)

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
        if self.scan.other:
            raise ValueError(f"root {self.root}: folders {preview(self.scan.other)} are not class indices; "
                             f"{self.name} expects {self.expects}")
        bad = [f for f in self.scan.numeric if int(f) >= NUM_IMAGENET_CLASSES or str(int(f)) != f]
        if bad:
            raise ValueError(f"root {self.root}: folders {preview(bad)} are not class indices 0..999")
        self.label_space = imagenet_label_space(self.name)

    def list_samples(self) -> list[Sample]:
        return self._class_folder_samples({f: int(f) for f in sorted(self.scan.numeric, key=int)})
