"""Host memory allocator settings for CPU runs.

glibc serves every allocation above its mmap threshold (128 KiB, adapting up to 32 MiB) with a fresh
``mmap`` and returns it to the OS on free. A DiT forward on the CPU allocates and frees activations of
1-50 MB dozens of times, so each one is faulted in page by page again: on a 2-core Xeon this was 23%
of the scoring time (1.9 s of system time per 8.4 s; ``benchmarks/README.md``). Keeping freed memory
in the heap removes the faults. It changes no result, only speed, and costs up to ``threshold``
bytes of memory kept by the process instead of returned.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "LD_PRELOAD", "DIFFCLF_KEEP_ALLOCATOR")


def keep_freed_memory(threshold: int = 1 << 30) -> bool:
    """Ask glibc to serve blocks below ``threshold`` bytes from its heap and keep freed memory there.

    Does nothing (returns False) where the user already chose (``MALLOC_*`` variables, a preloaded
    allocator such as jemalloc or tcmalloc, or ``DIFFCLF_KEEP_ALLOCATOR=1``) or the C library is not
    glibc. Returns True when both settings were applied.
    """
    if any(os.environ.get(name) for name in _ENV):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, threshold)) and bool(mallopt(_M_TRIM_THRESHOLD, threshold))
