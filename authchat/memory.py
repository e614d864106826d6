"""Giving freed memory back to the operating system.

Every connection has its own thread, and glibc gives threads their own
allocation arenas. When sessions end, what they allocated is freed, but the
arenas keep the free space for reuse, so under steady churn the resident
size creeps up while the memory in use stays flat (measured in the soak
scenario: 30 MiB in use throughout, free-but-kept space 4.6 → 10.7 MiB over
five minutes). `malloc_trim` hands that space back. Where the C library has
no such call (musl, macOS), nothing is done.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)


def _find_malloc_trim() -> Callable[[int], int] | None:
    try:
        trim = ctypes.CDLL(None).malloc_trim  # the C library the process runs on
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_malloc_trim = _find_malloc_trim()


def release_free_memory() -> None:
    """Return the allocator's free space to the operating system, if it can."""
    if _malloc_trim is not None:
        _malloc_trim(0)
