"""One process of the two-process test in tests/test_sharding.py (not collected by pytest).

Run with METACOG_COORDINATOR / METACOG_NUM_PROCESSES / METACOG_PROCESS_ID and
``XLA_FLAGS=--xla_force_host_platform_device_count=4``: the processes join via
``runtime.maybe_initialize_distributed``, build one global 8-device mesh, and each
prints one JSON line with the results of cross-process computations so the
test can check that both agree with a NumPy reference.
"""

from __future__ import annotations

import json
import sys

from metacog_jax import runtime, sharding


def main() -> int:
    joined = runtime.maybe_initialize_distributed()

    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx
    from jax.experimental import multihost_utils
    from jax.sharding import PartitionSpec as P

    process = jax.process_index()
    mesh = sharding.make_mesh({"data": 2, "fsdp": -1, "tensor": 1})

    # Each process contributes its own 4 rows of a global (8, 3) batch.
    rows_per_process = 4
    local = (np.arange(rows_per_process * 3, dtype=np.float32).reshape(rows_per_process, 3)
             + 100.0 * process)
    sharding.check_batch_divisible(rows_per_process * jax.process_count(), mesh)
    batch = sharding.shard_batch({"x": local}, mesh)["x"]

    # A psum over every device of the global mesh (one row per device).
    def row_sums(block):
        return jax.lax.psum(jnp.sum(block), ("data", "fsdp"))

    psum = jax.jit(jax.shard_map(row_sums, mesh=mesh, in_specs=P(("data", "fsdp"), None),
                                 out_specs=P()))(batch)
    # The same reduction left to the compiler on the sharded array.
    total = jax.jit(jnp.sum)(batch)

    # A parameter sharded over all 8 devices (fsdp) applied to the sharded batch.
    class Tiny(nnx.Module):
        def __init__(self, rngs: nnx.Rngs):
            init = nnx.with_partitioning(nnx.initializers.normal(1.0), ("embed", "mlp"))
            self.proj = nnx.Linear(3, 8, use_bias=False, kernel_init=init, rngs=rngs)

    rules = (("embed", None), ("mlp", ("data", "fsdp")))
    model = sharding.init_sharded(lambda: Tiny(nnx.Rngs(0)), mesh, rules)
    kernel = model.proj.kernel.get_value()
    out = jax.jit(lambda k, x: jnp.sum(x @ k))(kernel, batch)
    full_kernel = np.asarray(multihost_utils.process_allgather(kernel, tiled=True))
    full_batch = np.asarray(multihost_utils.process_allgather(batch, tiled=True))

    result = {
        "process": process,
        "joined": joined,
        "process_count": jax.process_count(),
        "device_count": jax.device_count(),
        "local_device_count": jax.local_device_count(),
        "mesh": dict(mesh.shape),
        "kernel_spec": str(kernel.sharding.spec),
        "kernel_local_shards": len(kernel.addressable_shards),
        "psum": float(psum.addressable_data(0)),
        "sum": float(total.addressable_data(0)),
        "matmul_sum": float(out.addressable_data(0)),
        "numpy_matmul_sum": float(np.sum(full_batch @ full_kernel)),
        "numpy_sum": float(full_batch.sum()),
    }
    print("RESULT " + json.dumps(result), flush=True)
    jax.distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
