"""Keep large CPU buffers in the process between uses, instead of handing them back to the OS.

glibc serves every allocation above its mmap threshold (at most 32 MB) with a fresh mmap and unmaps it
on free. A 256 px batch's feature maps are larger than that (seed-cnn's first layer at batch 64: 64 x 8
x 256 x 256 x 4 bytes = 134 MB), so every forward pass page-faults its activations in again, and the
kernel zeroes each page. TensorFlow keeps its own buffer pool; PyTorch's CPU allocator is plain
malloc. Turning off malloc's mmap and heap trimming lets freed buffers be reused: measured effect in
BENCHMARKS.md. Written here because no maintained PyPI package does it (jemalloc/tcmalloc need
LD_PRELOAD before the process starts).

The cost: memory freed after a peak stays with the process, and differently sized blocks fragment the
heap: the NIH workflow's peak RSS rose from 1.15 to 1.71 GB (BENCHMARKS.md).
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
M_MMAP_MAX = -4
_KEEP = 2**31 - 1  # the largest trim threshold mallopt takes: keep up to 2 GB of freed heap

_state: dict = {}


def keep_freed_memory() -> bool:
    """Switch glibc malloc to reuse freed large buffers (once per process). Returns whether it is on.
    Off on other platforms and C libraries, and when CXRLAB_MALLOC=system."""
    if "on" in _state:
        return _state["on"]
    on = False
    if sys.platform.startswith("linux") and os.environ.get("CXRLAB_MALLOC", "") != "system":
        try:
            mallopt = ctypes.CDLL(None).mallopt
            mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
            on = mallopt(M_MMAP_MAX, 0) == 1 and mallopt(M_TRIM_THRESHOLD, _KEEP) == 1
        except (OSError, AttributeError):  # musl and others: no mallopt
            on = False
    _state["on"] = on
    return on
