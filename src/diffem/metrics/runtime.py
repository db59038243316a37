"""Wall-clock time and peak memory of a call.

Peak host memory is ``ru_maxrss`` — the *process* high-water mark since it started (it never goes
down), so it bounds the memory of the call rather than isolating it. On CUDA the peak is
``torch.cuda.max_memory_allocated`` after a reset, i.e. exactly this call's tensors.
"""
from __future__ import annotations

import resource
import sys
import time
from contextlib import contextmanager

import torch


def peak_rss_mb() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 2**20 if sys.platform == "darwin" else r / 1024.0  # bytes on macOS, kB on Linux


@contextmanager
def measure(device=None):
    """``with measure(device) as m: ...`` then m["time_s"], m["cpu_s"], m["peak_rss_mb"], m["peak_cuda_mb"]."""
    m = {}
    cuda = torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        yield m
    finally:
        if cuda:
            torch.cuda.synchronize()
        m["time_s"] = time.perf_counter() - t0
        # CPU seconds of the whole process (all threads): cpu_s / time_s well below the thread count
        # means the machine was shared and time_s is inflated.
        m["cpu_s"] = time.process_time() - c0
        m["peak_rss_mb"] = peak_rss_mb()
        m["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20 if cuda else None
