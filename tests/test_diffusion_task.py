"""The LightningModule for real: a tiny DiT trained on digits learns, classifies above chance,
reloads bit-exact, and predicts the same whatever the batch size."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback, Trainer, seed_everything

from diffclf.data import DigitsDataModule
from diffclf.diffusion.scoring import ScoringOptions
from diffclf.models.ema import update_ema
from diffclf.strategies import Exhaustive
from diffclf.tasks import DiffusionClassifier
from diffclf.tasks.checkpoints import load_task


def _trainer(tmp_path: Path, **kwargs: object) -> Trainer:
    defaults: dict[str, object] = dict(
        accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=tmp_path, use_distributed_sampler=False, enable_checkpointing=False,
    )
    defaults.update(kwargs)
    return Trainer(**defaults)


def _module(**kwargs: object) -> DiffusionClassifier:
    args: dict[str, object] = dict(
        model="DiT-T/2", input_size=8, in_channels=1, num_classes=10, learn_sigma=False, lr=2e-3,
        warmup_steps=20, ema_decay=0.99, ema_warmup=True, scoring=ScoringOptions(batch_size=2000), results_dir=None,
        strategy=Exhaustive(trials=20),
    )
    args.update(kwargs)
    return DiffusionClassifier(**args)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[DiffusionClassifier, Path, dict]:
    """Digits DiT trained for 400 steps (about a minute on 2 cores), with its loss before and after."""
    tmp = tmp_path_factory.mktemp("trained")
    seed_everything(0)
    data = DigitsDataModule(batch_size=128, eval_batch_size=90)
    module = _module(results_dir=str(tmp))
    before = _trainer(tmp).validate(module, datamodule=data, verbose=False)[0]["val/loss"]
    trainer = _trainer(tmp, max_steps=400, check_val_every_n_epoch=1000, num_sanity_val_steps=0)
    trainer.fit(module, datamodule=data)
    after = _trainer(tmp).validate(module, datamodule=data, verbose=False)[0]["val/loss"]
    ckpt = tmp / "model.ckpt"
    trainer.save_checkpoint(ckpt)
    return module, ckpt, {"before": before, "after": after}


def test_training_lowers_the_held_out_eps_loss(trained: tuple) -> None:
    _, _, loss = trained
    assert loss["after"] < 0.7 * loss["before"], loss


def test_trained_dit_classifies_digits_better_than_chance(trained: tuple, tmp_path: Path) -> None:
    module, _, _ = trained
    data = DigitsDataModule(batch_size=128, eval_batch_size=90)
    _trainer(tmp_path).test(module, datamodule=data, verbose=False)
    record = module.test_record
    assert record["n"] == 360 and record["forwards_per_image"] == 200
    # Chance is 10%. This fixture's model reaches 74% (ci_low 0.69; 68-77% over seeds 0-2 of
    # seed_everything), so a bug that breaks the class conditioning (labels shuffled against the images:
    # about chance) or the scoring (a flipped sign: below chance), or one that halves the accuracy, fails,
    # with room for another CPU's rounding to change the training run.
    assert record["ci_low"] > 0.55, record


def test_checkpoint_reloads_bit_exact(trained: tuple) -> None:
    module, ckpt, _ = trained
    again = DiffusionClassifier.load_from_checkpoint(ckpt, map_location="cpu")
    for (name, a), (_, b) in zip(module.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a.cpu(), b), name
    x = torch.randn(3, 1, 8, 8)
    t = torch.tensor([5, 500, 900])
    y = torch.tensor([0, 3, 9])
    assert torch.equal(module.ema.cpu()(x, t, y), again.ema(x, t, y))


def test_predictions_do_not_depend_on_batch_size(trained: tuple, tmp_path: Path) -> None:
    module, _, _ = trained
    rows = {}
    for bs in (1, 64):
        data = DigitsDataModule(batch_size=128, eval_batch_size=bs, eval_limit=64)
        out = _trainer(tmp_path).predict(module, datamodule=data)
        rows[bs] = {r["index"]: (r["pred"], r["mean_error"]) for batch in out for r in batch}
    assert sorted(rows[1]) == list(range(64))
    # Same draws per image whatever the batch: the same predictions; errors equal up to float
    # reassociation inside differently shaped matrix products.
    assert {i: p for i, (p, _) in rows[1].items()} == {i: p for i, (p, _) in rows[64].items()}
    for i in rows[1]:
        torch.testing.assert_close(torch.tensor(rows[1][i][1]), torch.tensor(rows[64][i][1]), rtol=1e-4, atol=1e-6)


def test_label_space_of_another_size_is_refused(tmp_path: Path) -> None:
    module = _module(num_classes=12)
    with pytest.raises(ValueError, match="12 classes"):
        _trainer(tmp_path, max_steps=1).fit(module, datamodule=DigitsDataModule(batch_size=16))


class _PoisonedDigits(DigitsDataModule):
    """Digits whose training images turn NaN from a given batch on: a corrupt shard mid-run (the loader stays
    diffclf's own, whose place in the epoch a checkpoint carries)."""

    def __init__(self, poison_from: int, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.poison_from = poison_from

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if stage == "fit":
            self.train_dataset = _Poisoned(self.train_dataset, self.poison_from * self.batch_size)


class _Poisoned(torch.utils.data.Dataset):
    """Items turn NaN after the first ``clean`` reads (one process, no workers: reads follow the batches)."""

    def __init__(self, base: torch.utils.data.Dataset, clean: int) -> None:
        self.base, self.clean, self.reads = base, clean, 0

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> tuple:
        x, y, idx = self.base[i]
        self.reads += 1
        return (torch.full_like(x, float("nan")) if self.reads > self.clean else x), y, idx


def test_non_finite_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path: Path) -> None:
    from lightning.pytorch.callbacks import ModelCheckpoint

    seed_everything(0)
    ckpt_dir = tmp_path / "ckpt"
    good = _trainer(tmp_path, max_steps=2, enable_checkpointing=True, num_sanity_val_steps=0,
                    limit_val_batches=0, callbacks=[ModelCheckpoint(dirpath=ckpt_dir, save_last=True)])
    good.fit(_module(), datamodule=DigitsDataModule(batch_size=16))
    last = ckpt_dir / "last.ckpt"
    before = last.read_bytes()

    resumed = _trainer(tmp_path, max_steps=6, enable_checkpointing=True, num_sanity_val_steps=0,
                       limit_val_batches=0, callbacks=[ModelCheckpoint(dirpath=ckpt_dir, save_last=True)])
    with pytest.raises(FloatingPointError, match="at global step 3"):
        resumed.fit(_module(), datamodule=_PoisonedDigits(poison_from=1, batch_size=16), ckpt_path=last)
    assert last.read_bytes() == before


def test_unwritable_results_folder_fails_before_any_compute(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    module = _module(results_dir=str(blocker / "results"))
    with pytest.raises(OSError, match="model.results_dir .*cannot write"):
        _trainer(tmp_path).test(module, datamodule=DigitsDataModule(batch_size=16, eval_limit=4))


def test_interval_level_is_checked_before_any_compute(tmp_path: Path) -> None:
    for level in (0.0, 1.5):  # 0.0 once read as "unset" and reported at 0.95; 1.5 failed after the last image
        with pytest.raises(ValueError, match=f"model.init_args.ci_level must be in \\(0, 1\\).*got {level}"):
            _module(ci_level=level)
    data = DigitsDataModule(batch_size=16, eval_limit=4)
    module = _module(results_dir=str(tmp_path), strategy=Exhaustive(trials=2), ci_level=0.99)
    _trainer(tmp_path).test(module, datamodule=data, verbose=False)
    assert module.test_record["ci_level"] == 0.99 and module.test_record["n"] == 4
    module.hparams.ci_level = 1.0  # set after construction: refused at the start, not when the record is written
    module.test_metrics = None
    with pytest.raises(ValueError, match="ci_level must be in"):
        _trainer(tmp_path).test(module, datamodule=data, verbose=False)
    assert module.test_metrics is None  # no image was scored


def test_ema_moves_once_per_optimizer_step_under_gradient_accumulation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # DiT's train.py updates the EMA after each opt.step(); an update per micro-batch decayed it k times a step.
    import diffclf.tasks.diffusion as diffusion_task

    decays: list[float] = []
    module = _module(ema_decay=0.9, ema_warmup=True)
    real = diffusion_task.update_ema
    monkeypatch.setattr(diffusion_task, "update_ema", lambda ema, model, decay: decays.append(decay) or real(ema, model, decay))
    trainer = _trainer(tmp_path, max_steps=3, accumulate_grad_batches=2, limit_val_batches=0, num_sanity_val_steps=0)
    trainer.fit(module, datamodule=DigitsDataModule(batch_size=16))
    # warmup (1 + step) / (10 + step) at steps 1, 2, 3 (as before the update moved to optimizer_step), capped at 0.9
    assert trainer.global_step == 3 and decays == pytest.approx([2 / 11, 3 / 12, 4 / 13])


def test_a_checkpoint_saved_every_n_steps_holds_that_steps_ema_and_resumes_bit_exact(tmp_path: Path) -> None:
    # The EMA was updated after the step checkpoint was written (callbacks run first), so step=N.ckpt held the EMA
    # of step N - 1 and a resume never made up the missing update. Saved at an epoch's end, so the data order of
    # the resumed run is the uninterrupted one's.
    from diffclf.tasks.callbacks import ModelCheckpoint

    data = DigitsDataModule(batch_size=128)
    data.setup("fit")
    per_epoch = len(data.train_dataloader())
    kwargs = {"limit_val_batches": 0, "num_sanity_val_steps": 0, "max_steps": 2 * per_epoch}
    seed_everything(0)
    whole = _module(ema_decay=0.9, ema_warmup=False)
    saver = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=per_epoch, save_top_k=-1)
    _trainer(tmp_path, callbacks=[saver], enable_checkpointing=True, **kwargs).fit(whole, datamodule=DigitsDataModule(batch_size=128))
    seed_everything(0)
    resumed = _module(ema_decay=0.9, ema_warmup=False)
    _trainer(tmp_path / "r", **kwargs).fit(resumed, datamodule=DigitsDataModule(batch_size=128),
                                           ckpt_path=tmp_path / "ckpt" / f"epoch=0-step={per_epoch}.ckpt")
    for name, want in whole.ema.state_dict().items():
        assert torch.equal(resumed.ema.state_dict()[name], want), name


def test_a_mid_epoch_resume_continues_the_epochs_batches_and_ends_bit_exact(tmp_path: Path) -> None:
    # Lightning restarted a plain loader's epoch at its first batch while the steps went on (batches trained twice,
    # others never); diffclf's training loader saves its place in the epoch into the checkpoint.
    from diffclf.tasks.callbacks import ModelCheckpoint

    kwargs = {"limit_val_batches": 0, "num_sanity_val_steps": 0, "max_steps": 16}
    seen: dict[str, list] = {"whole": [], "resumed": []}

    class Record(Callback):
        def __init__(self, key: str) -> None:
            self.key = key

        def on_train_batch_start(self, trainer: Trainer, module: object, batch: tuple, batch_idx: int) -> None:
            seen[self.key].append((trainer.global_step, batch[2].tolist()))

    seed_everything(0)
    whole = _module(ema_decay=0.9, ema_warmup=False)
    saver = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=4, save_top_k=-1)
    _trainer(tmp_path, callbacks=[saver, Record("whole")], enable_checkpointing=True, **kwargs).fit(
        whole, datamodule=DigitsDataModule(batch_size=128))
    seed_everything(0)
    resumed = _module(ema_decay=0.9, ema_warmup=False)
    _trainer(tmp_path / "r", callbacks=[Record("resumed")], **kwargs).fit(
        resumed, datamodule=DigitsDataModule(batch_size=128), ckpt_path=tmp_path / "ckpt" / "epoch=0-step=4.ckpt")
    assert seen["resumed"] == seen["whole"][4:]  # step 4 is batch 4 of epoch 0 (of 11), as uninterrupted
    for name, want in [*whole.dit.state_dict().items(), *(("ema." + k, v) for k, v in whole.ema.state_dict().items())]:
        got = resumed.ema.state_dict()[name[4:]] if name.startswith("ema.") else resumed.dit.state_dict()[name]
        assert torch.equal(got, want), name


def test_a_last_only_checkpoint_is_written_every_epoch_not_only_at_the_end(tmp_path: Path) -> None:
    # save_top_k 0 + save_last (the quickstart and digits presets): Lightning wrote last.ckpt only when training
    # ended, so a run killed before then had nothing to resume from.
    from diffclf.tasks.callbacks import ModelCheckpoint

    written: list[list[str]] = []

    class Look(Callback):
        def on_train_epoch_start(self, trainer: Trainer, module: object) -> None:
            written.append(sorted(p.name for p in (tmp_path / "ckpt").glob("*.ckpt")))

    saver = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=0, enable_version_counter=False)
    _trainer(tmp_path, callbacks=[saver, Look()], enable_checkpointing=True, max_epochs=3, limit_train_batches=2,
             limit_val_batches=1, num_sanity_val_steps=0).fit(_module(), datamodule=DigitsDataModule(batch_size=64))
    assert written == [[], ["last.ckpt"], ["last.ckpt"]]
    assert torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)["global_step"] == 6


def test_resume_continues_from_the_same_step_with_the_same_ema(trained: tuple, tmp_path: Path) -> None:
    from lightning.pytorch.callbacks import Callback

    _, ckpt, _ = trained
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)
    seen: dict = {}

    class Capture(Callback):
        def on_train_start(self, trainer, pl_module) -> None:
            seen["step"] = trainer.global_step
            seen["ema"] = {k: v.detach().clone() for k, v in pl_module.ema.state_dict().items()}

    trainer = _trainer(tmp_path, max_steps=saved["global_step"] + 1, callbacks=[Capture()], num_sanity_val_steps=0,
                       check_val_every_n_epoch=1000)
    trainer.fit(_module(results_dir=str(tmp_path)), datamodule=DigitsDataModule(batch_size=128), ckpt_path=ckpt)
    assert seen["step"] == saved["global_step"] == 400
    for name, value in seen["ema"].items():
        assert torch.equal(value, saved["state_dict"][f"ema.{name}"]), name
    assert trainer.global_step == 401


def test_diffusers_pipeline_gives_its_schedule_check_and_class_names(tmp_path: Path) -> None:
    from test_latents import make_vae

    from diffclf.models import create_dit
    from diffclf.models.formats import export_diffusers

    vae = tmp_path / "vae"
    make_vae(vae)
    dit = create_dit("DiT-T/2", input_size=8, in_channels=4, num_classes=10, learn_sigma=True, timestep_freq_shift=1.0)
    pipe = export_diffusers(dit, tmp_path / "pipe", {"num_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02},
                            vae_path=str(vae), id2label={i: f"class {i}" for i in range(10)})
    args = dict(model="DiT-T/2", pretrained=str(pipe), input_size=8, in_channels=4, num_classes=10, learn_sigma=True)
    module = DiffusionClassifier(**args)
    assert module.hparams.class_names[:2] == ["class 0", "class 1"]
    x, t, y = torch.randn(2, 4, 8, 8), torch.tensor([3, 700]), torch.tensor([1, 9])
    torch.testing.assert_close(module.dit.eval()(x, t, y), dit.eval()(x, t, y))
    with pytest.raises(ValueError, match="its scheduler was trained with"):
        DiffusionClassifier(**args, beta_end=0.03)


def test_label_space_class_takes_the_best_of_its_model_ids() -> None:
    from diffclf.data.label_spaces import LabelSpace

    module = _module(num_classes=4, strategy=Exhaustive(trials=4)).eval()
    module.label_space = LabelSpace(("a", "b"), ((0, 2), (3,)), 4, "grouped")  # model class 1 is never scored
    with torch.no_grad():  # DiT's zero init makes every class score alike; give classes distinct errors
        for param in module.ema.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    x, index = torch.rand(3, 1, 8, 8) * 2 - 1, torch.arange(3)
    result = module.run_strategy(x, index)
    scored = module.classify(x, index)
    scores, probs = scored.scores, module.log_probs(scored).exp()
    assert result.candidates[0].tolist() == [0, 2, 3]
    # p(c|x) in ELBO units: D*T/2 = 64 * 1000 / 2 nats per unit of mean error (1x8x8 inputs, 1000 steps).
    rank, p = result.rank_scores(), result.probs(1.0 / 32000)
    torch.testing.assert_close(scores, torch.stack([rank[:, :2].amax(1), rank[:, 2]], 1))
    torch.testing.assert_close(probs, torch.stack([p[:, :2].sum(1), p[:, 2]], 1))
    rows = module.predict_step((x, torch.tensor([0, 1, 0]), index), 0)
    best = torch.stack([result.mean_error[:, :2].amin(1), result.mean_error[:, 2]], 1)
    torch.testing.assert_close(torch.tensor([r["mean_error"] for r in rows]), best)
    assert (result.mean_error[:, 0] != result.mean_error[:, 1]).all()
    assert [r["num_draws"] for r in rows] == [[4, 4]] * 3


def test_published_checkpoint_holds_the_ema_weights_only_and_reloads_them_bit_exact(
    trained: tuple, tmp_path: Path
) -> None:
    from diffclf.cli.publish import publish

    module, ckpt, _ = trained
    out = tmp_path / "release.ckpt"
    publish(str(ckpt), str(out))
    release = torch.load(out, map_location="cpu", weights_only=False)
    assert set(release["state_dict"]) == {k for k in module.state_dict() if k.startswith("ema.")}
    assert "optimizer_states" not in release and "lr" not in release["hyper_parameters"]
    again = load_task(out)
    assert type(again) is DiffusionClassifier
    for name, value in module.state_dict().items():
        if name.startswith("ema."):
            assert torch.equal(value.cpu(), again.state_dict()[name]), name
            assert torch.equal(value.cpu(), again.state_dict()["dit." + name[4:]]), name  # fine-tunes from EMA
    x, t, y = torch.randn(2, 1, 8, 8), torch.tensor([100, 700]), torch.tensor([1, 7])
    assert torch.equal(module.ema.cpu()(x, t, y), again.ema(x, t, y))


def test_publish_refuses_a_checkpoint_without_ema_weights(tmp_path: Path) -> None:
    from diffclf.cli.publish import publish

    bad = tmp_path / "bad.ckpt"
    torch.save({"state_dict": {"dit.w": torch.zeros(1)}, "hyper_parameters": {}}, bad)
    with pytest.raises(ValueError, match="no EMA weights"):
        publish(str(bad), str(tmp_path / "out.ckpt"))


def test_init_from_starts_training_from_a_published_checkpoint_and_a_resume_wins(
    trained: tuple, tmp_path: Path
) -> None:
    from lightning.pytorch.callbacks import Callback

    from diffclf.cli.publish import publish

    module, ckpt, _ = trained
    release = tmp_path / "release.ckpt"
    publish(str(ckpt), str(release))
    seen: dict = {}

    class Capture(Callback):
        def on_train_start(self, trainer, pl_module) -> None:
            seen["dit"] = {k: v.detach().clone() for k, v in pl_module.dit.state_dict().items()}
            seen["ema"] = {k: v.detach().clone() for k, v in pl_module.ema.state_dict().items()}

    fine = _module(init_from=str(release), results_dir=str(tmp_path))
    trainer = _trainer(tmp_path, max_steps=2, callbacks=[Capture()], num_sanity_val_steps=0, limit_val_batches=0,
                       enable_checkpointing=False)
    trainer.fit(fine, datamodule=DigitsDataModule(batch_size=32))
    for name, value in module.ema.state_dict().items():
        assert torch.equal(seen["ema"][name], value.cpu()), name
        assert torch.equal(seen["dit"][name], value.cpu()), name  # training starts from the EMA weights
    assert trainer.global_step == 2  # a new run: step and optimizer start afresh

    # Resuming a run restores its own weights, not the init_from ones.
    run_ckpt = tmp_path / "run.ckpt"
    trainer.save_checkpoint(run_ckpt)
    saved = torch.load(run_ckpt, map_location="cpu", weights_only=False)["state_dict"]
    seen.clear()
    _trainer(tmp_path, max_steps=3, callbacks=[Capture()], num_sanity_val_steps=0, limit_val_batches=0,
             enable_checkpointing=False).fit(
        _module(init_from=str(release), results_dir=str(tmp_path)), datamodule=DigitsDataModule(batch_size=32),
        ckpt_path=run_ckpt,
    )
    for name, value in seen["dit"].items():
        assert torch.equal(value, saved[f"dit.{name}"]), name
    assert not all(torch.equal(seen["dit"][k], v.cpu()) for k, v in module.ema.state_dict().items())


def test_init_from_refuses_another_architecture(trained: tuple, tmp_path: Path) -> None:
    _, ckpt, _ = trained
    other = _module(init_from=str(ckpt), model_kwargs={"depth": 2})
    with pytest.raises(ValueError, match=r"init_from .*architecture differs: model_kwargs"):
        _trainer(tmp_path, max_steps=1).fit(other, datamodule=DigitsDataModule(batch_size=16))
    with pytest.raises(FileNotFoundError, match="init_from .*no such checkpoint"):
        _trainer(tmp_path, max_steps=1).fit(_module(init_from=str(tmp_path / "none.ckpt")),
                                            datamodule=DigitsDataModule(batch_size=16))


def test_compiled_scoring_gives_the_eager_predictions(trained: tuple) -> None:
    module, _, _ = trained
    module = module.cpu().eval()
    x, index = torch.rand(6, 1, 8, 8) * 2 - 1, torch.arange(6)
    module.set_scoring(compile=False)
    eager = module.classify(x, index)
    module.set_scoring(compile=True)
    kept = {k: v.clone() for k, v in module.ema.state_dict().items()}
    try:
        compiled = module.classify(x, index)
        # The EMA moves between evaluations during fit: compiled scoring must see the new weights.
        update_ema(module.ema, module.dit, 0.0)
        moved = module.classify(x, index)
        module.set_scoring(compile=False)
        moved_eager = module.classify(x, index)
    finally:
        module.ema.load_state_dict(kept)
        module.set_scoring(compile=False)
    assert "_compiled_ema" not in dict(module.named_modules())  # checkpoints keep one copy of the weights
    assert torch.equal(eager.scores.argmax(1), compiled.scores.argmax(1))
    torch.testing.assert_close(compiled.columns["mean_error"], eager.columns["mean_error"], rtol=1e-4, atol=1e-6)
    assert not torch.allclose(moved_eager.columns["mean_error"], eager.columns["mean_error"], rtol=1e-3)
    torch.testing.assert_close(moved.columns["mean_error"], moved_eager.columns["mean_error"], rtol=1e-4, atol=1e-6)
