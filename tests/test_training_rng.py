"""Training draws (timesteps, eps, class-dropout mask) come from per-(seed, rank, step) streams.

With the global RNG every DDP rank drew the same ``t``, eps and dropout mask (Lightning seeds all ranks
alike), and a resumed run drew something else than the uninterrupted one (the global RNG is not in the
checkpoint). These tests look at what the DiT was actually fed, through a forward pre-hook, and recover
eps from ``x_t`` by the linearity of ``q_sample``. The two-process check is in ``test_distributed.py``
(it records with :class:`RecordDraws` below).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch import Callback, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, Subset

from diffclf.data import DigitsDataModule
from diffclf.diffusion.losses import training_draws, training_key
from diffclf.tasks import DiffusionClassifier


def record_draws(
    module: DiffusionClassifier, x0: Callable[[], torch.Tensor], into: Callable[[], dict]
) -> list:
    """Hooks that write what a training step feeds the DiT into ``into()``: ``t``; eps, recovered from
    ``x_t`` and the step's ``x0()`` (``x_t = a_t x0 + s_t eps``, so
    ``eps = (x_t - q(x0, t, 0)) / q(0, t, 1)``); and ``drop``, where the label table was looked up at the
    null class, however the label was dropped."""
    null = module.hparams.num_classes

    def on_dit(_, args):
        x_t, t = args[0], args[1]
        start, zeros, ones = x0(), torch.zeros_like(x_t), torch.ones_like(x_t)
        eps = (x_t - module.schedule.q_sample(start, t, zeros)) / module.schedule.q_sample(zeros, t, ones)
        into().update(t=t.detach().cpu().clone(), eps=eps.detach().cpu().clone())

    def on_labels(_, args):
        into()["drop"] = (args[0] == null).cpu()

    return [module.dit.register_forward_pre_hook(on_dit),
            module.dit.y_embedder.embedding_table.register_forward_pre_hook(on_labels)]


class RecordDraws(Callback):
    """Records, per global step, the timesteps, eps and dropout mask the DiT was trained on (pixel-space
    models); with ``out`` each rank also writes them to ``out/draws_rank{r}.json`` when training ends."""

    def __init__(self, out: str | None = None) -> None:
        self.out = out
        self.records: dict[int, dict[str, torch.Tensor]] = {}
        self._x0: torch.Tensor | None = None
        self._handles: list = []

    def on_train_start(self, trainer, pl_module) -> None:
        self._handles = record_draws(pl_module, lambda: self._x0,
                                     lambda: self.records.setdefault(trainer.global_step, {}))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._x0 = batch[0]

    def on_train_end(self, trainer, pl_module) -> None:
        for handle in self._handles:
            handle.remove()
        if self.out is not None:
            rows = {step: {k: v.tolist() for k, v in r.items()} for step, r in self.records.items()}
            path = Path(self.out) / f"draws_rank{trainer.global_rank}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(rows))


def _module(**kwargs: object) -> DiffusionClassifier:
    args: dict[str, object] = {"model": "DiT-T/2", "input_size": 8, "in_channels": 1, "num_classes": 10,
                               "learn_sigma": False, "lr": 2e-3, "warmup_steps": 3, "ema_decay": 0.9,
                               "class_dropout_prob": 0.5, "model_kwargs": {"depth": 2}}
    args.update(kwargs)
    return DiffusionClassifier(**args)


def _batch(n: int = 64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    images = torch.rand(n, 1, 8, 8, generator=gen) * 2 - 1
    return images, torch.randint(0, 10, (n,), generator=gen), torch.arange(n)


def _step_draws(module: DiffusionClassifier, rank: int = 0, world: int = 2, step: int = 7, batch_idx: int = 0,
                accumulate: int = 1, global_seed: int = 0) -> dict[str, torch.Tensor]:
    """What one ``training_step`` feeds the DiT on a process that is ``rank`` of ``world``."""
    module._trainer = SimpleNamespace(world_size=world, global_rank=rank, global_step=step,
                                      accumulate_grad_batches=accumulate)
    module.log = lambda *a, **k: None  # Lightning's logging needs a real trainer
    batch, seen = _batch(), {}
    handles = record_draws(module, lambda: batch[0], lambda: seen)
    try:
        torch.manual_seed(global_seed)  # the global RNG must not matter
        module.training_step(batch, batch_idx)
    finally:
        for handle in handles:
            handle.remove()
        module._trainer = None
        del module.log
    return seen


def _differ(a: dict, b: dict) -> dict[str, bool]:
    return {k: not torch.equal(a[k], b[k]) for k in ("t", "eps", "drop")}


SAME = {"t": False, "eps": False, "drop": False}


def test_ranks_draw_different_timesteps_noise_and_dropout_masks() -> None:
    module = _module().train()
    r0, r1 = _step_draws(module, rank=0), _step_draws(module, rank=1)
    assert _differ(r0, r1) == {"t": True, "eps": True, "drop": True}
    assert (r0["t"] != r1["t"]).float().mean() > 0.9  # not a shifted copy: nearly every timestep differs
    assert 0 < r0["drop"].sum() < 64 and 0 < r1["drop"].sum() < 64
    # The same process at the same step draws the same whatever the global RNG did before.
    assert _differ(r0, _step_draws(module, rank=0, global_seed=123)) == SAME
    # Another step, another micro-batch of an accumulation, another world size or model seed: other draws.
    assert all(_differ(r0, _step_draws(module, rank=0, step=8)).values())
    acc0 = _step_draws(module, accumulate=2, batch_idx=4)
    assert all(_differ(acc0, _step_draws(module, accumulate=2, batch_idx=5)).values())
    assert all(_differ(r0, _step_draws(module, world=4)).values())
    assert all(_differ(r0, _step_draws(_module(seed=1).train(), rank=0)).values())


def test_draws_match_the_helper_and_follow_dit_dropout_rule() -> None:
    module = _module().train()
    seen = _step_draws(module, rank=1, world=2, step=5)
    want = training_draws(training_key(0, 2, 1, 5), (64, 1, 8, 8), 1000, 0.5, "cpu")
    assert torch.equal(seen["t"], want.t) and torch.equal(seen["drop"], want.drop)
    torch.testing.assert_close(seen["eps"], want.noise, rtol=0, atol=1e-4)  # recovered through q_sample
    assert _step_draws(module.eval())["drop"].sum() == 0  # eval mode: no class dropout
    no_null = _step_draws(_module(class_dropout_prob=0.0).train())
    assert no_null["drop"].sum() == 0
    assert training_draws(training_key(0, 1, 0, 0), (4, 1, 2, 2), 10, 0.0, "cpu").drop is None


class _OneBatchDigits(DigitsDataModule):
    """The same 16 training images, in the same order, at every step. The resumed run must see the images
    the uninterrupted one saw at each step, which neither diffclf's single-process loader (its shuffle is
    reseeded when the loader is rebuilt) nor Lightning (resuming from an end-of-epoch checkpoint it first
    runs one more batch of the finished epoch, from a fresh iterator) gives; the draws are keyed by step
    and would survive both, but the final weights would not."""

    def train_dataloader(self) -> DataLoader:
        return DataLoader(Subset(self.train_dataset, range(16)), batch_size=16, shuffle=False)


def _fit(tmp: Path, max_steps: int, module: DiffusionClassifier | None = None, ckpt: Path | None = None,
         save_every_epoch: bool = False) -> tuple[DiffusionClassifier, RecordDraws, Trainer]:
    seed_everything(0)
    module = module if module is not None else _module()
    callbacks: list[Callback] = [rec := RecordDraws()]
    if save_every_epoch:  # as a run's last.ckpt: written at the end of each training epoch
        callbacks.append(ModelCheckpoint(dirpath=tmp / "ckpt", filename="{step}", save_top_k=-1,
                                         save_on_train_epoch_end=True))
    trainer = Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, enable_checkpointing=save_every_epoch, default_root_dir=tmp,
                      max_steps=max_steps, limit_val_batches=0, num_sanity_val_steps=0, callbacks=callbacks)
    trainer.fit(module, datamodule=_OneBatchDigits(batch_size=16), ckpt_path=ckpt)
    return module, rec, trainer


@pytest.mark.usefixtures("one_thread")
def test_resumed_run_draws_and_ends_exactly_as_the_uninterrupted_run(tmp_path: Path) -> None:
    full, full_rec, _ = _fit(tmp_path, max_steps=6, save_every_epoch=True)
    assert sorted(full_rec.records) == list(range(6))
    ckpt = tmp_path / "ckpt" / "step=2.ckpt"
    # The resumed run is seeded as the CLI seeds it (seed_everything, then the weights are built): a global
    # RNG would now stand where it stood before step 0, not where the uninterrupted run left it at step 2.
    resumed, rec, trainer = _fit(tmp_path / "resumed", max_steps=6, ckpt=ckpt)
    assert trainer.global_step == 6 and sorted(rec.records) == [2, 3, 4, 5]
    for step in range(2, 6):
        assert _differ(rec.records[step], full_rec.records[step]) == SAME, step
    for (name, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name


@pytest.mark.usefixtures("one_thread")
def test_one_process_training_is_deterministic_for_a_seed(tmp_path: Path) -> None:
    a, rec_a, _ = _fit(tmp_path, max_steps=3)
    b, rec_b, _ = _fit(tmp_path, max_steps=3)
    for step in range(3):
        assert _differ(rec_a.records[step], rec_b.records[step]) == SAME
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name
    _, rec_c, _ = _fit(tmp_path, max_steps=1, module=_module(seed=1))
    assert all(_differ(rec_a.records[0], rec_c.records[0]).values())  # the model seed picks the draws


def test_latent_posterior_sample_comes_from_the_step_stream(tmp_path: Path) -> None:
    pytest.importorskip("diffusers")
    from test_latents import make_vae

    vae = str(make_vae(tmp_path / "vae"))
    module = _module(model="DiT-T/4", input_size=16, in_channels=4, vae=vae).train()
    gen = torch.Generator().manual_seed(0)
    batch = (torch.rand(8, 3, 16, 16, generator=gen) * 2 - 1, torch.arange(8), torch.arange(8))

    def fed_x_t(rank: int, global_seed: int) -> torch.Tensor:
        seen: dict = {}
        module._trainer = SimpleNamespace(world_size=2, global_rank=rank, global_step=3,
                                          accumulate_grad_batches=1)
        module.log = lambda *a, **k: None
        handle = module.dit.register_forward_pre_hook(
            lambda m, args: seen.update(x_t=args[0].detach().clone())
        )
        try:
            torch.manual_seed(global_seed)
            module.training_step(batch, 0)
        finally:
            handle.remove()
            module._trainer = None
            del module.log
        return seen["x_t"]

    first = fed_x_t(rank=0, global_seed=0)
    assert torch.equal(first, fed_x_t(rank=0, global_seed=1))  # posterior sample, t and eps: no global RNG
    assert not torch.equal(first, fed_x_t(rank=1, global_seed=0))
