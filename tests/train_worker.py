"""Runs a short training job in its own process (fake CPU devices must be set before jax is imported).

usage: python tests/train_worker.py WORKDIR '{"json": "overrides"}'
Overrides are dotted config fields. Env: XLA_FLAGS for fake devices; METACOG_* for multi-process runs and
the compilation cache.
Prints one JSON line: the final trainable parameters' checksum and the per-step losses.
"""

from __future__ import annotations

import json
import sys

import numpy as np


class SyntheticBatches:
    """Batches as a pure function of the step: random tokens, every position a target."""

    def __init__(self, batch: int, length: int, shard_index: int = 0, shard_count: int = 1):
        self.batch, self.length = batch, length
        self.lo = shard_index * batch // shard_count
        self.hi = (shard_index + 1) * batch // shard_count

    def get(self, step):
        rng = np.random.default_rng(step)
        b, t = self.batch, self.length
        toks = rng.integers(3, 2000, (b, t)).astype(np.int32)
        seg = np.ones((b, t), np.int32)
        seg[:, t - 3:] = 0  # some padding
        weights = np.where(seg > 0, 1.0, 0.0).astype(np.float32)
        task = np.where(np.arange(b)[:, None] % 2 == 0, 1, 2) * (seg > 0)
        full = dict(tokens=toks, positions=np.tile(np.arange(t, dtype=np.int32), (b, 1)), segment_ids=seg,
                    targets=np.roll(toks, -1, 1), loss_weights=weights, task_ids=task.astype(np.int32),
                    decision_mask=np.zeros((b, t), np.float32), decision_value=np.zeros((b, t), np.float32))
        return {k: v[self.lo:self.hi] for k, v in full.items()}


def main():
    workdir, overrides = sys.argv[1], json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    import jax
    from flax import nnx

    from metacog_jax import runtime
    from metacog_jax.experiment_config import default_config
    from metacog_jax.train.trainer import train

    runtime.maybe_initialize_distributed()  # before any device use; train() would do it too
    runtime.enable_compilation_cache()  # METACOG_COMPILATION_CACHE: the test run's shared cache
    c = default_config()
    c.model.name = "random"
    c.train.steps, c.train.batch_size, c.train.checkpoint_every, c.train.peak_flops = 5, 8, 1, 1e11
    c.train.lr, c.train.warmup_steps = 1e-3, 1
    stop_after = overrides.pop("stop_after", None)
    for key, value in overrides.items():
        node = c
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = tuple(value) if isinstance(value, list) else value
    src = SyntheticBatches(c.train.batch_size, 24, jax.process_index(), jax.process_count())
    summary = train(c, workdir, src, stop_after=stop_after, progress=False)
    state = nnx.state(summary["model"].model, nnx.Param)
    leaves = [np.asarray(jax.device_get(jax.experimental.multihost_utils.process_allgather(x, tiled=True)))
              if not x.is_fully_addressable else np.asarray(x) for x in jax.tree.leaves(state)]
    if jax.process_index() == 0:
        np.savez(f"{workdir}/params.npz", *leaves)
    losses = [json.loads(line)["loss"] for line in open(f"{workdir}/train/metrics.jsonl")] \
        if jax.process_index() == 0 else []
    print("RESULT " + json.dumps({
        "checksum": float(sum(np.abs(l.astype(np.float64)).sum() for l in leaves)),
        "first": [float(x) for x in leaves[0].ravel()[:4]],
        "hash": __import__("hashlib").sha256(b"".join(l.tobytes() for l in leaves)).hexdigest(),
        "losses": losses, "end_step": summary["end_step"], "devices": jax.device_count()}), flush=True)


if __name__ == "__main__":
    import jax.experimental.multihost_utils  # noqa: F401

    main()
