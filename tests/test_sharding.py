"""Tests for metacog_jax.sharding.

Pure logic (shapes, rules) runs in this process. Anything
that needs several devices runs in a subprocess started with
``XLA_FLAGS=--xla_force_host_platform_device_count=N``, which must be set
before jax is imported and would otherwise leak into other tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from jax.sharding import PartitionSpec as P

from metacog_jax import sharding
from conftest import xla_flags

REPO = Path(__file__).resolve().parents[1]


def run_with_devices(code: str, devices: int = 8, timeout: float = 120) -> str:
    """Run ``code`` in a fresh Python with ``devices`` fake CPU devices; return its stdout."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = xla_flags(devices)
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    for key in [k for k in env if k.startswith("METACOG_")]:
        del env[key]
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"subprocess failed:\n{proc.stdout}\n{proc.stderr[-4000:]}"
    return proc.stdout


# --- mesh shapes (no devices needed) ------------------------------------------


def test_resolve_mesh_shape_infers_minus_one():
    assert sharding.resolve_mesh_shape((1, -1, 2), 8) == (1, 4, 2)
    assert sharding.resolve_mesh_shape({"fsdp": -1}, 8) == (1, 8, 1)
    assert sharding.resolve_mesh_shape({"data": 2, "fsdp": 2, "tensor": 2}, 8) == (2, 2, 2)


@pytest.mark.parametrize("shape, message", [
    ((3, -1, 1), r"does not divide the device count 8"),
    ((1, 2, 2), r"has 4 devices but there are 8 devices"),
    ((-1, -1, 1), r"at most one axis may be -1"),
    ((1, 8), r"expected 3 sizes"),
    ({"model": 8}, r"unknown axes \['model'\]"),
    ((0, -1, 1), r"sizes must be >= 1"),
])
def test_resolve_mesh_shape_errors(shape, message):
    with pytest.raises(ValueError, match=message):
        sharding.resolve_mesh_shape(shape, 8)


# --- rules -> PartitionSpec ------------------------------------------------------


class FakeMesh:
    """Only ``.shape`` is read by logical_to_mesh_spec."""

    def __init__(self, **sizes):
        self.shape = sizes


def test_logical_to_mesh_spec_default_rules():
    rules = sharding.DEFAULT_LOGICAL_AXIS_RULES
    assert sharding.logical_to_mesh_spec(("embed", "mlp"), rules) == P("fsdp", "tensor")
    assert sharding.logical_to_mesh_spec(("vocab", "embed"), rules) == P("tensor", "fsdp")
    assert sharding.logical_to_mesh_spec(("embed", "heads", "kv"), rules) == P("fsdp", "tensor", None)
    assert sharding.logical_to_mesh_spec(("layers", "lora_rank", None), rules) == P(None, None, None)
    # A mesh axis already used by an earlier dim is dropped.
    assert sharding.logical_to_mesh_spec(("batch", "length", "embed"), rules) == P(("data", "fsdp"), None, None)


def test_logical_to_mesh_spec_divisibility_fallback():
    mesh = FakeMesh(data=2, fsdp=4, tensor=2)
    rules = sharding.DEFAULT_LOGICAL_AXIS_RULES
    # 9 heads cannot be split over tensor=2: replicated on that dim only.
    assert sharding.logical_to_mesh_spec(("embed", "heads", "kv"), rules, (64, 9, 64), mesh) == P("fsdp", None, None)
    # batch 6 is divisible by data=2 but not by data*fsdp=8: keep data only.
    assert sharding.logical_to_mesh_spec(("batch", "length"), rules, (6, 5), mesh) == P("data", None)
    assert sharding.logical_to_mesh_spec(("batch", "length"), rules, (16, 5), mesh) == P(("data", "fsdp"), None)


def test_logical_to_mesh_spec_errors_and_passthrough():
    with pytest.raises(ValueError, match=r"logical axis 'nonsense' \(dim 1\) has no rule"):
        sharding.logical_to_mesh_spec(("embed", "nonsense"), sharding.DEFAULT_LOGICAL_AXIS_RULES)
    with pytest.raises(ValueError, match="rank 2 but the shape"):
        sharding.logical_to_mesh_spec(("embed", "mlp"), sharding.DEFAULT_LOGICAL_AXIS_RULES, (4,), FakeMesh(fsdp=2))
    # Mesh axis names without a rule are used directly.
    assert sharding.logical_to_mesh_spec(("tensor", None), ()) == P("tensor", None)


def test_normalize_rules_from_json_lists():
    rules = sharding.normalize_rules([["batch", ["data", "fsdp"]], ["embed", ["fsdp"]], ["kv", None]])
    assert rules == (("batch", ("data", "fsdp")), ("embed", "fsdp"), ("kv", None))
    with pytest.raises(ValueError, match="unknown mesh axes"):
        sharding.normalize_rules([("embed", "model")])


# --- 8 fake devices (subprocess) ---------------------------------------------------


def test_make_mesh_on_eight_devices():
    out = run_with_devices("""
        import jax
        from metacog_jax import sharding
        mesh = sharding.make_mesh((1, -1, 2))
        assert dict(mesh.shape) == {"data": 1, "fsdp": 4, "tensor": 2}, mesh
        assert mesh.axis_types == (jax.sharding.AxisType.Auto,) * 3
        mesh = sharding.make_mesh({"data": 2, "tensor": -1}, devices=jax.devices())
        assert dict(mesh.shape) == {"data": 2, "fsdp": 1, "tensor": 4}
        try:
            sharding.make_mesh((3, -1, 1))
        except ValueError as e:
            print("ERR", e)
    """)
    assert "ERR mesh shape {'data': 3, 'fsdp': -1, 'tensor': 1} does not divide the device count 8" in out


def test_sharded_module_matches_unsharded():
    out = run_with_devices("""
        import json
        import jax, jax.numpy as jnp, numpy as np
        from flax import nnx
        from metacog_jax import sharding

        class Mlp(nnx.Module):
            def __init__(self, rngs):
                part = lambda names: nnx.with_partitioning(nnx.initializers.lecun_normal(), names)
                self.up = nnx.Linear(16, 32, use_bias=False, kernel_init=part(("embed", "mlp")), rngs=rngs)
                self.down = nnx.Linear(32, 16, use_bias=False, kernel_init=part(("mlp", "embed")), rngs=rngs)
                self.heads = nnx.Param(jnp.ones((16, 9, 4)), out_sharding=("embed", "heads", "kv"))
                self.scale = nnx.Param(jnp.ones((16,)))
            def __call__(self, x):
                return self.down(jax.nn.gelu(self.up(x))) * self.scale[...]

        mesh = sharding.make_mesh((1, 4, 2))
        model = sharding.init_sharded(lambda: Mlp(nnx.Rngs(0)), mesh)
        specs = {k: str(v.get_value().sharding.spec) for k, v in
                 [("up", model.up.kernel), ("down", model.down.kernel), ("heads", model.heads), ("scale", model.scale)]}
        print("SPECS", json.dumps(specs))
        assert len(model.up.kernel.get_value().addressable_shards) == 8
        assert model.up.kernel.get_value().addressable_shards[0].data.shape == (4, 16)

        with nnx.use_eager_sharding(False):
            plain = Mlp(nnx.Rngs(0))
        x = np.random.default_rng(0).normal(size=(8, 16)).astype(np.float32)
        xs = jax.device_put(x, sharding.batch_sharding(mesh))

        graphdef, state = nnx.split(model)
        shardings = sharding.state_shardings(state, mesh)
        @jax.jit
        def forward(state, x):
            return nnx.merge(graphdef, state)(x)
        sharded_out = jax.jit(forward, in_shardings=(shardings, sharding.batch_sharding(mesh)))(state, xs)
        plain_out = nnx.jit(lambda m, x: m(x))(plain, x)
        np.testing.assert_allclose(np.asarray(sharded_out), np.asarray(plain_out), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(np.asarray(model.up.kernel.get_value()), np.asarray(plain.up.kernel.get_value()))
        print("SUMMARY", json.dumps(sharding.assert_sufficiently_sharded(nnx.state(model), mesh, min_size=256)))
    """)
    specs = json.loads(out.split("SPECS ", 1)[1].splitlines()[0])
    assert specs == {"up": "P('fsdp', 'tensor')", "down": "P('tensor', 'fsdp')",
                     "heads": "P('fsdp', None, None)", "scale": "P()"}
    summary = json.loads(out.split("SUMMARY ", 1)[1].splitlines()[0])
    assert summary["sharded_fraction"] == 1.0


def test_optimizer_state_shards_like_its_parameters():
    out = run_with_devices("""
        import json
        import jax, optax
        from flax import nnx
        from metacog_jax import sharding

        class Up(nnx.Module):
            def __init__(self, rngs):
                init = nnx.with_partitioning(nnx.initializers.lecun_normal(), ("embed", "mlp"))
                self.up = nnx.Linear(16, 32, use_bias=False, kernel_init=init, rngs=rngs)

        mesh = sharding.make_mesh((1, 4, 2))
        model = sharding.init_sharded(lambda: Up(nnx.Rngs(0)), mesh)
        with nnx.use_eager_sharding(False):
            abstract = nnx.eval_shape(lambda: nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param))
        _, state = nnx.split(abstract)
        shardings = sharding.state_shardings(state, mesh)
        specs = {sharding._path_name(path): str(leaf.spec)
                 for path, leaf in jax.tree_util.tree_leaves_with_path(shardings)}
        print("SPECS", json.dumps(specs))
    """)
    specs = json.loads(out.split("SPECS ", 1)[1].splitlines()[0])
    moments = {k: v for k, v in specs.items() if k.startswith("opt_state") and "up/kernel" in k}
    assert len(moments) == 2 and set(moments.values()) == {"P('fsdp', 'tensor')"}, specs
    assert specs["step"] == "P()"  # leaves without logical names are replicated


def test_assert_sufficiently_sharded_fails_for_replicated():
    out = run_with_devices("""
        import jax, jax.numpy as jnp, numpy as np
        from jax.sharding import NamedSharding, PartitionSpec as P
        from metacog_jax import sharding
        mesh = sharding.make_mesh((1, 4, 2))
        big = jax.device_put(np.zeros((64, 64), np.float32), NamedSharding(mesh, P()))
        small = jax.device_put(np.zeros((4,), np.float32), NamedSharding(mesh, P()))
        try:
            sharding.assert_sufficiently_sharded({"big": big, "small": small}, mesh, min_size=1024)
        except AssertionError as e:
            print("FAILED", e)
        data_only = sharding.make_mesh((8, 1, 1))
        big_d = jax.device_put(np.zeros((64, 64), np.float32), NamedSharding(data_only, P()))
        print("DATA_ONLY", sharding.assert_sufficiently_sharded({"big": big_d}, data_only, min_size=1024))
        ok = jax.device_put(np.zeros((64, 64), np.float32), NamedSharding(mesh, P("fsdp", None)))
        print("OK", sharding.assert_sufficiently_sharded({"big": ok, "rep": big}, mesh, min_size=1024))
    """)
    assert "FAILED only 0.0% of the elements" in out and "largest replicated: big (64, 64)" in out
    assert "DATA_ONLY {'large_elements': 4096.0, 'sharded_elements': 0.0" in out
    assert "OK {'large_elements': 8192.0, 'sharded_elements': 4096.0, 'sharded_fraction': 0.5}" in out


def test_batch_helpers_and_logical_constraint():
    out = run_with_devices("""
        import jax, jax.numpy as jnp, numpy as np
        from metacog_jax import sharding
        mesh = sharding.make_mesh((2, 2, 2))
        assert sharding.batch_sharding(mesh).spec == jax.sharding.PartitionSpec(("data", "fsdp"), None)
        sharding.check_batch_divisible(8, mesh)
        try:
            sharding.check_batch_divisible(6, mesh)
        except ValueError as e:
            print("ERR", e)
        batch = sharding.shard_batch({"tokens": np.arange(16).reshape(8, 2)}, mesh)
        assert batch["tokens"].sharding.spec == jax.sharding.PartitionSpec(("data", "fsdp"), None)
        np.testing.assert_array_equal(np.asarray(batch["tokens"]), np.arange(16).reshape(8, 2))
        with sharding.sharding_context(mesh):
            y = jax.jit(lambda x: sharding.with_logical_constraint(x * 2, ("batch", "embed")))(jnp.ones((8, 6)))
        expected = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp"), None))
        print("SPEC_EQUIVALENT", y.sharding.is_equivalent_to(expected, 2))
        # Without a mesh it is the identity.
        assert sharding.with_logical_constraint(jnp.ones((3,)), ("embed",)).shape == (3,)
    """)
    assert "ERR global batch size 6 is not divisible by data x fsdp = 2 x 2 = 4" in out
    # embed's fsdp is taken by batch, so the feature dim is replicated.
    assert "SPEC_EQUIVALENT True" in out


# --- two processes joined by jax.distributed ----------------------------------------


@pytest.mark.slow
def test_two_processes_agree_on_global_mesh():
    portpicker = pytest.importorskip("portpicker", reason="portpicker picks a free coordinator port")
    port = portpicker.pick_unused_port()
    procs = []
    try:
        for process_id in range(2):
            env = dict(os.environ)
            env.update({
                "METACOG_COORDINATOR": f"127.0.0.1:{port}",
                "METACOG_NUM_PROCESSES": "2",
                "METACOG_PROCESS_ID": str(process_id),
                "METACOG_INIT_TIMEOUT": "40",
                "XLA_FLAGS": xla_flags(4),
                "JAX_PLATFORMS": "cpu",
                "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
            })
            procs.append(subprocess.Popen(
                [sys.executable, str(REPO / "tests" / "multihost_worker.py")], env=env, cwd=REPO,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        outputs = [proc.communicate(timeout=50)[0] for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    results = []
    for proc, output in zip(procs, outputs):
        assert proc.returncode == 0, output[-4000:]
        line = next(l for l in output.splitlines() if l.startswith("RESULT "))
        results.append(json.loads(line[len("RESULT "):]))
    assert [r["process"] for r in results] == [0, 1]
    # Rows 0..11 from process 0, plus 100 added to each of process 1's 12 values.
    expected_sum = 2 * sum(range(12)) + 100.0 * 12
    for r in results:
        assert r["joined"] and r["process_count"] == 2
        assert r["device_count"] == 8 and r["local_device_count"] == 4
        assert r["mesh"] == {"data": 2, "fsdp": 4, "tensor": 1}
        assert r["kernel_spec"] == "P(None, ('data', 'fsdp'))" and r["kernel_local_shards"] == 4
        assert r["psum"] == expected_sum and r["sum"] == expected_sum
        assert r["matmul_sum"] == pytest.approx(r["numpy_matmul_sum"], rel=1e-4, abs=1e-3)
    assert results[0]["matmul_sum"] == results[1]["matmul_sum"]
