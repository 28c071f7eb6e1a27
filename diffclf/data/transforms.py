"""Image preprocessing: ADM center crop, scaling to [-1, 1], and the only augmentation (a flip).

DiT trains with ADM's center crop and a random horizontal flip and nothing else; the classifier
sees the same crop without the flip. Keeping this in one place means training, evaluation and the
latent cache cannot drift apart.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from PIL import Image
from torch import Tensor

Crop = Literal["adm", "center", "resize", "none"]
Interpolation = Literal["bicubic", "bilinear"]


def center_crop_arr(pil_image: Image.Image, image_size: int) -> Image.Image:
    """ADM's center crop (as in DiT's ``train.py``): halve with box filter, resize bicubic, crop."""
    while min(*pil_image.size) >= 2 * image_size:
        pil_image = pil_image.resize(tuple(x // 2 for x in pil_image.size), resample=Image.BOX)
    scale = image_size / min(*pil_image.size)
    pil_image = pil_image.resize(tuple(round(x * scale) for x in pil_image.size), resample=Image.BICUBIC)
    arr = np.array(pil_image)
    top = (arr.shape[0] - image_size) // 2
    left = (arr.shape[1] - image_size) // 2
    return Image.fromarray(arr[top : top + image_size, left : left + image_size])


def resize_center_crop(img: Image.Image, image_size: int, interpolation: Interpolation = "bicubic") -> Image.Image:
    """The official Diffusion Classifier's zero-shot transform (Li et al.'s ``get_transform``): shorter side to
    ``image_size`` (torchvision's ``Resize``, antialiased), then ``CenterCrop``. Bicubic for the classification
    sets; its Winoground script uses bilinear. Not ADM's crop, which the official code uses for DiT only."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    mode = InterpolationMode.BICUBIC if interpolation == "bicubic" else InterpolationMode.BILINEAR
    img = TF.resize(img, image_size, interpolation=mode)
    return TF.center_crop(img, [image_size, image_size])


def to_model_range(arr: np.ndarray | Tensor, max_value: float = 255.0) -> Tensor:
    """``(H, W)`` or ``(H, W, C)`` pixel values in ``[0, max_value]`` → float ``(C, H, W)`` in [-1, 1]."""
    t = torch.as_tensor(np.asarray(arr), dtype=torch.float32)
    if t.ndim == 2:
        t = t[None]
    else:
        t = t.permute(2, 0, 1)
    return t / (max_value / 2.0) - 1.0


class ImageTransform:
    """PIL image of any mode → ``(channels, image_size, image_size)`` tensor in [-1, 1].

    Args:
        image_size: output side.
        channels: 3 (RGB) or 1 (grey); CMYK, RGBA, palette and 16-bit images are converted.
        crop: ``adm`` (ADM center crop, DiT's), ``center`` (:func:`resize_center_crop`, the official zero-shot
            evaluation's), ``resize`` (squash to the side, no crop), ``none``.
        border: pixels cut from every edge first (ObjectNet's images carry a thin frame).
    """

    def __init__(self, image_size: int, channels: int = 3, crop: Crop = "adm", border: int = 0) -> None:
        if channels not in (1, 3):
            raise ValueError(f"data.in_channels must be 1 or 3 for image files, got {channels}")
        if crop not in ("adm", "center", "resize", "none"):
            raise ValueError(f"data.crop must be adm, center, resize or none, got {crop!r}")
        self.image_size = image_size
        self.channels = channels
        self.crop = crop
        self.border = border

    def __call__(self, img: Image.Image) -> Tensor:
        img = convert_mode(img, self.channels)
        if self.border:
            w, h = img.size
            img = img.crop((self.border, self.border, w - self.border, h - self.border))
        if self.crop == "adm":
            img = center_crop_arr(img, self.image_size)
        elif self.crop == "center":
            img = resize_center_crop(img, self.image_size)
        elif self.crop == "resize":
            img = img.resize((self.image_size, self.image_size), resample=Image.BICUBIC)
        return to_model_range(np.array(img))


def convert_mode(img: Image.Image, channels: int) -> Image.Image:
    """Any PIL mode → ``RGB`` or ``L``; transparency is composited on white rather than dropped to black."""
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if arr.max() > 255 else 255.0
        img = Image.fromarray((arr * (255.0 / peak)).round().astype(np.uint8))
    return img.convert("RGB" if channels == 3 else "L")


def random_hflip(image: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Flip ``(C, H, W)`` left-right with probability 1/2: the only augmentation DiT uses."""
    if torch.rand((), generator=generator) < 0.5:
        return image.flip(-1)
    return image
