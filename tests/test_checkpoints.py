"""Checkpoint formats: original ``.pt``, diffusers transformer and pipeline folders, export round trips."""

import json

import pytest
import torch
from conftest import randomize

from diffclf.models import DiT, create_dit, load_dit
from diffclf.models.formats import (
    export_diffusers,
    read_pipeline_info,
    state_dict_from_diffusers,
    state_dict_to_diffusers,
)

diffusers = pytest.importorskip("diffusers")

HEADS, HEAD_DIM, DEPTH, SIZE, PATCH, CLASSES = 2, 16, 2, 8, 2, 10


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def tiny_transformer(seed: int = 0):
    """A diffusers DiT with every parameter random (its own init zeroes adaLN), its per-block embedder
    copies equal (as in converted checkpoints), eval mode and label dropout off."""
    torch.manual_seed(seed)
    model = diffusers.DiTTransformer2DModel(
        num_attention_heads=HEADS,
        attention_head_dim=HEAD_DIM,
        in_channels=4,
        out_channels=8,
        num_layers=DEPTH,
        sample_size=SIZE,
        patch_size=PATCH,
        num_embeds_ada_norm=CLASSES,
    )
    randomize(model, seed)
    first = model.transformer_blocks[0].norm1.emb
    with torch.no_grad():
        for block in model.transformer_blocks[1:]:
            for p, q in zip(block.norm1.emb.parameters(), first.parameters()):
                p.copy_(q)
    for block in model.transformer_blocks:
        block.norm1.emb.class_embedder.dropout_prob = 0.0
    return model.eval()


def tiny_vae():
    torch.manual_seed(0)
    return diffusers.AutoencoderKL(
        block_out_channels=(8,), latent_channels=4, norm_num_groups=8, sample_size=SIZE
    )


def batch(n: int = 6, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, SIZE, SIZE, generator=gen)
    t = torch.tensor([0, 1, 17, 250, 600, 999][:n])
    y = torch.randint(0, CLASSES + 1, (n,), generator=gen)  # the null class too
    return x, t, y


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vae")
    tiny_vae().save_pretrained(folder)
    return folder


def test_one_table_inverts_itself():
    model = randomize(
        DiT(input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=3, num_heads=2, num_classes=7)
    )
    sd = model.state_dict()
    back = state_dict_from_diffusers(state_dict_to_diffusers(sd, 3), 3)
    assert set(back) == set(sd) - {"pos_embed"}
    assert all(torch.equal(back[k], sd[k]) for k in back)


def original_layout_from_diffusers(model) -> dict[str, torch.Tensor]:
    """A diffusers ``DiTTransformer2DModel``'s weights in facebookresearch/DiT's ``models.py`` key layout,
    written out here independently of ``diffclf.models.formats`` (the inverse of diffusers'
    ``scripts/convert_dit_to_diffusers.py``). DiT shares one timestep and one class embedder, diffusers
    keeps a copy in every block: block 0's is taken (``forward`` conditions the output layer on it too).
    Chunk orders agree, so no tensor is reordered: adaLN-Zero splits into (shift, scale, gate) x (msa, mlp)
    in both, the final layer into (shift, scale) (``proj_out_1``, ``final_layer.adaLN_modulation.1``)."""
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    emb = "transformer_blocks.0.norm1.emb."
    out = {
        "pos_embed": model.pos_embed.pos_embed.detach().clone(),  # a non-persistent buffer in diffusers
        "x_embedder.proj.weight": sd["pos_embed.proj.weight"],
        "x_embedder.proj.bias": sd["pos_embed.proj.bias"],
        "y_embedder.embedding_table.weight": sd[emb + "class_embedder.embedding_table.weight"],
    }
    for ours, theirs in (("mlp.0", "linear_1"), ("mlp.2", "linear_2")):
        for p in ("weight", "bias"):
            out[f"t_embedder.{ours}.{p}"] = sd[f"{emb}timestep_embedder.{theirs}.{p}"]
    for i in range(model.config.num_layers):
        d = f"transformer_blocks.{i}."
        for p in ("weight", "bias"):
            out[f"blocks.{i}.attn.qkv.{p}"] = torch.cat([sd[f"{d}attn1.to_{n}.{p}"] for n in "qkv"], dim=0)
            for ours, theirs in (("attn.proj", "attn1.to_out.0"), ("mlp.fc1", "ff.net.0.proj"),
                                 ("mlp.fc2", "ff.net.2"), ("adaLN_modulation.1", "norm1.linear")):
                out[f"blocks.{i}.{ours}.{p}"] = sd[f"{d}{theirs}.{p}"]
    for p in ("weight", "bias"):
        out[f"final_layer.adaLN_modulation.1.{p}"] = sd[f"proj_out_1.{p}"]
        out[f"final_layer.linear.{p}"] = sd[f"proj_out_2.{p}"]
    return out


def original_dit_reference(seed: int):
    """A random diffusers DiT (the size of DiT-T/4 at 16x16, 4 -> 8 channels) set to compute what the
    original DiT computes: diffusers' sinusoidal timestep features use ``downscale_freq_shift=1`` and its
    pre-MLP LayerNorm ``norm_eps``, the original ``/ 128`` frequencies (shift 0) and eps 1e-6."""
    torch.manual_seed(seed)
    model = diffusers.DiTTransformer2DModel(
        num_attention_heads=4, attention_head_dim=32, in_channels=4, out_channels=8, num_layers=4,
        sample_size=16, patch_size=4, num_embeds_ada_norm=CLASSES, norm_eps=1e-6,
    )
    randomize(model, seed)
    first = model.transformer_blocks[0].norm1.emb
    with torch.no_grad():  # one embedder, as in the original: every block's copy equals block 0's
        for block in model.transformer_blocks[1:]:
            for p, q in zip(block.norm1.emb.parameters(), first.parameters()):
                p.copy_(q)
    for block in model.transformer_blocks:
        block.norm1.emb.time_proj.downscale_freq_shift = 0
        block.norm1.emb.class_embedder.dropout_prob = 0.0  # no random label dropout in the reference
    return model.eval()


@pytest.mark.parametrize("wrapper", ["plain", "training"])
def test_original_format_loads_identically(tmp_path, wrapper):
    ref = original_dit_reference(seed=0)
    other = original_dit_reference(seed=5)
    path = tmp_path / "dit.pt"
    if wrapper == "plain":
        torch.save(original_layout_from_diffusers(ref), path)
    else:  # DiT's train.py: {"model", "ema", "opt", "args"}; the EMA is what to load
        import argparse

        torch.save(
            {"model": original_layout_from_diffusers(other), "ema": original_layout_from_diffusers(ref),
             "args": argparse.Namespace(lr=1e-4)},
            path,
        )
    loaded = load_dit(path)
    assert not loaded.training
    assert (loaded.num_heads, loaded.num_classes, loaded.learn_sigma, loaded.input_size) == (4, CLASSES, True, 16)
    assert (loaded.hidden_size, loaded.depth, loaded.patch_size, loaded.in_channels) == (128, 4, 4, 4)
    assert (loaded.timestep_freq_shift, loaded.norm2_eps) == (0.0, 1e-6)  # the original's, not diffusers'
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(5, 4, 16, 16, generator=gen)
    t, y = torch.tensor([0, 3, 500, 870, 999]), torch.tensor([0, 9, 10, 4, 10])  # 10: the null class
    with torch.no_grad():
        want = ref(x, timestep=t, class_labels=y).sample
        got = loaded(x, t, y)
        assert rel_err(got, want) <= 1e-5
        # The reference is not degenerate: timesteps, labels and the input all move the output.
        assert rel_err(loaded(x, t.flip(0), y), want) > 1e-2 and rel_err(loaded(x, t, y.flip(0)), want) > 1e-2
        # diffusers' own timestep frequencies would give other outputs: the reference follows the original.
        for block in ref.transformer_blocks:
            block.norm1.emb.time_proj.downscale_freq_shift = 1
        assert rel_err(ref(x, timestep=t, class_labels=y).sample, want) > 1e-4
    assert load_dit(path, preset="DiT-T/4", num_classes=CLASSES).num_classes == CLASSES


def test_diffusers_transformer_folder_matches_diffusers(tmp_path):
    ref = tiny_transformer()
    ref.save_pretrained(tmp_path / "transformer")
    model = load_dit(tmp_path / "transformer")
    assert (model.timestep_freq_shift, model.norm2_eps) == (1.0, 1e-5)
    assert (model.hidden_size, model.depth, model.num_heads, model.num_classes) == (32, DEPTH, HEADS, CLASSES)
    x, t, y = batch()
    with torch.no_grad():
        want = ref(x, timestep=t, class_labels=y).sample
        got = model(x, t, y)
        assert rel_err(got, want) <= 1e-5
        assert rel_err(model(x, t.float(), y), want) <= 1e-5
        # The test can fail: with the original timestep frequencies the outputs differ.
        original = DiT(**{**model.config, "timestep_freq_shift": 0.0})
        original.load_state_dict(model.state_dict())
        assert rel_err(original.eval()(x, t, y), want) > 1e-3


def test_diffusers_pipeline_folder(tmp_path):
    ref = tiny_transformer(seed=3)
    pipe = diffusers.DiTPipeline(transformer=ref, vae=tiny_vae(), scheduler=diffusers.DDPMScheduler())
    pipe.save_pretrained(tmp_path / "pipe")
    model = load_dit(tmp_path / "pipe", num_classes=CLASSES)
    x, t, y = batch()
    with torch.no_grad():
        assert rel_err(model(x, t, y), ref(x, timestep=t, class_labels=y).sample) <= 1e-5
    info = read_pipeline_info(tmp_path / "pipe")
    assert info["schedule"] == {"num_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02}
    assert info["id2label"] is None and info["vae"] == str(tmp_path / "pipe" / "vae")


def test_export_round_trip_and_pipeline_sampling(tmp_path, vae_dir):
    model = randomize(
        DiT(input_size=SIZE, patch_size=2, in_channels=4, hidden_size=32, depth=2, num_heads=2, num_classes=CLASSES,
            timestep_freq_shift=1.0, norm2_eps=1e-5)
    ).eval()  # fmt: skip
    labels = {i: f"class {i}" for i in range(CLASSES)}
    out = export_diffusers(model, tmp_path / "export", vae_path=str(vae_dir), id2label=labels)
    back = load_dit(out)
    assert back.config == model.config
    assert all(torch.equal(back.state_dict()[k], v) for k, v in model.state_dict().items())
    x, t, y = batch()
    assert torch.equal(back(x, t, y), model(x, t, y))
    info = read_pipeline_info(out)
    assert info["id2label"] == labels
    assert info["schedule"] == {"num_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02}
    pipe = diffusers.DiTPipeline.from_pretrained(out)
    assert pipe.labels["class 3"] == 3
    with torch.no_grad():
        want = pipe.transformer(x, timestep=t, class_labels=y).sample
    assert rel_err(model(x, t, y), want) <= 1e-5
    images = pipe([1, 2], guidance_scale=1.0, num_inference_steps=2, output_type="np").images
    assert images.shape == (2, SIZE, SIZE, 3)


def test_export_checks(tmp_path, vae_dir):
    model = randomize(create_dit("DiT-T/2", input_size=SIZE, in_channels=4, num_classes=CLASSES)).eval()
    with pytest.raises(ValueError, match="needs a VAE"):
        export_diffusers(model, tmp_path / "nope")
    with pytest.warns(UserWarning, match="timestep_freq_shift"):
        out = export_diffusers(model, tmp_path / "dpm", vae_path=str(vae_dir), scheduler="dpm")
    assert json.loads((out / "scheduler" / "scheduler_config.json").read_text())["_class_name"] == (
        "DPMSolverMultistepScheduler"
    )
    assert torch.equal(
        load_dit(out).state_dict()["blocks.1.attn.qkv.weight"], model.state_dict()["blocks.1.attn.qkv.weight"]
    )
    pixel = create_dit("DiT-T/2", input_size=SIZE, in_channels=1, num_classes=CLASSES)
    with pytest.raises(ValueError, match="latent channels"):
        export_diffusers(pixel, tmp_path / "pixel", vae_path=str(vae_dir))


def test_not_a_dit(tmp_path):
    path = tmp_path / "resnet.pt"
    torch.save({"conv1.weight": torch.zeros(8, 3, 3, 3), "fc.weight": torch.zeros(10, 8)}, path)
    with pytest.raises(
        ValueError, match=r"resnet\.pt: not a DiT.*x_embedder\.proj\.weight.*conv1\.weight"
    ) as err:
        load_dit(path)
    assert "\n" not in str(err.value)
    model = create_dit("DiT-T/2", input_size=SIZE, in_channels=4, num_classes=CLASSES)
    sd = model.state_dict()
    sd["blocks.0.extra.weight"] = torch.zeros(1)
    torch.save(sd, path)
    with pytest.raises(ValueError, match=r"unexpected keys blocks\.0\.extra\.weight"):
        load_dit(path)


def test_another_size_and_classes_than_asked(tmp_path):
    path = tmp_path / "tiny.pt"
    torch.save(create_dit("DiT-T/2", input_size=SIZE, in_channels=4, num_classes=CLASSES).state_dict(), path)
    with pytest.raises(ValueError, match=r"tiny\.pt: holds DiT-T/2 .* not DiT-M/2") as err:
        load_dit(path, preset="DiT-M/2")
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match=r"11 rows.*num_classes=1000"):
        load_dit(path, num_classes=1000)
    assert load_dit(path, num_classes=11).class_dropout_prob == 0.0  # a table without a null row
    folder = tmp_path / "transformer"
    tiny_transformer().save_pretrained(folder)
    with pytest.raises(ValueError, match="num_classes=1000"):
        load_dit(folder, num_classes=1000)
    with pytest.raises(ValueError, match="not DiT-XL/2"):
        load_dit(folder, preset="DiT-XL/2")


def test_folder_without_config_and_other_models(tmp_path, vae_dir):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"empty: a folder without model_index\.json .* or config\.json"):
        load_dit(tmp_path / "empty")
    with pytest.raises(ValueError, match="'AutoencoderKL', not a diffusers DiTTransformer2DModel"):
        load_dit(vae_dir)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_dit(tmp_path / "missing.pt")


def test_embedder_copies_must_agree(tmp_path):
    ref = tiny_transformer()
    with torch.no_grad():
        ref.transformer_blocks[1].norm1.emb.timestep_embedder.linear_1.weight.add_(1.0)
    ref.save_pretrained(tmp_path / "t")
    with pytest.raises(ValueError, match="block 1's copy of the timestep/class embedder"):
        load_dit(tmp_path / "t")


def test_pipeline_info_refuses_other_schedules(tmp_path):
    pipe = diffusers.DiTPipeline(
        transformer=tiny_transformer(),
        vae=tiny_vae(),
        scheduler=diffusers.DDIMScheduler(beta_schedule="scaled_linear"),
    )
    pipe.save_pretrained(tmp_path / "p")
    with pytest.raises(ValueError, match="beta schedule 'scaled_linear'; .* only 'linear'"):
        read_pipeline_info(tmp_path / "p")


def test_bench_runs_on_original_format_weights(tmp_path) -> None:
    from diffclf.cli.bench import bench
    from diffclf.models import create_dit

    dit = create_dit("DiT-S/8", input_size=16, in_channels=4, num_classes=20, learn_sigma=True, depth=2)
    path = tmp_path / "DiT-tiny.pt"
    torch.save(dit.state_dict(), path)
    out = bench(pretrained=str(path), batch_sizes=[2], images=1, classes=3, engine_trials=2, strategies=[],
                min_seconds=0.05, device="cpu", out=str(tmp_path / "b.json"))
    assert out["model"] == str(path) and out["config"]["num_classes"] == 20 and out["best_forwards_per_s"] > 0
