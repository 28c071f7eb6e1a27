"""Fashion-MNIST-C's corruptions: seeded image degradations at five severities (after ImageNet-C / MNIST-C).

Each corruption is a function of numpy arrays only — no files, no data module — so the shift builder
(:func:`diffclf.data.shifts.build_shift`) and anyone re-deriving an image can call :func:`corrupt` and get
the same bytes: every random draw is seeded from ``(seed, corruption, severity)`` and has a leading image
axis, so image ``i``'s noise never depends on how many images follow. The geometric ones resample with
torch's ``grid_sample`` / ``avg_pool2d`` on the arrays.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

Corruption = Callable[[np.ndarray, float, np.random.Generator], np.ndarray]


# Each maps float32 images (N, 28, 28) in [0, 1] (background 0) to corrupted ones (clipped later).
# Draws have a leading image axis, so image i's noise never depends on how many images follow.
def _gaussian_noise(x: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    return x + sigma * rng.standard_normal(x.shape, dtype=np.float32)


def _shot_noise(x: np.ndarray, photons: float, rng: np.random.Generator) -> np.ndarray:
    return rng.poisson(x.astype(np.float64) * photons).astype(np.float32) / photons


def _impulse_noise(x: np.ndarray, amount: float, rng: np.random.Generator) -> np.ndarray:
    u = rng.random((*x.shape, 2), dtype=np.float32)
    return np.where(u[..., 0] < amount, (u[..., 1] < 0.5).astype(np.float32), x)


def _gaussian_blur(x: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    return gaussian_filter(x, sigma=(0.0, sigma, sigma), mode="constant", cval=0.0)


def _contrast(x: np.ndarray, kept: float, rng: np.random.Generator) -> np.ndarray:
    mean = x.mean(axis=(1, 2), keepdims=True)
    return (x - mean) * kept + mean


def _pixelate(x: np.ndarray, block: float, rng: np.random.Generator) -> np.ndarray:
    """Average over ``block``×``block`` cells of a grid centred on the image (margins padded with background)."""
    b, side = int(block), x.shape[-1]
    total = -side % b
    lo = total // 2
    t = F.pad(torch.from_numpy(x)[:, None], (lo, total - lo, lo, total - lo))
    cells = F.avg_pool2d(t, b)
    big = cells.repeat_interleave(b, dim=-2).repeat_interleave(b, dim=-1)
    return big[:, 0, lo : lo + side, lo : lo + side].numpy()


def _affine(x: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """Warp by per-image ``theta`` (N, 2, 3) (output → input, normalised coordinates), bilinear, zero fill."""
    t = torch.from_numpy(x)[:, None]
    grid = F.affine_grid(torch.from_numpy(theta).float(), list(t.shape), align_corners=False)
    return F.grid_sample(t, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[:, 0].numpy()


def _signs(n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 2, size=n).astype(np.float64) * 2.0 - 1.0


def _rotate(x: np.ndarray, degrees: float, rng: np.random.Generator) -> np.ndarray:
    a = np.deg2rad(degrees) * _signs(len(x), rng)
    theta = np.zeros((len(x), 2, 3))
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = (
        np.cos(a),
        -np.sin(a),
        np.sin(a),
        np.cos(a),
    )
    return _affine(x, theta)


def _shear(x: np.ndarray, factor: float, rng: np.random.Generator) -> np.ndarray:
    theta = np.zeros((len(x), 2, 3))
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    theta[:, 0, 1] = factor * _signs(len(x), rng)
    return _affine(x, theta)


# name → (function, parameter at severities 1..5, what the parameter is)
CORRUPTIONS: dict[str, tuple[Corruption, tuple[float, ...], str]] = {
    "gaussian_noise": (_gaussian_noise, (0.08, 0.12, 0.18, 0.26, 0.38), "noise std on [0, 1] pixels"),
    "shot_noise": (_shot_noise, (60, 25, 12, 5, 3), "Poisson photons at white"),
    "impulse_noise": (_impulse_noise, (0.03, 0.06, 0.09, 0.17, 0.27), "fraction of pixels set to 0 or 1"),
    "gaussian_blur": (_gaussian_blur, (0.5, 0.75, 1.0, 1.5, 2.0), "blur sigma in pixels"),
    "contrast": (_contrast, (0.4, 0.3, 0.2, 0.1, 0.05), "contrast kept around the image mean"),
    "pixelate": (_pixelate, (2, 3, 4, 5, 6), "side of the averaged pixel blocks"),
    "rotate": (_rotate, (15, 30, 45, 60, 75), "rotation in degrees, sign random per image"),
    "shear": (_shear, (0.15, 0.3, 0.45, 0.6, 0.75), "horizontal shear factor, sign random per image"),
}


def corrupt(images: np.ndarray, corruption: str, severity: int, seed: int = 0) -> np.ndarray:
    """uint8 images ``(N, H, W)`` → the same corrupted at ``severity`` (1..5), uint8, deterministic in ``seed``."""
    if corruption not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {corruption!r}; known: {', '.join(CORRUPTIONS)}")
    if not 1 <= severity <= 5:
        raise ValueError(f"severity must be in 1..5, got {severity}")
    func, params, _ = CORRUPTIONS[corruption]
    rng = np.random.default_rng([seed, zlib.crc32(corruption.encode()), severity])
    x = images.astype(np.float32) / 255.0
    y = func(x, float(params[severity - 1]), rng)
    return np.rint(np.clip(y, 0.0, 1.0) * 255.0).astype(np.uint8)
