"""``diffclf bench``: what the denoiser and the classifier cost on this machine.

Reports raw denoiser forwards per second over batch sizes, FLOPs per forward (analytic for a DiT, counted by
``torch.utils.flop_counter`` for a text-to-image pipeline's UNet or transformer),
achieved TFLOP/s (and % of a peak you pass), peak memory, the classification engine's
throughput at the best batch size (the engine's overhead is the gap to raw), and seconds per
image for each strategy. Works with random weights for any DiT preset, a trained checkpoint, or a local
text-to-image pipeline folder (``--pipeline DIR``: SD 1.x/2.x or SD3, scored on prompt conditionings).
"""

from __future__ import annotations

import json
import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from diffclf.configs import load_preset
from diffclf.diffusion.compiled import FrozenCompiled
from diffclf.diffusion.precision import resolve_precision
from diffclf.diffusion.schedule import NoiseSchedule
from diffclf.diffusion.scoring import Scorer
from diffclf.metrics.provenance import provenance
from diffclf.models.dit import create_dit, dit_flops
from diffclf.strategies import Exhaustive, Strategy
from diffclf.tasks.base import check_writable


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def time_forward(
    model: Callable[[Tensor, Tensor, Tensor], Tensor], batch: int, shape: tuple[int, int, int], num_classes: int,
    device: torch.device, dtype: torch.dtype | None, min_seconds: float,
) -> float:
    """Denoiser forwards per second at one batch size (inputs made once, outside the timing)."""
    x = torch.randn(batch, *shape, device=device)
    t = torch.randint(0, 1000, (batch,), device=device)
    y = torch.randint(0, num_classes, (batch,), device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            model(x, t, y)

    with torch.no_grad():
        for _ in range(2):
            step()
        _sync(device)
        n, start = 0, time.perf_counter()
        while True:
            step()
            n += 1
            _sync(device)
            elapsed = time.perf_counter() - start
            if elapsed >= min_seconds and n >= 3:
                break
    return n * batch / elapsed


def time_strategy(
    strategy: Strategy, dit: Callable[[Tensor, Tensor, Tensor], Tensor], schedule: NoiseSchedule, images: Tensor,
    class_ids: Tensor, batch_size: int, dtype: torch.dtype | None, num_classes: int,
) -> tuple[float, float]:
    """(seconds per image, forwards per image) of classifying ``images`` with ``strategy`` (``dit``: the
    denoiser, eager or compiled; ``num_classes``: its class table's size)."""
    scorer = Scorer(
        dit, schedule, images.shape[1], max_draws=strategy.max_draws, batch_size=batch_size,
        autocast_dtype=dtype, num_classes=num_classes, order=strategy.draw_order, antithetic=strategy.antithetic,
    )
    index = torch.arange(images.shape[0], device=images.device)
    with torch.no_grad():
        _sync(images.device)
        start = time.perf_counter()
        result = strategy.classify(scorer, images, index, class_ids)
        _sync(images.device)
        elapsed = time.perf_counter() - start
    return elapsed / images.shape[0], float(result.forwards.float().mean())


class PromptDenoiser(torch.nn.Module):
    """A text-to-image pipeline's eps prediction on a table of prompt conditionings, with the DiT call signature
    ``(x_t, t, rows)`` the bench and the scorer use."""

    def __init__(self, pipeline: str, classes: int, dtype: torch.dtype) -> None:
        super().__init__()
        from diffclf.models.text_to_image import TextToImageModel

        self.t2i = TextToImageModel(pipeline, dtype=dtype)
        self.cond = self.t2i.encode_prompts([f"a photo of a class {i}." for i in range(classes)])
        self.num_classes = classes
        self.schedule = self.t2i.schedule

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        if self.cond.hidden.device != x_t.device or self.cond.hidden.dtype != self.t2i.dtype:
            self.cond = self.cond.to(x_t.device, self.t2i.dtype)
        return self.t2i.eps(x_t, t, self.cond, rows)


def counted_flops(model: torch.nn.Module, shape: tuple[int, int, int], num_classes: int, device: torch.device) -> float:
    """FLOPs of one forward of one input, counted by ``torch.utils.flop_counter`` (matmuls and convolutions)."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(1, *shape, device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x, torch.full((1,), 500, device=device), torch.zeros(1, dtype=torch.long, device=device))
    return float(counter.get_total_flops())


def bench(
    model: str = "DiT-S/2",
    input_size: int = 32,
    in_channels: int = 4,
    num_classes: int = 1000,
    learn_sigma: bool = True,
    ckpt_path: str | None = None,
    pretrained: str | None = None,
    pipeline: str | None = None,
    image_size: int = 512,
    batch_sizes: list[int] | None = None,
    precision: Literal["32", "bf16", "auto"] = "32",
    compile: bool = False,
    device: str = "auto",
    peak_tflops: float | None = None,
    strategies: list[str] | None = None,
    images: int = 2,
    classes: int | None = 10,
    engine_trials: int = 20,
    min_seconds: float = 2.0,
    threads: int | None = None,
    out: str | None = None,
) -> dict:
    """Benchmark a DiT preset (random weights) or a trained checkpoint.

    Args:
        model: DiT preset name (ignored with ``ckpt_path``).
        input_size, in_channels, num_classes, learn_sigma: the preset's input and head.
        ckpt_path: a ``fit`` checkpoint to bench instead of random weights.
        pretrained: DiT weights to bench: an original facebookresearch/DiT ``.pt`` or a diffusers folder.
        pipeline: a local text-to-image pipeline folder (SD 1.x/2.x, SD3) to bench instead of a DiT: its
            denoiser on ``classes`` prompt conditionings, at ``image_size`` pixels (latents 8× smaller).
        image_size: image side for ``pipeline`` (512: SD 2.0-base in the paper).
        batch_sizes: denoiser batch sizes to try (default 1, 8, 32, 128, 512).
        precision: ``bf16`` runs under autocast; ``auto``: bf16 where the device has native bf16, else fp32
            (``scoring.precision: auto``).
        compile: run the denoiser through ``torch.compile`` with frozen weights, as ``scoring.compile`` does
            (:class:`~diffclf.diffusion.compiled.FrozenCompiled`).
        device: ``auto``, ``cpu`` or ``cuda``.
        peak_tflops: the device's peak, to report the achieved share (MFU).
        strategies: strategy presets or YAML files to time per image (default exhaustive, adaptive_small,
            ttest; ``[]`` times none, e.g. for a large model where the engine figure is enough).
        images: images to classify per strategy (random, or noise if no data).
        classes: classes to classify among (default 10; None = all of the model's).
        engine_trials: minimum draws per class when measuring the engine's throughput (raised so
            the engine runs at least 8 full batches).
        min_seconds: minimum timing window per batch size.
        threads: torch CPU threads (default: torch's choice).
        out: also write the figures to this JSON file.
    """
    # every option that is read only after the sweep, checked before it
    for option, value in (("images", images), ("classes", classes), ("engine_trials", engine_trials),
                          *(("batch_sizes", b) for b in batch_sizes or [])):
        if value is not None and value < 1:
            raise ValueError(f"bench --{option} must be >= 1, got {value}")
    for option, value in (("min_seconds", min_seconds), ("peak_tflops", peak_tflops)):
        if value is not None and not value > 0:
            raise ValueError(f"bench --{option} must be > 0, got {value}")
    specs = strategies if strategies is not None else ["exhaustive", "adaptive_small", "ttest"]
    timed = [(spec, load_preset("strategy", spec, Strategy, "--strategies")) for spec in specs]
    if out:
        if Path(out).is_dir():
            raise ValueError(f"bench --out {out}: a folder; expected a JSON file name")
        check_writable(Path(out).parent, "bench --out's folder")
    if threads:
        torch.set_num_threads(threads)
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device))
    ran, why = resolve_precision(precision, dev)
    if why:
        print(f"precision {why}")
    dtype = torch.bfloat16 if ran == "bf16" else None
    schedule = NoiseSchedule()
    if pipeline:
        dit = PromptDenoiser(pipeline, classes or 10, torch.float32).to(dev).eval()
        schedule = dit.schedule
        shape = dit.t2i.latent_shape(image_size)
        flops = counted_flops(dit, shape, dit.num_classes, dev)
        config = {"pipeline": dit.t2i.pipeline, "image_size": image_size, "latent_shape": list(shape)}
    else:
        if ckpt_path:
            from diffclf.tasks.checkpoints import load_task

            dit = load_task(ckpt_path, map_location=str(dev)).ema
        elif pretrained:
            from diffclf.models.formats import load_dit

            dit = load_dit(pretrained)
        else:
            dit = create_dit(model, input_size=input_size, in_channels=in_channels, num_classes=num_classes,
                             learn_sigma=learn_sigma)
        dit = dit.to(dev).eval()
        shape = (dit.in_channels, dit.input_size, dit.input_size)
        flops = dit_flops(dit.config)
        config = dit.config
    runner = FrozenCompiled(dit) if compile else dit
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    rows = []
    for b in batch_sizes or [1, 8, 32, 128, 512]:
        try:
            fps = time_forward(runner, b, shape, dit.num_classes, dev, dtype, min_seconds)
        except torch.OutOfMemoryError:
            print(f"batch {b}: out of memory, stopping the sweep")
            break
        tflops = fps * flops / 1e12
        rows.append({"batch": b, "forwards_per_s": fps, "tflops": tflops,
                     "mfu": tflops / peak_tflops if peak_tflops else None})
        print(f"batch {b:5d}: {fps:10.1f} forwards/s  {tflops:8.3f} TFLOP/s"
              + (f"  {100 * tflops / peak_tflops:5.1f}% of peak" if peak_tflops else ""))
    best = max(rows, key=lambda r: r["forwards_per_s"])
    k = dit.num_classes if classes is None else min(classes, dit.num_classes)
    class_ids = torch.arange(k, device=dev)
    gen = torch.Generator().manual_seed(0)
    imgs = torch.randn(images, *shape, generator=gen).to(dev)
    trials = max(engine_trials, -(-8 * best["batch"] // (images * k)))  # at least 8 full batches
    engine_sec, engine_fwd = time_strategy(
        Exhaustive(trials=trials), runner, schedule, imgs, class_ids, best["batch"], dtype, dit.num_classes
    )
    engine_fps = engine_fwd / engine_sec
    print(f"engine at batch {best['batch']}: {engine_fps:.1f} forwards/s = "
          f"{100 * engine_fps / best['forwards_per_s']:.1f}% of the raw denoiser")
    per_strategy = {}
    for spec, strat in timed:
        sec, fwd = time_strategy(strat, runner, schedule, imgs, class_ids, best["batch"], dtype, dit.num_classes)
        per_strategy[spec] = {"seconds_per_image": sec, "forwards_per_image": fwd}
        print(f"strategy {spec:20s}: {sec:8.3f} s/image  {fwd:9.0f} forwards/image  ({k} classes)")
    result = {
        "model": pipeline or ckpt_path or pretrained or model,
        "config": config,
        "precision": ran,
        "precision_auto": why,
        "compile": compile,
        "flops_per_forward": flops,
        "gflops_per_forward": flops / 1e9,
        "sweep": rows,
        "best_batch": best["batch"],
        "best_forwards_per_s": best["forwards_per_s"],
        "best_tflops": best["tflops"],
        "mfu": best["mfu"],
        "peak_tflops": peak_tflops,
        "engine_forwards_per_s": engine_fps,
        "engine_efficiency": engine_fps / best["forwards_per_s"],
        "classes": k,
        "strategies": per_strategy,
        "peak_memory_mb": _peak_memory_mb(dev),
        **provenance(dev),
    }
    print(f"{flops / 1e9:.2f} GFLOPs per forward, peak memory {result['peak_memory_mb']:.0f} MB")
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=1))
        print(f"bench results written to {out}")
    return result
