"""CPU performance settings for running diffusion UNets on a few cores.

The biggest single win measured on the project machine (docs/cpu-feasibility.md) is glibc's
allocator: by default every buffer > 32 MB is mmap'd and unmapped on each call, so each network
call page-faults fresh memory. ``configure_cpu()`` turns that off from Python with ``mallopt``
(the same as MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=<large> MALLOC_TOP_PAD_=<large>). The
cost: freed memory is kept by the process instead of going back to the OS.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys

import torch

# glibc mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_MAX = -4

_configured: dict | None = None


def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
        libc.gnu_get_libc_version()  # only glibc has this; musl etc. -> AttributeError
        return libc
    except (OSError, AttributeError):
        return None


def configure_malloc(trim_threshold: int = 64 << 30, top_pad: int = 1 << 30) -> bool:
    """Keep large buffers in the heap (no mmap per call). True if applied (glibc only)."""
    libc = _libc()
    if libc is None:
        return False
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    # mallopt takes an int: clamp the thresholds to INT_MAX
    big = lambda v: min(int(v), 2**31 - 1)  # noqa: E731
    ok = libc.mallopt(M_MMAP_MAX, 0) == 1
    ok &= libc.mallopt(M_TRIM_THRESHOLD, big(trim_threshold)) == 1
    ok &= libc.mallopt(M_TOP_PAD, big(top_pad)) == 1
    return bool(ok)


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> str:
    """/proc/cpuinfo's text ('' where there is none), read once."""
    try:
        with open("/proc/cpuinfo") as f:
            return f.read()
    except OSError:
        return ""


def bf16_supported() -> bool:
    """Whether bf16 autocast is likely to be fast here (AMX/AVX512-BF16 on CPU, or CUDA)."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    flags = _cpuinfo()
    return "amx_bf16" in flags or "avx512_bf16" in flags


def bf16_conv_fast(device: str | torch.device = "cpu") -> bool:
    """Whether bf16 autocast makes FFDNet's convolutions faster than fp32 on ``device``. Measured, one
    1126² call on 2 cores: an Intel Xeon with AMX 3.8 → 1.6 s (session 11), an AMD EPYC Zen 4 with
    AVX512-BF16 2.1 → 1.2 s (session 9), but an Intel Xeon with AVX512-BF16 and no AMX 3.1 → 4.3 s
    (session 10): on Intel only AMX pays."""
    if torch.device(device).type == "cuda":
        return torch.cuda.is_bf16_supported()
    info = _cpuinfo()
    return "amx_bf16" in info or ("avx512_bf16" in info and "AuthenticAMD" in info)


def configure_cpu(threads: int | None = None, malloc: bool = True) -> dict:
    """Apply the CPU settings once per process; returns what was applied.

    ``threads``: torch intra-op threads (default: leave torch's choice, = cores here).
    Safe to call repeatedly and on non-glibc systems (then the malloc part is a no-op).
    """
    global _configured
    if _configured is not None and threads is None:
        return _configured
    applied = {"malloc": False, "threads": torch.get_num_threads()}
    if malloc and os.environ.get("DIFFEM_NO_MALLOC_TUNING") != "1":
        applied["malloc"] = configure_malloc()
    if threads is not None:
        torch.set_num_threads(int(threads))
        applied["threads"] = int(threads)
    _configured = applied
    return applied


def prepare_network(net: torch.nn.Module, channels_last: bool = True) -> torch.nn.Module:
    """channels_last memory format (pays off only together with bf16 autocast)."""
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    return net
