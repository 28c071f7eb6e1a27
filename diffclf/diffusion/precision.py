"""Which precision the denoiser runs in when scoring: ``precision: auto`` resolved per device.

bf16 autocast pays only where the hardware multiplies bf16 natively: a CUDA device of compute capability
8.0 or newer (A100, H100/H200, ...) and a CPU with AVX-512 BF16 or AMX-BF16 (Intel Cooper Lake and
Sapphire Rapids onwards, AMD Zen 4 onwards). Elsewhere PyTorch emulates it through fp32 and scoring gets
*slower* (and no more exact), so ``auto`` falls back to fp32 there. The choice is made where the device is
known (when a task builds its scorer) and reported with its reason: a results record says which precision
produced it, and why.

Measured (benchmarks/results/precision/fashion_stage3.md): with errors accumulated in fp32, bf16 changed 5 of
2,000 Fashion-MNIST predictions, every one among the closest calls of the fp32 errors, accuracy unchanged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch

Precision = Literal["32", "bf16"]
CPU_BF16_FLAGS = (("amx_bf16", "AMX-BF16"), ("avx512_bf16", "AVX-512 BF16"))
_CPUINFO = Path("/proc/cpuinfo")


def cpu_flags() -> set[str]:
    """The CPU's feature flags: torch's own probe (``torch.cpu.get_capabilities``) where this torch has
    it, else the ``flags`` line of ``/proc/cpuinfo`` (Linux); empty when neither says."""
    probe = getattr(torch.cpu, "get_capabilities", None)
    if probe is not None:
        try:
            return {name for name, value in probe().items() if value is True}
        except (RuntimeError, AttributeError):
            pass
    try:
        text = _CPUINFO.read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def native_bf16(device: torch.device | str) -> str | None:
    """Why ``device`` multiplies bf16 natively (a short phrase for reports), or None where it does not."""
    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(index)
        if major >= 8:
            return f"{torch.cuda.get_device_name(index)} (compute capability {major}.{minor}) has bf16 tensor cores"
        return None
    if device.type == "cpu":
        flags = cpu_flags()
        names = [name for flag, name in CPU_BF16_FLAGS if flag in flags]
        return f"the CPU has {' and '.join(names)}" if names else None
    return None


def resolve_precision(requested: str, device: torch.device | str) -> tuple[Precision, str | None]:
    """``(precision, reason)``: ``32`` and ``bf16`` as asked (reason None); ``auto`` as bf16 where
    :func:`native_bf16` finds native support, else fp32, with the reason either way."""
    if requested in ("32", "bf16"):
        return requested, None  # type: ignore[return-value]
    if requested != "auto":
        raise ValueError(f"scoring.precision must be '32', 'bf16' or 'auto', got {requested!r}")
    why = native_bf16(device)
    if why is not None:
        return "bf16", f"auto: bf16 because {why}"
    return "32", f"auto: fp32 because {torch.device(device).type} has no native bf16"
