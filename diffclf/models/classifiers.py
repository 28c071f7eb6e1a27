"""Discriminative classifiers (timm) that take diffclf's [-1, 1] images, in plain torch.

The baselines and the discriminative prefilter need the same thing: a timm network that accepts
the images every diffclf dataloader yields (``[-1, 1]``) and returns logits over model classes.
:class:`ImageClassifier` folds the input normalisation the weights expect into the module, so a
checkpoint always carries it and no caller can forget it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import timm
import torch
from torch import Tensor, nn

from diffclf.models.checkpoints import read_checkpoint

VIT_PREFIXES = ("vit_", "deit", "eva", "beit", "flexivit")


class ImageClassifier(nn.Module):
    """A timm backbone behind a fixed per-channel affine map from [-1, 1] to its expected input.

    From-scratch models see the images unchanged (scale 1, shift 0); pretrained ones see
    ``([-1,1] → [0,1] - mean) / std`` with the mean/std of their pretrained config. The map is
    stored as buffers, so it travels with the state dict.
    """

    def __init__(self, backbone: nn.Module, mean: Tensor, std: Tensor, config: dict[str, Any]) -> None:
        super().__init__()
        self.backbone = backbone
        self.register_buffer("scale", (0.5 / std).view(1, -1, 1, 1).float())
        self.register_buffer("shift", ((0.5 - mean) / std).view(1, -1, 1, 1).float())
        self.config = dict(config)
        self.num_classes: int = int(config["num_classes"])

    def forward(self, x: Tensor) -> Tensor:
        """``x`` ``(B, C, H, W)`` in [-1, 1] → logits ``(B, num_classes)`` over model classes."""
        return self.backbone(x * self.scale + self.shift)


def _channel_stats(values: tuple[float, ...], in_chans: int) -> Tensor:
    """Pretrained RGB statistics for ``in_chans`` inputs: the channel mean for grey, cycled otherwise."""
    t = torch.tensor(values, dtype=torch.float64)
    if in_chans == len(t):
        return t
    if in_chans == 1:
        return t.mean().view(1)
    return t.repeat(in_chans // len(t) + 1)[:in_chans]


def create_classifier(
    name: str,
    num_classes: int,
    in_chans: int,
    img_size: int,
    pretrained_file: str | None = None,
    **kwargs: Any,
) -> ImageClassifier:
    """A timm model by name for ``in_chans × img_size²`` images in [-1, 1] and ``num_classes`` outputs.

    ``pretrained_file`` loads local weights (timm's ``pretrained_cfg_overlay``; never downloads; a
    classifier head of another size is re-initialised by timm). Models that take ``img_size``
    (ViTs, Swin, ...) get it; a from-scratch ViT below 224 px gets ``patch_size=4`` unless given,
    because 16-px patches leave a 2×2 grid at 32 px. ``kwargs`` go to ``timm.create_model``.
    """
    if pretrained_file is not None and not Path(pretrained_file).is_file():
        raise FileNotFoundError(f"pretrained_file {pretrained_file}: no such weights file")
    if not timm.is_model(name):
        raise ValueError(f"{name!r} is not a timm model name (see timm.list_models())")
    pretrained = pretrained_file is not None
    auto_patch = not pretrained and name.startswith(VIT_PREFIXES) and img_size < 224 and "patch_size" not in kwargs
    if auto_patch:
        kwargs["patch_size"] = 4
    common: dict[str, Any] = {"pretrained": pretrained, "num_classes": num_classes, "in_chans": in_chans}
    if pretrained:
        common["pretrained_cfg_overlay"] = {"file": str(pretrained_file)}
    try:
        backbone = timm.create_model(name, img_size=img_size, **common, **kwargs)
    except TypeError as err:
        if "img_size" not in str(err):
            raise
        if auto_patch:  # only the default this function added; a patch_size the caller gave stays
            kwargs.pop("patch_size")
        backbone = timm.create_model(name, **common, **kwargs)
    else:
        patch = getattr(getattr(backbone, "patch_embed", None), "patch_size", None)
        if patch is not None:
            kwargs["patch_size"] = int(patch[0]) if isinstance(patch, (tuple, list)) else int(patch)
    if pretrained:
        cfg = backbone.pretrained_cfg
        mean, std = _channel_stats(cfg["mean"], in_chans), _channel_stats(cfg["std"], in_chans)
    else:
        mean, std = (
            torch.full((in_chans,), 0.5, dtype=torch.float64),
            torch.full((in_chans,), 0.5, dtype=torch.float64),
        )
    config = {"name": name, "num_classes": num_classes, "in_chans": in_chans, "img_size": img_size, **kwargs}
    return ImageClassifier(backbone, mean, std, config)


def load_classifier(path: str | Path, map_location: str | torch.device = "cpu") -> ImageClassifier:
    """A trained baseline from a diffclf ``TimmClassifier`` Lightning checkpoint, without Lightning.

    Rebuilds the network from the resolved ``classifier_config`` the module stores in its checkpoints
    (else from ``hyper_parameters``); no pretrained weights are read, the state dict holds everything,
    input normalisation included. Returns it in eval mode, mapping [-1, 1] images to logits over
    model classes (``.num_classes`` of them).
    """
    ckpt = read_checkpoint(path, option="classifier", map_location=map_location)
    hp = ckpt.hparams
    if "model_name" not in hp:
        raise ValueError(f"classifier {path}: not a diffclf TimmClassifier checkpoint (no hyper_parameters.model_name)")
    config = ckpt.raw.get("classifier_config") or {
        "name": hp["model_name"],
        "num_classes": hp["num_classes"],
        "in_chans": hp["in_chans"],
        "img_size": hp["img_size"],
        **dict(hp.get("model_kwargs") or {}),
    }
    model = create_classifier(**config)
    state = ckpt.prefixed("model.")
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(
            f"classifier {path}: weights do not fit {hp['model_name']} ({str(err).splitlines()[0]})"
        ) from None
    return model.to(map_location).eval()
