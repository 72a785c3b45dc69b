"""Per-step training metrics to JSONL and TensorBoard event files, and the matmul peak used for MFU."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from metacog_jax import artifacts


def _import_summary_writer():
    """tensorboardX's SummaryWriter, imported without torch.

    tensorboardX's writer imports torch when it is installed (about 4 s), only to recognize torch tensors;
    the values logged here are Python floats. Unless torch is already loaded, its import is made to fail
    (a None entry in sys.modules) for as long as tensorboardX is imported, which it handles.
    """
    if "tensorboardX" in sys.modules or "torch" in sys.modules:
        from tensorboardX import SummaryWriter

        return SummaryWriter
    sys.modules["torch"] = None
    try:
        from tensorboardX import SummaryWriter
    finally:
        del sys.modules["torch"]
    return SummaryWriter


class MetricsLog:
    """Appends {"step": i, ...} lines to <dir>/metrics.jsonl and scalars to TensorBoard (tensorboardX)."""

    def __init__(self, directory: str | Path, enabled: bool = True):
        self.enabled = enabled
        self.writer = None
        if not enabled:
            return
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.jsonl = open(self.directory / "metrics.jsonl", "a", encoding="utf-8")
        try:
            SummaryWriter = _import_summary_writer()
            self.writer = SummaryWriter(str(self.directory / "tensorboard"))
        except ImportError:  # the JSONL log is the record; TensorBoard is a convenience
            self.writer = None

    def write(self, step: int, values: dict) -> None:
        if not self.enabled:
            return
        clean = artifacts.json_ready(dict(values))  # NaN/inf -> null (strict JSON), NumPy -> Python
        self.jsonl.write(json.dumps({"step": step, **clean}, allow_nan=False) + "\n")
        self.jsonl.flush()
        if self.writer is not None:
            for k, v in clean.items():
                if isinstance(v, float) and k != "step":
                    self.writer.add_scalar(k, v, step)

    def close(self) -> None:
        if not self.enabled:
            return
        self.jsonl.close()
        if self.writer is not None:
            self.writer.close()


def measure_matmul_peak(n: int = 1024, repeats: int = 10, dtype=jnp.float32) -> float:
    """Achieved FLOP/s of a jitted n x n matmul on one device (the peak MFU is measured against)."""
    a = jnp.ones((n, n), dtype)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n ** 3 / best
