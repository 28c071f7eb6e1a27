"""Data modules: every one yields ``(images, targets, indices)`` and owns its label space.

One file per data set; configs name the classes by these package-level names
(``diffclf.data.ImageNetADataModule``), so which file a class lives in is free to change.
"""

from diffclf.data.base import ClassificationDataModule, UnrepeatedDistributedSampler
from diffclf.data.digits import DigitsDataModule
from diffclf.data.fashion_mnist import FashionMNISTDataModule
from diffclf.data.folders import ImageFolderDataModule
from diffclf.data.imagenet import ImageNetDataModule
from diffclf.data.imagenet_a import ImageNetADataModule
from diffclf.data.imagenet_v2 import ImageNetV2DataModule
from diffclf.data.label_spaces import LabelSpace
from diffclf.data.latents import CachedLatentsDataModule
from diffclf.data.objectnet import ObjectNetDataModule
from diffclf.data.shifts import FashionMNISTShiftDataModule

__all__ = [
    "CachedLatentsDataModule",
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
