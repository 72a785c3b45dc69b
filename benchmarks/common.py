"""Shared bits of the benchmarks: machine description, timing, and the measured matmul peak."""

from __future__ import annotations

import os
import platform
import statistics
import time


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

    return f"{cpu}, {os.cpu_count()} cores, jax {jax.__version__} on {jax.devices()[0].platform}"


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
