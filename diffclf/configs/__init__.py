"""Presets: the YAML files shipped inside the package (this folder), and the one resolver that finds them.

One resolver serves every kind — whole run configs (``--config quickstart``), data (``--data
imagenet_a``), strategies (``--model.strategy ttest``), baselines — for the command line, the
subcommands that take a preset (``bench --strategies``, ``cache-latents --data``) and the benchmark
helpers. The files are package data, so a plain (non-editable) ``pip install`` finds them from any folder;
in a checkout, ``configs/`` is a link to this folder, so ``--config configs/quickstart.yaml`` works both in
the checkout and from anywhere else. It imports neither Lightning nor the rest of diffclf, so every layer
may use it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

CONFIG_DIR = Path(__file__).resolve().parent


def known_presets(kind: str) -> list[str]:
    """Preset names of one kind (``""`` for whole run configs, ``data``, ``strategy``, ``baselines``)."""
    return sorted(p.stem for p in (CONFIG_DIR / kind).glob("*.yaml"))


def is_preset_name(value: str) -> bool:
    """A bare name (``imagenet_a``), not a path, a YAML file or an inline class spec."""
    return bool(value) and "/" not in value and "." not in value and not value.startswith(("{", "["))


def resolve_preset(kind: str, spec: str, option: str) -> Path:
    """The preset file a name, a YAML path, or a ``configs/...`` path stands for, or a one-line error.

    A path that exists is used as it is; ``configs/<kind>/NAME.yaml`` that does not exist here (outside
    a checkout) is looked up in the packaged presets.
    """
    if not is_preset_name(spec):
        path = Path(spec)
        if path.is_file():
            return path
        parts = path.parts
        if parts and parts[0] == "configs" and (CONFIG_DIR.joinpath(*parts[1:])).is_file():
            return CONFIG_DIR.joinpath(*parts[1:])
        raise FileNotFoundError(f"{option} {spec}: no such file")
    path = CONFIG_DIR / kind / f"{spec}.yaml"
    if not path.is_file():
        where = f"configs/{kind}/" if kind else "configs/"
        raise FileNotFoundError(
            f"{option} {spec}: no preset {where}{spec}.yaml; known presets: {', '.join(known_presets(kind))}"
        )
    return path


def yaml_as_json(path: Path) -> str:
    """A YAML file's content as one JSON argument (a plain jsonargparse parser takes class specs, not paths)."""
    return json.dumps(yaml.safe_load(path.read_text()))


def load_preset(kind: str, spec: str, base_type: type, option: str, overrides: dict[str, Any] | None = None) -> Any:
    """Instantiate a preset (or YAML file) of ``kind`` as a ``base_type`` subclass, with ``init_args`` overrides."""
    from jsonargparse import ArgumentParser

    path = resolve_preset(kind, spec, option)
    parser = ArgumentParser()
    parser.add_argument("--obj", type=base_type)
    args = ["--obj", yaml_as_json(path)]
    for key, value in (overrides or {}).items():
        args.append(f"--obj.init_args.{key}={value}")
    return parser.instantiate(parser.parse_args(args)).obj
