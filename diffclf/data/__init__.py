"""Data modules: every one yields ``(images, targets, indices)`` and owns its label space.

One file per data set; configs name the classes by these package-level names
(``diffclf.data.ImageNetADataModule``), so which file a class lives in is free to change.
"""

from diffclf.data.aircraft import AircraftDataModule
from diffclf.data.base import ClassificationDataModule, UnrepeatedDistributedSampler
from diffclf.data.binding import BindingExample, BindingTask, SceneObject
from diffclf.data.cifar10 import Cifar10DataModule
from diffclf.data.cue_conflict import CueConflictDataset
from diffclf.data.digits import DigitsDataModule
from diffclf.data.fashion_mnist import FashionMNISTDataModule
from diffclf.data.flowers102 import Flowers102DataModule
from diffclf.data.folders import ImageFolderDataModule
from diffclf.data.food101 import Food101DataModule
from diffclf.data.imagenet import ImageNetDataModule
from diffclf.data.imagenet_a import ImageNetADataModule
from diffclf.data.imagenet_v2 import ImageNetV2DataModule
from diffclf.data.label_spaces import LabelSpace
from diffclf.data.latents import CachedLatentsDataModule
from diffclf.data.objectnet import ObjectNetDataModule
from diffclf.data.pets import PetsDataModule
from diffclf.data.scenes import ScenesDataModule
from diffclf.data.shifts import FashionMNISTShiftDataModule
from diffclf.data.stl10 import Stl10DataModule
from diffclf.data.winoground import WinogroundDataset, WinogroundExample

__all__ = [
    "AircraftDataModule",
    "BindingExample",
    "BindingTask",
    "CachedLatentsDataModule",
    "Cifar10DataModule",
    "ClassificationDataModule",
    "CueConflictDataset",
    "DigitsDataModule",
    "FashionMNISTDataModule",
    "FashionMNISTShiftDataModule",
    "Flowers102DataModule",
    "Food101DataModule",
    "ImageFolderDataModule",
    "ImageNetADataModule",
    "ImageNetDataModule",
    "ImageNetV2DataModule",
    "LabelSpace",
    "ObjectNetDataModule",
    "PetsDataModule",
    "SceneObject",
    "ScenesDataModule",
    "Stl10DataModule",
    "UnrepeatedDistributedSampler",
    "WinogroundDataset",
    "WinogroundExample",
]
