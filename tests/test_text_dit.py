"""The two text-image models diffclf trains itself (``diffclf.models.text_dit``, ``diffclf.tasks.text_dit``):
trained for real on a toy set of coloured squares, they classify held-out images zero-shot through prompts of
the colour names; the cross-attention carries the text; caption dropout is exact; checkpoints reload bit-exact;
an unknown word is one clear line."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from conftest import randomize
from lightning.pytorch import LightningDataModule, Trainer, seed_everything
from torch.utils.data import DataLoader, TensorDataset

from diffclf.data.label_spaces import LabelSpace
from diffclf.diffusion.losses import training_draws, training_key
from diffclf.diffusion.scoring import ScoringOptions
from diffclf.metrics.accuracy import clopper_pearson
from diffclf.models.text_dit import (
    BOS_ID,
    PAD_ID,
    WordTokenizer,
    create_text_dit,
    empty_captions,
    info_nce,
    text_dit_macs,
)
from diffclf.strategies import Exhaustive
from diffclf.tasks.checkpoints import load_task
from diffclf.tasks.text_dit import ContrastiveClassifier, TextDiTClassifier

COLOURS = {"red": (1.0, -1.0, -1.0), "green": (-1.0, 1.0, -1.0), "blue": (-1.0, -1.0, 1.0)}
SIZES = ("", "small", "big")
VOCABULARY = ["a", "small", "big", "red", "green", "blue", "square"]
CAPTIONS = tuple(" ".join(w for w in ("a", s, c, "square") if w) for s in SIZES for c in COLOURS)
SIDE = 16


def toy_squares(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` images of one coloured square (small: 4-6 px, big: 8-10 px) at a random place on grey, their colour
    ids and the id of a true caption (a third of them without the size word)."""
    gen = torch.Generator().manual_seed(seed)
    colour = torch.randint(0, len(COLOURS), (n,), generator=gen)
    big = torch.randint(0, 2, (n,), generator=gen)
    named = torch.randint(0, 3, (n,), generator=gen) > 0
    images = 0.05 * torch.randn(n, 3, SIDE, SIDE, generator=gen)
    rgb = torch.tensor(list(COLOURS.values()))
    for i in range(n):
        side = int(torch.randint(4, 7, (), generator=gen)) + 4 * int(big[i])
        top, left = (int(v) for v in torch.randint(0, SIDE - side + 1, (2,), generator=gen))
        images[i, :, top : top + side, left : left + side] = rgb[colour[i]].view(3, 1, 1)
    size = torch.where(named, 1 + big, torch.zeros_like(big))
    return images, colour, size * len(COLOURS) + colour


class ToySquares(LightningDataModule):
    """Captioned coloured squares: train/val batches ``(images, caption ids, indices)`` into ``captions``, test
    batches ``(images, colour ids, indices)`` over the label space of the colour names."""

    name = "toy_squares"

    def __init__(self, n_train: int = 512, n_test: int = 96, batch_size: int = 64) -> None:
        super().__init__()
        self.captions, self.vocabulary = CAPTIONS, list(VOCABULARY)
        self.label_space = LabelSpace.identity(list(COLOURS), name="toy_colours")
        self.num_model_classes = len(COLOURS)
        self.batch_size = batch_size
        self.train = toy_squares(n_train, seed=1)
        self.held_out = toy_squares(n_test, seed=2)

    def _loader(self, images: torch.Tensor, targets: torch.Tensor, shuffle: bool) -> DataLoader:
        data = TensorDataset(images, targets, torch.arange(len(images)))
        gen = torch.Generator().manual_seed(0) if shuffle else None
        return DataLoader(data, batch_size=self.batch_size, shuffle=shuffle, generator=gen, drop_last=shuffle)

    def train_dataloader(self) -> DataLoader:
        images, _, caption = self.train
        return self._loader(images, caption, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        images, _, caption = self.held_out
        return self._loader(images, caption, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        images, colour, _ = self.held_out
        return self._loader(images, colour, shuffle=False)


def _trainer(tmp: Path, **kwargs: object) -> Trainer:
    args: dict[str, object] = {"accelerator": "cpu", "devices": 1, "logger": False, "enable_progress_bar": False,
                               "enable_model_summary": False, "default_root_dir": tmp, "enable_checkpointing": False,
                               "num_sanity_val_steps": 0, "limit_val_batches": 0}
    args.update(kwargs)
    return Trainer(**args)


def _templates(tmp: Path, *lines: str) -> str:
    path = tmp / "templates.txt"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


SMALL_DIT = {"hidden_size": 64, "depth": 2, "num_heads": 2, "text_width": 64, "text_depth": 1, "text_heads": 2}
SMALL_CLIP = {"image_encoder_kwargs": {"channels": [16, 32, 64, 128], "stem_width": 16}, "embed_dim": 64,
              "text_width": 64, "text_depth": 1, "text_heads": 2}


@pytest.fixture(scope="module")
def toy() -> ToySquares:
    return ToySquares(batch_size=32)


@pytest.fixture(scope="module")
def trained_dit(toy: ToySquares, tmp_path_factory: pytest.TempPathFactory, one_thread: None) -> tuple[TextDiTClassifier, Path]:
    """A small TextDiT trained for 300 steps of 32 toy images (about 35 s on a loaded core)."""
    tmp = tmp_path_factory.mktemp("text_dit")
    seed_everything(0)
    module = TextDiTClassifier(
        model="TextDiT-T/4", input_size=SIDE, max_tokens=8, model_kwargs=SMALL_DIT, lr=2e-3, warmup_steps=20,
        ema_decay=0.99, ema_warmup=True, caption_dropout_prob=0.1, strategy=Exhaustive(trials=20),
        scoring=ScoringOptions(batch_size=1000), templates=_templates(tmp, "a {} square"), results_dir=str(tmp),
    )
    trainer = _trainer(tmp, max_steps=300)
    trainer.fit(module, datamodule=toy)
    trainer.save_checkpoint(tmp / "text_dit.ckpt")
    return module, tmp / "text_dit.ckpt"


@pytest.fixture(scope="module")
def trained_clip(toy: ToySquares, tmp_path_factory: pytest.TempPathFactory, one_thread: None) -> tuple[ContrastiveClassifier, Path]:
    """A narrow ResNet-10-T + text encoder trained with InfoNCE for 150 steps (about 16 s)."""
    tmp = tmp_path_factory.mktemp("contrastive")
    seed_everything(0)
    module = ContrastiveClassifier(max_tokens=8, lr=1e-3, warmup_steps=20, templates=_templates(tmp, "a {} square"),
                                   results_dir=str(tmp), **SMALL_CLIP)
    trainer = _trainer(tmp, max_steps=150)
    trainer.fit(module, datamodule=toy)
    trainer.save_checkpoint(tmp / "contrastive.ckpt")
    return module, tmp / "contrastive.ckpt"


def _other_colour_captions(colour: torch.Tensor) -> list[list[str]]:
    """Per image: its colour's caption, then the next colour's (a 2-way choice, chance 1/2)."""
    names = list(COLOURS)
    return [[f"a {names[c]} square", f"a {names[(c + 1) % len(names)]} square"] for c in colour.tolist()]


# ---------------------------------------------------------------------------------------------- (a) + (d)
@pytest.mark.parametrize("which", ["trained_dit", "trained_clip"])
def test_trained_models_classify_held_out_colours_zero_shot(which: str, toy: ToySquares, tmp_path: Path,
                                                            request: pytest.FixtureRequest) -> None:
    """Chance is 1/3 over the three colour names ("a red square", ...). Both models reach 96/96 here (95% CI
    [0.962, 1]); a model that ignores its captions (the text not reaching the blocks, captions shuffled
    against the images) is at chance, so a lower bound of 0.6 fails it with room for another CPU's rounding."""
    module, _ = request.getfixturevalue(which)
    _trainer(tmp_path).test(module, datamodule=toy, verbose=False)
    record = module.test_record
    assert record["n"] == 96 and record["label_space_size"] == 3, record
    assert record["kind"] == module.kind == ("generative" if which == "trained_dit" else "contrastive")
    assert record["ci_low"] > 0.6, record


@pytest.mark.parametrize("which", ["trained_dit", "trained_clip"])
def test_match_prefers_the_true_caption(which: str, toy: ToySquares, request: pytest.FixtureRequest) -> None:
    """``match`` over free-text captions: the true colour beats another colour clearly above chance (1/2)."""
    module, _ = request.getfixturevalue(which)
    module.eval()
    images, colour, _ = toy.held_out
    images, colour = images[:48], colour[:48]
    args = {"draws": 20} if which == "trained_dit" else {}
    scores = module.match(images, _other_colour_captions(colour), torch.arange(48), **args)
    assert scores.shape == (48, 2)
    correct = int((scores[:, 0] > scores[:, 1]).sum())
    low, _ = clopper_pearson(correct, 48, 0.95)
    assert low > 0.6, (correct, low)


# ---------------------------------------------------------------------------------------------- (b)
def _random_dit(max_tokens: int = 8) -> tuple[torch.nn.Module, WordTokenizer]:
    tok = WordTokenizer(VOCABULARY, max_tokens)
    model = randomize(create_text_dit("TextDiT-T/4", tok.size, input_size=SIDE, max_tokens=max_tokens, **SMALL_DIT))
    return model.eval(), tok


def test_cross_attention_carries_the_text() -> None:
    """With the pooled-text path to adaLN cut, the captions still change eps (the cross-attention carries them);
    with the cross-attention outputs zeroed too, they do not. Fails if the blocks skip their cross-attention
    (tried: the first assertion fails) or attend to something other than the token states."""
    model, tok = _random_dit()
    x, t = torch.randn(2, 3, SIDE, SIDE), torch.tensor([300, 600])
    tokens = tok.tokenize(["a red square", "a blue square"])
    swapped = tokens.flip(0)
    with torch.no_grad():
        model.text_proj.weight.zero_()
        model.text_proj.bias.zero_()
        assert not torch.allclose(model(x, t, tokens), model(x, t, swapped), atol=1e-4)
        for block in model.blocks:
            block.cross_attn.proj.weight.zero_()
            block.cross_attn.proj.bias.zero_()
        assert torch.equal(model(x, t, tokens), model(x, t, swapped))


def test_word_order_reaches_the_model() -> None:
    """The same words in another order give another eps (position embeddings and cross-attention to token
    states, not a bag of words): the point of cross-attention for attribute binding."""
    model, tok = _random_dit()
    x, t = torch.randn(1, 3, SIDE, SIDE), torch.tensor([400])
    with torch.no_grad():
        a = model(x, t, tok.tokenize(["small red big blue square"]))
        b = model(x, t, tok.tokenize(["big blue small red square"]))
    assert not torch.allclose(a, b, atol=1e-4)


def test_blocks_start_as_identity() -> None:
    """adaLN-Zero and PixArt-α's zeroed cross-attention output: at init each block returns its input whatever
    the text (fails if the cross-attention projection is left at its default init: tried)."""
    tok = WordTokenizer(VOCABULARY, 8)
    model = create_text_dit("TextDiT-T/4", tok.size, input_size=SIDE, max_tokens=8)
    h = torch.randn(2, model.x_embedder.num_patches, model.hidden_size)
    c = torch.randn(2, model.hidden_size)
    text = model.encode_text(tok.tokenize(["a red square", "a big blue square"]))
    for block in model.blocks:
        assert torch.equal(block(h, c, text), h)


def test_padding_is_masked_everywhere() -> None:
    """Padding never reaches the output (key padding mask in the text layers and the cross-attention, pooled
    mean over words): changing the <pad> embedding changes nothing. Tried: without the cross-attention's mask
    this fails."""
    model, tok = _random_dit()
    x, t = torch.randn(2, 3, SIDE, SIDE), torch.tensor([100, 900])
    tokens = tok.tokenize(["a red square", "blue"])
    with torch.no_grad():
        before = model(x, t, tokens)
        model.text_encoder.token_embedding.weight[PAD_ID].normal_()
        after = model(x, t, tokens)
    assert torch.allclose(before, after, atol=1e-6, rtol=0)


def test_flop_count_matches_torch_counter() -> None:
    """``text_dit_macs`` equals torch's FLOP counter on one sample for every linear layer and convolution; the
    counter does not see CPU SDPA, so the attention products (``QK^T`` and ``AV``: image tokens over image
    tokens and over the text, text over text) are added to it here."""
    from torch.utils.flop_counter import FlopCounterMode

    model, tok = _random_dit()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.randn(1, 3, SIDE, SIDE), torch.tensor([10]), tok.tokenize(["a red square"]))
    cfg = model.config
    T, L, d, w = model.x_embedder.num_patches, cfg["max_tokens"], cfg["hidden_size"], cfg["text_width"]
    attention = cfg["depth"] * (2 * T * T * d + 2 * T * L * d) + cfg["text_depth"] * 2 * L * L * w
    assert counter.get_total_flops() // 2 + attention == text_dit_macs(cfg)


# ---------------------------------------------------------------------------------------------- (c)
def test_force_drop_ids_gives_the_empty_caption_exactly_there() -> None:
    """Rows with ``force_drop_ids == 1`` see the empty caption (``<bos>`` alone), the others their own; eval and
    train mode alike (tried: inverting the mask, or dropping in train mode only, fails)."""
    model, tok = _random_dit()
    tokens = tok.tokenize(["a red square", "a small blue square", "green", "a big red square"])
    drop = torch.tensor([0, 1, 1, 0])
    emptied = empty_captions(tokens, drop)
    assert torch.equal(emptied[[0, 3]], tokens[[0, 3]])
    assert emptied[[1, 2], 0].eq(BOS_ID).all() and emptied[[1, 2], 1:].eq(PAD_ID).all()
    assert torch.equal(emptied[1], tok.tokenize([""])[0])
    x, t = torch.randn(4, 3, SIDE, SIDE), torch.tensor([50, 300, 600, 900])
    with torch.no_grad():
        for mode in (model.eval, model.train):
            mode()
            dropped = model(x, t, tokens, force_drop_ids=drop)
            assert torch.equal(dropped, model(x, t, emptied))
            kept = model(x, t, tokens)
            assert torch.equal(dropped[[0, 3]], kept[[0, 3]])
            assert not torch.allclose(dropped[[1, 2]], kept[[1, 2]], atol=1e-4)


def test_training_drops_captions_with_the_steps_seeded_draws(toy: ToySquares, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The training step passes ``training_draws``' mask of its key (seed, world, rank, step, micro) as
    ``force_drop_ids``, at the configured rate (tried: a mask from the global RNG fails)."""
    module = TextDiTClassifier(model="TextDiT-T/4", input_size=SIDE, max_tokens=8, vocabulary=VOCABULARY,
                               model_kwargs=SMALL_DIT, caption_dropout_prob=0.5, seed=3)
    original = type(module.dit).forward
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def spy(self: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, tokens: torch.Tensor,
            force_drop_ids: torch.Tensor | None = None) -> torch.Tensor:
        seen.append((t.clone(), force_drop_ids.clone()))
        return original(self, x, t, tokens, force_drop_ids)

    monkeypatch.setattr(type(module.dit), "forward", spy)
    trainer = _trainer(tmp_path, max_steps=3)
    trainer.fit(module, datamodule=toy)
    assert len(seen) == 3
    for step, (t, drop) in enumerate(seen):
        want = training_draws(training_key(3, 1, 0, step, 0), (32, 3, SIDE, SIDE), 1000, 0.5, "cpu")
        assert torch.equal(t, want.t) and torch.equal(drop, want.drop)
    assert 0 < sum(int(d.sum()) for _, d in seen) < 96


def test_velocity_loss_weighs_each_images_eps_error_by_its_inverse_abar(toy: ToySquares, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """``loss_weighting="velocity"`` trains on ``mean(mse_i / abar_{t_i})`` of the step's own draws, written out
    here from the denoiser's output and the schedule's float64 ``abar``; ``eps`` keeps the plain mean. Mutation
    tried: weighting the batch-mean mse by the mean of ``1 / abar`` (not per image) fails; and an unknown
    weighting is refused in one line."""
    logged = {}
    for weighting in ("eps", "velocity"):
        module = TextDiTClassifier(model="TextDiT-T/4", input_size=SIDE, max_tokens=8, vocabulary=VOCABULARY,
                                   model_kwargs=SMALL_DIT, lr=0.0, caption_dropout_prob=0.0, seed=4,
                                   loss_weighting=weighting)
        original = type(module.dit).forward
        outs: list[torch.Tensor] = []

        def spy(self: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, tokens: torch.Tensor,
                force_drop_ids: torch.Tensor | None = None, original=original, outs=outs) -> torch.Tensor:
            out = original(self, x, t, tokens, force_drop_ids)
            outs.append(out.detach().clone())
            return out

        monkeypatch.setattr(type(module.dit), "forward", spy)
        trainer = _trainer(tmp_path, max_steps=1)
        trainer.fit(module, datamodule=toy)
        monkeypatch.undo()
        images = next(iter(toy.train_dataloader()))[0]
        draws = training_draws(training_key(4, 1, 0, 0, 0), images.shape, 1000, 0.0, "cpu")
        mse = (outs[0].double() - draws.noise.double()).pow(2).mean(dim=(1, 2, 3))
        abar = module.schedule.alphas_cumprod.double()[draws.t]
        want = (mse / abar).mean() if weighting == "velocity" else mse.mean()
        logged[weighting] = float(trainer.callback_metrics["train/loss"])
        assert abs(logged[weighting] - float(want)) <= 1e-5 * float(want)
    assert logged["velocity"] > 2 * logged["eps"]
    with pytest.raises(ValueError, match="loss_weighting"):
        TextDiTClassifier(vocabulary=VOCABULARY, loss_weighting="x0")


class ToySquaresWithTruth(ToySquares):
    """ToySquares with every training image's true captions (its colour with and without its size word), as
    ``ScenesDataModule.scene_captions`` gives them: what the hybrid objective needs to pick false negatives."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        _, colour, caption = self.train
        self.scene_captions = {"train": tuple((int(c), int(k)) for c, k in zip(colour, caption))}


def test_hybrid_step_scores_the_own_caption_against_false_ones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One hybrid step: the second denoiser call holds the first ``hybrid_images`` images on their own ``(t, eps)``
    with their own caption first and false batch captions after, and the logged cross-entropy equals one written
    out from per-candidate forwards. Mutation tried: negatives that only exclude the own caption (so the other true
    caption of an image, 6 of 8 drawn, gets in) fail."""
    data = ToySquaresWithTruth(batch_size=32)
    module = TextDiTClassifier(model="TextDiT-T/4", input_size=SIDE, max_tokens=8, vocabulary=VOCABULARY,
                               model_kwargs=SMALL_DIT, lr=0.0, caption_dropout_prob=0.0, hybrid_weight=1.0,
                               hybrid_images=4, hybrid_captions=7, seed=5)
    original = type(module.dit).forward
    calls: list[tuple[torch.Tensor, ...]] = []

    def spy(self: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, tokens: torch.Tensor,
            force_drop_ids: torch.Tensor | None = None) -> torch.Tensor:
        calls.append((x.detach().clone(), t.clone(), tokens.clone()))
        return original(self, x, t, tokens, force_drop_ids)

    monkeypatch.setattr(type(module.dit), "forward", spy)
    trainer = _trainer(tmp_path, max_steps=1)
    trainer.fit(module, datamodule=data)
    assert len(calls) == 2
    (x_all, t_all, tok_all), (x_h, t_h, tok_h) = calls
    images, caption_ids, index = next(iter(data.train_dataloader()))
    draws = training_draws(training_key(5, 1, 0, 0, 0), images.shape, 1000, 0.0, "cpu")
    assert torch.equal(t_all, draws.t) and x_h.shape[0] == 28
    rows = {tuple(r): k for k, r in enumerate(module.caption_tokens.tolist())}
    cands = torch.tensor([rows[tuple(r)] for r in tok_h.tolist()]).view(4, 7)
    assert torch.equal(cands[:, 0], caption_ids[:4])
    for m in range(4):
        truth = set(data.scene_captions["train"][int(index[m])])
        assert not set(cands[m, 1:].tolist()) & truth and set(cands[m, 1:].tolist()) <= set(caption_ids.tolist())
        assert torch.equal(x_h[7 * m], x_all[m]) and torch.equal(t_h[7 * m : 7 * m + 7], t_all[m].repeat(7))
    monkeypatch.undo()
    want = 0.0
    with torch.no_grad():
        for m in range(4):
            err = [float((module.dit(x_all[m:m + 1], t_all[m:m + 1], module.caption_tokens[c].view(1, -1))
                          - draws.noise[m:m + 1]).pow(2).sum()) for c in cands[m].tolist()]
            lowest = min(err)  # the softmax written out, shifted so that exp does not underflow
            want += (err[0] - lowest + math.log(sum(math.exp(lowest - e) for e in err))) / 4
    assert abs(float(trainer.callback_metrics["train/hybrid_ce"]) - want) < 1e-3
    with pytest.raises(ValueError, match="scene_captions"):
        _trainer(tmp_path, max_steps=1).fit(
            TextDiTClassifier(model="TextDiT-T/4", input_size=SIDE, max_tokens=8, vocabulary=VOCABULARY,
                              model_kwargs=SMALL_DIT, hybrid_weight=1.0), datamodule=ToySquares(batch_size=32))
    with pytest.raises(ValueError, match="hybrid_captions"):
        TextDiTClassifier(vocabulary=VOCABULARY, hybrid_captions=1)


def test_word_table_gets_its_own_rate(toy: ToySquares, tmp_path: Path) -> None:
    """``cond_lr_mult`` puts the word-embedding table (and nothing else) in a group at ``lr * mult``; at 1 there
    is one group. Mutation tried: passing DiT's default table (a TextDiT has no class table: AttributeError)."""
    module = TextDiTClassifier(model="TextDiT-T/4", input_size=SIDE, max_tokens=8, vocabulary=VOCABULARY,
                               model_kwargs=SMALL_DIT, lr=1e-3, cond_lr_mult=10.0)
    opt = module.configure_optimizers()
    groups = opt.param_groups
    table = module.dit.text_encoder.token_embedding.weight
    assert [g["lr"] for g in groups] == [1e-3, 1e-2]
    assert groups[1]["params"] == [table] and all(p is not table for p in groups[0]["params"])
    assert sum(len(g["params"]) for g in groups) == len([p for p in module.dit.parameters() if p.requires_grad])
    single = TextDiTClassifier(model="TextDiT-T/4", input_size=SIDE, max_tokens=8, vocabulary=VOCABULARY,
                               model_kwargs=SMALL_DIT, lr=1e-3)
    assert len(single.configure_optimizers().param_groups) == 1
    with pytest.raises(ValueError, match="cond_lr_mult"):
        TextDiTClassifier(vocabulary=VOCABULARY, cond_lr_mult=0.0)


# ---------------------------------------------------------------------------------------------- InfoNCE
def test_info_nce_is_clips_loss_without_repeats() -> None:
    logits = torch.randn(6, 6, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(6)
    clip = (torch.nn.functional.cross_entropy(logits, labels) + torch.nn.functional.cross_entropy(logits.T, labels)) / 2
    assert torch.allclose(info_nce(logits), clip) and torch.allclose(info_nce(logits, torch.arange(6) + 10), clip)


def test_info_nce_treats_repeated_captions_as_positives() -> None:
    """Swapping the text columns of two rows with the same caption changes nothing (both are positives of both
    images); CLIP's diagonal targets would call one of them a negative (tried: that fails)."""
    logits = torch.randn(5, 5, generator=torch.Generator().manual_seed(1))
    groups = torch.tensor([4, 7, 4, 2, 7])
    swapped = logits[:, [2, 1, 0, 3, 4]]
    assert torch.allclose(info_nce(logits, groups), info_nce(swapped, groups))
    assert not torch.allclose(info_nce(logits), info_nce(swapped))


def test_logit_scale_starts_at_clip_value_and_is_clamped_at_100() -> None:
    from diffclf.models.text_dit import ContrastiveModel

    model = ContrastiveModel(9, 8, text_width=32, text_depth=1, embed_dim=16,
                             image_encoder_kwargs=SMALL_CLIP["image_encoder_kwargs"])
    assert math.isclose(model.scale().item(), 1 / 0.07, rel_tol=1e-5)
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    assert math.isclose(model.scale().item(), 100.0, rel_tol=1e-5)


# ---------------------------------------------------------------------------------------------- (e)
def test_text_dit_checkpoint_reloads_bit_exact(trained_dit: tuple) -> None:
    """Rebuilt from the file alone (the vocabulary is in its hyperparameters): the same weights, eps and match
    scores (tried: not saving the vocabulary leaves the reloaded task without a model and fails)."""
    module, ckpt = trained_dit
    again = TextDiTClassifier.load_from_checkpoint(ckpt, map_location="cpu")
    assert again.hparams.vocabulary == VOCABULARY
    assert list(module.state_dict()) == list(again.state_dict())
    for (name, a), b in zip(module.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), name
    x, t = torch.randn(3, 3, SIDE, SIDE), torch.tensor([5, 500, 900])
    tokens = module.tokenizer.tokenize(["a red square", "a big blue square", ""])
    assert torch.equal(module.ema(x, t, tokens), again.ema(x, t, tokens))
    images = ToySquares(n_train=0, n_test=4).held_out[0]
    captions = [list(CAPTIONS[:3])] * 4
    keys = torch.arange(4)
    assert torch.equal(module.match(images, captions, keys, draws=8), again.match(images, captions, keys, draws=8))
    assert type(load_task(ckpt)) is TextDiTClassifier


def test_contrastive_checkpoint_reloads_bit_exact(trained_clip: tuple) -> None:
    module, ckpt = trained_clip
    module.eval()
    again = load_task(ckpt)
    assert type(again) is ContrastiveClassifier and again.hparams.vocabulary == VOCABULARY
    for (name, a), b in zip(module.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), name
    images = ToySquares(n_train=0, n_test=4).held_out[0]
    captions = [list(CAPTIONS)] * 4
    assert torch.equal(module.match(images, captions, torch.arange(4)), again.match(images, captions, torch.arange(4)))


def test_published_checkpoints_reload_to_the_same_scores(trained_dit: tuple, trained_clip: tuple, tmp_path: Path) -> None:
    """``cli.py publish`` of both kinds: the TextDiT keeps its EMA weights alone (and loads them as its training
    weights too), the contrastive model, which has no EMA, its weights; either reloads to bit-identical match
    scores. Mutations tried: publishing the contrastive model refused for lacking ``ema.*`` (the old rule); no
    ``on_load_checkpoint`` on the TextDiT (strict loading fails on the missing ``dit.*``)."""
    from diffclf.cli import main

    images = ToySquares(n_train=0, n_test=4).held_out[0]
    captions = [list(CAPTIONS[:3])] * 4
    keys = torch.arange(4)
    for (module, ckpt), name in ((trained_dit, "dit"), (trained_clip, "clip")):
        out = tmp_path / f"{name}.ckpt"
        main(["publish", "--ckpt_path", str(ckpt), "--out", str(out)])
        release = torch.load(out, map_location="cpu", weights_only=False)
        assert "optimizer_states" not in release
        again = load_task(out)
        assert type(again) is type(module)
        module.eval()
        kw = {"draws": 8} if name == "dit" else {}
        assert torch.equal(module.match(images, captions, keys, **kw), again.match(images, captions, keys, **kw))
        if name == "dit":
            assert all(k.startswith("ema.") for k in release["state_dict"])
            for (k, a), b in zip(again.dit.state_dict().items(), again.ema.state_dict().values()):
                assert torch.equal(a, b), k
        else:
            assert not any(k.startswith("ema.") for k in release["state_dict"])


# ---------------------------------------------------------------------------------------------- (f)
def test_unknown_word_is_one_clear_line() -> None:
    tok = WordTokenizer(VOCABULARY, 8)
    with pytest.raises(ValueError) as err:
        tok.tokenize(["a red square", "A purple square."])
    message = str(err.value)
    assert "'purple'" in message and "7 words" in message and "\n" not in message


def test_prompts_outside_the_vocabulary_fail_at_setup(toy: ToySquares, tmp_path: Path) -> None:
    """A shipped preset ("a photo of a {}.") has words the toy model never saw: ``test`` stops before any batch,
    naming the word and the prompts; without templates the prompts are the class names themselves."""
    module = TextDiTClassifier(model="TextDiT-T/4", input_size=SIDE, max_tokens=8, vocabulary=VOCABULARY,
                               model_kwargs=SMALL_DIT, strategy=Exhaustive(trials=2), templates="photo",
                               results_dir=str(tmp_path))
    with pytest.raises(ValueError, match=r"prompts templates:photo: word 'photo'") as err:
        _trainer(tmp_path).test(module, datamodule=toy, verbose=False)
    assert "\n" not in str(err.value)
    module.hparams.templates = None
    _trainer(tmp_path).test(module, datamodule=toy, verbose=False)
    assert module.prompts.flat == list(COLOURS) and module.test_record["prompts"] == "class names"


def test_tokenizer_layout() -> None:
    """<bos> first, words from id 2, padding to max_tokens, punctuation and case ignored; too long is an error."""
    tok = WordTokenizer(VOCABULARY, 5)
    assert tok.tokenize(["A red, square!"]).tolist() == [[BOS_ID, 2, 5, 8, PAD_ID]]
    with pytest.raises(ValueError, match="max_tokens=5"):
        tok.tokenize(["a small red big square"])
    with pytest.raises(ValueError, match="repeats"):
        WordTokenizer(["a", "A"])
