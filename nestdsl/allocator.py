"""Keep freed memory for the next training step (glibc's malloc, Linux).

By default glibc returns a large freed block to the OS (blocks above its mmap threshold, and
the top of the heap above its trim threshold), so the next step's tensors of the same sizes
come back as fresh pages that the kernel must fault in and zero: at B = 4, T = 2,048 and
d_model 256, gated-deltanet takes 0.2 to 0.3 GiB of fresh pages per step that way. Every
step allocates the same sizes again, so the `nestdsl` command keeps them instead: blocks up to
32 MiB come from the heap, and the heap is trimmed only when 2 GiB at its top are free. The
steps then take (almost) no fresh pages, at the same peak resident set (they reuse the same
blocks), and run 0 to 13% faster (docs/benchmarks.md, "The allocator and the T = 2,048 falls").
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

# mallopt parameters (glibc's malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_FROM = 32 << 20  # glibc's largest mmap threshold on 64-bit systems
TRIM_FROM = 2**31 - 1  # mallopt takes a C int


def keep_freed_memory() -> bool:
    """Set glibc's thresholds as the module doc says; False where there is no glibc malloc
    to set (macOS, Windows, musl) or it refused."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_FROM)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_FROM))
