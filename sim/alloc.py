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
import os

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_done = False


def reuse_freed_memory() -> bool:
    """Call once at start-up, before large tensors are allocated; True if applied."""
    global _done
    if _done:
        return True
    try:
        libc = _c_library()
        ok = bool(libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30)) and bool(libc.mallopt(_M_MMAP_MAX, 0))
    except (OSError, AttributeError):
        return False
    _done = ok
    return ok


# The heap can fragment under the chunked rounds of a memory budget
# (sim/learn/chunked.py): measured on the 2-core AMD EPYC, n = 1000 ResNet-18
# workers in chunks of 8, with reuse_freed_memory() applied after torch had
# been imported (as a sweep's worker process does), glibc kept 5 GiB of freed
# blocks in the heap after 180 workers while 0.6 GiB were in use, and the
# process was killed for memory after 800.  Applied before torch's import (as
# run_sim.py does) the heap stayed under 3 GiB.  malloc_trim(0) hands the free
# pages inside the heap back to the kernel (MADV_DONTNEED; glibc >= 2.8), so
# the chunked round calls keep_within(limit) after each chunk, with limit =
# the budget less one chunk's bytes (sim/learn/chunked.py Plan.trim_above): a
# trim only when the resident set is above it.  With the trim at the budget
# itself the peak was 1.16x the budget at n = 1000 (a chunk grew the resident
# set by up to 0.65 GiB after a trim).
_libc = None


def _c_library():
    """The C library, loaded once (OSError where there is none to load)."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    return _libc


def resident_bytes() -> int | None:
    """This process's resident set (/proc/self/statm), or None where there is no /proc."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def keep_within(limit_bytes: int) -> bool:
    """malloc_trim(0) when the resident set is above ``limit_bytes`` (glibc
    only); True if it trimmed."""
    rss = resident_bytes()
    if rss is None or rss <= limit_bytes:
        return False
    try:
        _c_library().malloc_trim(0)
    except (OSError, AttributeError):
        return False
    return True
