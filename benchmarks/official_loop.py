"""The official Diffusion Classifier's scoring loop, re-created on a diffclf DiT, timed against diffclf's engine.

Li et al.'s released ``eval_prob_adaptive.py`` (github diffusion-classifier/diffusion-classifier) scores an
image with Python bookkeeping around a batch-32 denoiser loop: per batch it gathers the noise rows by an index
list, builds ``x_t`` from ``alphas_cumprod`` indexed on the host and copied over, calls the denoiser, takes the
error's mean over C, H, W and copies it back with ``.detach().cpu()`` (a host sync per batch); per stage it keeps
the ``n_to_keep`` classes of lowest mean error with ``torch.topk`` over Python lists. :func:`official_eval`
is that code with the UNet's text embeddings replaced by a DiT's class ids (and a learned-sigma DiT's output cut
to its eps channels); everything else keeps the official's order of operations, fp32, its ``n_trials=1`` noise
numbering (draw ``k`` is the ``k``-th timestep in order of first evaluation) and its timestep grid.

diffclf's :class:`~diffclf.strategies.Adaptive` with ``schedule="official"`` and a scorer given the same noise
bank (``Scorer(..., order=strategy.draw_order, noise_bank=all_noise)``) scores the same draws of the same
classes (``tests/test_device_check.py`` checks predictions and per-class mean errors agree), so the speed ratio
printed here compares the two loops on equal work. Random weights by default (the zero-initialised adaLN and
output layers are filled with N(0, 0.02²) so that classes differ), or ``--ckpt_path``.

    python benchmarks/official_loop.py --model DiT-XL/2 --device cuda --images 2 --classes 1000 \
        --keep 500 50 10 1 --trials 50 100 500 1000 --out FILE

**End to end at equal accuracy** (``--data``, with ``--ckpt_path``): the inputs are the first ``--images`` test
images of a data preset with their labels, so every row also has an accuracy with its exact interval, and
``--engine_strategies`` adds rows of diffclf as a user runs it: a strategy preset (its own draws, not the
official noise bank) through ``DiffusionClassifier.classify`` at ``--engine_strategy_precision`` (default
``auto``), each with its speed-up over the official loop and whether its accuracy lies in the official's
interval::

    python benchmarks/official_loop.py --ckpt_path checkpoints/fashion_mnist_dit_t4_stage3.ckpt \
        --data fashion_mnist --data_arg image_size=28 --images 200 --keep 5 1 --trials 50 500 \
        --engine_precisions auto --engine_batch_sizes 256 --engine_strategies racing_fashion published_fashion \
        --threads 1 --out FILE
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor

from diffclf.configs import load_preset
from diffclf.diffusion.compiled import FrozenCompiled
from diffclf.diffusion.precision import resolve_precision
from diffclf.diffusion.schedule import NoiseSchedule
from diffclf.diffusion.scoring import Scorer
from diffclf.metrics.accuracy import clopper_pearson
from diffclf.metrics.provenance import provenance
from diffclf.models.dit import DiT, create_dit, dit_flops
from diffclf.strategies import Adaptive, Strategy
from diffclf.strategies.base import Classification
from diffclf.tasks.analysis import load_diffusion_task, parse_overrides, run_live, split_batches, summarise

R = TypeVar("R")


def eval_error(
    dit: DiT, alphas_cumprod: Tensor, latent: Tensor, all_noise: Tensor, ts: list[int], noise_idxs: list[int],
    class_ids: Tensor, class_idxs: list[int], batch_size: int = 32, loss: str = "l2",
) -> Tensor:
    """The official ``eval_error``: per-draw errors on the host, one batch (and one host sync) at a time."""
    assert len(ts) == len(noise_idxs) == len(class_idxs)
    device = latent.device
    channels = latent.shape[1]
    pred_errors = torch.zeros(len(ts), device="cpu")
    idx = 0
    with torch.inference_mode():
        for _ in range(len(ts) // batch_size + int(len(ts) % batch_size != 0)):
            batch_ts = torch.tensor(ts[idx: idx + batch_size])
            noise = all_noise[noise_idxs[idx: idx + batch_size]]
            noised_latent = latent * (alphas_cumprod[batch_ts] ** 0.5).view(-1, 1, 1, 1).to(device) + \
                noise * ((1 - alphas_cumprod[batch_ts]) ** 0.5).view(-1, 1, 1, 1).to(device)
            t_input = batch_ts.to(device)
            y = class_ids[class_idxs[idx: idx + batch_size]]
            noise_pred = dit(noised_latent, t_input, y)[:, :channels]
            if loss == "l2":
                error = F.mse_loss(noise, noise_pred, reduction="none").mean(dim=(1, 2, 3))
            elif loss == "l1":
                error = F.l1_loss(noise, noise_pred, reduction="none").mean(dim=(1, 2, 3))
            else:
                raise NotImplementedError(loss)
            pred_errors[idx: idx + len(batch_ts)] = error.detach().cpu()
            idx += len(batch_ts)
    return pred_errors


def official_eval(
    dit: DiT, latent: Tensor, class_ids: Tensor, schedule_keep: list[int], schedule_trials: list[int],
    alphas_cumprod: Tensor, all_noise: Tensor, batch_size: int = 32, loss: str = "l2",
    record: dict[int, dict[str, Tensor]] | None = None,
) -> tuple[int, int]:
    """The official ``eval_prob_adaptive`` for one image: ``(predicted class id, denoiser forwards)``.

    Args:
        dit: the denoiser, called as ``dit(x_t, t, y)``.
        latent: ``(1, C, H, W)`` on the denoiser's device.
        class_ids: ``(K,)`` long candidate class ids on that device (the official's prompt table).
        schedule_keep, schedule_trials: the official ``--to_keep`` and ``--n_samples``.
        alphas_cumprod: ``(T,)`` fp32 host table, as a diffusers scheduler holds it.
        all_noise: ``(max(schedule_trials), C, H, W)`` noise bank on the device; row ``k`` is draw ``k``.
        batch_size, loss: the official ``--batch_size`` and ``--loss``.
        record: filled with the official ``data`` dict (per candidate position: ``t`` and ``pred_errors``).
    """
    T = len(alphas_cumprod)
    max_n_samples = max(schedule_trials)
    data: dict[int, dict[str, Tensor]] = {} if record is None else record
    t_evaluated: set[int] = set()
    remaining = list(range(len(class_ids)))
    start = T // max_n_samples // 2
    t_to_eval = list(range(start, T, T // max_n_samples))[:max_n_samples]
    forwards = 0
    for n_samples, n_to_keep in zip(schedule_trials, schedule_keep):
        ts: list[int] = []
        noise_idxs: list[int] = []
        class_idxs: list[int] = []
        curr_t_to_eval = t_to_eval[len(t_to_eval) // n_samples // 2::len(t_to_eval) // n_samples][:n_samples]
        curr_t_to_eval = [t for t in curr_t_to_eval if t not in t_evaluated]
        for prompt_i in remaining:
            for t_idx, t in enumerate(curr_t_to_eval, start=len(t_evaluated)):
                ts.append(t)
                noise_idxs.append(t_idx)
                class_idxs.append(prompt_i)
        t_evaluated.update(curr_t_to_eval)
        pred_errors = eval_error(dit, alphas_cumprod, latent, all_noise, ts, noise_idxs, class_ids, class_idxs,
                                 batch_size, loss)
        forwards += len(ts)
        for prompt_i in remaining:
            mask = torch.tensor(class_idxs) == prompt_i
            prompt_ts = torch.tensor(ts)[mask]
            prompt_pred_errors = pred_errors[mask]
            if prompt_i not in data:
                data[prompt_i] = {"t": prompt_ts, "pred_errors": prompt_pred_errors}
            else:
                data[prompt_i]["t"] = torch.cat([data[prompt_i]["t"], prompt_ts])
                data[prompt_i]["pred_errors"] = torch.cat([data[prompt_i]["pred_errors"], prompt_pred_errors])
        errors = [-data[prompt_i]["pred_errors"].mean() for prompt_i in remaining]
        # Clamped as diffclf's Adaptive clamps keep (the official's topk fails on fewer candidates than keep).
        best_idxs = torch.topk(torch.tensor(errors), k=min(n_to_keep, len(remaining)), dim=0).indices.tolist()
        remaining = [remaining[i] for i in best_idxs]
    assert len(remaining) == 1
    return int(class_ids[remaining[0]]), forwards


def engine_eval(
    dit: Callable[[Tensor, Tensor, Tensor], Tensor], latents: Tensor, class_ids: Tensor, keep: list[int],
    trials: list[int], schedule: NoiseSchedule, all_noise: Tensor, batch_size: int, loss: str = "l2",
    precision: str = "32", num_classes: int | None = None,
) -> Classification:
    """diffclf's engine on the same work: ``Adaptive(schedule="official")`` over the same noise bank
    (``precision`` ``bf16``: the denoiser under bf16 autocast, errors in fp32, as ``scoring.precision``;
    ``auto``: bf16 where the device has native bf16). ``dit`` may be the DiT compiled as ``scoring.compile``
    compiles it (:class:`~diffclf.diffusion.compiled.FrozenCompiled`), whose ``num_classes`` then comes from ``num_classes``."""
    strategy = Adaptive(keep, trials, schedule="official")
    ran, _ = resolve_precision(precision, latents.device)
    num_classes = num_classes if num_classes is not None else dit.num_classes
    scorer = Scorer(dit, schedule, latents.shape[1], max_draws=strategy.max_draws, batch_size=batch_size,
                    error=loss, num_classes=num_classes, order=strategy.draw_order, noise_bank=all_noise,
                    autocast_dtype=torch.bfloat16 if ran == "bf16" else None)
    index = torch.arange(latents.shape[0], device=latents.device)
    with torch.no_grad():
        return strategy.classify(scorer, latents, index, class_ids)


def fill_zero_layers(dit: DiT, seed: int = 0) -> DiT:
    """Give DiT's zero-initialised weights (adaLN-Zero gates, output layer) N(0, 0.02²) values: a fresh DiT
    predicts zeros for every class, so every class would tie and predictions would mean nothing."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in dit.parameters():
            if p.dim() >= 2 and not p.any():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
    return dit


def accuracy(pred: list[int], target: list[int] | None, level: float = 0.95) -> dict:
    """Accuracy with its exact interval (empty without labels: random inputs have none)."""
    if target is None:
        return {}
    k = sum(int(p == t) for p, t in zip(pred, target))
    low, high = clopper_pearson(k, len(target), level)
    return {"correct": k, "accuracy": k / len(target), "ci_low": low, "ci_high": high}


def real_inputs(args: argparse.Namespace, device: torch.device):
    """The checkpoint's task and the first ``--images`` test images of ``--data``: model inputs (encoded as
    ``test`` encodes them), labels as model class ids, and the batches for the strategy rows."""
    if not args.ckpt_path:
        raise SystemExit("error: --data needs --ckpt_path (a model trained on that data)")
    try:
        dm, batches = split_batches(args.data, parse_overrides(args.data_arg), args.images)
        task = load_diffusion_task(args.ckpt_path, dm)
    except (FileNotFoundError, TypeError, ValueError) as err:
        raise SystemExit(f"error: {err}") from None
    space = dm.label_space
    if any(len(ids) != 1 for ids in space.model_classes):
        raise SystemExit(f"error: --data {args.data}: every class must be one model class (the official loop "
                         "predicts model class ids)")
    task = task.to(device).eval()
    images = torch.cat([b[0] for b in batches]).to(device)
    with torch.no_grad():
        latents = task.encode(images, sample=False)
    targets = [space.model_classes[int(y)][0] for b in batches for y in b[1]]
    return task, latents, targets, batches


def strategy_rows(
    task, batches, specs: list[str], precision: str, official: dict, level: float = 0.95, compile_: bool = False
) -> list[dict]:
    """diffclf as ``test`` runs it: each strategy preset through ``task.classify`` at ``precision`` (with
    ``compile_``, ``scoring.compile``: a first run compiles the batch shapes it meets, a second is timed)."""
    rows = []
    for spec in specs:
        try:
            strategy = load_preset("strategy", spec, Strategy, "--engine_strategies")
        except (FileNotFoundError, TypeError, ValueError) as err:
            raise SystemExit(f"error: {err}") from None
        task.set_scoring(precision=precision, compile=compile_)
        run_live(task, strategy, [(b[0][:1], b[1][:1], b[2][:1]) for b in batches[:1]])  # warm-up
        first = run_live(task, strategy, batches) if compile_ else None
        run = run_live(task, strategy, batches)
        row = {"strategy_preset": spec, **summarise(spec, strategy, run, None, level),
               "scoring": task.scoring.record(task.device)}
        if first is not None:
            row["first_run_seconds_per_image"] = first["seconds"] / len(first["pred"])
            row["first_run_speedup_vs_official"] = official["seconds_per_image"] / row["first_run_seconds_per_image"]
        row["speedup_vs_official"] = official["seconds_per_image"] / row["seconds_per_image"]
        row["within_official_interval"] = official["ci_low"] <= row["accuracy"] <= official["ci_high"]
        rows.append(row)
        print(f"diffclf {spec} ({row['scoring']['precision']}{' + compile' if compile_ else ''}): {100 * row['accuracy']:.2f}% "
              f"[{100 * row['ci_low']:.2f}, {100 * row['ci_high']:.2f}], {row['forwards_per_image']:.1f} forwards/image, "
              f"{row['seconds_per_image']:.4f} s/image = {row['speedup_vs_official']:.2f}x the official loop "
              f"({'within' if row['within_official_interval'] else 'outside'} its interval)", flush=True)
    return rows


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], R], device: torch.device) -> tuple[R, float]:
    """``fn()`` and its wall seconds, with the device's queue drained before and after."""
    _sync(device)
    start = time.perf_counter()
    out = fn()
    _sync(device)
    return out, time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="DiT-XL/2", help="DiT preset (random weights)")
    parser.add_argument("--ckpt_path", default=None, help="a diffclf checkpoint instead (its EMA weights)")
    parser.add_argument("--input_size", type=int, default=32)
    parser.add_argument("--in_channels", type=int, default=4)
    parser.add_argument("--num_classes", type=int, default=1000)
    parser.add_argument("--no_learn_sigma", action="store_true")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--classes", type=int, default=1000, help="candidates: class ids 0..classes-1")
    parser.add_argument("--keep", type=int, nargs="+", default=[500, 50, 10, 1])
    parser.add_argument("--trials", type=int, nargs="+", default=[50, 100, 500, 1000])
    parser.add_argument("--batch_size", type=int, default=32, help="the official loop's batch")
    parser.add_argument("--engine_batch_sizes", type=int, nargs="+", default=[32, 256],
                        help="diffclf engine batches to time on the same work (32 = the official's)")
    parser.add_argument("--engine_precisions", nargs="+", default=["32"], choices=("32", "bf16", "auto"),
                        help="engine precisions to time (bf16: autocast; auto: bf16 where native; the official "
                             "loop is always fp32)")
    parser.add_argument("--engine_compile", nargs="+", default=["off"], choices=("off", "on", "unfrozen"),
                        help="engine rows without and/or with torch.compile of the denoiser (on: as scoring.compile, "
                             "weights frozen; unfrozen: without freezing, to measure what it buys; a first run "
                             "compiles, a second is timed; both reported)")
    parser.add_argument("--data", default=None, help="a data preset or YAML: its first --images test images with "
                                                     "labels instead of random inputs (needs --ckpt_path)")
    parser.add_argument("--data_arg", action="append", default=[], help="KEY=VALUE data init_arg override")
    parser.add_argument("--engine_strategies", nargs="*", default=[],
                        help="with --data: strategy presets or YAML files run through the task, end to end")
    parser.add_argument("--engine_strategy_precision", default="auto", choices=("32", "bf16", "auto"))
    parser.add_argument("--engine_strategy_compile", action="store_true",
                        help="the strategy rows with scoring.compile (each run twice: first compiling, then timed)")
    parser.add_argument("--loss", default="l2", choices=("l2", "l1"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=None, help="write the figures to this JSON file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    task = targets = batches = None
    if args.data:
        task, latents, targets, batches = real_inputs(args, device)
        dit, label = task.ema, args.ckpt_path
        args.images = latents.shape[0]
    elif args.ckpt_path:
        from diffclf.tasks.checkpoints import load_task

        dit, label = load_task(args.ckpt_path).ema, args.ckpt_path
    else:
        torch.manual_seed(args.seed)
        dit = fill_zero_layers(create_dit(args.model, input_size=args.input_size, in_channels=args.in_channels,
                                          num_classes=args.num_classes, learn_sigma=not args.no_learn_sigma))
        label = args.model
    dit = dit.to(device).eval()
    shape = (dit.in_channels, dit.input_size, dit.input_size)
    gen = torch.Generator().manual_seed(args.seed)
    if task is None:
        latents = torch.randn(args.images, *shape, generator=gen).to(device)
    all_noise = torch.randn(max(args.trials), *shape, generator=gen).to(device)
    class_ids = torch.arange(min(args.classes, dit.num_classes), device=device)
    acp = NoiseSchedule().alphas_cumprod.float()  # the official's diffusers table is fp32
    schedule = NoiseSchedule.from_alphas_cumprod(acp)  # the engine on the very same table

    official_eval(dit, latents[:1], class_ids[:2], [1], [2], acp, all_noise)  # CUDA context, kernels
    preds, forwards, seconds = [], 0, 0.0
    for i in range(args.images):
        run = functools.partial(official_eval, dit, latents[i: i + 1], class_ids, args.keep, args.trials, acp,
                                all_noise, args.batch_size, args.loss)
        (pred, fwd), sec = _timed(run, device)
        preds.append(pred)
        forwards += fwd
        seconds += sec
    official = {"batch_size": args.batch_size, "seconds_per_image": seconds / args.images,
                "forwards_per_image": forwards / args.images, "forwards_per_s": forwards / seconds, "pred": preds,
                **accuracy(preds, targets)}
    print(f"official loop, batch {args.batch_size}: {official['forwards_per_s']:.1f} forwards/s, "
          f"{official['seconds_per_image']:.3f} s/image ({official['forwards_per_image']:.0f} forwards/image)"
          + (f", {100 * official['accuracy']:.2f}% [{100 * official['ci_low']:.2f}, {100 * official['ci_high']:.2f}]"
             if targets else ""), flush=True)
    engine = []
    denoisers = {"off": dit, "on": FrozenCompiled(dit), "unfrozen": FrozenCompiled(dit, freeze=False)}
    rows = ((p, c, b) for p in args.engine_precisions for c in args.engine_compile for b in args.engine_batch_sizes)
    compiled_as = None
    for precision, mode, b in rows:
        denoiser, compile_ = denoisers[mode], mode != "off"
        if compile_ and compiled_as not in (None, mode):
            torch.compiler.reset()  # torch's cache would serve one mode's graphs to the other's wrapper
        compiled_as = mode if compile_ else compiled_as
        run = functools.partial(engine_eval, denoiser, latents, class_ids, args.keep, args.trials, schedule,
                                all_noise, b, args.loss, precision, dit.num_classes)
        first = None
        if compile_:
            # The first run compiles every batch shape it meets (timed: what a run pays once); the second
            # is the steady state.
            _, first = _timed(run, device)
        else:
            engine_eval(dit, latents[:1], class_ids[:2], [1], [2], schedule, all_noise, b, args.loss, precision)
        result, sec = _timed(run, device)
        fwd = float(result.forwards.sum())
        row = {"precision": precision, "ran_in": resolve_precision(precision, device)[0], "compile": compile_,
               "batch_size": b, "seconds_per_image": sec / args.images, **accuracy(result.pred.tolist(), targets),
               "forwards_per_image": fwd / args.images,
               "forwards_per_s": fwd / sec, "pred": result.pred.tolist(),
               "agrees_with_official": sum(int(a == o) for a, o in zip(result.pred.tolist(), preds)),
               "speedup_vs_official": official["seconds_per_image"] / (sec / args.images)}
        if first is not None:
            row["frozen"] = mode == "on"
            row["first_run_seconds_per_image"] = first / args.images
            row["first_run_speedup_vs_official"] = official["seconds_per_image"] / (first / args.images)
        engine.append(row)
        print(f"diffclf engine, {precision}{'' if mode == 'off' else ' + compile' + (' (unfrozen)' if mode == 'unfrozen' else '')}, batch {b}: "
              f"{row['forwards_per_s']:.1f} forwards/s, {row['seconds_per_image']:.3f} "
              f"s/image = {row['speedup_vs_official']:.2f}x the official loop"
              + (f" (first run, compiling: {row['first_run_speedup_vs_official']:.2f}x)" if first is not None else "")
              + f"; same prediction on {row['agrees_with_official']}/{args.images} images")
    end_to_end = strategy_rows(task, batches, args.engine_strategies, args.engine_strategy_precision, official,
                               compile_=args.engine_strategy_compile) if task is not None else []
    flops = dit_flops(dit.config)
    out = {
        "what": ("official eval_prob_adaptive loop (fp32) vs diffclf engine (precision per row), same schedule, "
                 "noise and weights"),
        "model": label, "config": dit.config, "gflops_per_forward": flops / 1e9, "images": args.images,
        "classes": len(class_ids), "keep": args.keep, "trials": args.trials, "loss": args.loss,
        "inputs": f"the first {args.images} test images of {args.data}" if args.data else "random Gaussian latents",
        "official": official, "engine": engine, "end_to_end": end_to_end,
        "peak_memory_mb": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
        "provenance": provenance(device, argv=None if argv is None else ["benchmarks/official_loop.py", *argv]),
    }
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=1))
        print(f"written to {args.out}")
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
