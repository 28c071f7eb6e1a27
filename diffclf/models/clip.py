"""CLIP as a zero-shot classifier (Radford et al. 2021), from a local transformers ``CLIPModel`` folder.

A class is scored by the cosine between the image's embedding and the class's text embedding, scaled by the
model's learned temperature (``logit_scale.exp()``, 100 for the released weights): the logits CLIP was trained
to put through a softmax. A class's text embedding is the prompt ensemble of the CLIP ImageNet notebook
(openai/CLIP ``notebooks/Prompt_Engineering_for_ImageNet.ipynb``, ``zeroshot_classifier``): every prompt's
embedding L2-normalised, their mean, L2-normalised again. It is computed once per (prompts, weights) and kept
in a text cache (:mod:`diffclf.models.text_cache`).

Images arrive as diffclf's [-1, 1] tensors; the folder's ``preprocessor_config.json`` says what CLIP expects
(shorter side resized, center crop, mean/std), and :class:`ClipPreprocess` does it on tensors, on the device.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffclf.models.prompts import Prompts
from diffclf.models.text_cache import cached_embeddings

# The image statistics of OpenAI's CLIP (transformers' OPENAI_CLIP_MEAN / OPENAI_CLIP_STD).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# Weights: model.safetensors / pytorch_model.bin, or their shards beside an index.json.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".index.json")
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json",
                   "special_tokens_map.json", "added_tokens.json")
PREPROCESSOR = "preprocessor_config.json"
# PIL's resample codes, as image processors store them.
RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
TEXT_BATCH = 256


@dataclass(frozen=True)
class ClipPreprocess:
    """CLIP's image processor on [-1, 1] tensors: to [0, 1], shorter side to ``size`` (or exactly
    ``size_hw``), center crop to ``crop``, then ``(x - mean) / std`` (transformers' ``CLIPImageProcessor``).

    Attributes:
        size: the shorter side after resizing (``size: {shortest_edge: S}`` or ``size: S``); None with ``size_hw``.
        size_hw: an exact ``(height, width)`` resize (``size: {height, width}``), else None.
        crop: ``(height, width)`` of the center crop, or None for none.
        mean, std: per-channel normalisation of [0, 1] images.
        resample: ``bicubic``, ``bilinear`` or ``nearest``.
    """

    size: int | None
    size_hw: tuple[int, int] | None
    crop: tuple[int, int] | None
    mean: tuple[float, ...] = CLIP_MEAN
    std: tuple[float, ...] = CLIP_STD
    resample: str = "bicubic"

    def resize(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        if self.size_hw is not None:
            out = self.size_hw
        elif self.size is not None:
            # transformers' get_resize_output_image_size: the longer side scales with int() truncation.
            short, long = (h, w) if h <= w else (w, h)
            other = int(self.size * long / short)
            out = (self.size, other) if h <= w else (other, self.size)
        else:
            return x
        if tuple(out) == (h, w):
            return x
        kwargs = {"antialias": True, "align_corners": False} if self.resample != "nearest" else {}
        # PIL resizes uint8 images, so its bicubic overshoot is clipped; so is ours.
        return F.interpolate(x, size=tuple(out), mode=self.resample, **kwargs).clamp(0.0, 1.0)

    def center_crop(self, x: Tensor) -> Tensor:
        if self.crop is None:
            return x
        h, w = x.shape[-2:]
        ch, cw = self.crop
        if (h, w) == (ch, cw):
            return x
        if ch > h or cw > w:
            raise ValueError(f"CLIP preprocessing: crop {ch}x{cw} is larger than the resized image {h}x{w}")
        top, left = (h - ch) // 2, (w - cw) // 2  # transformers' center_crop
        return x[..., top:top + ch, left:left + cw]

    def __call__(self, images: Tensor) -> Tensor:
        """``(B, C, H, W)`` in [-1, 1] (C = 1 or 3) → CLIP's ``pixel_values`` in float32."""
        x = images.float()
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[1] != 3:
            raise ValueError(f"CLIP takes 1- or 3-channel images, got {x.shape[1]} channels")
        x = self.center_crop(self.resize((x + 1.0) / 2.0))
        mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        return (x - mean) / std


def _side(value: Any, what: str, source: Path) -> tuple[int, int] | int | None:
    """An image processor's size field: ``S``, ``{shortest_edge: S}`` → S; ``{height, width}`` → (h, w)."""
    if value is None:
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, dict):
        if "shortest_edge" in value:
            return int(value["shortest_edge"])
        if "height" in value and "width" in value:
            return int(value["height"]), int(value["width"])
    raise ValueError(f"{source}: {what} {value!r} is not a size (S, {{shortest_edge: S}} or {{height, width}})")


def read_preprocess(path: str | Path) -> ClipPreprocess:
    """The :class:`ClipPreprocess` a ``preprocessor_config.json`` describes (its ``do_*`` switches honoured)."""
    path = Path(path)
    cfg = json.loads(path.read_text())
    resample = cfg.get("resample", 3)
    if resample not in RESAMPLE:
        raise ValueError(f"{path}: resample {resample!r} is not supported (nearest 0, bilinear 2, bicubic 3)")
    size = _side(cfg.get("size"), "size", path) if cfg.get("do_resize", True) else None
    crop = _side(cfg.get("crop_size"), "crop_size", path) if cfg.get("do_center_crop", True) else None
    if isinstance(crop, int):
        crop = (crop, crop)
    mean, std = cfg.get("image_mean", CLIP_MEAN), cfg.get("image_std", CLIP_STD)
    if not cfg.get("do_normalize", True):
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    return ClipPreprocess(size=size if isinstance(size, int) else None,
                          size_hw=size if isinstance(size, tuple) else None, crop=crop,
                          mean=tuple(float(m) for m in mean), std=tuple(float(s) for s in std),
                          resample=RESAMPLE[resample])


def _present(folder: Path, names: Sequence[str]) -> list[Path]:
    return [folder / n for n in names if (folder / n).is_file()]


def _weight_files(folder: Path) -> list[Path]:
    return sorted(f for f in folder.iterdir() if f.is_file() and f.name.endswith(WEIGHT_SUFFIXES))


def check_clip_folder(folder: str | Path) -> Path:
    """``folder`` if it holds a CLIPModel config, weights, a tokenizer and an image processor; else one line
    naming the folder and what is missing."""
    folder = Path(folder).expanduser()
    where = f"CLIP folder {folder}"
    if not folder.is_dir():
        raise FileNotFoundError(f"{where}: not a folder (expected a transformers CLIPModel folder, "
                                "saved with save_pretrained)")
    config = folder / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"{where}: missing config.json (expected a transformers CLIPModel folder)")
    try:
        cfg = json.loads(config.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{where}: config.json is not JSON ({err})") from None
    if cfg.get("model_type") != "clip":
        raise ValueError(f"{where}: config.json describes model_type {cfg.get('model_type')!r} "
                         f"({', '.join(cfg.get('architectures') or ['?'])}), expected a CLIPModel ('clip')")
    if not _weight_files(folder):
        raise FileNotFoundError(f"{where}: missing the weights (model.safetensors or pytorch_model.bin)")
    if not (folder / "tokenizer.json").is_file() and len(_present(folder, ("vocab.json", "merges.txt"))) < 2:
        raise FileNotFoundError(f"{where}: missing the tokenizer (tokenizer.json, or vocab.json and merges.txt); "
                                "save it with CLIPProcessor.save_pretrained")
    if not (folder / PREPROCESSOR).is_file():
        raise FileNotFoundError(f"{where}: missing {PREPROCESSOR} (the image processor's size, crop and "
                                "mean/std); save it with CLIPProcessor.save_pretrained")
    return folder


def text_fingerprint(folder: str | Path) -> str:
    """sha256 (16 hex digits) of the files the text features depend on: config, weights, tokenizer — not the
    image processor, whose changes leave them as they are (same scheme as ``text_cache.files_fingerprint``)."""
    folder = Path(folder)
    digest = hashlib.sha256()
    for f in sorted(_present(folder, ("config.json", *TOKENIZER_FILES)) + _weight_files(folder)):
        digest.update(f.name.encode())
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                digest.update(chunk)
    return digest.hexdigest()[:16]


@dataclass
class ClipFolder:
    """A loaded CLIP folder: the ``CLIPModel`` (eval mode, no gradients), its tokenizer and image processing."""

    folder: Path
    model: Any
    tokenizer: Any
    preprocess: ClipPreprocess

    @cached_property
    def fingerprint(self) -> str:
        return text_fingerprint(self.folder)


def load_clip(folder: str | Path) -> ClipFolder:
    """A transformers ``CLIPModel`` folder (``save_pretrained`` of the model and its processor), checked first."""
    from transformers import AutoTokenizer, CLIPModel

    folder = check_clip_folder(folder)
    model = CLIPModel.from_pretrained(str(folder))  # float32, the default in every transformers version
    model.eval().requires_grad_(False)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    return ClipFolder(folder, model, tokenizer, read_preprocess(folder / PREPROCESSOR))


def _pooled(output: Any) -> Tensor:
    """The projected embedding of ``get_text_features`` / ``get_image_features`` (a tensor before
    transformers 5, a ``BaseModelOutputWithPooling`` from 5 on)."""
    return output if isinstance(output, Tensor) else output.pooler_output


@torch.no_grad()
def encode_prompts(model: Any, tokenizer: Any, prompts: Sequence[str], batch_size: int = TEXT_BATCH) -> Tensor:
    """``(P, D)`` float32 projected text embeddings (not normalised), padded to the tokenizer's context as
    ``clip.tokenize`` does (77 tokens for the released models)."""
    device = model.text_projection.weight.device
    out = []
    for start in range(0, len(prompts), batch_size):
        tokens = tokenizer(list(prompts[start:start + batch_size]), padding="max_length", truncation=True,
                           max_length=tokenizer.model_max_length, return_tensors="pt")
        feats = model.get_text_features(input_ids=tokens["input_ids"].to(device),
                                        attention_mask=tokens["attention_mask"].to(device))
        out.append(_pooled(feats).float())
    return torch.cat(out)


@torch.no_grad()
def image_features(model: Any, preprocess: ClipPreprocess, images: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """``(B, D)`` float32 unit image embeddings of images in [-1, 1] (the image tower runs in ``dtype``)."""
    device = model.visual_projection.weight.device
    pixels = preprocess(images.to(device)).to(dtype)
    return F.normalize(_pooled(model.get_image_features(pixel_values=pixels)).float(), dim=-1)


def ensemble_prompts(embeddings: Tensor, owners: Sequence[int], num_classes: int) -> Tensor:
    """``(K, D)`` class features from ``(P, D)`` prompt embeddings (CLIP ImageNet notebook,
    ``zeroshot_classifier``): normalise each prompt, mean over a class's prompts, normalise again."""
    unit = F.normalize(embeddings.double(), dim=-1)
    index = torch.as_tensor(list(owners), dtype=torch.long, device=unit.device)
    sums = torch.zeros(num_classes, unit.shape[1], dtype=unit.dtype, device=unit.device).index_add_(0, index, unit)
    counts = torch.bincount(index, minlength=num_classes).clamp(min=1).to(unit.dtype)
    return F.normalize(sums / counts[:, None], dim=-1).float()


class ClipZeroShot(nn.Module):
    """CLIP's zero-shot classifier over the classes of ``prompts``: images in [-1, 1] → ``(B, K)`` logits.

    The text tower stays in float32 whatever ``dtype`` (its features are computed once and cached, so precision
    there costs nothing, and the cache does not depend on ``dtype``); the image tower runs in ``dtype``.

    Args:
        clip: a loaded folder (:func:`load_clip`).
        prompts: the prompts of each class.
        cache_path: the text-feature cache file (None: ``text_cache.default_cache_path``).
        dtype: ``float32``, or ``float16`` / ``bfloat16`` for the image tower on a GPU.
    """

    def __init__(self, clip: ClipFolder, prompts: Prompts, cache_path: str | Path | None = None,
                 dtype: str = "float32") -> None:
        super().__init__()
        if dtype not in DTYPES:
            raise ValueError(f"CLIP dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
        self.model = clip.model
        self.tokenizer = clip.tokenizer
        self.preprocess = clip.preprocess
        self.prompts = prompts
        self.cache_path = cache_path
        self.dtype = DTYPES[dtype]
        self.model.vision_model.to(self.dtype)
        self.model.visual_projection.to(self.dtype)
        self.key = {"kind": "clip-text-features", "prompts": prompts.flat, "owners": prompts.owners,
                    "fingerprint": clip.fingerprint}
        self._features: Tensor | None = None
        self.from_cache: bool | None = None

    def compute_class_features(self) -> dict[str, Tensor]:
        """The ensembled class features, encoded now (what the cache holds)."""
        emb = encode_prompts(self.model, self.tokenizer, self.prompts.flat)
        return {"class_features": ensemble_prompts(emb, self.prompts.owners, len(self.prompts.classes)).cpu()}

    def class_features(self) -> Tensor:
        """``(K, D)`` unit class features on the model's device: read from the cache, else computed and written."""
        device = self.model.logit_scale.device
        if self._features is None:
            values, self.from_cache = cached_embeddings(self.cache_path, self.key, self.compute_class_features)
            self._features = values["class_features"].float()
        if self._features.device != device:
            self._features = self._features.to(device)
        return self._features

    def image_features(self, images: Tensor) -> Tensor:
        """``(B, D)`` float32 unit image embeddings of images in [-1, 1]."""
        return image_features(self.model, self.preprocess, images, self.dtype)

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        """``(B, 3 or 1, H, W)`` in [-1, 1] → ``(B, K)`` float32 logits,
        ``logit_scale.exp() * cos(image, class)`` (CLIPModel.forward's ``logits_per_image``)."""
        image = self.image_features(images)
        return self.model.logit_scale.float().exp() * image @ self.class_features().T
