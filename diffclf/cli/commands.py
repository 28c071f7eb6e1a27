"""The table of diffclf's own subcommands beside LightningCLI's fit/validate/test/predict.

Each is a plain typed function in a module of its own; jsonargparse turns its signature and docstring
into options and ``--help``, so ``diffclf sample --ckpt_path X --out grid.png`` works like any other
command here. Modules are imported only when their subcommand runs.
"""

from __future__ import annotations

import importlib

from jsonargparse import CLI

# subcommand -> "module:function"
COMMANDS: dict[str, str] = {
    "sample": "diffclf.cli.sample:sample",
    "publish": "diffclf.cli.publish:publish",
    "export": "diffclf.cli.export:export",
    "bench": "diffclf.cli.bench:bench",
    "calibrate": "diffclf.cli.calibrate:calibrate",
    "report": "diffclf.metrics.report:run_report",
    "merge": "diffclf.metrics.predictions:merge_predictions",
    "build-shift": "diffclf.data.shifts:build_shift",
    "build-scenes": "diffclf.cli.build_scenes:build_scenes",
    "build-fonts": "diffclf.cli.build_fonts:build_fonts",
    "cache-latents": "diffclf.cli.cache_latents:cache_latents",
    "compositional": "diffclf.cli.compositional:compositional",
}


def run_command(name: str, argv: list[str]) -> object:
    """Parse ``argv`` against the subcommand's signature and run it."""
    module, _, func = COMMANDS[name].partition(":")
    return CLI(getattr(importlib.import_module(module), func), args=argv, as_positional=False)
