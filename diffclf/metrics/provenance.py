"""Where a figure came from: device, CPU model, date, command and commit.

A number counts only if it says what produced it. Results records, ``bench`` files and every
benchmark script take these fields from here, so they are spelt and measured one way: CPU models
differ between machines of one kind (Xeon, EPYC with AVX-512 BF16), so the CPU is named by its
model string, not by ``platform.processor()`` (empty on most Linux systems).
"""

from __future__ import annotations

import datetime as _dt
import functools
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = (s.strip() for s in line.partition(":"))
            if key == "model name" and value:
                return value
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_family_model() -> str | None:
    """``family/model`` from ``/proc/cpuinfo`` (tells CPU generations of one brand apart)."""
    fam = mod = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = (s.strip() for s in line.partition(":"))
            if key == "cpu family" and fam is None:
                fam = value
            elif key == "model" and mod is None:
                mod = value
    except OSError:
        return None
    return f"{fam}/{mod}" if fam else None


def device_name(device: torch.device | str) -> str:
    """``cuda:<GPU name>`` or ``cpu:<CPU model>``."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return f"{device.type}:{cpu_model()}"


def machine() -> dict[str, Any]:
    """The CPU side of a benchmark's provenance (model, family/model, logical CPUs, torch threads)."""
    threads = torch.get_num_threads()
    return {
        "cpu": cpu_model(),
        "cpu_family_model": cpu_family_model(),
        "logical_cpus": os.cpu_count(),
        "torch_threads": threads,
        "device": f"cpu ({cpu_model()}, {threads} threads)",
    }


@functools.lru_cache(maxsize=1)
def repo_commit() -> str:
    """``git describe`` of the checkout diffclf is imported from, or ``unknown`` (e.g. a wheel install)."""
    return git("describe", "--always", "--dirty", "--tags")


def git(*args: str, cwd: str | Path | None = None) -> str:
    """Output of a git command in ``cwd`` (default: the folder diffclf is imported from), or ``unknown``."""
    try:
        out = subprocess.run(
            ["git", "-C", str(cwd or Path(__file__).resolve().parent), *args],
            capture_output=True, text=True, timeout=10, check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def working_tree_dirty(cwd: str | Path | None = None) -> bool | None:
    """Whether tracked files differ from the checked-out commit (``cwd`` as in :func:`git`); None outside a
    checkout. Its own call, because :func:`git` answers ``unknown`` for empty output, which a clean tree gives."""
    where = str(cwd or Path(__file__).resolve().parent)
    try:
        out = subprocess.run(
            ["git", "-C", where, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10, check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return bool(out.stdout.strip())


def utc_now() -> str:
    """The current time, UTC, to the second (ISO 8601)."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def command_line(argv: list[str] | None = None) -> str:
    """The command that is running, shell-quoted so that it can be pasted back."""
    args = sys.argv if argv is None else argv
    return " ".join(shlex.quote(a) for a in ["python", *args])


def provenance(device: torch.device | str = "cpu", argv: list[str] | None = None) -> dict[str, Any]:
    """Device, CPU, date, command and commit of a figure, for a benchmark's output file."""
    return {
        "device": device_name(device),
        **{k: v for k, v in machine().items() if k != "device"},
        "date": utc_now(),
        "command": command_line(argv),
        "commit": repo_commit(),
        "torch": torch.__version__,
    }
