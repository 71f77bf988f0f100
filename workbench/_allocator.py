"""Keep freed CPU memory in the process (glibc ``mallopt``).

A training step allocates and frees the same large tensors every time (the tied embedding's
gradient alone is ``[49152, 576]``, 113 MB). glibc serves blocks above its mmap threshold with a
fresh ``mmap`` and hands them back on ``free``, so every step pays page faults to touch them again.
With mmap off for ``malloc`` (``M_MMAP_MAX = 0``) and a 1 GiB trim threshold, freed blocks stay in
the heap and are reused: a full fine-tuning step of the embedded model (batch 8, the demo's) took
4.64 s instead of 5.31 s, 1.14x, with the two settings alternating step by step in one process
(``bench/full_step.py``). The demo's peak memory stayed at 3.3 GB.

Applied once per process on CPU loads; ``WORKBENCH_MALLOC=default`` leaves glibc's defaults. A
no-op where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
GLIBC_DEFAULTS = {M_MMAP_MAX: 65536, M_TRIM_THRESHOLD: 128 * 1024}
KEEP = {M_MMAP_MAX: 0, M_TRIM_THRESHOLD: 1 << 30}
_done = False


def switch(keep: bool) -> bool:
    """Set the allocator to keep freed memory (``True``) or back to glibc's defaults, handing free
    memory back to the system (``False``; what the benchmarks compare against). ``True`` if applied."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = all(libc.mallopt(k, v) for k, v in (KEEP if keep else GLIBC_DEFAULTS).items())
        if not keep:
            libc.malloc_trim(0)
    except (OSError, AttributeError):  # musl or another libc: nothing to tune
        return False
    return bool(ok)


def keep_freed_memory() -> bool:
    """Apply the settings (once); ``True`` if they are in effect."""
    global _done
    if _done:
        return True
    if os.environ.get("WORKBENCH_MALLOC", "").lower() == "default" or not sys.platform.startswith("linux"):
        return False
    _done = switch(True)
    return _done
