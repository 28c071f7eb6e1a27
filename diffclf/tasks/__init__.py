"""Lightning tasks: one base (``ClassifierTask``) and one class per classifier kind, which implements only
its scoring. Configs name them as ``diffclf.tasks.DiffusionClassifier`` / ``diffclf.tasks.TimmClassifier`` /
``diffclf.tasks.TextDiffusionClassifier`` / ``diffclf.tasks.ClipClassifier``."""

from diffclf.tasks.base import ClassifierTask, Scored
from diffclf.tasks.clip import ClipClassifier
from diffclf.tasks.diffusion import DiffusionClassifier
from diffclf.tasks.text_diffusion import TextDiffusionClassifier
from diffclf.tasks.text_dit import ContrastiveClassifier, TextDiTClassifier
from diffclf.tasks.timm import TimmClassifier

__all__ = [
           "ClassifierTask",
           "ClipClassifier",
           "ContrastiveClassifier",
           "DiffusionClassifier",
           "Scored",
           "TextDiTClassifier",
           "TextDiffusionClassifier",
           "TimmClassifier",
]
