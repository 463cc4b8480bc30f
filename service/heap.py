"""glibc's heap in the serving process: what a burst of requests freed goes back to the system.

glibc raises its mmap threshold (up to 32 MiB) and its trim threshold (twice that) each time
a large mapped block is freed. After that, a burst's large buffers (decoded images, batches,
onnxruntime's arena regions) are carved from the heaps of the threads that asked for them,
and what they free there stays held: not given back on free (below the raised trim
threshold), and measured, not by `malloc_trim` either: an idle server kept ~45 MB of a
32-client load that way. Both thresholds set once, at glibc's defaults,
turn that adjustment off (as MALLOC_MMAP_THRESHOLD_=131072 would): blocks of 128 KiB or
more get their own mappings, unmapped when freed, and a thread heap's top is trimmed on
free. Without glibc (musl, macOS) both do nothing."""

from __future__ import annotations

import ctypes
import functools

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
THRESHOLD = 128 << 10  # glibc's default for both


@functools.cache
def _libc() -> ctypes.CDLL | None:
    """glibc (its soname is libc.so.6), or None."""
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def fix_thresholds() -> bool:
    """Fix glibc's mmap and trim thresholds at THRESHOLD; False where there is no glibc."""
    libc = _libc()
    return libc is not None and all(
        libc.mallopt(param, THRESHOLD) == 1 for param in (M_MMAP_THRESHOLD, M_TRIM_THRESHOLD)
    )


def release() -> None:
    """Give the free pages inside every thread's heap back to the system (glibc's
    malloc_trim): memory freed by threads other than the caller's too."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
