"""Freed memory goes back to the operating system when the daemon asks (glibc's malloc_trim)."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

BURST = """
import gc
from rollbackd.memtrim import release_free_memory

def rss_kib() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))

# Many blocks the C allocator serves (larger than Python's small-object allocator takes), with a
# few survivors spread among them, as the answers of a burst of queries leave them.
blocks = [bytearray(2048) for _ in range(40_000)]
kept = blocks[::1000]
del blocks
gc.collect()
before = rss_kib()
trimmed = release_free_memory()
print(trimmed, before, rss_kib())
"""


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_memory_freed_by_a_burst_is_given_back() -> None:
    out = subprocess.run([sys.executable, "-c", BURST], capture_output=True, text=True, check=True).stdout
    trimmed, before, after = out.split()
    assert trimmed == "True"
    assert int(before) - int(after) > 40_000  # KiB: most of the 80 MiB freed
