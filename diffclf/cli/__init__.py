"""The command line: ``diffclf`` (or ``python cli.py``) = LightningCLI's fit/validate/test/predict plus
diffclf's own subcommands (``diffclf.cli.commands.COMMANDS``).

Preset names are rewritten to the packaged files before jsonargparse sees them (``--config quickstart``,
``--data imagenet_a``, ``--model.strategy ttest``; ``diffclf.cli.presets``). Errors that bad input raises
are printed as one line.
"""

from __future__ import annotations

import os
import re
import sys
import warnings
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.plugins.environments import SLURMEnvironment

from diffclf.cli.allocator import keep_freed_memory
from diffclf.cli.commands import COMMANDS, run_command
from diffclf.cli.presets import rewrite_aliases

# Errors that bad input raises (a missing file, a wrong layout, a mismatched checkpoint). The command
# line shows them as one line; set DIFFCLF_TRACEBACK=1 to see where they came from.
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, PermissionError, OSError, FloatingPointError)
EVALUATION_SUBCOMMANDS = ("test", "predict", "validate")


class DiffclfCLI(LightningCLI):
    """LightningCLI whose model learns its class count from the data, whose ``--ckpt_path`` imposes only
    what the weights fix, and whose run folder is one option (``trainer.default_root_dir``)."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.num_model_classes", "model.init_args.num_classes", apply_on="instantiate")

    def _parse_ckpt_path(self) -> None:
        """Take from ``--ckpt_path`` only what its weights fix (``ClassifierTask.weight_hparams``).

        Lightning's default applies *every* saved hyperparameter over the config, so a test with
        ``--model.init_args.scoring.error l1`` or another ``results_dir`` would silently run with the
        values of the training run. Evaluation options must come from the command line and config.
        """
        from diffclf.models.checkpoints import read_checkpoint
        from diffclf.tasks.checkpoints import fixed_hparams

        if not self.config.get("subcommand"):
            return
        ckpt_path = self.config[self.config.subcommand].get("ckpt_path")
        if not ckpt_path or not Path(ckpt_path).is_file():
            return
        ckpt = read_checkpoint(ckpt_path, mmap=True)
        if not ckpt.hparams:
            return
        fixed = fixed_hparams(ckpt)
        if not fixed:
            return
        model = {"class_path": ckpt.class_path, "init_args": fixed} if ckpt.class_path else {"init_args": fixed}
        self.config = self.parser.parse_object({self.config.subcommand: {"model": model}}, self.config)

    def before_fit(self) -> None:
        """A resumed run (``--ckpt_path``, or a SLURM requeue's ``hpc_ckpt_N.ckpt``) continues its CSV log."""
        from lightning.pytorch.utilities import rank_zero_only

        from diffclf.models.checkpoints import read_checkpoint
        from diffclf.tasks.callbacks import continue_csv_logs

        resume = self.config.fit.get("ckpt_path")
        if resume is None and SLURMEnvironment.detect():
            # Lightning restores the newest hpc checkpoint of default_root_dir by itself in this case.
            resume = self.trainer._checkpoint_connector._hpc_resume_path
        if not resume or not Path(resume).is_file() or rank_zero_only.rank != 0:
            return
        continue_csv_logs(self.trainer.loggers, read_checkpoint(resume, mmap=True).global_step)

    def before_predict(self) -> None:
        """``predict`` keeps its rows only through a prediction writer; without one it would score every image
        and save nothing."""
        from lightning.pytorch.callbacks import BasePredictionWriter

        if not any(isinstance(cb, BasePredictionWriter) for cb in self.trainer.callbacks):
            raise ValueError(
                "predict saves its rows only through a prediction writer: add "
                "--trainer.callbacks+=diffclf.tasks.callbacks.PredictionWriter --trainer.callbacks.output FILE.jsonl"
            )

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand]
        place_run_outputs(config)
        if self.subcommand in EVALUATION_SUBCOMMANDS:
            keep_training_logs(config, self.subcommand)


def _as_list(value: Any) -> list[Any]:
    if value is None or isinstance(value, bool):
        return []
    return list(value) if isinstance(value, list) else [value]


def place_run_outputs(config: Any) -> None:
    """Put every output a run does not name itself under ``trainer.default_root_dir``.

    Presets leave ``save_dir`` of their logger, ``dirpath`` of their checkpoint callback and the model's
    ``results_dir`` unset, so one option moves a whole run: logs, resolved config, sample grids and
    results in ``DIR``, checkpoints in ``DIR/checkpoints``. A path given explicitly is kept.
    """
    root = config.trainer.get("default_root_dir")
    if not root:
        return
    for logger in _as_list(config.trainer.get("logger")):
        init = getattr(logger, "init_args", None)
        if init is not None and "save_dir" in init and init.save_dir in (None, ""):
            init.save_dir = str(root)
    for callback in _as_list(config.trainer.get("callbacks")):
        init = getattr(callback, "init_args", None)
        is_checkpoint = str(getattr(callback, "class_path", "")).endswith("ModelCheckpoint")
        if is_checkpoint and init is not None and init.get("dirpath") is None:
            init.dirpath = str(Path(root) / "checkpoints")
    model_init = getattr(config.get("model"), "init_args", None)
    if model_init is not None and "results_dir" in model_init and model_init.results_dir is None:
        model_init.results_dir = str(root)


def keep_training_logs(config: Any, subcommand: str) -> None:
    """Keep ``test``/``predict``/``validate`` from overwriting the training run's logs.

    Presets log to the run folder itself (``name: ""``, ``version: ""``) so that checkpoints and curves
    sit together; an evaluation run with the same config logs to ``<run>/<subcommand>/`` instead.
    """
    for logger in _as_list(config.trainer.get("logger")):
        init = getattr(logger, "init_args", None)
        if init is not None and getattr(init, "version", None) == "":
            init.version = subcommand


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


def main(args: list[str] | None = None) -> DiffclfCLI | object | None:
    """Entry point of ``diffclf`` and ``python cli.py``.

    ``args`` lets tests run it in-process: errors then propagate and the CLI object (or the subcommand's
    result) is returned. From the command line it returns None, so the console script exits with 0.
    """
    if args is not None:
        return _main(list(args))
    if os.environ.get("DIFFCLF_TRACEBACK"):
        _main(list(sys.argv[1:]), from_command_line=True)
        return None
    try:
        _main(list(sys.argv[1:]), from_command_line=True)
    except USER_ERRORS as err:
        # A line of its own: a progress bar may be mid-line on the terminal.
        raise SystemExit(f"\nerror: {condense_error(str(err)) or type(err).__name__}") from None
    except SystemExit as err:
        if isinstance(err.code, str) and err.code.startswith("error:"):
            raise SystemExit("\n" + err.code) from None
        raise
    return None


def _main(argv: list[str], from_command_line: bool = False) -> DiffclfCLI | object:
    keep_freed_memory()
    # The EMA copy is in eval mode on purpose; Lightning's warning about it is noise.
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
    if argv and argv[0] in COMMANDS:
        return run_command(argv[0], argv[1:])
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
