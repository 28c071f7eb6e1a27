"""diffclf's subcommands beside LightningCLI's fit/validate/test/predict.

Each is a plain typed function; jsonargparse turns its signature into options, so
``python cli.py sample --ckpt_path X --out grid.png`` works like any other CLI here.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from jsonargparse import CLI


def load_module(ckpt_path: str, map_location: str = "cpu"):
    """A trained :class:`~diffclf.module.DiffusionClassifier` from a Lightning checkpoint."""
    from diffclf.module import DiffusionClassifier

    if not Path(ckpt_path).is_file():
        raise SystemExit(f"error: --ckpt_path {ckpt_path}: no such checkpoint file")
    return DiffusionClassifier.load_from_checkpoint(ckpt_path, map_location=map_location)


def sample(
    ckpt_path: str,
    out: str = "samples.png",
    per_class: int = 8,
    classes: list[int] | None = None,
    steps: int = 50,
    cfg_scale: float = 1.0,
    seed: int = 0,
    device: str = "cpu",
) -> str:
    """Write a PNG grid, one row per class, sampled (DDIM) from a checkpoint's EMA weights.

    Args:
        ckpt_path: Lightning checkpoint written by ``fit``.
        out: PNG file to write.
        per_class: images per row.
        classes: model class ids, one row each (default: the first 16 classes).
        steps: DDIM steps.
        cfg_scale: classifier-free guidance scale (1 = no guidance).
        seed: sampler seed.
        device: torch device.
    """
    module = load_module(ckpt_path, map_location=device)
    module.hparams.sample_steps = steps
    module.hparams.sample_cfg_scale = cfg_scale
    path = module.write_sample_grid(out, per_class=per_class, class_ids=classes, seed=seed)
    print(f"sample grid written to {path}")
    return str(path)


def _run(func: Callable, argv: list[str]) -> object:
    return CLI(func, args=argv, as_positional=False)


def _bench(argv: list[str]) -> object:
    from diffclf.bench import bench

    return _run(bench, argv)


def _report(argv: list[str]) -> object:
    from diffclf.report import run_report

    return _run(run_report, argv)


def _export(argv: list[str]) -> object:
    from diffclf.export import export

    return _run(export, argv)


def _build_shift(argv: list[str]) -> object:
    from diffclf.data.shifts import build_shift

    return _run(build_shift, argv)


def _merge(argv: list[str]) -> object:
    from diffclf.writer import merge_predictions

    return _run(merge_predictions, argv)


COMMANDS: dict[str, Callable[[list[str]], object]] = {
    "sample": lambda argv: _run(sample, argv),
    "bench": _bench,
    "report": _report,
    "export": _export,
    "build-shift": _build_shift,
    "merge": _merge,
}
