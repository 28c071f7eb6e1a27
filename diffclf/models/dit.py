"""Class-conditional DiT (Peebles & Xie, 2023), written out in plain torch.

This follows facebookresearch/DiT ``models.py`` line for line and keeps its submodule and
parameter names, so an original checkpoint loads with ``load_state_dict(strict=True)``:
``x_embedder.proj``, ``t_embedder.mlp``, ``y_embedder.embedding_table``, ``pos_embed``,
``blocks.{i}.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2,adaLN_modulation.1}`` and
``final_layer.{norm_final,linear,adaLN_modulation.1}``.

diffusers' ``DiTTransformer2DModel`` computes two things differently from the original; both are
constructor options here whose defaults are the original's, and ``load_dit`` sets them to the
diffusers values when it reads a diffusers folder:

- ``timestep_freq_shift``: diffusers' sinusoidal timestep features use the frequencies
  ``exp(-ln(10000) * i / (128 - 1))`` (``downscale_freq_shift=1``), the original ``/ 128``.
- ``norm2_eps``: diffusers' LayerNorm before the MLP uses its config's ``norm_eps`` (1e-5 by
  default); the original uses 1e-6 (as do norm1 and the final norm in both).
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

FREQUENCY_EMBEDDING_SIZE = 256


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN: ``x * (1 + scale) + shift`` with per-sample ``(N, D)`` shift/scale over tokens."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def sincos_pos_embed_2d(embed_dim: int, grid_size: int) -> Tensor:
    """DiT's fixed 2-D sin-cos position table ``(grid_size**2, embed_dim)``, in float64 like the original's
    numpy code; as there, the first half of each vector encodes the column index, the second the row."""
    if embed_dim % 4:
        raise ValueError(f"2-D sin-cos position embedding needs hidden_size divisible by 4, got {embed_dim}")
    coords = torch.arange(grid_size, dtype=torch.float64)
    grid_w, grid_h = torch.meshgrid(coords, coords, indexing="xy")  # as np.meshgrid(grid_w, grid_h)

    def embed_1d(dim: int, pos: Tensor) -> Tensor:
        omega = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)
        omega = 1.0 / 10000**omega  # (dim/2,)
        out = pos.reshape(-1)[:, None] * omega[None]  # (M, dim/2)
        return torch.cat([out.sin(), out.cos()], dim=1)  # (M, dim)

    return torch.cat([embed_1d(embed_dim // 2, grid_w), embed_1d(embed_dim // 2, grid_h)], dim=1)


class PatchEmbed(nn.Module):
    """Image to patch tokens: a stride-``p`` convolution, as timm's ``PatchEmbed`` (same ``proj`` name)."""

    def __init__(self, input_size: int, patch_size: int, in_channels: int, hidden_size: int) -> None:
        super().__init__()
        if input_size % patch_size:
            raise ValueError(f"input_size {input_size} is not divisible by patch_size {patch_size}")
        self.patch_size = patch_size
        self.grid_size = input_size // patch_size
        self.num_patches = self.grid_size**2
        self.proj = nn.Conv2d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (N, C, H, W) -> (N, T, D)


class TimestepEmbedder(nn.Module):
    """Scalar timesteps → vectors: sinusoidal features (cos, then sin) → Linear → SiLU → Linear."""

    def __init__(self, hidden_size: int, freq_shift: float = 0.0) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(FREQUENCY_EMBEDDING_SIZE, hidden_size, bias=True),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size, bias=True),
        )
        self.frequency_embedding_size = FREQUENCY_EMBEDDING_SIZE
        self.freq_shift = freq_shift

    @staticmethod
    def timestep_embedding(t: Tensor, dim: int, max_period: int = 10000, freq_shift: float = 0.0) -> Tensor:
        """``[cos(t f_i), sin(t f_i)]`` with ``f_i = max_period ** (-i / (dim/2 - freq_shift))``."""
        half = dim // 2
        exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device)
        freqs = torch.exp(exponent / (half - freq_shift))
        args = t[:, None].float() * freqs[None]
        embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        if dim % 2:
            embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
        return embedding

    def forward(self, t: Tensor) -> Tensor:
        t_freq = self.timestep_embedding(t, self.frequency_embedding_size, freq_shift=self.freq_shift)
        return self.mlp(t_freq.to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    """Class labels → vectors; row ``num_classes`` is the null class used for classifier-free guidance."""

    def __init__(self, num_classes: int, hidden_size: int, dropout_prob: float) -> None:
        super().__init__()
        use_cfg_embedding = int(dropout_prob > 0)
        self.embedding_table = nn.Embedding(num_classes + use_cfg_embedding, hidden_size)
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob

    def token_drop(self, labels: Tensor, force_drop_ids: Tensor | None = None) -> Tensor:
        """Replace labels by the null class, at random (training; the global RNG) or where
        ``force_drop_ids == 1``."""
        if force_drop_ids is None:
            drop_ids = torch.rand(labels.shape[0], device=labels.device) < self.dropout_prob
        else:
            drop_ids = force_drop_ids == 1
        return torch.where(drop_ids, self.num_classes, labels)

    def forward(self, labels: Tensor, train: bool, force_drop_ids: Tensor | None = None) -> Tensor:
        use_dropout = self.dropout_prob > 0
        if (train and use_dropout) or (force_drop_ids is not None):
            labels = self.token_drop(labels, force_drop_ids)
        return self.embedding_table(labels)


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection (timm's layout) and torch's SDPA kernel."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden_size {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        n, t, d = x.shape
        qkv = self.qkv(x).reshape(n, t, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (N, heads, T, head_dim)
        x = F.scaled_dot_product_attention(q, k, v)  # (N, heads, T, head_dim)
        return self.proj(x.transpose(1, 2).reshape(n, t, d))


class Mlp(nn.Module):
    """Linear → GELU(tanh) → Linear, named like timm's ``Mlp``."""

    def __init__(self, in_features: int, hidden_features: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features, bias=True)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden_features, in_features, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class DiTBlock(nn.Module):
    """A transformer block with adaptive LayerNorm-Zero conditioning (shift, scale and gate per branch)."""

    def __init__(
        self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0, norm2_eps: float = 1e-6
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads=num_heads)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=norm2_eps)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size, bias=True))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(
            6, dim=1
        )
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        x = x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))
        return x


class FinalLayer(nn.Module):
    """adaLN-modulated LayerNorm, then a linear map from tokens to ``p*p*out_channels`` values."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels, bias=True)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size, bias=True))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class DiT(nn.Module):
    """Diffusion model with a transformer backbone, class-conditional through adaLN-Zero.

    Args:
        input_size: spatial size of the (square) input, pixels or latents.
        patch_size: side of the square patches that become tokens.
        in_channels: input channels; the output has ``2 * in_channels`` with ``learn_sigma``.
        hidden_size, depth, num_heads, mlp_ratio: transformer width, blocks, heads, MLP expansion.
        class_dropout_prob: probability of replacing a label by the null class in training; when
            > 0 the label table has a null row ``num_classes``.
        num_classes: number of classes (without the null class).
        learn_sigma: also predict the variance interpolation ``v`` (DiT's learned sigma).
        timestep_freq_shift: 0 for the original, 1 for diffusers' ``DiTTransformer2DModel``.
        norm2_eps: eps of the LayerNorm before the MLP: 1e-6 original, diffusers' ``norm_eps``.
    """

    def __init__(
        self,
        input_size: int = 32,
        patch_size: int = 2,
        in_channels: int = 4,
        hidden_size: int = 1152,
        depth: int = 28,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        class_dropout_prob: float = 0.1,
        num_classes: int = 1000,
        learn_sigma: bool = True,
        timestep_freq_shift: float = 0.0,
        norm2_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.input_size = input_size
        self.patch_size = patch_size
        self.in_channels = in_channels
        self.out_channels = in_channels * 2 if learn_sigma else in_channels
        self.hidden_size = hidden_size
        self.depth = depth
        self.num_heads = num_heads
        self.mlp_ratio = mlp_ratio
        self.class_dropout_prob = class_dropout_prob
        self.num_classes = num_classes
        self.learn_sigma = learn_sigma
        self.timestep_freq_shift = timestep_freq_shift
        self.norm2_eps = norm2_eps

        self.x_embedder = PatchEmbed(input_size, patch_size, in_channels, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size, freq_shift=timestep_freq_shift)
        self.y_embedder = LabelEmbedder(num_classes, hidden_size, class_dropout_prob)
        num_patches = self.x_embedder.num_patches
        # Fixed sin-cos embedding; a frozen Parameter (not a buffer) so original state dicts match.
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches, hidden_size), requires_grad=False)
        self.blocks = nn.ModuleList(
            [DiTBlock(hidden_size, num_heads, mlp_ratio=mlp_ratio, norm2_eps=norm2_eps) for _ in range(depth)]
        )
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)
        self.initialize_weights()

    @property
    def config(self) -> dict[str, Any]:
        """Constructor arguments: ``DiT(**dit.config)`` rebuilds the same architecture."""
        return {
            name: getattr(self, name) for name in inspect.signature(DiT.__init__).parameters if name != "self"
        }

    def initialize_weights(self) -> None:
        """DiT's explicit init; the zeroed adaLN and output layers make every block start as identity."""

        def _basic_init(module: nn.Module) -> None:
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.constant_(module.bias, 0)

        self.apply(_basic_init)
        pos_embed = sincos_pos_embed_2d(self.hidden_size, self.x_embedder.grid_size)
        self.pos_embed.data.copy_(pos_embed.float().unsqueeze(0))
        # Patch embedding initialised like an nn.Linear on the flattened kernel.
        w = self.x_embedder.proj.weight.data
        nn.init.xavier_uniform_(w.view([w.shape[0], -1]))
        nn.init.constant_(self.x_embedder.proj.bias, 0)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for block in self.blocks:
            nn.init.constant_(block.adaLN_modulation[-1].weight, 0)
            nn.init.constant_(block.adaLN_modulation[-1].bias, 0)
        nn.init.constant_(self.final_layer.adaLN_modulation[-1].weight, 0)
        nn.init.constant_(self.final_layer.adaLN_modulation[-1].bias, 0)
        nn.init.constant_(self.final_layer.linear.weight, 0)
        nn.init.constant_(self.final_layer.linear.bias, 0)

    def unpatchify(self, x: Tensor) -> Tensor:
        """``(N, T, p*p*C) -> (N, C, H, W)``."""
        c = self.out_channels
        p = self.patch_size
        h = w = int(x.shape[1] ** 0.5)
        if h * w != x.shape[1]:
            raise ValueError(f"cannot unpatchify {x.shape[1]} tokens into a square grid")
        x = x.reshape(x.shape[0], h, w, p, p, c)
        x = torch.einsum("nhwpqc->nchpwq", x)
        return x.reshape(x.shape[0], c, h * p, w * p)

    def forward(self, x: Tensor, t: Tensor, y: Tensor, force_drop_ids: Tensor | None = None) -> Tensor:
        """Predict eps (and ``v`` with ``learn_sigma``) for noisy inputs ``x`` at timesteps ``t`` and labels ``y``.

        Args:
            x: ``(N, C, H, W)`` noisy inputs.
            t: ``(N,)`` timesteps, float or integer.
            y: ``(N,)`` class labels; ``num_classes`` is the null class.
            force_drop_ids: optional ``(N,)`` (0/1 or bool); where 1, the label is replaced by the null
                class, in train and eval mode alike, and no random dropout is drawn. Training passes its
                seeded class-dropout mask here (``diffclf.diffusion.losses.training_draws``); without it,
                train mode drops labels with ``torch.rand``, the global RNG, as the original.
        """
        x = self.x_embedder(x) + self.pos_embed  # (N, T, D), T = H * W / patch_size ** 2
        t = self.t_embedder(t)  # (N, D)
        y = self.y_embedder(y, self.training, force_drop_ids)  # (N, D)
        c = t + y  # (N, D)
        for block in self.blocks:
            x = block(x, c)  # (N, T, D)
        x = self.final_layer(x, c)  # (N, T, patch_size ** 2 * out_channels)
        return self.unpatchify(x)  # (N, out_channels, H, W)

    def forward_with_cfg(
        self, x: Tensor, t: Tensor, y: Tensor, cfg_scale: float, guided_channels: int | None = None
    ) -> Tensor:
        """Classifier-free guidance as the original: the batch is ``[cond; uncond]`` (``y`` second half = null
        class); only its first half of ``x`` is used, and the guided eps is returned for both halves.

        The original guides the first 3 channels only ("for exact reproducibility"); ``guided_channels=None``
        keeps that, capped at ``in_channels`` so a 1-channel model never guides its variance channels.
        Pass ``guided_channels=self.in_channels`` for standard guidance of every eps channel.
        """
        half = x[: len(x) // 2]
        combined = torch.cat([half, half], dim=0)
        model_out = self.forward(combined, t, y)
        k = min(3, self.in_channels) if guided_channels is None else guided_channels
        eps, rest = model_out[:, :k], model_out[:, k:]
        cond_eps, uncond_eps = torch.split(eps, len(eps) // 2, dim=0)
        half_eps = uncond_eps + cfg_scale * (cond_eps - uncond_eps)
        eps = torch.cat([half_eps, half_eps], dim=0)
        return torch.cat([eps, rest], dim=1)


def _preset(hidden_size: int, depth: int, num_heads: int, patch_size: int) -> dict[str, int]:
    return {"depth": depth, "hidden_size": hidden_size, "patch_size": patch_size, "num_heads": num_heads}


_SIZES = {
    "T": (128, 4, 4),
    "M": (256, 6, 8),
    "S": (384, 12, 6),
    "B": (768, 12, 12),
    "L": (1024, 24, 16),
    "XL": (1152, 28, 16),
}
_PATCHES = {"T": (2, 4), "M": (2, 4)}

#: Model sizes by name: the paper's S/B/L/XL at patch 2, 4, 8, and tiny T/M presets for CPU runs and tests.
DIT_PRESETS: dict[str, dict[str, int]] = {
    f"DiT-{size}/{p}": _preset(hidden, depth, heads, p)
    for size, (hidden, depth, heads) in _SIZES.items()
    for p in _PATCHES.get(size, (2, 4, 8))
}


def create_dit(name: str, **overrides: Any) -> DiT:
    """Build a DiT by preset name (timm-style); ``overrides`` are DiT kwargs and may replace preset fields."""
    if name not in DIT_PRESETS:
        raise ValueError(f"unknown DiT preset {name!r}; known presets: {', '.join(DIT_PRESETS)}")
    return DiT(**{**DIT_PRESETS[name], **overrides})


def _full_config(config: dict[str, Any]) -> dict[str, Any]:
    defaults = {
        name: p.default for name, p in inspect.signature(DiT.__init__).parameters.items() if name != "self"
    }
    unknown = set(config) - set(defaults)
    if unknown:
        raise ValueError(f"unknown DiT config keys {sorted(unknown)}")
    return {**defaults, **config}


def dit_macs(config: dict[str, Any]) -> float:
    """Multiply-adds of one forward pass of one sample, counted from the matmuls.

    Counts the patch embedding, the timestep MLP, per block the adaLN projection, qkv, attention scores
    ``QK^T``, attention-weighted values, output projection and MLP, and the final adaLN and linear layer.
    Elementwise work (norms, activations, softmax) is left out, as fvcore does. The DiT paper's "Gflops"
    (118.6 for DiT-XL/2 on 32×32×4 latents) are fvcore counts, i.e. these multiply-adds.
    """
    cfg = _full_config(config)
    p, c, d = cfg["patch_size"], cfg["in_channels"], cfg["hidden_size"]
    tokens = (cfg["input_size"] // p) ** 2
    out_channels = 2 * c if cfg["learn_sigma"] else c
    mlp_hidden = int(d * cfg["mlp_ratio"])
    patch = tokens * c * p * p * d
    t_mlp = FREQUENCY_EMBEDDING_SIZE * d + d * d
    block = (
        d * 6 * d  # adaLN modulation
        + tokens * d * 3 * d  # qkv
        + 2 * tokens * tokens * d  # QK^T and attention @ V
        + tokens * d * d  # output projection
        + 2 * tokens * d * mlp_hidden  # fc1, fc2
    )
    final = d * 2 * d + tokens * d * p * p * out_channels
    return float(patch + t_mlp + cfg["depth"] * block + final)


def dit_flops(config: dict[str, Any]) -> float:
    """FLOPs of one forward pass of one sample: ``2 * dit_macs`` (a multiply-add is 2 FLOPs).

    Note the factor 2 against the DiT paper's "Gflops", which count multiply-adds.
    """
    return 2.0 * dit_macs(config)
