"""Networks in plain torch (no Lightning): the DiT denoiser, its checkpoints, the SD-VAE codec."""

from diffclf.models.checkpoints import load_dit
from diffclf.models.dit import DIT_PRESETS, DiT, create_dit

__all__ = ["DIT_PRESETS", "DiT", "create_dit", "load_dit"]
