"""Keep freed memory inside the process, so that rollouts and training steps stop paying page faults.

A rollout allocates and frees the same large tensors every step (a batch of 32 Burgers trajectories at 512
points: 8 MB per decoder intermediate). glibc's malloc hands big blocks back to the kernel when they are freed
(``munmap``, or trimming the top of the heap), so the next step faults every page in again and the kernel
zeroes it. Measured on this project's CPU machines (one thread, batch 32, 40 steps, 256-point Burgers): about
220,000 minor page faults per batch rollout and ~30 % of its CPU time in the kernel, for UPS and FNO alike;
after :func:`retain_freed_memory`, a handful.

:func:`retain_freed_memory` raises glibc's thresholds once per process (``mallopt``): blocks up to 32 MB come
from the heap, the heap keeps up to 256 MB of free memory at its top, and grows in 64 MB steps. The price is
memory a process holds on to after a peak (at most those 256 MB of free heap top). ``ups`` commands, the
``Simulator`` and the benchmarks call it; ``UPS_RETAIN_FREED_MEMORY=0`` in the environment turns it off.
Elsewhere than Linux with glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import os
import platform

# glibc's mallopt parameter numbers (malloc.h)
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
SETTINGS = ((M_MMAP_THRESHOLD, 32 << 20), (M_TRIM_THRESHOLD, 256 << 20), (M_TOP_PAD, 64 << 20))
ENV = "UPS_RETAIN_FREED_MEMORY"

_applied: bool | None = None


def retain_freed_memory() -> bool:
    """Apply :data:`SETTINGS` to glibc's malloc (once per process). True when they are in force."""
    global _applied
    if _applied is None:
        _applied = _apply()
    return _applied


def _apply() -> bool:
    if os.environ.get(ENV, "1").strip().lower() in {"0", "false", "no", "off"}:
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return all(libc.mallopt(param, value) == 1 for param, value in SETTINGS)
