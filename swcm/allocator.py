"""glibc's malloc, told to keep freed memory for reuse: what a training step on a CPU wants.

By default glibc maps every block above a threshold (128 KiB, raised up to 32 MiB as such blocks
are freed) afresh from the system and unmaps it when it is freed. A training step allocates and
frees the same large tensors every step — the embedding matrix's gradient, the head's logits and
their softmax — so each step pays again for the system to zero those pages one by one on first
touch: 0.854–0.887 of the step time with freed memory kept, for a step of the demo's model on 2
cores (`benchmarks/allocator.py`; 0.906–0.947 inside a real fine-tuning run). jemalloc and tcmalloc, which CPU-inference guides preload for the same reason, keep
freed memory; `keep_freed_memory` has glibc do the same with two `mallopt` settings. The `swcm`
command calls it at start; a program that trains through the library may call it itself.
"""

from __future__ import annotations

import ctypes
import os
import platform

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's malloc.h
GLIBC_DEFAULTS = {M_TRIM_THRESHOLD: 128 * 1024, M_MMAP_MAX: 65536}
# Free memory at the top of the heap beyond this goes back to the system (the default is 128 KiB).
TRIM_THRESHOLD = 1 << 30
OPT_OUT = "SWCM_KEEP_FREED_MEMORY"  # =0: leave malloc as it is


def _glibc():
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    libc = ctypes.CDLL(None)  # the process's own symbols, glibc's among them (find_library would run ldconfig)
    return libc if hasattr(libc, "mallopt") else None


def keep_freed_memory(enable: bool = True) -> bool:
    """Have glibc's malloc serve large blocks from its heap (no fresh mapping per block) and keep
    up to `TRIM_THRESHOLD` of freed memory for reuse; `enable=False` restores glibc's defaults.
    The process then holds on to its peak heap instead of returning it between steps. Returns
    whether the settings were applied: False off glibc, or with SWCM_KEEP_FREED_MEMORY=0."""
    libc = _glibc()
    if libc is None or (enable and os.environ.get(OPT_OUT, "1") == "0"):
        return False
    settings = {M_MMAP_MAX: 0, M_TRIM_THRESHOLD: TRIM_THRESHOLD} if enable else GLIBC_DEFAULTS
    applied = all(libc.mallopt(option, value) == 1 for option, value in settings.items())
    if not enable:
        libc.malloc_trim(0)
    return applied
