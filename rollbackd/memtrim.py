"""Giving the memory a burst of allocations freed back to the operating system.

Reading every target's past at start (``query_range`` answers of several MiB of JSON, parsed and
freed) leaves the C allocator holding the freed memory: the daemon's RSS stays at its high-water
mark (``bench/scale.py`` at 1,000 targets: 188 MiB right after the first tick). glibc's
``malloc_trim`` hands the free pages back; there is no library for that one call.
"""

from __future__ import annotations

import ctypes
import logging

logger = logging.getLogger(__name__)


def release_free_memory() -> bool:
    """Ask the C allocator to return its free memory to the system; whether it could (glibc
    only: elsewhere nothing happens)."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return False
    trim.argtypes = (ctypes.c_size_t,)
    trim.restype = ctypes.c_int
    return bool(trim(0))
