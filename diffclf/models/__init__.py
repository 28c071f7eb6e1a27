"""Networks in plain torch (no Lightning): the DiT denoiser, foreign checkpoint formats, the SD-VAE
codec, timm classifiers, and the one reader of diffclf checkpoint files."""

from diffclf.models.checkpoints import Checkpoint, read_checkpoint
from diffclf.models.dit import DIT_PRESETS, DiT, create_dit
from diffclf.models.formats import load_dit

__all__ = ["DIT_PRESETS", "Checkpoint", "DiT", "create_dit", "load_dit", "read_checkpoint"]
