"""diffclf's subcommands beside LightningCLI's fit/validate/test/predict.

Each is a plain typed function; jsonargparse turns its signature into options, so
``python cli.py sample --ckpt_path X --out grid.png`` works like any other CLI here.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

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


def publish(ckpt_path: str, out: str) -> str:
    """A release checkpoint from a training one: only the EMA weights (evaluation and sampling use them;
    loading copies them into the training weights, so fine-tuning starts from them), the
    hyperparameters that fix the architecture, and no optimizer state: a few MB instead of four
    copies of the model. Loads with ``--ckpt_path`` like any checkpoint.
    """
    import torch

    from diffclf.main import WEIGHT_HPARAMS

    if not Path(ckpt_path).is_file():
        raise SystemExit(f"error: --ckpt_path {ckpt_path}: no such checkpoint file")
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    state = ckpt.get("state_dict", {})
    ema = {k: v for k, v in state.items() if k.startswith("ema.")}
    hparams = ckpt.get("hyper_parameters", {})
    if not ema:
        raise ValueError(f"--ckpt_path {ckpt_path}: no EMA weights (ema.*); expected a DiffusionClassifier checkpoint")
    if hparams.get("pretrained") is not None:
        raise ValueError(
            f"--ckpt_path {ckpt_path} was fine-tuned from model.pretrained={hparams['pretrained']}; "
            "publish it with `python cli.py export` (a diffusers folder) instead"
        )
    keep = {k: v for k, v in hparams.items() if k in WEIGHT_HPARAMS or k == "_class_path"}
    release = {
        "state_dict": ema,
        "hyper_parameters": keep,
        "pytorch-lightning_version": ckpt.get("pytorch-lightning_version"),
        "global_step": ckpt.get("global_step"),
        "epoch": ckpt.get("epoch"),
        "published_from": str(ckpt_path),
    }
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    torch.save(release, out)
    size = Path(out).stat().st_size / 2**20
    print(f"published {out} ({size:.1f} MiB): EMA weights of global step {release['global_step']}")
    return out


def load_datamodule(spec: str, overrides: dict | None = None):
    """A data module from a preset name (``configs/data/NAME.yaml``) or a YAML file, with init_args overrides."""
    from jsonargparse import ArgumentParser
    from lightning.pytorch import LightningDataModule

    from diffclf.main import CONFIG_DIR

    path = Path(spec) if spec.endswith((".yaml", ".yml")) else CONFIG_DIR / "data" / f"{spec}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (CONFIG_DIR / "data").glob("*.yaml"))
        raise SystemExit(f"error: --data {spec}: no such file or preset; known presets: {', '.join(known)}")
    from diffclf.bench import yaml_as_json

    parser = ArgumentParser()
    parser.add_argument("--data", type=LightningDataModule)
    args = ["--data", yaml_as_json(path)]
    for key, value in (overrides or {}).items():
        args.append(f"--data.init_args.{key}={value}")
    return parser.instantiate(parser.parse_args(args)).data


def cache_latents(
    data: str,
    vae: str,
    out: str,
    split: str = "train",
    data_args: dict[str, Any] | None = None,
    batch_size: int = 64,
    device: str = "auto",
    dtype: str = "float32",
    num_workers: int = 0,
    limit: int | None = None,
) -> str:
    """Encode a dataset split with an SD-VAE once (both flips) for fast latent-space training.

    Args:
        data: data preset name (``configs/data/NAME.yaml``) or a data YAML file; its image size
            and crop are the ones the cache is made at.
        vae: local ``AutoencoderKL`` folder (e.g. ``sd-vae-ft-ema``).
        out: the ``.safetensors`` cache file to write.
        split: ``train``, ``val`` or ``test``.
        data_args: init_args overriding the preset's, e.g. ``{"train_root": "/data/imagenet/train"}``.
        batch_size: images per VAE batch.
        device: ``auto``, ``cpu`` or ``cuda``.
        dtype: storage type of the latent moments (``float32``, ``float16``, ``bfloat16``).
        num_workers: data loader workers.
        limit: cache only the first ``limit`` images of the split (quick runs, tests); indices are
            their positions in the split.
    """
    import torch

    from diffclf.data.base import IndexedDataset
    from diffclf.data.latent_cache import cache_latents as write_cache

    dm = load_datamodule(data, data_args)
    stage = {"train": "fit", "val": "fit", "test": "test"}.get(split)
    if stage is None:
        raise SystemExit(f"error: --split {split}: expected train, val or test")
    splits = dm.build_datasets(stage)
    if split not in splits:
        raise SystemExit(f"error: --split {split}: data {data} has no {split} split")
    if limit is not None and limit < 1:
        raise SystemExit(f"error: --limit {limit}: must be >= 1 (or left out for the whole split)")
    dataset = splits[split]
    subset = None if limit is None else range(min(limit, len(dataset)))
    dataset = IndexedDataset(dataset, subset=subset)
    space = dm.label_space
    meta = {"dataset": dm.name, "names": list(space.names), "model_classes": [list(c) for c in space.model_classes],
            "num_model_classes": space.num_model_classes, "label_space": space.name}
    dev = "cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device)
    path = write_cache(dataset, vae, out, batch_size=batch_size, device=dev,
                       image_size=dm.image_size, crop=getattr(getattr(dm, "transform", None), "crop", "none"), meta=meta, dtype=dtype,
                       num_workers=num_workers)
    print(f"latent cache of {len(dataset)} images (both flips) written to {path}")
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
    "cache-latents": lambda argv: _run(cache_latents, argv),
    "publish": lambda argv: _run(publish, argv),
}
