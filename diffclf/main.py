"""Command line: LightningCLI (fit/validate/test/predict) plus diffclf's own subcommands.

Short names are rewritten to preset files before jsonargparse sees them:
``--data imagenet_a`` → ``configs/data/imagenet_a.yaml``,
``--model.strategy adaptive_cifar10`` → ``configs/strategy/adaptive_cifar10.yaml``.
"""

from __future__ import annotations

import os
import re
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.plugins.environments import SLURMEnvironment

from diffclf.allocator import keep_freed_memory

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


# Hyperparameters a checkpoint's weights depend on (DiffusionClassifier and TimmClassifier).
WEIGHT_HPARAMS = frozenset({
    "model", "input_size", "in_channels", "num_classes", "learn_sigma", "model_kwargs", "class_dropout_prob",
    "num_timesteps", "beta_start", "beta_end", "class_names", "model_name", "in_chans", "img_size",
})


class DiffclfCLI(LightningCLI):
    """LightningCLI whose model learns its class count from the data module."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.num_model_classes", "model.init_args.num_classes", apply_on="instantiate")

    def _parse_ckpt_path(self) -> None:
        """Take from ``--ckpt_path`` only what its weights fix (architecture, classes, noise schedule).

        Lightning's default applies *every* saved hyperparameter over the config, so a test with
        ``--model.init_args.error l1`` or another ``results_dir`` would silently run with the values of
        the training run. Evaluation options must come from the command line and config.
        """
        if not self.config.get("subcommand"):
            return
        ckpt_path = self.config[self.config.subcommand].get("ckpt_path")
        if not ckpt_path or not Path(ckpt_path).is_file():
            return
        try:
            ckpt = torch.load(ckpt_path, weights_only=True, map_location="cpu")
        except Exception as err:  # noqa: BLE001 - any unreadable checkpoint gets the same one-line answer
            raise ValueError(f"--ckpt_path {ckpt_path}: not a readable checkpoint ({type(err).__name__})") from None
        hparams = dict(ckpt.get("hyper_parameters") or {})
        class_path = hparams.pop("_class_path", None)
        fixed = {k: v for k, v in hparams.items() if k in WEIGHT_HPARAMS}
        if not fixed:
            return
        model = {"class_path": class_path, "init_args": fixed} if class_path else {"init_args": fixed}
        self.config = self.parser.parse_object({self.config.subcommand: {"model": model}}, self.config)

    def before_fit(self) -> None:
        """A resumed run (``--ckpt_path``, or a SLURM requeue's ``hpc_ckpt_N.ckpt``) continues its CSV log."""
        from lightning.pytorch.utilities import rank_zero_only

        from diffclf.logs import continue_csv_logs

        trainer = self.trainer
        resume = self.config.fit.get("ckpt_path")
        if resume is None and SLURMEnvironment.detect():
            # Lightning restores the newest hpc checkpoint of default_root_dir by itself in this case.
            resume = trainer._checkpoint_connector._hpc_resume_path
        if not resume or not Path(resume).is_file() or rank_zero_only.rank != 0:
            return
        step = torch.load(resume, map_location="cpu", weights_only=True, mmap=True).get("global_step", 0)
        continue_csv_logs(trainer.loggers, int(step))

    def before_instantiate_classes(self) -> None:
        """Keep ``test``/``predict`` from overwriting the training run's logs.

        Presets log to a fixed folder (``version: ""``) so that checkpoints and curves sit together;
        an evaluation run with the same config would otherwise replace ``metrics.csv``.
        """
        if self.subcommand not in ("test", "predict", "validate"):
            return
        loggers = self.config[self.subcommand].trainer.logger
        for logger in loggers if isinstance(loggers, list) else [loggers]:
            init = getattr(logger, "init_args", None)
            if init is not None and getattr(init, "version", None) == "":
                init.version = self.subcommand


def _extra_commands() -> dict[str, Callable[[list[str]], object]]:
    from diffclf import commands

    return commands.COMMANDS


# Errors that bad input raises (a missing file, a wrong layout, a mismatched checkpoint). The command
# line shows them as one line; set DIFFCLF_TRACEBACK=1 to see where they came from.
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, PermissionError, OSError, FloatingPointError)


def main(args: list[str] | None = None) -> DiffclfCLI | object:
    """Entry point of ``python cli.py``; ``args`` lets tests run it in-process (errors then propagate)."""
    if args is not None or os.environ.get("DIFFCLF_TRACEBACK"):
        return _main(list(sys.argv[1:] if args is None else args))
    try:
        return _main(list(sys.argv[1:]), from_command_line=True)
    except USER_ERRORS as err:
        raise SystemExit(f"error: {condense_error(str(err)) or type(err).__name__}") from None


def condense_error(message: str) -> str:
    """One line from an error message; jsonargparse's "does not validate against any of the Union
    subtypes" wrapper is reduced to the reason our constructor gave."""
    text = " ".join(message.split())
    match = re.search(r"Errors: - (.*?)(?: - Expected a <class 'NoneType'>| - Given value type|$)", text)
    return match.group(1).strip() if match and "Union subtypes" in text else text


def saved_config_name(argv: list[str]) -> str:
    """File the run's resolved config is saved to in its log folder: ``config.yaml`` for ``fit``, one per other
    subcommand, so that testing a model in its training folder keeps the record of how it was trained."""
    subcommand = argv[0] if argv and not argv[0].startswith("-") else "fit"
    return "config.yaml" if subcommand == "fit" else f"config_{subcommand}.yaml"


def _main(argv: list[str], from_command_line: bool = False) -> DiffclfCLI | object:
    keep_freed_memory()
    # The EMA copy is in eval mode on purpose; Lightning's warning about it is noise.
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
    extra = _extra_commands()
    if argv and argv[0] in extra:
        return extra[argv[0]](argv[1:])
    argv = rewrite_aliases(argv)
    if from_command_line:  # LightningCLI reads sys.argv itself; hand it the rewritten arguments there
        sys.argv[1:] = argv
    return DiffclfCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        trainer_defaults={"use_distributed_sampler": False},
        save_config_kwargs={"overwrite": True, "config_filename": saved_config_name(argv)},
        args=None if from_command_line else argv,
    )
