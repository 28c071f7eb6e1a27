"""Two small text-image models diffclf trains itself, for compositional tests at small scale (plain torch).

- :class:`WordTokenizer`: a word-level tokenizer over a data set's vocabulary. A generated scene data set
  has a few dozen words, so a BPE tokenizer would only add an unknown segmentation between the words and
  the model; an unknown word is an error rather than a silent ``<unk>``.
- :class:`TextEncoder`: token + learned position embeddings and a few pre-norm transformer layers with a
  key padding mask; token states for cross-attention and a pooled vector.
- :class:`TextDiT`: DiT (Peebles & Xie 2023) blocks with a cross-attention sub-layer to the token states
  after self-attention, as PixArt-α (Chen et al. 2023, Sec. 2.3 and their ``PixArtBlock``), its output
  projection zero-initialised so that every block starts as the identity, like DiT's adaLN-Zero. adaLN is
  conditioned on ``t`` plus a projection of the pooled text: a pooled vector alone cannot say which
  attribute belongs to which object, the cross-attention to the word states can.
- :class:`ContrastiveModel`: a CLIP-style dual encoder (Radford et al. 2021): a small timm ResNet and the same
  text encoder, unit-normalised projections, a learned logit scale (init ``log(1/0.07)``, clamped at 100),
  and the symmetric InfoNCE loss (:func:`info_nce`).
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffclf.models.dit import (
    _SIZES,
    DiTBlock,
    FinalLayer,
    Mlp,
    PatchEmbed,
    TimestepEmbedder,
    dit_macs,
    modulate,
    sincos_pos_embed_2d,
)

PAD_ID, BOS_ID = 0, 1
_NOT_WORD = re.compile(r"[^\w\s]")


def split_words(text: str) -> list[str]:
    """Lower-case words of ``text``; punctuation separates words (``"red,blue."`` → ``red``, ``blue``)."""
    return _NOT_WORD.sub(" ", str(text).lower()).split()


class WordTokenizer:
    """Words → ids: ``<pad>`` = 0, ``<bos>`` = 1, the vocabulary's words from 2 on.

    Every sequence is ``[<bos>, w_1, ..., w_n, <pad>, ...]`` of length ``max_tokens``; the empty caption is
    ``<bos>`` alone (the unconditional input of classifier-free guidance).
    """

    def __init__(self, vocabulary: Sequence[str], max_tokens: int = 16) -> None:
        words = [w for v in vocabulary for w in split_words(v)]
        if len(words) != len(vocabulary) or not words:
            raise ValueError(f"a vocabulary is a non-empty list of single words, got {list(vocabulary)[:8]}")
        repeated = sorted({w for w in words if words.count(w) > 1})
        if repeated:
            raise ValueError(f"the vocabulary repeats word(s) {repeated[:5]}")
        if max_tokens < 2:
            raise ValueError(f"max_tokens must be >= 2 (<bos> and a word), got {max_tokens}")
        self.vocabulary = tuple(words)
        self.max_tokens = int(max_tokens)
        self.ids = {w: i + 2 for i, w in enumerate(words)}
        self.pad_id, self.bos_id = PAD_ID, BOS_ID

    @property
    def size(self) -> int:
        """Rows of the token embedding: the words and the two special tokens."""
        return len(self.vocabulary) + 2

    def encode(self, text: str) -> list[int]:
        """``[<bos>, ids...]`` of one text; an unknown word or a text too long is a one-line error."""
        words = split_words(text)
        for w in words:
            if w not in self.ids:
                raise ValueError(f"word {w!r} (in {text!r}) is not in the model's vocabulary of {len(self.ids)} words")
        if len(words) > self.max_tokens - 1:
            raise ValueError(f"{text!r} has {len(words)} words but max_tokens={self.max_tokens} leaves room for "
                             f"{self.max_tokens - 1} after <bos>")
        return [self.bos_id] + [self.ids[w] for w in words]

    def tokenize(self, texts: Sequence[str]) -> Tensor:
        """``(N, max_tokens)`` long ids, padded with ``<pad>``."""
        out = torch.full((len(texts), self.max_tokens), self.pad_id, dtype=torch.long)
        for i, text in enumerate(texts):
            ids = self.encode(text)
            out[i, : len(ids)] = torch.tensor(ids)
        return out


class TextFeatures(NamedTuple):
    """What the text encoder gives: ``tokens`` ``(N, L, D)`` states, ``pooled`` ``(N, D)``, ``mask`` ``(N, L)``
    (True at ``<bos>`` and the words, False at padding)."""

    tokens: Tensor
    pooled: Tensor
    mask: Tensor

    def select(self, rows: Tensor) -> TextFeatures:
        """The features of ``rows`` of a table (a scorer's candidate rows)."""
        return TextFeatures(self.tokens[rows], self.pooled[rows], self.mask[rows])


class CrossAttention(nn.Module):
    """Multi-head attention of queries ``x`` over ``context`` with a key padding mask (PixArt-α's
    ``MultiHeadCrossAttention`` layout: ``q_linear``, ``kv_linear``, ``proj``); self-attention when
    ``context`` is ``x``."""

    def __init__(self, dim: int, context_dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q_linear = nn.Linear(dim, dim, bias=True)
        self.kv_linear = nn.Linear(context_dim, 2 * dim, bias=True)
        self.proj = nn.Linear(dim, dim, bias=True)

    def forward(self, x: Tensor, context: Tensor, mask: Tensor) -> Tensor:
        n, t, d = x.shape
        q = self.q_linear(x).reshape(n, t, self.num_heads, self.head_dim).transpose(1, 2)
        kv = self.kv_linear(context).reshape(n, context.shape[1], 2, self.num_heads, self.head_dim)
        k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)  # each (N, heads, L, head_dim)
        # Boolean mask: True = attend. <bos> is never masked, so no query row is empty (no NaN).
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
        return self.proj(x.transpose(1, 2).reshape(n, t, d))


class TextLayer(nn.Module):
    """A pre-norm transformer layer: masked self-attention, then an MLP, each with a residual."""

    def __init__(self, width: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = CrossAttention(width, width, num_heads)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = Mlp(width, int(width * mlp_ratio))

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, mask)
        return x + self.mlp(self.norm2(x))


class TextEncoder(nn.Module):
    """Token ids ``(N, L)`` → :class:`TextFeatures`.

    The pooled vector is the masked mean of the final states over ``<bos>`` and the words: every word
    reaches it directly (a small model trained from scratch learns faster than through one ``<bos>``/CLS
    state), and for the empty caption it is the ``<bos>`` state.
    """

    def __init__(self, vocab_size: int, max_tokens: int = 16, width: int = 128, depth: int = 2,
                 num_heads: int = 4, mlp_ratio: float = 4.0, pad_id: int = PAD_ID) -> None:
        super().__init__()
        self.pad_id = pad_id
        self.max_tokens = max_tokens
        self.width = width
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.position_embedding = nn.Parameter(torch.zeros(1, max_tokens, width))
        self.layers = nn.ModuleList([TextLayer(width, num_heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(width)
        # CLIP's text-tower init (std 0.02 tokens, 0.01 positions).
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.position_embedding, std=0.01)

    def forward(self, tokens: Tensor) -> TextFeatures:
        if tokens.dim() != 2 or tokens.shape[1] != self.max_tokens:
            raise ValueError(f"tokens must be (N, {self.max_tokens}), got {tuple(tokens.shape)}")
        mask = tokens != self.pad_id
        x = self.token_embedding(tokens) + self.position_embedding
        for layer in self.layers:
            x = layer(x, mask)
        x = self.norm(x)
        weights = mask.to(x.dtype).unsqueeze(-1)
        pooled = (x * weights).sum(1) / weights.sum(1).clamp(min=1)
        return TextFeatures(x, pooled, mask)


def empty_captions(tokens: Tensor, drop: Tensor, bos_id: int = BOS_ID, pad_id: int = PAD_ID) -> Tensor:
    """``tokens`` with the rows where ``drop == 1`` replaced by the empty caption (``<bos>`` then padding)."""
    empty = torch.full_like(tokens[:1], pad_id)
    empty[:, 0] = bos_id
    return torch.where(drop.to(torch.bool).view(-1, 1).to(tokens.device), empty, tokens)


class TextDiTBlock(DiTBlock):
    """DiT's adaLN-Zero block with PixArt-α's cross-attention between self-attention and the MLP:
    ``x += cross_attn(norm(x), text)``, unmodulated and ungated as in PixArt-α, the queries normalised as in
    SD's ``BasicTransformerBlock``."""

    def __init__(self, hidden_size: int, num_heads: int, text_width: int, mlp_ratio: float = 4.0) -> None:
        super().__init__(hidden_size, num_heads, mlp_ratio=mlp_ratio)
        self.norm_cross = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.cross_attn = CrossAttention(hidden_size, text_width, num_heads)

    def forward(self, x: Tensor, c: Tensor, text: TextFeatures) -> Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        x = x + self.cross_attn(self.norm_cross(x), text.tokens, text.mask)
        return x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))


class TextDiT(nn.Module):
    """Text-conditional DiT: eps of noisy images given token ids.

    Args:
        vocab_size: rows of the token embedding (``WordTokenizer.size``).
        input_size, patch_size, in_channels, hidden_size, depth, num_heads, mlp_ratio, learn_sigma: as ``DiT``.
        text_width, text_depth, text_heads: the text encoder's width, layers and heads.
        max_tokens: the token sequence length (``WordTokenizer.max_tokens``).
    """

    def __init__(
        self,
        vocab_size: int,
        input_size: int = 32,
        patch_size: int = 2,
        in_channels: int = 3,
        hidden_size: int = 128,
        depth: int = 4,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
        text_width: int = 128,
        text_depth: int = 2,
        text_heads: int = 4,
        max_tokens: int = 16,
        learn_sigma: bool = False,
    ) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.input_size = input_size
        self.patch_size = patch_size
        self.in_channels = in_channels
        self.out_channels = 2 * in_channels if learn_sigma else in_channels
        self.hidden_size = hidden_size
        self.depth = depth
        self.num_heads = num_heads
        self.mlp_ratio = mlp_ratio
        self.text_width = text_width
        self.text_depth = text_depth
        self.text_heads = text_heads
        self.max_tokens = max_tokens
        self.learn_sigma = learn_sigma

        self.x_embedder = PatchEmbed(input_size, patch_size, in_channels, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.text_encoder = TextEncoder(vocab_size, max_tokens, text_width, text_depth, text_heads, mlp_ratio)
        self.text_proj = nn.Linear(text_width, hidden_size, bias=True)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.x_embedder.num_patches, hidden_size), requires_grad=False)
        self.blocks = nn.ModuleList(
            [TextDiTBlock(hidden_size, num_heads, text_width, mlp_ratio) for _ in range(depth)]
        )
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)
        self.initialize_weights()

    @property
    def config(self) -> dict[str, Any]:
        """Constructor arguments: ``TextDiT(**model.config)`` rebuilds the same architecture."""
        return {n: getattr(self, n) for n in inspect.signature(TextDiT.__init__).parameters if n != "self"}

    def initialize_weights(self) -> None:
        """DiT's init for the image side (xavier linears, zeroed adaLN and output layer) and a zeroed
        cross-attention output (PixArt-α), so every block starts as the identity."""
        text_modules = set(self.text_encoder.modules())

        def _basic_init(module: nn.Module) -> None:
            if isinstance(module, nn.Linear) and module not in text_modules:
                nn.init.xavier_uniform_(module.weight)
                nn.init.constant_(module.bias, 0)

        self.apply(_basic_init)
        self.pos_embed.data.copy_(sincos_pos_embed_2d(self.hidden_size, self.x_embedder.grid_size).float()[None])
        w = self.x_embedder.proj.weight.data
        nn.init.xavier_uniform_(w.view([w.shape[0], -1]))
        nn.init.constant_(self.x_embedder.proj.bias, 0)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for block in self.blocks:
            for layer in (block.adaLN_modulation[-1], block.cross_attn.proj):
                nn.init.constant_(layer.weight, 0)
                nn.init.constant_(layer.bias, 0)
        for layer in (self.final_layer.adaLN_modulation[-1], self.final_layer.linear):
            nn.init.constant_(layer.weight, 0)
            nn.init.constant_(layer.bias, 0)

    def encode_text(self, tokens: Tensor, force_drop_ids: Tensor | None = None) -> TextFeatures:
        """Token ids → features; where ``force_drop_ids == 1`` the caption is replaced by the empty one."""
        if force_drop_ids is not None:
            tokens = empty_captions(tokens, force_drop_ids, BOS_ID, self.text_encoder.pad_id)
        return self.text_encoder(tokens)

    def unpatchify(self, x: Tensor) -> Tensor:
        """``(N, T, p*p*C) -> (N, C, H, W)``."""
        c, p, h = self.out_channels, self.patch_size, self.x_embedder.grid_size
        x = x.reshape(x.shape[0], h, h, p, p, c)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], c, h * p, h * p)

    def denoise(self, x: Tensor, t: Tensor, text: TextFeatures) -> Tensor:
        """eps (and ``v`` with ``learn_sigma``) given encoded text (a scorer encodes its table once)."""
        c = self.t_embedder(t) + self.text_proj(text.pooled)
        h = self.x_embedder(x) + self.pos_embed
        for block in self.blocks:
            h = block(h, c, text)
        return self.unpatchify(self.final_layer(h, c))

    def forward(self, x: Tensor, t: Tensor, tokens: Tensor, force_drop_ids: Tensor | None = None) -> Tensor:
        """eps for noisy ``x`` ``(N, C, H, W)`` at timesteps ``t`` ``(N,)`` given captions ``tokens`` ``(N, L)``.

        ``force_drop_ids`` ``(N,)`` (0/1 or bool): where 1 the caption becomes the empty caption, in train and
        eval mode alike (DiT's ``force_drop_ids``). There is no random dropout inside the model: training
        passes its seeded mask (``diffclf.diffusion.losses.training_draws``).
        """
        return self.denoise(x, t, self.encode_text(tokens, force_drop_ids))


def _preset(hidden: int, depth: int, heads: int, patch: int) -> dict[str, int]:
    return {"hidden_size": hidden, "depth": depth, "num_heads": heads, "patch_size": patch,
            "text_width": hidden, "text_depth": 2, "text_heads": heads}


#: Sizes by name: the image side as DiT-T / DiT-M, a 2-layer text encoder as wide as the image side.
TEXT_DIT_PRESETS: dict[str, dict[str, int]] = {
    f"TextDiT-{size}/{p}": _preset(*_SIZES[size], p) for size in ("T", "M") for p in (2, 4)
}


def create_text_dit(name: str, vocab_size: int, **overrides: Any) -> TextDiT:
    """A TextDiT by preset name; ``overrides`` are TextDiT kwargs and may replace preset fields."""
    if name not in TEXT_DIT_PRESETS:
        raise ValueError(f"unknown TextDiT preset {name!r}; known presets: {', '.join(TEXT_DIT_PRESETS)}")
    return TextDiT(vocab_size, **{**TEXT_DIT_PRESETS[name], **overrides})


def text_dit_macs(config: dict[str, Any]) -> float:
    """Multiply-adds of one forward of one sample (counted as ``dit.dit_macs``): the DiT's matmuls, plus per
    block the cross-attention (queries, keys/values of ``L`` tokens, scores, values, output), the text
    encoder's layers and the pooled-text projection."""
    defaults = {n: p.default for n, p in inspect.signature(TextDiT.__init__).parameters.items() if n != "self"}
    cfg = {**defaults, **config}
    d, w, L = cfg["hidden_size"], cfg["text_width"], cfg["max_tokens"]
    tokens = (cfg["input_size"] // cfg["patch_size"]) ** 2
    keys = ("input_size", "patch_size", "in_channels", "hidden_size", "depth", "num_heads", "mlp_ratio", "learn_sigma")
    image = dit_macs({k: cfg[k] for k in keys})
    cross = tokens * d * d + L * w * 2 * d + 2 * tokens * L * d + tokens * d * d
    mlp = int(w * cfg["mlp_ratio"])
    text_layer = L * w * 3 * w + 2 * L * L * w + L * w * w + 2 * L * w * mlp
    return float(image + cfg["depth"] * cross + cfg["text_depth"] * text_layer + w * d)


def text_dit_flops(config: dict[str, Any]) -> float:
    """FLOPs of one forward of one sample: ``2 * text_dit_macs``."""
    return 2.0 * text_dit_macs(config)


class ContrastiveModel(nn.Module):
    """CLIP-style dual encoder (Radford et al. 2021, Fig. 3): image and text → unit vectors in one space.

    Args:
        vocab_size, max_tokens: as the tokenizer's.
        image_encoder: a timm model name, built from scratch with ``num_classes=0`` (pooled features).
        image_encoder_kwargs: further ``timm.create_model`` arguments, e.g. narrower stages for a CPU run
            (``{"channels": [16, 32, 64, 128], "stem_width": 16}`` for a timm ResNet).
        in_channels: image channels.
        embed_dim: the joint embedding width.
        text_width, text_depth, text_heads: the text encoder.
    """

    def __init__(self, vocab_size: int, max_tokens: int = 16, image_encoder: str = "resnet10t", in_channels: int = 3,
                 embed_dim: int = 128, text_width: int = 128, text_depth: int = 2, text_heads: int = 4,
                 image_encoder_kwargs: dict[str, Any] | None = None) -> None:
        super().__init__()
        import timm

        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in (image_encoder_kwargs or {}).items()}
        self.visual = timm.create_model(image_encoder, pretrained=False, num_classes=0, in_chans=in_channels, **kwargs)
        self.visual_proj = nn.Linear(self.visual.num_features, embed_dim, bias=False)
        self.text_encoder = TextEncoder(vocab_size, max_tokens, text_width, text_depth, text_heads)
        self.text_proj = nn.Linear(text_width, embed_dim, bias=False)
        # CLIP: "initialized to the equivalent of 0.07 [temperature] and clipped to prevent scaling the logits
        # by more than 100".
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def encode_image(self, images: Tensor) -> Tensor:
        """``(N, embed_dim)`` unit image embeddings."""
        return F.normalize(self.visual_proj(self.visual(images)), dim=-1)

    def encode_text(self, tokens: Tensor) -> Tensor:
        """``(N, embed_dim)`` unit text embeddings (the encoder's pooled vector, projected)."""
        return F.normalize(self.text_proj(self.text_encoder(tokens).pooled), dim=-1)

    def scale(self) -> Tensor:
        """``exp(logit_scale)``, at most 100."""
        return self.logit_scale.clamp(max=math.log(100.0)).exp()

    def forward(self, images: Tensor, tokens: Tensor) -> Tensor:
        """``(N_images, N_texts)`` logits ``scale * cos(image, text)``."""
        return self.scale() * self.encode_image(images) @ self.encode_text(tokens).T


def info_nce(logits: Tensor, groups: Tensor | None = None) -> Tensor:
    """CLIP's symmetric cross-entropy over a batch's ``(B, B)`` image-text logits (Radford et al., Fig. 3:
    ``(CE(logits, arange) + CE(logits.T, arange)) / 2``).

    ``groups`` ``(B,)`` (caption ids): pairs ``(i, j)`` with equal ids are all positives, and each row's target
    is uniform over its positives. A batch of a small caption set repeats captions, and CLIP's diagonal targets
    would then push an image away from its own caption written in another row. Without repeats this is CLIP's
    loss exactly.
    """
    b = logits.shape[0]
    if logits.shape != (b, b):
        raise ValueError(f"InfoNCE needs square (B, B) logits, got {tuple(logits.shape)}")
    if groups is None:
        targets = torch.eye(b, device=logits.device, dtype=logits.dtype)
    else:
        same = (groups.view(-1, 1) == groups.view(1, -1)).to(logits.dtype)
        targets = same / same.sum(1, keepdim=True)
    logits = logits.float()
    loss_images = -(targets * logits.log_softmax(1)).sum(1).mean()
    loss_texts = -(targets.T * logits.T.log_softmax(1)).sum(1).mean()
    return (loss_images + loss_texts) / 2


__all__ = [
    "BOS_ID", "PAD_ID", "TEXT_DIT_PRESETS", "ContrastiveModel", "CrossAttention",
    "TextDiT", "TextEncoder", "TextFeatures", "WordTokenizer", "create_text_dit", "empty_captions", "info_nce",
    "split_words", "text_dit_flops", "text_dit_macs",
]
