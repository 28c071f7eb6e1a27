"""The DiT written out here: original names and init, shapes, attention, embeddings, presets, FLOPs."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import randomize

from diffclf.models import DIT_PRESETS, DiT, create_dit
from diffclf.models.dit import TimestepEmbedder, dit_flops, dit_macs

TINY = {
    "input_size": 8,
    "patch_size": 2,
    "in_channels": 4,
    "hidden_size": 32,
    "depth": 2,
    "num_heads": 4,
    "num_classes": 5,
}


def inputs(n: int = 3, c: int = 4, s: int = 8, k: int = 5, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    return (
        torch.randn(n, c, s, s, generator=gen),
        torch.randint(0, 1000, (n,), generator=gen),
        torch.randint(0, k, (n,), generator=gen),
    )


def original_pos_embed(embed_dim: int, grid_size: int) -> np.ndarray:
    """facebookresearch/DiT's numpy code, verbatim in substance."""

    def one_d(dim, pos):
        omega = np.arange(dim // 2, dtype=np.float64)
        omega /= dim / 2.0
        omega = 1.0 / 10000**omega
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    grid_h = np.arange(grid_size, dtype=np.float32)
    grid_w = np.arange(grid_size, dtype=np.float32)
    grid = np.stack(np.meshgrid(grid_w, grid_h), axis=0).reshape([2, 1, grid_size, grid_size])
    return np.concatenate([one_d(embed_dim // 2, grid[0]), one_d(embed_dim // 2, grid[1])], axis=1)


def test_state_dict_has_the_original_names():
    model = DiT(**{**TINY, "depth": 1})
    expected = {
        "pos_embed",
        "x_embedder.proj.weight", "x_embedder.proj.bias",
        "t_embedder.mlp.0.weight", "t_embedder.mlp.0.bias", "t_embedder.mlp.2.weight", "t_embedder.mlp.2.bias",
        "y_embedder.embedding_table.weight",
        "blocks.0.attn.qkv.weight", "blocks.0.attn.qkv.bias", "blocks.0.attn.proj.weight", "blocks.0.attn.proj.bias",
        "blocks.0.mlp.fc1.weight", "blocks.0.mlp.fc1.bias", "blocks.0.mlp.fc2.weight", "blocks.0.mlp.fc2.bias",
        "blocks.0.adaLN_modulation.1.weight", "blocks.0.adaLN_modulation.1.bias",
        "final_layer.linear.weight", "final_layer.linear.bias",
        "final_layer.adaLN_modulation.1.weight", "final_layer.adaLN_modulation.1.bias",
    }  # fmt: skip
    assert set(model.state_dict()) == expected
    assert model.y_embedder.embedding_table.weight.shape == (TINY["num_classes"] + 1, 32)
    assert DiT(**{**TINY, "class_dropout_prob": 0.0}).y_embedder.embedding_table.weight.shape[0] == 5
    assert isinstance(model.blocks[0].norm1, torch.nn.LayerNorm) and isinstance(
        model.final_layer.norm_final, torch.nn.LayerNorm
    )


def test_initialisation_is_dits():
    model = DiT(**TINY)
    assert not model.pos_embed.requires_grad
    np.testing.assert_allclose(
        model.pos_embed[0].numpy(), original_pos_embed(32, 4).astype(np.float32), atol=0
    )
    for block in model.blocks:
        assert not block.adaLN_modulation[1].weight.any() and not block.adaLN_modulation[1].bias.any()
    assert (
        not model.final_layer.linear.weight.any() and not model.final_layer.adaLN_modulation[1].weight.any()
    )
    assert model.y_embedder.embedding_table.weight.std().item() == pytest.approx(0.02, rel=0.3)
    assert (
        model.x_embedder.proj.weight.abs().max() <= math.sqrt(6 / (4 * 2 * 2 + 32)) + 1e-6
    )  # xavier on (D, C*p*p)
    x, t, y = inputs()
    assert not model(x, t, y).any()  # adaLN-Zero: the network starts as zero output


@pytest.mark.parametrize("learn_sigma", [True, False])
def test_forward_shapes_and_timestep_types(learn_sigma):
    model = randomize(DiT(**TINY, learn_sigma=learn_sigma)).eval()
    x, t, y = inputs()
    out = model(x, t, y)
    assert out.shape == (3, 8 if learn_sigma else 4, 8, 8)
    assert model.out_channels == out.shape[1]
    assert torch.equal(out, model(x, t.float(), y))


def test_timestep_embedding_matches_the_formula():
    t = torch.tensor([0.0, 1.0, 37.0, 999.0])
    emb = TimestepEmbedder.timestep_embedding(t, 256)
    freqs = torch.exp(-math.log(10000) * torch.arange(128, dtype=torch.float32) / 128)
    args = t[:, None] * freqs[None]
    assert torch.equal(emb, torch.cat([torch.cos(args), torch.sin(args)], dim=-1))
    shifted = TimestepEmbedder.timestep_embedding(t, 256, freq_shift=1.0)
    assert torch.allclose(shifted[:, 127], torch.cos(t * 1e-4), atol=1e-6)  # diffusers: 10000 ** (-127/127)


def test_attention_uses_sdpa_and_equals_explicit_softmax(monkeypatch):
    model = randomize(DiT(**TINY)).eval()
    attn = model.blocks[0].attn
    x = torch.randn(2, 16, 32)
    calls = []
    sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or sdpa(*a, **k))
    out = attn(x)
    assert calls
    qkv = attn.qkv(x).reshape(2, 16, 3, 4, 8).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    ref = ((q @ k.transpose(-2, -1)) * 8**-0.5).softmax(-1) @ v  # timm's non-fused path
    ref = attn.proj(ref.transpose(1, 2).reshape(2, 16, 32))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)


def test_label_dropout_only_in_training_and_forced():
    model = randomize(DiT(**TINY, class_dropout_prob=0.5))
    x, t, y = inputs(n=64)
    model.eval()
    null = torch.full_like(y, TINY["num_classes"])
    assert torch.equal(model(x, t, y), model(x, t, y))
    forced = model(x, t, y, force_drop_ids=torch.ones_like(y))
    torch.testing.assert_close(forced, model(x, t, null))
    model.train()
    torch.manual_seed(0)
    dropped = model(x, t, y)
    differs = (dropped - model.eval()(x, t, y)).flatten(1).abs().amax(1) > 0
    assert 0 < differs.sum() < 64


def test_given_drop_mask_replaces_random_dropout_exactly():
    """Training passes its own seeded mask: the output is the eval output on null-replaced labels, whatever
    the global RNG, for a bool or a 0/1 mask."""
    model = randomize(DiT(**TINY, class_dropout_prob=0.5))
    x, t, y = inputs(n=16)
    mask = torch.arange(16) % 3 == 0
    null = torch.where(mask, TINY["num_classes"], y)
    want = model.eval()(x, t, null)
    model.train()
    outs = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        outs.append(model(x, t, y, force_drop_ids=mask))
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], want)
    assert torch.equal(model(x, t, y, force_drop_ids=mask.long()), want)
    assert not torch.equal(model.eval()(x, t, y), want)  # the mask did change labels


def test_config_rebuilds_the_model():
    model = randomize(DiT(**TINY, timestep_freq_shift=1.0, norm2_eps=1e-5)).eval()
    clone = DiT(**model.config)
    clone.load_state_dict(model.state_dict())
    x, t, y = inputs()
    assert torch.equal(clone.eval()(x, t, y), model(x, t, y))
    assert {"input_size", "patch_size", "hidden_size", "depth", "num_heads", "learn_sigma"} <= set(
        model.config
    )


def test_forward_with_cfg():
    model = randomize(DiT(**TINY)).eval()
    x, t, y = inputs(n=2)
    xx, tt = torch.cat([x[:1], x[:1]]), torch.cat([t[:1], t[:1]])
    yy = torch.tensor([int(y[0]), TINY["num_classes"]])
    out = model.forward_with_cfg(xx, tt, yy, cfg_scale=4.0)
    raw = model(xx, tt, yy)
    guided = raw[1, :3] + 4.0 * (raw[0, :3] - raw[1, :3])
    torch.testing.assert_close(out[0, :3], guided)
    torch.testing.assert_close(out[1, :3], guided)
    torch.testing.assert_close(out[:, 3:], raw[:, 3:])  # the original guides 3 channels only
    full = model.forward_with_cfg(xx, tt, yy, cfg_scale=1.0, guided_channels=4)
    torch.testing.assert_close(full[0, :4], raw[0, :4])


def test_presets_and_create_dit():
    for size, (hidden, depth, heads) in {
        "S": (384, 12, 6),
        "B": (768, 12, 12),
        "L": (1024, 24, 16),
        "XL": (1152, 28, 16),
    }.items():
        for p in (2, 4, 8):
            assert DIT_PRESETS[f"DiT-{size}/{p}"] == {
                "depth": depth,
                "hidden_size": hidden,
                "patch_size": p,
                "num_heads": heads,
            }
    for size, (hidden, depth, heads) in {"T": (128, 4, 4), "M": (256, 6, 8)}.items():
        for p in (2, 4):
            assert DIT_PRESETS[f"DiT-{size}/{p}"] == {
                "depth": depth,
                "hidden_size": hidden,
                "patch_size": p,
                "num_heads": heads,
            }
    model = create_dit("DiT-T/4", input_size=16, in_channels=1, num_classes=10, depth=2)
    assert (model.depth, model.hidden_size, model.patch_size, model.num_heads) == (2, 128, 4, 4)
    with pytest.raises(ValueError, match=r"'DiT-Q/2'.*DiT-XL/2") as err:
        create_dit("DiT-Q/2")
    assert "\n" not in str(err.value)


def test_xl2_parameter_count_and_macs():
    with torch.device("meta"):
        model = create_dit("DiT-XL/2", input_size=32, in_channels=4, num_classes=1000, learn_sigma=True)
    assert sum(p.numel() for p in model.parameters()) == 675_129_632
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 674_834_720
    macs = dit_macs(model.config)
    assert macs == pytest.approx(118.6e9, rel=0.01)
    assert dit_flops(model.config) == 2 * macs
    assert (
        dit_macs({"hidden_size": 1152, "depth": 28, "patch_size": 2, "num_heads": 16}) == macs
    )  # defaults fill in
