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


CIFAR10_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def cifar10_colour(label: int) -> tuple[int, int, int]:
    """The base colour of class ``label`` in :func:`write_cifar10`'s images (noise adds 0..4 to red)."""
    return 25 * label, 128, 255 - 25 * label


def write_cifar10(root: Path, per_class: int = 2, size: int = 32, seed: int = 0) -> Path:
    """A tiny CIFAR-10 in its real format under ``root/cifar-10-batches-py/``; returns ``root`` (pass as data.root).

    All six batches (``data_batch_1..5``, ``test_batch``: ``per_class`` images of every class each, in a seeded
    shuffled order) and ``batches.meta`` with the real class names, pickled as the originals read with
    ``encoding="bytes"`` (byte-string keys, ``data`` uint8 ``(N, 3*size*size)`` row-major CHW). An image of
    class ``k`` is :func:`cifar10_colour` ``(k)`` plus per-pixel noise 0..4 on red, so ``round(mean red / 25)``
    recovers its label after any resize.
    """
    import pickle

    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for batch in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = rng.permutation(np.repeat(np.arange(10), per_class))
        images = np.empty((len(labels), 3, size, size), dtype=np.uint8)
        for i, label in enumerate(labels):
            images[i] = np.array(cifar10_colour(int(label)), dtype=np.uint8)[:, None, None]
            images[i, 0] += rng.integers(0, 5, (size, size), dtype=np.uint8)
        record = {b"batch_label": batch.encode(), b"labels": [int(y) for y in labels],
                  b"data": images.reshape(len(labels), -1),
                  b"filenames": [f"{i}.png".encode() for i in range(len(labels))]}
        (folder / batch).write_bytes(pickle.dumps(record, protocol=2))
    meta = {b"label_names": [n.encode() for n in CIFAR10_NAMES], b"num_cases_per_batch": 10 * per_class,
            b"num_vis": 3 * size * size}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return Path(root)
