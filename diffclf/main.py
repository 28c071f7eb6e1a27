"""Command line: LightningCLI (fit/validate/test/predict) plus diffclf's own subcommands.

Short names are rewritten to preset files before jsonargparse sees them:
``--data imagenet_a`` → ``configs/data/imagenet_a.yaml``,
``--model.strategy adaptive_cifar10`` → ``configs/strategy/adaptive_cifar10.yaml``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
ALIASED_OPTIONS = {"--data": "data", "--model.strategy": "strategy", "--model.init_args.strategy": "strategy"}


def rewrite_aliases(argv: list[str], config_dir: Path = CONFIG_DIR) -> list[str]:
    """Replace ``--data NAME`` (and strategy names) by the preset file ``configs/<kind>/NAME.yaml``."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        opt, eq, value = arg.partition("=")
        if opt in ALIASED_OPTIONS:
            if not eq and i + 1 < len(argv):
                value, i = argv[i + 1], i + 1
            kind = ALIASED_OPTIONS[opt]
            preset = config_dir / kind / f"{value}.yaml"
            if value and "/" not in value and "." not in value and not value.startswith("{"):
                if not preset.is_file():
                    known = sorted(p.stem for p in (config_dir / kind).glob("*.yaml"))
                    raise SystemExit(f"error: {opt} {value}: no preset {preset}; known presets: {', '.join(known)}")
                value = str(preset)
            out += [opt, value]
        else:
            out.append(arg)
        i += 1
    return out


class DiffclfCLI(LightningCLI):
    """LightningCLI whose model learns its class count from the data module."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.num_model_classes", "model.init_args.num_classes", apply_on="instantiate")


def _extra_commands() -> dict[str, Callable[[list[str]], object]]:
    from diffclf import commands

    return commands.COMMANDS


def main(args: list[str] | None = None) -> DiffclfCLI | object:
    """Entry point of ``python cli.py``; ``args`` lets tests run it in-process."""
    argv = list(sys.argv[1:] if args is None else args)
    extra = _extra_commands()
    if argv and argv[0] in extra:
        return extra[argv[0]](argv[1:])
    argv = rewrite_aliases(argv)
    return DiffclfCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        trainer_defaults={"use_distributed_sampler": False},
        save_config_kwargs={"overwrite": True},
        args=argv,
    )
