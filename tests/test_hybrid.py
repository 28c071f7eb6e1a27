"""The short-budget training levers: the hybrid ELBO cross-entropy, logit-normal timesteps and the
conditioning learning rate, checked against independent computations and through real training."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer, seed_everything
from test_training_rng import _module, _OneBatchDigits

from diffclf.diffusion.hybrid import elbo_cross_entropy, hybrid_candidates
from diffclf.diffusion.losses import sample_timesteps
from diffclf.tasks import DiffusionClassifier


def test_candidates_put_the_label_first_and_draw_distinct_others() -> None:
    labels = torch.tensor([0, 3, 9, 3, 5])
    gen = torch.Generator().manual_seed(0)
    c = hybrid_candidates(labels, 10, 4, gen)
    assert c.shape == (5, 4) and torch.equal(c[:, 0], labels)
    for row in c.tolist():
        assert len(set(row)) == 4 and all(0 <= k < 10 for k in row)
    full = hybrid_candidates(labels, 10, None, torch.Generator().manual_seed(0))
    assert all(sorted(row) == list(range(10)) for row in full.tolist())
    assert torch.equal(hybrid_candidates(labels, 10, 4, torch.Generator().manual_seed(0)), c)
    # Every other class is drawn about equally often: the label's own column is never among them.
    many = hybrid_candidates(torch.zeros(4000, dtype=torch.long), 5, 2, torch.Generator().manual_seed(1))[:, 1]
    counts = torch.bincount(many, minlength=5)
    assert counts[0] == 0 and counts[1:].min() > 900
    with pytest.raises(ValueError, match="hybrid_classes"):
        hybrid_candidates(labels, 10, 1, gen)


def test_cross_entropy_equals_a_per_candidate_loop() -> None:
    """Against a loop that calls the denoiser one (image, class) at a time and writes the softmax out."""
    torch.manual_seed(0)
    net = torch.nn.Conv2d(1, 1, 3, padding=1)
    table = torch.randn(6, 1, 1, 1)

    def denoise(x, t, y):
        return net(x) * (1 + t.view(-1, 1, 1, 1) / 1000) + table[y]

    x_t, noise = torch.randn(3, 1, 5, 5), torch.randn(3, 1, 5, 5)
    t = torch.tensor([10, 500, 990])
    cands = torch.tensor([[2, 0, 5], [4, 1, 2], [0, 3, 4]])
    loss, err = elbo_cross_entropy(denoise, x_t, t, noise, cands, temperature=2.0)
    want_err = torch.empty(3, 3)
    want = 0.0
    for m in range(3):
        for j in range(3):
            eps = denoise(x_t[m:m + 1], t[m:m + 1], cands[m, j:j + 1])
            want_err[m, j] = float(((eps - noise[m:m + 1]) ** 2).sum().detach())
        logits = [-e / 2.0 for e in want_err[m].tolist()]
        want += -(logits[0] - math.log(sum(math.exp(v) for v in logits))) / 3
    torch.testing.assert_close(err.detach(), want_err, rtol=1e-5, atol=1e-5)
    assert abs(float(loss) - want) < 1e-5
    loss.backward()  # the class table's rows get the gradient through the denoiser
    assert net.weight.grad is not None and float(net.weight.grad.abs().sum()) > 0
    with pytest.raises(ValueError, match="hybrid_temperature"):
        elbo_cross_entropy(denoise, x_t, t, noise, cands, temperature=0.0)


def test_logit_normal_timesteps_follow_their_quantiles() -> None:
    """``t / T = sigmoid(loc + scale n)``: the empirical quantiles against the closed form."""
    loc, scale, T = 0.3, 0.8, 1000
    t = sample_timesteps(50_000, T, generator=torch.Generator().manual_seed(0), density="logit_normal",
                         loc=loc, scale=scale).double()
    for q in (0.1, 0.5, 0.9):
        z = math.sqrt(2) * torch.erfinv(torch.tensor(2 * q - 1.0)).item()
        want = T / (1 + math.exp(-(loc + scale * z)))
        assert abs(torch.quantile(t, q).item() - want) < 6, q
    assert t.min() >= 0 and t.max() <= T - 1
    with pytest.raises(ValueError, match="timestep_density"):
        sample_timesteps(4, T, density="cosine")
    with pytest.raises(ValueError, match="timestep_scale"):
        sample_timesteps(4, T, density="logit_normal", scale=0.0)


@pytest.mark.parametrize("bad, match", [
    ({"hybrid_weight": -1.0}, "hybrid_weight"), ({"hybrid_images": 0}, "hybrid_images"),
    ({"hybrid_classes": 1}, "hybrid_classes"), ({"hybrid_temperature": 0.0}, "hybrid_temperature"),
    ({"cond_lr_mult": 0.0}, "cond_lr_mult"),
])
def test_bad_options_are_refused_in_one_line(bad: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        _module(**bad)


def _fit(tmp: Path, max_steps: int, module: DiffusionClassifier, ckpt: Path | None = None) -> Trainer:
    from lightning.pytorch.callbacks import ModelCheckpoint

    seed_everything(0)
    trainer = Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=tmp, max_steps=max_steps, limit_val_batches=0,
                      num_sanity_val_steps=0,
                      callbacks=[ModelCheckpoint(dirpath=tmp / "ckpt", filename="{step}", save_top_k=-1,
                                                 save_on_train_epoch_end=True)])
    trainer.fit(module, datamodule=_OneBatchDigits(batch_size=16), ckpt_path=ckpt)
    return trainer


LEVERS = {"hybrid_weight": 1.0, "hybrid_images": 4, "hybrid_classes": 3, "timestep_density": "logit_normal",
          "cond_lr_mult": 5.0}


@pytest.mark.usefixtures("one_thread")
def test_resumed_hybrid_run_ends_exactly_as_the_uninterrupted_run(tmp_path: Path) -> None:
    """The hybrid's candidates come from the step's keyed stream: a resume repeats them (from the global
    RNG, the resumed run would draw other candidates and end with other weights)."""
    full = _module(**LEVERS)
    _fit(tmp_path, 5, full)
    resumed = _module(**LEVERS)
    trainer = _fit(tmp_path / "resumed", 5, resumed, ckpt=tmp_path / "ckpt" / "step=2.ckpt")
    assert trainer.global_step == 5
    for (name, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name
    # And the levers change training: the same run without them ends elsewhere.
    plain = _module()
    _fit(tmp_path / "plain", 5, plain)
    assert not torch.equal(plain.state_dict()["dit.y_embedder.embedding_table.weight"],
                           full.state_dict()["dit.y_embedder.embedding_table.weight"])


def test_conditioning_rate_multiplies_only_the_label_table(tmp_path: Path) -> None:
    module = _module(cond_lr_mult=10.0, lr=1e-3, warmup_steps=0, lr_schedule="constant")
    trainer = Trainer(accelerator="cpu", devices=1, logger=False, max_steps=1, enable_progress_bar=False,
                      enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path)
    module.trainer = trainer
    opt = module.configure_optimizers()
    opt = opt["optimizer"] if isinstance(opt, dict) else opt
    table = module.dit.y_embedder.embedding_table.weight
    rates = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    assert rates[id(table)] == pytest.approx(1e-2)
    assert all(r == pytest.approx(1e-3) for k, r in rates.items() if k != id(table))
    assert len(rates) == sum(1 for p in module.dit.parameters() if p.requires_grad)
    # At 1x the optimizer keeps one group, as before, so earlier training checkpoints still resume.
    plain = _module(lr=1e-3, warmup_steps=0, lr_schedule="constant")
    plain.trainer = trainer
    opt = plain.configure_optimizers()
    assert len((opt["optimizer"] if isinstance(opt, dict) else opt).param_groups) == 1


def test_caption_candidates_draw_only_captions_false_of_the_image() -> None:
    """Column 0 is the image's own caption; the others are distinct batch captions outside its true set, each
    false caption about equally often. Mutation tried: dropping the true-set filter (a true caption of the
    image, id 1 here, becomes a negative) fails."""
    from diffclf.diffusion.hybrid import caption_candidates

    own = torch.tensor([0, 4])
    true = [{0, 1, 2}, {4, 5}]
    pool = torch.tensor([0, 1, 2, 3, 4, 5, 6, 6, 3])
    c = caption_candidates(own, true, pool, 3, torch.Generator().manual_seed(0))
    assert c.shape == (2, 3) and c[:, 0].tolist() == [0, 4]
    for row, t in zip(c.tolist(), true):
        assert len(set(row)) == 3 and not set(row[1:]) & t and set(row[1:]) <= set(pool.tolist())
    assert torch.equal(caption_candidates(own, true, pool, 3, torch.Generator().manual_seed(0)), c)
    many = caption_candidates(torch.zeros(3000, dtype=torch.long), [{0, 1, 2}] * 3000, pool, 2,
                              torch.Generator().manual_seed(1))[:, 1]
    counts = torch.bincount(many, minlength=7)
    assert counts[:3].sum() == 0 and counts[3:].min() > 650  # 4 false captions, 750 each expected
    with pytest.raises(ValueError, match="hybrid_captions"):
        caption_candidates(own, true, pool, 6, torch.Generator().manual_seed(0))  # image 0 has 4 false ones
    with pytest.raises(ValueError, match="not among its image's true captions"):
        caption_candidates(torch.tensor([3]), [{0, 1}], pool, 2, torch.Generator().manual_seed(0))
