"""Lightning tasks: one base (``ClassifierTask``) and one class per classifier kind, which implements only
its scoring. Configs name them as ``diffclf.tasks.DiffusionClassifier`` / ``diffclf.tasks.TimmClassifier``."""

from diffclf.tasks.base import ClassifierTask, Scored
from diffclf.tasks.diffusion import DiffusionClassifier
from diffclf.tasks.timm import TimmClassifier

__all__ = ["ClassifierTask", "DiffusionClassifier", "Scored", "TimmClassifier"]
