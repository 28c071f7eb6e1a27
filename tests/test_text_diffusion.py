"""Zero-shot classification with text-to-image diffusion models from local diffusers folders (issue 18).

Tiny random SD and SD3 pipelines are built and saved in the true folder formats (tests/tiny_pipelines.py);
CIFAR-10 is a miniature in its real pickle layout (conftest.write_cifar10). The official Diffusion
Classifier's ``eval_prob_adaptive`` arithmetic is re-implemented here, independently of diffclf, from its
source (even grid ``T//n//2 + k*T//n``, stage sub-grids, noise numbered by first evaluation, x_t from
``alphas_cumprod``, mean over C, H, W).
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import REPO, write_cifar10
from lightning.pytorch import Trainer
from tiny_pipelines import build_sd3_pipeline, build_sd_pipeline

from diffclf.cli import main
from diffclf.data import Cifar10DataModule
from diffclf.diffusion.scoring import Scorer, ScoringOptions
from diffclf.models.text_to_image import TextToImageModel
from diffclf.strategies import Adaptive, Exhaustive
from diffclf.tasks import TextDiffusionClassifier

CIFAR10 = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_sd_pipeline(tmp_path_factory.mktemp("sd") / "pipe")


@pytest.fixture(scope="module")
def sd3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_sd3_pipeline(tmp_path_factory.mktemp("sd3") / "pipe")


@pytest.fixture(scope="module")
def cifar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_cifar10(tmp_path_factory.mktemp("cifar"), per_class=1)


def prompt_csv(path: Path, names: tuple[str, ...] = CIFAR10) -> Path:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["prompt", "classname", "classidx"])
        for k, name in enumerate(names):
            writer.writerow([f"a photo of a {name}.", name, k])
    return path


def run_task(task: TextDiffusionClassifier, cifar: Path, eval_batch_size: int = 5) -> tuple[torch.Tensor, ...]:
    """Set the task up on the CIFAR-10 miniature through a Trainer and classify its test split directly."""
    dm = Cifar10DataModule(root=str(cifar), image_size=32, eval_batch_size=eval_batch_size, num_workers=0)
    trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                      default_root_dir=str(cifar.parent / "run"))
    trainer.test(task, datamodule=dm, verbose=False)
    rows = [], [], [], []
    for images, targets, index in dm.test_dataloader():
        scored = task.classify(images, index)
        for out, value in zip(rows, (scored.scores.argmax(1), scored.columns["mean_error"], index, scored.forwards)):
            out.append(value)
    return tuple(torch.cat(r) for r in rows)


# ------------------------------------------------------------------ the official loop, re-implemented
def official_eval_prob_adaptive(unet, latent, text_embeds, alphas_cumprod, all_noise, n_samples, to_keep, loss):
    """diffusion-classifier's ``eval_prob_adaptive`` + ``eval_error`` (n_trials = 1), written from its source."""
    T = 1000
    max_n = max(n_samples)
    data: dict[int, dict[str, torch.Tensor]] = {}
    t_evaluated: set[int] = set()
    remaining = list(range(len(text_embeds)))
    start = T // max_n // 2
    t_to_eval = list(range(start, T, T // max_n))[:max_n]
    for n, keep in zip(n_samples, to_keep):
        ts, noise_idxs, embed_idxs = [], [], []
        curr = t_to_eval[len(t_to_eval) // n // 2:: len(t_to_eval) // n][:n]
        curr = [t for t in curr if t not in t_evaluated]
        for p in remaining:
            for t_idx, t in enumerate(curr, start=len(t_evaluated)):
                ts.append(t)
                noise_idxs.append(t_idx)
                embed_idxs.append(p)
        t_evaluated.update(curr)
        errors = torch.zeros(len(ts))
        for i in range(0, len(ts), 7):  # batches of 7: not a divisor of anything in the schedule
            bt = torch.tensor(ts[i: i + 7])
            noise = all_noise[noise_idxs[i: i + 7]]
            a = alphas_cumprod[bt]
            noised = latent * (a ** 0.5).view(-1, 1, 1, 1) + noise * ((1 - a) ** 0.5).view(-1, 1, 1, 1)
            pred = unet(noised, bt, encoder_hidden_states=text_embeds[embed_idxs[i: i + 7]]).sample
            err = F.mse_loss(noise, pred, reduction="none") if loss == "l2" else F.l1_loss(noise, pred, reduction="none")
            errors[i: i + len(bt)] = err.mean(dim=(1, 2, 3))
        for p in remaining:
            mask = torch.tensor(embed_idxs) == p
            got = dict(t=torch.tensor(ts)[mask], pred_errors=errors[mask])
            data[p] = got if p not in data else {k: torch.cat([data[p][k], got[k]]) for k in got}
        means = torch.tensor([-data[p]["pred_errors"].mean() for p in remaining])
        remaining = [remaining[i] for i in torch.topk(means, k=keep).indices.tolist()]
    return remaining[0], data


def test_per_prompt_errors_equal_the_official_adaptive_loop(sd_dir: Path, cifar: Path, tmp_path: Path) -> None:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    bank = torch.randn(16, 4, 4, 4, generator=torch.Generator().manual_seed(3))
    torch.save(bank, tmp_path / "noise.pt")
    task = TextDiffusionClassifier(
        pretrained=str(sd_dir), prompt_file=str(prompt_csv(tmp_path / "prompts.csv")), combine="best",
        noise_path=str(tmp_path / "noise.pt"), text_cache=str(tmp_path / "cache.safetensors"),
        strategy=Adaptive(keep=[3, 1], trials=[4, 8], schedule="official"), scoring=ScoringOptions(error="l1"),
    )
    preds, mean_error, index, _ = run_task(task, cifar)

    unet = UNet2DConditionModel.from_pretrained(sd_dir / "unet").eval()
    vae = AutoencoderKL.from_pretrained(sd_dir / "vae").eval()
    tok = CLIPTokenizer.from_pretrained(sd_dir / "tokenizer")
    enc = CLIPTextModel.from_pretrained(sd_dir / "text_encoder").eval()
    abar = DDPMScheduler.from_pretrained(sd_dir / "scheduler").alphas_cumprod
    dm = Cifar10DataModule(root=str(cifar), image_size=32, eval_batch_size=10, num_workers=0)
    dm.setup("test")
    with torch.no_grad():
        ids = tok([f"a photo of a {n}." for n in CIFAR10], padding="max_length", max_length=tok.model_max_length,
                  truncation=True, return_tensors="pt").input_ids
        embeds = enc(ids)[0]
        checked = 0
        for images, _, idx in dm.test_dataloader():
            for image, i in zip(images, idx.tolist()):
                latent = vae.encode(image[None]).latent_dist.mean * 0.18215
                pred, data = official_eval_prob_adaptive(unet, latent, embeds, abar, bank, [4, 8], [3, 1], "l1")
                row = index.tolist().index(i)
                assert preds[row].item() == pred
                ours = mean_error[row]
                for p in range(10):
                    torch.testing.assert_close(ours[p], data[p]["pred_errors"].mean(), rtol=1e-4, atol=1e-6)
                checked += 1
    assert checked == 10


# ------------------------------------------------------------------ invariances and the cache
def test_predictions_do_not_depend_on_batch_size_or_template_order(sd_dir: Path, cifar: Path, tmp_path: Path) -> None:
    lines = ["a photo of a {}.", "a blurry photo of a {}.", "a photo of the {}."]
    (tmp_path / "t1.txt").write_text("\n".join(lines))
    (tmp_path / "t2.txt").write_text("\n".join(reversed(lines)))
    results = []
    for templates, batch, eval_batch in ((tmp_path / "t1.txt", 64, 5), (tmp_path / "t2.txt", 3, 2)):
        task = TextDiffusionClassifier(
            pretrained=str(sd_dir), templates=str(templates), text_cache=str(tmp_path / f"{templates.stem}.st"),
            strategy=Exhaustive(trials=6), scoring=ScoringOptions(batch_size=batch),
        )
        preds, mean_error, index, forwards = run_task(task, cifar, eval_batch)
        assert forwards.tolist() == [10 * 6] * 10
        order = index.argsort()
        results.append((preds[order], mean_error[order]))
    assert torch.equal(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-5, atol=1e-7)


def test_templates_combine_in_error_space_by_cycling_over_draws(sd_dir: Path, cifar: Path, tmp_path: Path) -> None:
    """combine error: each draw of class c is conditioned on one template, every V neighbouring timesteps on all
    of them, so a class's mean error is the mean of its templates' errors; the scorer is told so through
    ``variants``."""
    (tmp_path / "t.txt").write_text("a photo of a {}.\na blurry photo of a {}.")
    task = TextDiffusionClassifier(pretrained=str(sd_dir), templates=str(tmp_path / "t.txt"),
                                   text_cache=str(tmp_path / "c.st"), strategy=Exhaustive(trials=4))
    run_task(task, cifar)
    assert task.variants == 2 and len(task.cond) == 20 and task.label_space.num_model_classes == 10
    seen = []
    scorer = task.scorer((4, 4, 4))
    original = scorer.denoise
    scorer.denoise = lambda x_t, t, rows: (seen.append(rows.clone()), original(x_t, t, rows))[1]
    table = scorer.new_table(torch.zeros(1, 4, 4, 4), torch.tensor([3]))
    scorer.score(table, torch.zeros(1, 4, 4, 4), torch.tensor([0]), 0, 4)
    # sorted templates: row 2c = "a blurry photo of a cat.", 2c+1 = "a photo of a cat."; draws 0..3 lie at grid
    # positions 0, 2, 1, 3 (the spread order): positions 0 and 3 take one template, 1 and 2 the other
    assert torch.cat(seen).tolist() == [6, 7, 7, 6]


def test_text_cache_is_reused_and_refused_for_another_encoder(sd_dir: Path, cifar: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cifar.safetensors"
    kwargs = dict(templates="photo", text_cache=str(cache), strategy=Exhaustive(trials=2))
    first = TextDiffusionClassifier(pretrained=str(sd_dir), **kwargs)
    run_task(first, cifar)
    assert first.text_cache_hit is False and cache.is_file()
    second = TextDiffusionClassifier(pretrained=str(sd_dir), **kwargs)
    second.t2i.encode_prompts = None  # a cache miss would now fail
    run_task(second, cifar)
    assert second.text_cache_hit is True
    torch.testing.assert_close(second.cond.hidden.float(), first.cond.hidden.float())
    other = build_sd_pipeline(tmp_path / "other", seed=1)
    with pytest.raises(ValueError, match="holds embeddings of another text encoder or tokenizer"):
        run_task(TextDiffusionClassifier(pretrained=str(other), **kwargs), cifar)


# ------------------------------------------------------------------ targets: eps, v and flow
def test_an_eps_model_and_its_v_reparametrisation_give_the_same_errors(sd_dir: Path, tmp_path: Path) -> None:
    v_dir = tmp_path / "v"
    shutil.copytree(sd_dir, v_dir)
    cfg_file = v_dir / "scheduler" / "scheduler_config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg_file.write_text(json.dumps({**cfg, "prediction_type": "v_prediction"}))
    eps_model, v_model = TextToImageModel(sd_dir), TextToImageModel(v_dir)
    assert v_model.prediction_type == "v_prediction"
    unet = v_model.denoiser
    abar = torch.as_tensor(v_model.schedule.alphas_cumprod, dtype=torch.float32)

    class AsV(torch.nn.Module):
        """The eps UNet reparametrised to predict v = sqrt(abar) eps - sqrt(1-abar) x0 (Salimans & Ho)."""

        def forward(self, x_t, t, encoder_hidden_states):
            eps = unet(x_t, t, encoder_hidden_states=encoder_hidden_states).sample
            a, b = abar[t].sqrt().view(-1, 1, 1, 1), (1 - abar[t]).sqrt().view(-1, 1, 1, 1)
            x0 = (x_t - b * eps) / a
            return type("Out", (), {"sample": a * eps - b * x0})()

    v_model.denoiser = AsV()
    cond = eps_model.encode_prompts([f"a photo of a {n}." for n in CIFAR10])
    x = torch.randn(2, 4, 4, 4)
    errors = []
    for model in (eps_model, v_model):
        scorer = Scorer(lambda x_t, t, rows, m=model: m.eps(x_t, t, cond, rows), model.schedule, 4,
                        max_draws=20, num_classes=10)
        table = scorer.new_table(x)
        scorer.score(table, x, torch.tensor([0, 1]), 0, 20)
        errors.append(table.mean_error())
    torch.testing.assert_close(errors[0], errors[1], rtol=2e-3, atol=1e-5)
    assert torch.equal(errors[0].argsort(1), errors[1].argsort(1))


def test_flow_models_are_scored_in_eps_units_and_velocity_weighting_gives_the_raw_velocity_error(sd3_dir: Path) -> None:
    model = TextToImageModel(sd3_dir)
    assert model.prediction_type == "flow" and model.is_flow
    cond = model.encode_prompts(["a photo of a cat.", "a photo of a dog."])
    x0 = torch.randn(1, 4, 4, 4)
    eps = torch.randn(1, 4, 4, 4)
    for t in (100, 700):
        sigma = float(model.schedule.sigmas[t])
        x_t = (1 - sigma) * x0 + sigma * eps
        with torch.no_grad():
            v_hat = model.denoiser(hidden_states=x_t, timestep=torch.tensor([sigma * 1000]),
                                   encoder_hidden_states=cond.hidden[:1], pooled_projections=cond.pooled[:1]).sample
        v = eps - x0
        eps_hat = model.eps(x_t, torch.tensor([t]), cond, torch.tensor([0]))
        torch.testing.assert_close((eps_hat - eps).square().mean(), (1 - sigma) ** 2 * (v_hat - v).square().mean(),
                                   rtol=1e-4, atol=1e-7)
        velocity = Scorer(lambda *a: None, model.schedule, 4, max_draws=1, num_classes=2, weighting="velocity")
        torch.testing.assert_close(float(velocity.weights()[t]), 1 / (1 - sigma) ** 2, rtol=1e-5, atol=0)
        x0_space = Scorer(lambda *a: None, model.schedule, 4, max_draws=1, num_classes=2, weighting="exp", weight_rate=0.0)
        torch.testing.assert_close(float(x0_space.weights()[t]), sigma ** 2 / (1 - sigma) ** 2, rtol=1e-5, atol=0)


def test_the_pure_noise_endpoint_of_a_flow_schedule_is_scored_not_dropped(sd3_dir: Path) -> None:
    # SD3's shifted sigmas end at exactly 1 (SNR 0): x0-space weighting once gave 0 * inf = NaN there, and the draw
    # was silently counted as unscored. eps_hat = x_t = eps at sigma 1, so its error is 0 for every class.
    schedule = TextToImageModel(sd3_dir).schedule
    assert float(schedule.sigmas[999]) == 1.0
    for weighting in ("exp", "velocity"):
        scorer = Scorer(lambda x_t, t, y: x_t, schedule, 4, max_draws=500, num_classes=2, weighting=weighting)
        assert 999 in scorer.timesteps(torch.tensor([0])).tolist()[0] and torch.isfinite(scorer.weights()).all()
        x = torch.randn(1, 4, 4, 4)
        table = scorer.new_table(x)
        scorer.score(table, x, torch.tensor([0]), 0, 500)
        assert not torch.isnan(table.errors).any() and table.counts.tolist() == [[500, 500]]


def test_flow_models_get_fp32_times_in_half_precision(sd3_dir: Path) -> None:
    # diffusers' StableDiffusion3Pipeline passes sigma * 1000 in fp32; cast to bf16 they merge into neighbours
    model = TextToImageModel(sd3_dir, dtype=torch.bfloat16)
    cond = model.encode_prompts(["a photo of a cat."]).to(torch.device("cpu"), torch.bfloat16)  # as the task does
    seen: list[torch.Tensor] = []
    forward = model.denoiser.forward
    model.denoiser.forward = lambda *a, **k: (seen.append(k["timestep"]), forward(*a, **k))[1]
    t = torch.tensor([876, 999])
    model.eps(torch.randn(2, 4, 4, 4), t, cond, torch.tensor([0, 0]))
    want = torch.tensor([float(model.schedule.sigmas[int(i)]) * 1000 for i in t])
    assert seen[0].dtype == torch.float32
    torch.testing.assert_close(seen[0], want, rtol=0, atol=1e-3)
    assert (seen[0].to(torch.bfloat16).float() - want).abs().max() > 0.1  # what a bf16 cast would have fed it


# ------------------------------------------------------------------ bad input
def test_bad_pipeline_folders_give_one_clear_line(sd_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(sd_dir, broken)
    shutil.rmtree(broken / "unet")
    with pytest.raises(FileNotFoundError, match=r"component 'unet' is missing"):
        TextToImageModel(broken)
    wide = build_sd_pipeline(tmp_path / "wide", text_width=48)
    with pytest.raises(ValueError, match=r"48-wide states but the UNet's cross-attention takes 32"):
        TextToImageModel(wide)
    v_dir = tmp_path / "v"
    shutil.copytree(sd_dir, v_dir)
    cfg_file = v_dir / "scheduler" / "scheduler_config.json"
    cfg_file.write_text(json.dumps({**json.loads(cfg_file.read_text()), "prediction_type": "v_prediction"}))
    with pytest.raises(ValueError, match=r"prediction_type epsilon but .*scheduler_config.json says v_prediction"):
        TextToImageModel(v_dir, prediction_type="epsilon")


def test_scoring_options_it_cannot_run_are_refused_before_the_pipeline_loads(tmp_path: Path) -> None:
    """A record must not say ``compile: true`` for an eager run (the option is DiffusionClassifier's)."""
    missing = str(tmp_path / "no_pipeline")
    with pytest.raises(ValueError, match=r"scoring.compile is not supported by TextDiffusionClassifier"):
        TextDiffusionClassifier(pretrained=missing, scoring=ScoringOptions(compile=True))
    with pytest.raises(ValueError, match=r"scoring.flip_views: a zero-shot model"):
        TextDiffusionClassifier(pretrained=missing, scoring=ScoringOptions(flip_views=True))
    with pytest.raises(ValueError, match=r"scoring.recheck is not supported by TextDiffusionClassifier"):
        TextDiffusionClassifier(pretrained=missing, scoring=ScoringOptions(recheck=0.01))


def test_a_prompt_file_for_other_classes_is_refused(sd_dir: Path, cifar: Path, tmp_path: Path) -> None:
    names = list(CIFAR10)
    names[3] = "kitten"
    task = TextDiffusionClassifier(pretrained=str(sd_dir), prompt_file=str(prompt_csv(tmp_path / "p.csv", tuple(names))),
                                   text_cache=str(tmp_path / "c.st"))
    with pytest.raises(ValueError, match=r"classes differ from the data's: .*classidx 3 is 'kitten' in the file but 'cat'"):
        run_task(task, cifar)


# ------------------------------------------------------------------ the command line, every strategy
def timm_checkpoint(path: Path) -> Path:
    """A 10-class timm classifier checkpoint (random weights) for the prefilter."""
    from diffclf.tasks import TimmClassifier

    net = TimmClassifier(model_name="resnet18", num_classes=10, in_chans=3, img_size=32)
    state = {f"model.{k}": v for k, v in net.model.state_dict().items()}
    torch.save({"state_dict": state, "hyper_parameters": dict(net.hparams),
                "classifier_config": dict(net.model.config)}, path)
    return path


STRATEGIES = {
    "adaptive": [],  # the config's own: the official CIFAR-10 schedule, shortened below
    "exhaustive": ["--model.init_args.strategy", "exhaustive", "--model.init_args.strategy.init_args.trials", "4"],
    "ttest": ["--model.init_args.strategy", "ttest", "--model.init_args.strategy.init_args.min_trials", "3",
              "--model.init_args.strategy.init_args.max_trials", "6", "--model.init_args.strategy.init_args.round_size", "3"],
}


@pytest.mark.parametrize("strategy", [*STRATEGIES, "prefilter"])
def test_sd_zero_shot_config_runs_end_to_end(strategy: str, sd_dir: Path, cifar: Path, tmp_path: Path) -> None:
    args = ["test", "--config", str(REPO / "configs" / "sd_zero_shot.yaml"), "--data.init_args.root", str(cifar),
            "--data.init_args.image_size", "32", "--data.init_args.num_workers", "0",
            "--model.init_args.pretrained", str(sd_dir), "--trainer.default_root_dir", str(tmp_path / "run"),
            "--trainer.accelerator", "cpu", "--model.init_args.text_cache", str(tmp_path / "cache.st"),
            "--model.init_args.results_file", str(tmp_path / "results.jsonl"),
            "--model.init_args.strategy.init_args.trials", "[4, 8]"]
    if strategy == "prefilter":
        spec = {"class_path": "diffclf.strategies.Prefilter", "init_args": {
            "classifier": str(timm_checkpoint(tmp_path / "resnet.ckpt")), "top_k": 3,
            "inner": {"class_path": "diffclf.strategies.Exhaustive", "init_args": {"trials": 4}}}}
        args = args[:-2] + ["--model.init_args.strategy", json.dumps(spec)]
    else:
        args = args + STRATEGIES[strategy]
    main(args)
    record = json.loads((tmp_path / "run" / "results.json").read_text())
    assert record["n"] == 10 and record["dataset"] == "cifar10" and record["num_classes"] == 10
    assert record["kind"] == "generative" and record["pipeline"] == "StableDiffusionPipeline"
    assert record["prompts"] == "templates:cifar10" and record["prompts_per_class"] == 18
    assert 0.0 <= record["ci_low"] <= record["accuracy"] <= record["ci_high"] <= 1.0
    expected = {"adaptive": 10 * 4 + 5 * 4, "exhaustive": 40, "prefilter": 3 * 4}
    if strategy in expected:
        assert record["forwards_per_image"] == expected[strategy]
    else:
        assert 30 <= record["forwards_per_image"] <= 60


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_sd3_flow_config_runs_end_to_end(strategy: str, sd3_dir: Path, cifar: Path, tmp_path: Path) -> None:
    main(["test", "--config", str(REPO / "configs" / "sd3_zero_shot.yaml"), "--data.init_args.root", str(cifar),
          "--data.init_args.image_size", "32", "--data.init_args.num_workers", "0",
          "--model.init_args.pretrained", str(sd3_dir), "--trainer.default_root_dir", str(tmp_path / "run"),
          "--trainer.accelerator", "cpu", "--model.init_args.text_cache", str(tmp_path / "cache.st"),
          "--model.init_args.results_file", str(tmp_path / "results.jsonl"),
          "--model.init_args.strategy.init_args.trials", "[4, 8]", *STRATEGIES[strategy]])
    record = json.loads((tmp_path / "run" / "results.json").read_text())
    assert record["n"] == 10 and record["pipeline"] == "StableDiffusion3Pipeline" and record["prediction_type"] == "flow"
    expected = {"adaptive": 10 * 4 + 5 * 4, "exhaustive": 40}
    if strategy in expected:
        assert record["forwards_per_image"] == expected[strategy]
    else:
        assert 30 <= record["forwards_per_image"] <= 60


def test_match_scores_free_captions_on_draws_fixed_by_the_key(sd_dir: Path) -> None:
    """Winoground and binding score images against free text; images given one key share their draws."""
    task = TextDiffusionClassifier(pretrained=str(sd_dir), strategy=Exhaustive(trials=6))
    gen = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, 32, 32, generator=gen) * 2 - 1
    other = torch.rand(1, 3, 32, 32, generator=gen) * 2 - 1
    captions = [["a photo of a cat.", "a photo of a dog."]] * 2
    same = task.match(torch.cat([image, image]), captions, torch.tensor([4, 4]))
    assert same.shape == (2, 2) and torch.equal(same[0], same[1])
    shifted = task.match(torch.cat([image, image]), captions, torch.tensor([4, 5]))
    assert not torch.equal(shifted[0], shifted[1])
    # One caption list per image, in any order and with repeats: each score is that pair's alone.
    pair = task.match(torch.cat([image, other]), [["a photo of a dog.", "a photo of a cat."],
                                                  ["a photo of a cat.", "a photo of a cat."]], torch.tensor([4, 4]))
    torch.testing.assert_close(pair[0], same[0].flip(0))
    assert torch.equal(pair[1, 0], pair[1, 1])
    alone = task.match(other, [["a photo of a cat."]], torch.tensor([4]))
    torch.testing.assert_close(pair[1, 0], alone[0, 0], rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="all of one non-zero length"):
        task.match(torch.cat([image, other]), [["a cat."], ["a cat.", "a dog."]], torch.tensor([0, 1]))
