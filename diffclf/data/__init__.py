"""Data modules: every one yields ``(images, targets, indices)`` and owns its label space."""

from diffclf.data.base import ClassificationDataModule, UnrepeatedDistributedSampler
from diffclf.data.folders import ImageFolderDataModule
from diffclf.data.imagenet import (
    ImageNetADataModule,
    ImageNetDataModule,
    ImageNetV2DataModule,
    ObjectNetDataModule,
)
from diffclf.data.label_spaces import LabelSpace
from diffclf.data.shifts import FashionMNISTShiftDataModule
from diffclf.data.small import DigitsDataModule, FashionMNISTDataModule

__all__ = [
    "ClassificationDataModule",
    "DigitsDataModule",
    "FashionMNISTDataModule",
    "FashionMNISTShiftDataModule",
    "ImageFolderDataModule",
    "ImageNetADataModule",
    "ImageNetDataModule",
    "ImageNetV2DataModule",
    "LabelSpace",
    "ObjectNetDataModule",
    "UnrepeatedDistributedSampler",
]
