"""Encode a dataset with the VAE once, then train on the cached latents (fast-DiT's speed-up).

Encoding with the SD-VAE costs more than a small DiT's training step, and DiT's augmentation is only a
random horizontal flip, so every image's latents can be computed once for both flips.

What is stored: the posterior **mean and standard deviation**, both × the scaling factor, for the image
and its mirror image. fast-DiT stores one posterior sample; keeping the moments instead lets training draw
a fresh sample ``mean + std * eps`` every epoch (exactly the distribution of ``LatentCodec.encode_sample``)
and lets evaluation use the mean (``LatentCodec.encode_mean``) from the same file.

The file is one ``.safetensors`` file (written in a stream, read memory-mapped row by row):

- ``latents`` ``(N, 2, 2, C, h, w)``: image, flip (0 as given, 1 mirrored), moment (0 mean, 1 std);
- ``targets`` ``(N,)`` and ``indices`` ``(N,)`` int64, as the source dataset yielded them;
- metadata ``diffclf_latent_cache``: JSON with the VAE path and fingerprint, image size, crop, scaling
  factor, dtype, count and the caller's ``meta`` (e.g. class names).
"""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from diffclf.models.latents import LatentCodec, load_vae, vae_fingerprint

METADATA_KEY = "diffclf_latent_cache"
FORMAT_VERSION = 1
_ST_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int64: "I64"}
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _tensor_bytes(t: Tensor) -> bytes:
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def cache_latents(
    dataset: Dataset,
    vae_path: str,
    out: str | Path,
    batch_size: int = 64,
    device: str = "cpu",
    image_size: int | None = None,
    crop: str = "adm",
    meta: dict[str, Any] | None = None,
    dtype: Literal["float32", "float16", "bfloat16"] = "float32",
    num_workers: int = 0,
) -> Path:
    """Write the latents of every image of ``dataset`` and of its mirror image to one file.

    Args:
        dataset: yields ``(image in [-1, 1] (C, H, W), target, index)`` with the crop already applied and
            no random flip (the cache holds both flips).
        vae_path: local ``AutoencoderKL`` folder.
        out: the ``.safetensors`` file to write (written to ``out.tmp`` first, then renamed).
        batch_size, device, num_workers: encoding batch size, torch device, data loader workers.
        image_size: the images' side (checked); default: the first image's.
        crop: the name of the crop the dataset applied (recorded, and checked when the cache is read).
        meta: JSON-serialisable label-space fields (e.g. ``{"names": [...]}``) stored with the cache.
        dtype: storage type of the moments; ``float16``/``bfloat16`` halve the file.
    """
    out = Path(out)
    n = len(dataset)  # type: ignore[arg-type]
    if n == 0:
        raise ValueError("cache_latents: the dataset is empty")
    store = _DTYPES[dtype]
    codec = LatentCodec(load_vae(vae_path)).to(device)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    targets: list[Tensor] = []
    indices: list[Tensor] = []
    tmp = out.with_name(out.name + ".tmp")
    out.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    fh = None
    try:
        for images, target, index in loader:
            if image_size is None:
                image_size = int(images.shape[-1])
            if tuple(images.shape[-2:]) != (image_size, image_size):
                raise ValueError(
                    f"cache_latents: image {int(index[0])} has size {tuple(images.shape[-2:])}, "
                    f"expected {image_size}x{image_size}"
                )
            both = torch.cat([images, images.flip(-1)]).to(device)
            mean, std = codec.encode_moments(both)  # (2B, C, h, w) each
            b = images.shape[0]
            rows = torch.stack([mean.view(2, b, *mean.shape[1:]), std.view(2, b, *std.shape[1:])], dim=2)
            rows = rows.transpose(0, 1).to(store)  # (B, flip, moment, C, h, w)
            if fh is None:
                fh = tmp.open("wb")
                header = {
                    "vae_path": str(Path(vae_path).resolve()),
                    "vae_fingerprint": vae_fingerprint(vae_path),
                    "image_size": image_size,
                    "crop": crop,
                    "scaling_factor": codec.scaling_factor,
                    "latent_shape": list(rows.shape[3:]),
                    "dtype": dtype,
                    "count": n,
                    "meta": meta or {},
                    "format_version": FORMAT_VERSION,
                }
                _write_header(fh, n, tuple(rows.shape[1:]), store, header)
            fh.write(_tensor_bytes(rows))
            written += b
            targets.append(torch.as_tensor(target, dtype=torch.int64).reshape(-1))
            indices.append(torch.as_tensor(index, dtype=torch.int64).reshape(-1))
        if written != n:
            raise ValueError(f"cache_latents: the loader yielded {written} images but len(dataset) is {n}")
        fh.write(_tensor_bytes(torch.cat(targets)))
        fh.write(_tensor_bytes(torch.cat(indices)))
        fh.close()
        fh = None
        os.replace(tmp, out)
    finally:
        if fh is not None:
            fh.close()
        if tmp.exists():
            tmp.unlink()
    return out


def _write_header(
    fh: Any, n: int, row_shape: tuple[int, ...], store: torch.dtype, header: dict[str, Any]
) -> None:
    """The safetensors header for tensors whose bytes are written afterwards, in this order."""
    latent_bytes = n * math.prod(row_shape) * torch.empty((), dtype=store).element_size()
    spec = {
        "__metadata__": {METADATA_KEY: json.dumps(header)},
        "latents": {"dtype": _ST_DTYPES[store], "shape": [n, *row_shape], "data_offsets": [0, latent_bytes]},
        "targets": {"dtype": "I64", "shape": [n], "data_offsets": [latent_bytes, latent_bytes + 8 * n]},
        "indices": {
            "dtype": "I64",
            "shape": [n],
            "data_offsets": [latent_bytes + 8 * n, latent_bytes + 16 * n],
        },
    }
    text = json.dumps(spec).encode()
    text += b" " * (-len(text) % 8)
    fh.write(struct.pack("<Q", len(text)))
    fh.write(text)


def read_cache_info(path: str | Path) -> dict[str, Any]:
    """The metadata a cache was written with (VAE, image size, crop, scaling factor, count, ``meta``)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
    if METADATA_KEY not in metadata:
        raise ValueError(f"{path}: not a diffclf latent cache (no {METADATA_KEY} metadata)")
    return json.loads(metadata[METADATA_KEY])


class LatentCacheDataset(Dataset):
    """``(latent (C, h, w), target, index)`` from a cache written by :func:`cache_latents`.

    With ``sample`` a posterior sample is drawn (training), else the posterior mean is returned
    (evaluation); with ``flip`` the image or its mirror image is picked at random, else the image as
    given. Randomness comes from torch's global generator (seeded per DataLoader worker).

    ``vae_path``, ``image_size`` and ``crop``, when given, must be what the cache was made with: latents of
    another VAE or resolution would silently train or score a different problem.
    """

    def __init__(
        self,
        path: str | Path,
        vae_path: str | None = None,
        image_size: int | None = None,
        crop: str | None = None,
        sample: bool = True,
        flip: bool = True,
    ) -> None:
        from safetensors import safe_open

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"latent cache {self.path}: no such file")
        self.info = read_cache_info(self.path)
        if vae_path is not None:
            fingerprint = vae_fingerprint(vae_path)
            if fingerprint != self.info["vae_fingerprint"]:
                raise ValueError(
                    f"latent cache {self.path} was made with VAE {self.info['vae_path']} (fingerprint "
                    f"{self.info['vae_fingerprint']}), not with {vae_path} (fingerprint {fingerprint})"
                )
        if image_size is not None and image_size != self.info["image_size"]:
            raise ValueError(
                f"latent cache {self.path} was made at image_size {self.info['image_size']}, not {image_size}"
            )
        if crop is not None and crop != self.info["crop"]:
            raise ValueError(
                f"latent cache {self.path} was made with crop {self.info['crop']!r}, not {crop!r}"
            )
        self.sample = sample
        self.flip = flip
        with safe_open(str(self.path), framework="pt") as f:
            self.targets = f.get_tensor("targets")
            self.indices = f.get_tensor("indices")
        self.meta: dict[str, Any] = self.info["meta"]
        self._handle: Any = None
        self._pid: int | None = None

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    def _latents(self) -> Any:
        """One memory-mapped handle per process (DataLoader workers each open their own)."""
        from safetensors import safe_open

        if self._handle is None or self._pid != os.getpid():
            self._handle = safe_open(str(self.path), framework="pt")
            self._pid = os.getpid()
        return self._handle.get_slice("latents")

    def __getitem__(self, i: int) -> tuple[Tensor, int, int]:
        row = self._latents()[i].float()  # (flip, moment, C, h, w)
        side = int(torch.randint(2, ())) if self.flip else 0
        mean, std = row[side, 0], row[side, 1]
        latent = mean + std * torch.randn_like(mean) if self.sample else mean
        return latent, int(self.targets[i]), int(self.indices[i])

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_handle"] = None
        state["_pid"] = None
        return state
