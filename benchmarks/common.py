"""Shared bits of the benchmarks: machine description, timing, and the measured matmul peak."""

from __future__ import annotations

import os
import platform
import statistics
import time


_ALLOCATOR = {"tuned": False}


def tune_allocator() -> bool:
    """The host-allocator part of every `metacog` model stage's start-up (metacog_jax.runtime.tune_host_allocator,
    which runtime.start_process applies first: glibc malloc keeps freed memory for reuse), applied first thing so
    that both sides run with it. Only that part: the compilation cache and the multi-host join have no place
    in a single-process timing."""
    from metacog_jax.runtime import tune_host_allocator

    _ALLOCATOR["tuned"] = tune_host_allocator()
    return _ALLOCATOR["tuned"]


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [l.split(":", 1)[1].strip() for l in f if l.startswith("model name")]
        if names:
            cpu = names[0]
    except OSError:
        pass
    import jax

    malloc = "tuned" if _ALLOCATOR["tuned"] else "default"
    return (f"{cpu}, {os.cpu_count()} cores, jax {jax.__version__} on {jax.devices()[0].platform}, "
            f"glibc malloc {malloc}")


def best_of(fn, repeats: int = 3) -> float:
    """Minimum wall time of fn() over `repeats` runs (after the caller's warm-up)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def median(xs):
    return statistics.median(xs)
