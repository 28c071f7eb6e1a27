"""Preset names on the command line: rewritten to the packaged files (``diffclf.configs``) before
jsonargparse sees them, since it takes class paths and files, not names."""

from __future__ import annotations

from pathlib import Path

from diffclf.configs import is_preset_name, resolve_preset

# Options whose value may be a preset name, and the preset folder each looks in.
ALIASED_OPTIONS = {
    "--config": "",
    "--data": "data",
    "--model.strategy": "strategy",
    "--model.init_args.strategy": "strategy",
}


def rewrite_aliases(argv: list[str]) -> list[str]:
    """Replace preset names (and packaged ``configs/...`` paths) by their files, before jsonargparse
    sees them: it takes class paths and files, not names."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        opt, eq, value = argv[i].partition("=")
        if opt in ALIASED_OPTIONS:
            if not eq and i + 1 < len(argv):
                value, i = argv[i + 1], i + 1
            kind = ALIASED_OPTIONS[opt]
            if is_preset_name(value) or (value.endswith((".yaml", ".yml")) and not Path(value).is_file()):
                value = str(resolve_preset(kind, value, opt))
            out += [opt, value]
        else:
            out.append(argv[i])
        i += 1
    return out
