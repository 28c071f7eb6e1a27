"""Networks in plain torch (no Lightning): the DiT denoiser, foreign checkpoint formats, the SD-VAE
codec, timm classifiers, and the one reader of diffclf checkpoint files."""

from diffclf.models.checkpoints import Checkpoint, read_checkpoint
from diffclf.models.dit import DIT_PRESETS, DiT, create_dit
from diffclf.models.formats import load_dit
from diffclf.models.text_dit import (
           TEXT_DIT_PRESETS,
           ContrastiveModel,
           TextDiT,
           WordTokenizer,
           create_text_dit,
)

__all__ = [
           "DIT_PRESETS",
           "TEXT_DIT_PRESETS",
           "Checkpoint",
           "ContrastiveModel",
           "DiT",
           "TextDiT",
           "WordTokenizer",
           "create_dit",
           "create_text_dit",
           "load_dit",
           "read_checkpoint",
]
