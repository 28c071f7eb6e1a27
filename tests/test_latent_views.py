"""Latent DiTs see what they were trained on: the mirror view is the encoded mirror image, and a pixel
prefilter is never fed latents (issue 16, items 8 and 9)."""

from __future__ import annotations

import pytest
import torch
from test_latents import SIZE, Images, make_vae

from diffclf.strategies import Exhaustive, Prefilter
from diffclf.tasks import DiffusionClassifier

pytest.importorskip("diffusers")


@pytest.fixture(scope="module")
def latent_task(tmp_path_factory: pytest.TempPathFactory) -> DiffusionClassifier:
    vae = make_vae(tmp_path_factory.mktemp("vae"))
    task = DiffusionClassifier(
        model="DiT-T/2", input_size=SIZE, in_channels=4, num_classes=3, vae=str(vae),
        model_kwargs={"depth": 1}, strategy=Exhaustive(trials=8),
        scoring={"flip_views": True, "batch_size": 64},
    )
    task.setup("test")
    return task.eval()


def test_flip_views_of_a_latent_dit_score_the_encoded_mirror_image(latent_task: DiffusionClassifier) -> None:
    task = latent_task
    images, index = Images(2).images, torch.tensor([5, 9])
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    scorer = task.scorer()
    real = scorer.denoise

    def recording(x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        seen.append((x_t.clone(), t.clone()))
        return real(x_t, t, y)

    scorer.denoise = recording
    try:
        task.run_strategy(images, index)
    finally:
        scorer.denoise = real
    x_t = torch.cat([a for a, _ in seen])
    # Independently: the flat loop visits (image, class, draw) in that order; draws of odd Thue-Morse
    # weight see the mirror view, which must be the encoding of the mirrored pixels.
    codec = task.codec
    with torch.no_grad():
        views = (codec.encode_mean(images), codec.encode_mean(images.flip(-1)))
    mirrored_latents = views[0].flip(-1)
    assert not torch.allclose(views[1], mirrored_latents, atol=1e-3)  # the VAE is not flip-equivariant
    eps = scorer.noise(index, 0, 8, views[0].shape[1:])
    t = scorer.timesteps(index, 0, 8)
    mirror = scorer.mirrored(0, 8)
    assert mirror.any() and not mirror.all()
    ab = task.schedule.alphas_cumprod.float()
    want = []
    for b in range(2):
        for _ in range(3):
            for k in range(8):
                x0 = views[1][b] if mirror[k] else views[0][b]
                want.append(ab[t[b, k]].sqrt() * x0 + (1 - ab[t[b, k]]).sqrt() * eps[b, k])
    torch.testing.assert_close(x_t, torch.stack(want), rtol=1e-4, atol=1e-5)


def test_cached_latents_refuse_a_pixel_prefilter_and_mirror_views(latent_task: DiffusionClassifier) -> None:
    task = latent_task
    latents = torch.randn(2, 4, SIZE, SIZE)
    index = torch.tensor([0, 1])
    saved = (task.inputs_are_latents, task.strategy, task.scoring)
    try:
        task.inputs_are_latents = True
        with pytest.raises(ValueError, match="scoring.flip_views: the mirror image of cached latents"):
            task.run_strategy(latents, index)
        task.set_scoring(flip_views=False)
        net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(3))
        net.num_classes = 3
        task.strategy = Prefilter(net, top_k=2, inner=Exhaustive(trials=4))
        with pytest.raises(ValueError, match="a Prefilter classifies pixels but this data gives cached latents"):
            task.run_strategy(latents, index)
    finally:
        task.inputs_are_latents, task.strategy = saved[0], saved[1]
        task.set_scoring(**{"flip_views": saved[2].flip_views})
