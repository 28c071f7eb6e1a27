"""The frozen SD-VAE codec and the latent cache, with a tiny random AutoencoderKL."""

import json

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from diffclf.data.latent_cache import LatentCacheDataset, cache_latents, read_cache_info
from diffclf.models.latents import LatentCodec, load_vae, vae_fingerprint

diffusers = pytest.importorskip("diffusers")

SIZE = 16


def make_vae(folder, seed: int = 0, scaling_factor: float | None = None):
    torch.manual_seed(seed)
    kwargs = {} if scaling_factor is None else {"scaling_factor": scaling_factor}
    vae = diffusers.AutoencoderKL(
        block_out_channels=(8,), latent_channels=4, norm_num_groups=8, sample_size=SIZE, **kwargs
    )
    vae.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    return make_vae(tmp_path_factory.mktemp("vae"))


@pytest.fixture(scope="module")
def other_vae_dir(tmp_path_factory):
    return make_vae(tmp_path_factory.mktemp("vae2"), seed=1)


class Images(Dataset):
    def __init__(self, n: int = 10, channels: int = 3) -> None:
        gen = torch.Generator().manual_seed(0)
        self.images = torch.rand(n, channels, SIZE, SIZE, generator=gen) * 2 - 1
        self.targets = torch.arange(n) % 3

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], int(self.targets[i]), i + 100  # indices need not be positions


def test_load_vae_errors(tmp_path, vae_dir):
    vae = load_vae(vae_dir)
    assert not vae.training and not any(p.requires_grad for p in vae.parameters())
    with pytest.raises(FileNotFoundError, match=r"no config\.json"):
        load_vae(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel"}))
    with pytest.raises(ValueError, match="'UNet2DModel', expected 'AutoencoderKL'"):
        load_vae(tmp_path)


def test_codec_encodes_and_decodes(vae_dir):
    vae = load_vae(vae_dir)
    codec = LatentCodec(vae)
    assert codec.scaling_factor == pytest.approx(0.18215)
    assert LatentCodec(vae, scaling_factor=0.5).scaling_factor == 0.5
    x = Images(4).images
    mean = codec.encode_mean(x)
    assert torch.equal(mean, codec.encode_mean(x))
    with torch.no_grad():
        want = vae.encode(x).latent_dist.mean * 0.18215
    assert torch.equal(mean, want)
    a = codec.encode_sample(x, generator=torch.Generator().manual_seed(3))
    b = codec.encode_sample(x, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and not torch.equal(a, mean)
    m, s = codec.encode_moments(x)
    assert torch.equal(m, mean) and (s > 0).all()
    gray = x[:, :1]
    assert torch.equal(codec.encode_mean(gray), codec.encode_mean(gray.repeat(1, 3, 1, 1)))
    decoded = codec.decode(mean)
    assert decoded.shape == (4, 3, SIZE, SIZE)
    codec.train()
    assert not codec.vae.training


def test_codec_keeps_the_vae_out_of_checkpoints(vae_dir):
    owner = torch.nn.Module()
    owner.codec = LatentCodec(load_vae(vae_dir))
    owner.head = torch.nn.Linear(2, 2)
    sd = owner.state_dict()
    assert set(sd) == {"head.weight", "head.bias"}
    owner.load_state_dict(sd, strict=True)
    full = {**sd, **{f"codec.vae.{k}": v for k, v in owner.codec.vae.state_dict().items()}}
    owner.load_state_dict(full, strict=True)  # older checkpoints that carry it still load


def test_fingerprint(vae_dir, other_vae_dir):
    assert vae_fingerprint(vae_dir) == vae_fingerprint(vae_dir)
    assert vae_fingerprint(vae_dir) != vae_fingerprint(other_vae_dir)


def test_cache_round_trip(tmp_path, vae_dir):
    data = Images(10)
    path = cache_latents(
        data, str(vae_dir), tmp_path / "c.safetensors", batch_size=4, meta={"names": ["a", "b", "c"]}
    )
    info = read_cache_info(path)
    assert info["count"] == 10 and info["image_size"] == SIZE and info["crop"] == "adm"
    assert info["meta"] == {"names": ["a", "b", "c"]} and info["vae_fingerprint"] == vae_fingerprint(vae_dir)
    codec = LatentCodec(load_vae(vae_dir))
    mean, std = codec.encode_moments(data.images)
    flipped_mean, _ = codec.encode_moments(data.images.flip(-1))

    plain = LatentCacheDataset(
        path, vae_path=str(vae_dir), image_size=SIZE, crop="adm", sample=False, flip=False
    )
    assert len(plain) == 10 and plain.meta["names"] == ["a", "b", "c"]
    latents, targets, indices = next(iter(DataLoader(plain, batch_size=10)))
    torch.testing.assert_close(latents, mean, rtol=1e-5, atol=1e-6)
    assert torch.equal(targets, data.targets) and torch.equal(indices, torch.arange(100, 110))

    torch.manual_seed(0)
    flips = LatentCacheDataset(path, sample=False, flip=True)
    seen = set()
    for i in range(10):
        z = flips[i][0]
        is_plain = torch.allclose(z, mean[i], atol=1e-5)
        assert is_plain or torch.allclose(z, flipped_mean[i], atol=1e-5)
        seen.add(is_plain)
    assert seen == {True, False}

    sampled = LatentCacheDataset(path, sample=True, flip=False)
    z = torch.stack([sampled[i][0] for i in range(10)])
    noise = (z - mean) / std
    assert not torch.allclose(z, mean) and noise.std().item() == pytest.approx(1.0, rel=0.2)


def test_cache_half_precision_and_one_channel_images(tmp_path, vae_dir):
    data = Images(5, channels=1)
    path = cache_latents(data, str(vae_dir), tmp_path / "h.safetensors", batch_size=2, dtype="bfloat16")
    ds = LatentCacheDataset(path, sample=False, flip=False)
    want = LatentCodec(load_vae(vae_dir)).encode_mean(data.images)
    got = torch.stack([ds[i][0] for i in range(5)])
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-2, atol=1e-2)


def test_cache_refuses_other_vae_size_crop(tmp_path, vae_dir, other_vae_dir):
    path = cache_latents(Images(3), str(vae_dir), tmp_path / "c.safetensors")
    with pytest.raises(ValueError, match=r"c\.safetensors was made with VAE .*fingerprint") as err:
        LatentCacheDataset(path, vae_path=str(other_vae_dir))
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match=r"c\.safetensors was made at image_size 16, not 32"):
        LatentCacheDataset(path, image_size=32)
    with pytest.raises(ValueError, match=r"was made with crop 'adm', not 'center'"):
        LatentCacheDataset(path, crop="center")
    with pytest.raises(ValueError, match="expected 32x32"):
        cache_latents(Images(3), str(vae_dir), tmp_path / "d.safetensors", image_size=32)
    assert not (tmp_path / "d.safetensors").exists() and not (tmp_path / "d.safetensors.tmp").exists()
