"""Process-level settings that make CPU training and evaluation faster.

glibc's malloc serves large blocks with mmap and returns freed memory at the top of the heap to
the operating system. A training step or an L_5000 chunk allocates and frees tens of megabytes of
temporaries of varying sizes, so the same memory is unmapped and faulted back in, page by page, on
every step: in a virtual machine each fault costs microseconds, and L_5000 ran at 30-33 images/s
with about 3 million page faults against 49-52 images/s with the thresholds raised (2-core CPU,
see benchmarks/). Raising glibc's mmap and trim thresholds keeps freed blocks in the heap for reuse;
the process then holds on to its peak memory, which for these models is a few hundred MB.

Set ``IWAE_KEEP_MALLOC=1`` to leave the allocator alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["tune_allocator"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_done = False


def tune_allocator(threshold: int = 1 << 30) -> bool:
    """Raises glibc's mmap and trim thresholds to ``threshold`` bytes, once per process.

    Returns True if the allocator was tuned (Linux with glibc), False otherwise.
    """
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux") or os.environ.get("IWAE_KEEP_MALLOC"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = bool(mallopt(_M_MMAP_THRESHOLD, threshold)) or bool(mallopt(_M_MMAP_THRESHOLD, 32 << 20))
    ok = bool(mallopt(_M_TRIM_THRESHOLD, threshold)) and ok
    _done = ok
    return ok
