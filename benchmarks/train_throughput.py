"""Training images/s through the real ``fit`` path: ``diffclf.cli.main(["fit", ...])``, in-process.

Two inputs:

- ``--config FILE``: a fit config (e.g. ``configs/fashion_mnist_stage3.yaml``) run on one device for ``--steps``
  steps; its checkpoints go to a scratch folder, its logger is switched off.
- no config: a DiT preset (``--model DiT-XL/2 --input_size 32 --in_channels 4 --num_classes 1000``) trained on a
  synthetic latent cache of the real latent size, read by ``diffclf.data.CachedLatentsDataModule`` exactly as a
  cache from ``cli.py cache-latents`` is. The file is written with the cache writer's own header and byte
  helpers (``diffclf.data.latent_cache``): ``cache_latents`` itself needs an SD-VAE folder, and the VAE costs
  nothing in latent training anyway.

How it is timed, and why this way: ``DiffusionClassifier.training_step`` is wrapped (for the run only) to
synchronise the device and read the clock when each step starts, so the gap between two starts is one whole
step: data loading, forward, backward, optimizer and EMA update. Images/s is the images of steps ``warmup ..
steps-2`` over the time from the start of step ``warmup`` to the start of the last step: start-up, the first
(allocation, cuDNN/cuBLAS autotuning) steps and the final checkpoint are left out. A Lightning callback passed
with ``--trainer.callbacks+=`` would do the same but has to be importable by jsonargparse, which a script is not.
The per-step synchronisation costs one host round trip per step (the task already reads the loss's finiteness
on the host every step). TFLOP/s counts 3 forward passes per training image (forward + backward), the usual
estimate, with the forward from ``diffclf.models.dit.dit_flops``.

    python benchmarks/train_throughput.py --model DiT-XL/2 --batch_size 256 --precision bf16-mixed --steps 30 \
        --warmup 10 --peak_tflops 989 --out FILE
    python benchmarks/train_throughput.py --config configs/fashion_mnist_stage3.yaml --steps 60 --warmup 20 \
        --out FILE -- --data.init_args.batch_size 128
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from diffclf.cli import main as cli_main
from diffclf.data.latent_cache import FORMAT_VERSION, _tensor_bytes, _write_header
from diffclf.metrics.provenance import provenance
from diffclf.models.dit import dit_flops
from diffclf.tasks.diffusion import DiffusionClassifier


class StepClock:
    """Start time and images of every training step (filled while :meth:`installed`)."""

    def __init__(self) -> None:
        self.starts: list[float] = []
        self.images: list[int] = []
        self.device = torch.device("cpu")

    @contextlib.contextmanager
    def installed(self) -> Iterator[StepClock]:
        """Wrap ``DiffusionClassifier.training_step`` for the duration of the block."""
        original = DiffusionClassifier.training_step

        @functools.wraps(original)
        def timed(task: DiffusionClassifier, batch: Any, batch_idx: int) -> torch.Tensor:
            self.device = task.device
            if task.device.type == "cuda":
                torch.cuda.synchronize(task.device)
            self.starts.append(time.perf_counter())
            self.images.append(int(batch[0].shape[0]))
            return original(task, batch, batch_idx)

        DiffusionClassifier.training_step = timed
        try:
            yield self
        finally:
            DiffusionClassifier.training_step = original

    def images_per_s(self, warmup: int) -> float:
        """Images of steps ``warmup .. n-2`` over the time from the start of step ``warmup`` to that of ``n-1``."""
        if len(self.starts) < warmup + 2:
            raise ValueError(f"{len(self.starts)} steps ran; need at least warmup + 2 = {warmup + 2} to time one")
        return sum(self.images[warmup:-1]) / (self.starts[-1] - self.starts[warmup])


def write_synthetic_cache(path: Path, count: int, channels: int, side: int, classes: int, seed: int = 0) -> Path:
    """A latent cache of ``count`` random latents (posterior std 0.01) over ``classes`` classes, fp16."""
    gen = torch.Generator().manual_seed(seed)
    mean = torch.randn(count, 2, 1, channels, side, side, generator=gen)
    rows = torch.cat([mean, torch.full_like(mean, 0.01)], dim=2).half()  # (N, flip, moment, C, h, w)
    targets = torch.randint(0, classes, (count,), generator=gen)
    header = {
        "vae_path": "none (synthetic)", "vae_fingerprint": "synthetic", "image_size": side * 8, "crop": "none",
        "scaling_factor": 0.18215, "latent_shape": [channels, side, side], "dtype": "float16", "count": count,
        "meta": {"dataset": "synthetic_latents", "names": [f"class {i}" for i in range(classes)],
                 "num_model_classes": classes},
        "format_version": FORMAT_VERSION,
    }
    with path.open("wb") as fh:
        _write_header(fh, count, tuple(rows.shape[1:]), torch.float16, header)
        fh.write(_tensor_bytes(rows))
        fh.write(_tensor_bytes(targets))
        fh.write(_tensor_bytes(torch.arange(count)))
    return path


def synthetic_config(args: argparse.Namespace, work: Path) -> Path:
    """A fit config for a DiT preset on a synthetic cache (JSON, which jsonargparse reads as YAML)."""
    batch = args.batch_size or 256
    count = args.cache_size or batch * args.steps
    cache = write_synthetic_cache(work / "latents.safetensors", count, args.in_channels, args.input_size,
                                  args.num_classes)
    config = {
        "seed_everything": 0,
        "trainer": {"precision": args.precision or "bf16-mixed", "enable_checkpointing": False},
        "model": {"class_path": "diffclf.tasks.DiffusionClassifier", "init_args": {
            "model": args.model, "input_size": args.input_size, "in_channels": args.in_channels,
            "learn_sigma": not args.no_learn_sigma}},
        "data": {"class_path": "diffclf.data.CachedLatentsDataModule", "init_args": {
            "train_cache": str(cache), "batch_size": batch, "num_workers": args.num_workers}},
    }
    path = work / "config.yaml"
    path.write_text(json.dumps(config, indent=1))
    return path


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    ours, extra = (argv[: argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=None, help="a fit config (default: a DiT preset, synthetic latents)")
    parser.add_argument("--model", default="DiT-XL/2")
    parser.add_argument("--input_size", type=int, default=32)
    parser.add_argument("--in_channels", type=int, default=4)
    parser.add_argument("--num_classes", type=int, default=1000)
    parser.add_argument("--no_learn_sigma", action="store_true")
    parser.add_argument("--batch_size", type=int, default=None, help="per step (default: the config's; 256)")
    parser.add_argument("--cache_size", type=int, default=None, help="synthetic latents (default batch x steps)")
    parser.add_argument("--num_workers", type=int, default=2)
    parser.add_argument("--precision", default=None, help="trainer precision (default: the config's; bf16-mixed)")
    parser.add_argument("--accelerator", default="auto")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--peak_tflops", type=float, default=None, help="the device's peak, for the MFU")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(ours)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="train_throughput_") as tmp:
        work = Path(tmp)
        config = args.config or str(synthetic_config(args, work))
        fit = ["fit", "--config", config, "--trainer.accelerator", args.accelerator, "--trainer.devices", "1",
               "--trainer.strategy", "auto", "--trainer.max_steps", str(args.steps), "--trainer.max_epochs", "-1",
               "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
               "--trainer.enable_model_summary", "false", "--trainer.limit_val_batches", "0",
               "--trainer.num_sanity_val_steps", "0", "--trainer.default_root_dir", str(work / "run")]
        if args.config and args.precision:
            fit += ["--trainer.precision", args.precision]
        if args.config and args.batch_size:
            fit += ["--data.init_args.batch_size", str(args.batch_size)]
        fit += extra
        clock = StepClock()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        with clock.installed():
            cli = cli_main(fit)
        wall = time.perf_counter() - start
    ips = clock.images_per_s(args.warmup)
    task = cli.model
    flops = dit_flops(task.dit.config)
    tflops = 3 * flops * ips / 1e12
    out = {
        "what": "training images/s through cli.py fit, timed from the start of step `warmup` to the last step's",
        "config": args.config or "synthetic latents", "model": task.dit.config,
        "precision": str(cli.trainer.precision), "batch_size": clock.images[-1], "steps": len(clock.starts),
        "warmup_steps": args.warmup, "images_per_s": ips,
        "seconds_per_step": (clock.starts[-1] - clock.starts[args.warmup]) / (len(clock.starts) - 1 - args.warmup),
        "fit_wall_s": wall, "step_starts_s": [s - clock.starts[0] for s in clock.starts],
        "gflops_per_forward": flops / 1e9, "train_tflops_3x_forward": tflops, "peak_tflops": args.peak_tflops,
        "mfu": tflops / args.peak_tflops if args.peak_tflops else None,
        "peak_memory_mb": torch.cuda.max_memory_allocated() / 2**20 if clock.device.type == "cuda" else None,
        "fit_args": [a.replace(str(work), "<scratch>") for a in fit],
        "provenance": provenance(clock.device, argv=["benchmarks/train_throughput.py", *argv]),
    }
    print(f"training {out['config']}: {ips:.1f} images/s ({out['seconds_per_step']:.3f} s/step at batch "
          f"{out['batch_size']}, {out['precision']}), ~{tflops:.2f} TFLOP/s"
          + (f" = {100 * out['mfu']:.1f}% of {args.peak_tflops:g}" if args.peak_tflops else ""))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=1))
        print(f"written to {args.out}")
    return out


if __name__ == "__main__":
    main()
