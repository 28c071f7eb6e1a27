"""Helpers the test files share: paths, Debian's Fashion-MNIST, one-thread runs, random weights, free ports.

Plain functions are imported by the test files (``from conftest import randomize``; pytest puts this folder
on the path); fixtures are found by pytest itself.
"""

from __future__ import annotations

import gzip
import math
import socket
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")
needs_fashion = pytest.mark.skipif(
    not DEBIAN_FASHION.is_dir(),
    reason="Debian's dataset-fashion-mnist is not installed (/usr/share/datasets/fashion-mnist absent)",
)


def gz_idx(name: str) -> np.ndarray:
    """An IDX file of Debian's copy read independently of diffclf: gzip, big-endian header, bytes."""
    raw = gzip.decompress((DEBIAN_FASHION / f"{name}.gz").read_bytes())
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    return np.frombuffer(raw[4 + 4 * ndim :], dtype=np.uint8).reshape(dims)


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Replace every trainable weight by a random one (DiT's init zeroes adaLN and the output, which would
    make every comparison trivially pass)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                fan_in = p.shape[-1] if p.dim() > 1 else 10
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(fan_in))
    return model


def free_port() -> int:
    """A free TCP port on the loopback address (process groups of the DDP tests)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: one thread is as fast, and two OpenMP threads crawl on a loaded 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
