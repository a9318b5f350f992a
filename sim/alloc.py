"""Keep freed memory for reuse (glibc only).

A [32, 407,050] float32 tensor is 52 MB, above glibc's mmap threshold: by
default each one is a fresh mmap, unmapped on free, so every new [n, d]
tensor is faulted in by the kernel one 4 KiB page at a time.  Serving every
block from the heap and keeping up to 1 GiB of freed memory there made the
batched gradient 2.4x faster and a top-k round 1.8x faster on the 2-core
development machine (docs/performance-history.md, bench_gradients.py --malloc-reuse),
with identical results.  Elsewhere (macOS, musl, Windows) this does nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_done = False


def reuse_freed_memory() -> bool:
    """Call once at start-up, before large tensors are allocated; True if applied."""
    global _done
    if _done:
        return True
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = bool(libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30)) and bool(libc.mallopt(_M_MMAP_MAX, 0))
    except (OSError, AttributeError):
        return False
    _done = ok
    return ok
