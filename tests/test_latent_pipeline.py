"""Latent space end to end on real Fashion-MNIST: cache-latents → fit on the cache → test → export.

A tiny ``AutoencoderKL`` is built for the test (random weights: random conv features keep enough of
an image to classify; its posterior variance is switched off and its scaling factor set so latents
have unit spread, as the SD-VAE's 0.18215 does). Fashion-MNIST images (padded to 32 px) are encoded
to 4×8×8 latents by ``python cli.py cache-latents``; a small DiT is trained on the cache through the
CLI and classifies held-out test images above chance; ``python cli.py export`` writes a diffusers
``DiTPipeline`` that loads offline, samples, and reads back with ``load_dit``.

Observed on 2 CPU cores: 0.29–0.37 top-1 on 200 test images over seeds 0–3 (chance 0.10); the
module takes about 20 s. Torch runs single-threaded here: on a loaded 2-core machine two OpenMP
threads spin against each other and a tiny model's step gets ~50× slower.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from diffclf.cli import main
from diffclf.data.fashion_mnist import FashionMNISTDataModule, find_fashion_mnist
from diffclf.data.label_spaces import fashion_mnist_label_space

diffusers = pytest.importorskip("diffusers")
scipy_stats = pytest.importorskip("scipy.stats")

if find_fashion_mnist(None) is None:
    pytest.skip(
        "Fashion-MNIST not found (install Debian's dataset-fashion-mnist: /usr/share/datasets/fashion-mnist/)",
        allow_module_level=True,
    )

N_TRAIN, N_TEST, TRIALS, STEPS = 2000, 200, 20, 300
LATENT = (4, 8, 8)  # a 32 px image through two 2x downsamples
NAMES = list(fashion_mnist_label_space().names)


pytestmark = pytest.mark.usefixtures("one_thread")


def first_images(split: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` images of a split as the data module yields them (padded, in [-1, 1]), and labels."""
    dm = FashionMNISTDataModule(image_size=32)
    ds = dm.build_datasets("test" if split == "test" else "fit")[split]
    items = [ds[i] for i in range(n)]
    return torch.stack([x for x, _ in items]), torch.tensor([int(y) for _, y in items])


def make_vae(folder: Path, seed: int) -> Path:
    """A tiny grey AutoencoderKL (32 px → 4×8×8), deterministic posterior, unit-spread latents."""
    torch.manual_seed(seed)
    blocks = (8, 16, 16)
    vae = diffusers.AutoencoderKL(
        in_channels=1, out_channels=1, block_out_channels=blocks, latent_channels=LATENT[0],
        down_block_types=("DownEncoderBlock2D",) * len(blocks), up_block_types=("UpDecoderBlock2D",) * len(blocks),
        norm_num_groups=8, sample_size=32,
    )
    with torch.no_grad():
        # quant_conv's second half is the log-variance: exp(-12 / 2) ≈ 0.0025 keeps samples at the mean.
        vae.quant_conv.weight[LATENT[0]:] = 0
        vae.quant_conv.bias[LATENT[0]:] = -12.0
        images, _ = first_images("train", 256)
        spread = vae.encode(images).latent_dist.mean.std()
    vae.register_to_config(scaling_factor=float(1.0 / spread))
    vae.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict[str, Path]:
    """VAE, caches (through the CLI), a fitted checkpoint and its config."""
    tmp = tmp_path_factory.mktemp("latent")
    vae = make_vae(tmp / "vae", seed=0)
    paths = {"tmp": tmp, "vae": vae, "train": tmp / "train.safetensors", "test": tmp / "test.safetensors"}
    for split, n in (("train", N_TRAIN), ("test", N_TEST)):
        main(["cache-latents", "--data", "fashion_mnist", "--vae", str(vae), "--out", str(paths[split]),
              "--split", split, "--limit", str(n), "--batch_size", "250", "--device", "cpu",
              "--data_args", '{"image_size": 32}'])
    config = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu", "devices": 1, "max_steps": STEPS, "limit_val_batches": 0, "logger": False,
            "enable_progress_bar": False, "enable_model_summary": False, "default_root_dir": str(tmp),
            "callbacks": [{"class_path": "diffclf.tasks.callbacks.ModelCheckpoint",
                           "init_args": {"dirpath": str(tmp / "ckpt"), "save_last": True, "save_top_k": 0}}],
        },
        "model": {"class_path": "diffclf.tasks.DiffusionClassifier", "init_args": {
            "model": "DiT-T/2", "model_kwargs": {"hidden_size": 64, "depth": 2, "num_heads": 2},
            "input_size": LATENT[1], "in_channels": LATENT[0], "learn_sigma": False, "vae": str(vae),
            "lr": 2e-3, "ema_decay": 0.999, "ema_warmup": True, "scoring": {"batch_size": 1000},
            "results_dir": str(tmp), "results_file": str(tmp / "results.jsonl"),
            "strategy": {"class_path": "diffclf.strategies.Exhaustive", "init_args": {"trials": TRIALS}},
        }},
        "data": {"class_path": "diffclf.data.CachedLatentsDataModule", "init_args": {
            "train_cache": str(paths["train"]), "test_cache": str(paths["test"]), "vae": str(vae),
            "image_size": 32, "crop": "none", "batch_size": 128, "eval_batch_size": N_TEST,
        }},
    }
    paths["config"] = tmp / "latent.yaml"
    paths["config"].write_text(yaml.safe_dump(config))
    main(["fit", "--config", str(paths["config"])])
    paths["ckpt"] = tmp / "ckpt" / "last.ckpt"
    assert paths["ckpt"].is_file()
    return paths


def test_cache_cli_stores_the_first_images_latents_and_label_space(run) -> None:
    from diffclf.data.latent_cache import LatentCacheDataset, read_cache_info
    from diffclf.models.latents import LatentCodec, load_vae

    info = read_cache_info(run["train"])
    assert (info["count"], info["image_size"], info["crop"], info["latent_shape"]) == (N_TRAIN, 32, "none", list(LATENT))
    assert info["meta"]["dataset"] == "fashion_mnist" and info["meta"]["names"] == NAMES
    assert info["meta"]["num_model_classes"] == 10
    cache = LatentCacheDataset(run["test"], sample=False, flip=False)
    assert len(cache) == N_TEST
    images, labels = first_images("test", 8)
    codec = LatentCodec(load_vae(run["vae"]))
    want = codec.encode_mean(images)
    for i in range(8):
        latent, target, index = cache[i]
        assert (target, index) == (int(labels[i]), i)
        torch.testing.assert_close(latent, want[i], atol=1e-5, rtol=1e-4)
    mirrored = LatentCacheDataset(run["test"], sample=False, flip=True)
    torch.manual_seed(0)
    draws = [mirrored[0][0] for _ in range(16)]
    flipped = codec.encode_mean(images[:1].flip(-1))[0]
    assert not torch.allclose(flipped, want[0], atol=1e-3)
    for side in (want[0], flipped):  # both flips are stored, and training picks either at random
        assert any(torch.allclose(d, side, atol=1e-5, rtol=1e-4) for d in draws)
    with pytest.raises(ValueError, match="--limit 0"):
        main(["cache-latents", "--data", "fashion_mnist", "--vae", str(run["vae"]),
              "--out", str(run["tmp"] / "never.safetensors"), "--split", "test", "--limit", "0"])


def test_latent_dit_trained_on_the_cache_classifies_above_chance(run) -> None:
    main(["test", "--config", str(run["config"]), "--ckpt_path", str(run["ckpt"])])
    record = json.loads((run["tmp"] / "results.json").read_text())
    assert record["dataset"] == "fashion_mnist" and record["n"] == N_TEST
    assert record["label_space_size"] == 10 and record["num_classes"] == 10
    assert record["forwards_per_image"] == 10 * TRIALS
    # Exact (Clopper-Pearson) 95% lower bound, computed independently of diffclf: chance is 0.10.
    low = scipy_stats.binomtest(record["correct"], record["n"]).proportion_ci(0.95, method="exact").low
    assert low > 0.15, f"accuracy {record['accuracy']:.3f} (95% lower bound {low:.3f}) is not clearly above chance"
    assert record["ci_low"] == pytest.approx(low, abs=1e-6)
    lines = (run["tmp"] / "results.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["correct"] == record["correct"]


def test_cache_refuses_another_vae_resolution_or_crop(run, tmp_path) -> None:
    from diffclf.data.latents import CachedLatentsDataModule

    other = make_vae(tmp_path / "other_vae", seed=1)
    dm = CachedLatentsDataModule(train_cache=str(run["train"]), vae=str(other), image_size=32, crop="none")
    with pytest.raises(ValueError) as info:
        dm.setup("fit")
    msg = str(info.value)
    assert "\n" not in msg and str(run["train"]) in msg and str(other) in msg and "made with VAE" in msg
    with pytest.raises(ValueError, match=r"made at image_size 32, not 64"):
        CachedLatentsDataModule(test_cache=str(run["test"]), vae=str(run["vae"]), image_size=64, crop="none").setup("test")
    with pytest.raises(ValueError, match=r"made with crop 'none', not 'adm'"):
        CachedLatentsDataModule(test_cache=str(run["test"]), vae=str(run["vae"]), image_size=32, crop="adm").setup("test")
    ok = CachedLatentsDataModule(test_cache=str(run["test"]), vae=str(run["vae"]), image_size=32, crop="none")
    ok.setup("test")
    assert len(ok.test_dataset) == N_TEST and ok.num_model_classes == 10


def test_export_writes_a_pipeline_that_loads_offline_and_reads_back(run, tmp_path, monkeypatch) -> None:
    from diffclf.models import DiT, load_dit
    from diffclf.tasks.checkpoints import load_task

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "pipe"
    # The DiT was trained with the original timestep frequencies; diffusers' DiT has only its own.
    with pytest.warns(UserWarning, match="timestep_freq_shift=0"):
        main(["export", "--ckpt_path", str(run["ckpt"]), "--out", str(out)])
    pipe = diffusers.DiTPipeline.from_pretrained(out)
    assert pipe.get_label_ids(["Dress", "Ankle boot"]) == [3, 9]
    images = pipe([3], guidance_scale=1.0, num_inference_steps=2, output_type="np",
                  generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (1, 32, 32, 1) and ((images >= 0) & (images <= 1)).all()

    ema = load_task(str(run["ckpt"])).ema.eval()
    back = load_dit(out)
    assert back.config == {**ema.config, "timestep_freq_shift": 1.0}
    same = {k: torch.equal(back.state_dict()[k], v) for k, v in ema.state_dict().items() if k != "pos_embed"}
    assert all(same.values()), [k for k, ok in same.items() if not ok]
    torch.testing.assert_close(back.pos_embed, ema.pos_embed, atol=1e-6, rtol=0)

    gen = torch.Generator().manual_seed(1)
    x = torch.randn(6, *LATENT, generator=gen)
    t = torch.tensor([0, 10, 250, 500, 750, 999])
    y = torch.tensor([0, 3, 5, 7, 9, 2])
    with torch.no_grad():
        got = back(x, t, y)
        diffusers_eps = pipe.transformer(x, timestep=t, class_labels=y).sample
        shifted = DiT(**{**ema.config, "timestep_freq_shift": 1.0})
        shifted.load_state_dict(ema.state_dict())
        want = shifted.eval()(x, t, y)
        original = ema(x, t, y)
    torch.testing.assert_close(got, diffusers_eps, atol=1e-5, rtol=1e-4)  # what diffusers computes
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)  # = the EMA DiT with diffusers' frequencies
    rel = ((got - original).norm() / original.norm()).item()
    assert 1e-4 < rel < 0.15, f"relative eps change from the frequency convention: {rel}"
