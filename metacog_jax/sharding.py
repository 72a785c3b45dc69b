"""Device mesh, logical-axis sharding rules and batch shardings.

The mesh has three axes, ``("data", "fsdp", "tensor")``:

* ``data``: pure data parallelism (parameters replicated across it);
* ``fsdp``: data parallelism whose parameters and optimizer state are
  sharded across it (ZeRO-3 style: each step all-gathers the weights);
* ``tensor``: Megatron-style model parallelism (heads / MLP hidden units).

Model code names the axes of every parameter with *logical* names (our
decoder stores them as ``logical_axes`` metadata, which flax leaves alone; also read:
``nnx.Param(..., out_sharding=("embed", "mlp"))`` or
``nnx.with_partitioning(init, ("embed", "mlp"))``; flax 0.12 stores them in the
variable metadata under ``out_sharding``, the older ``sharding_names`` /
``sharding`` keys are remapped to it). A rules table maps each logical name
to mesh axes; :data:`DEFAULT_LOGICAL_AXIS_RULES` is the default one and a
config may carry its own.

Indivisible dimensions: a dimension whose size is not divisible by the product
of the mesh axes its rule names is *replicated over the offending axes* (the
trailing axis is dropped until it divides) and the fallback is logged once per
parameter. We chose this over raising because real checkpoints have head
counts like 9 (SmolLM2-135M) or 3 KV heads that no tensor=2 mesh divides; the
cost is only memory on those dimensions, and :func:`assert_sufficiently_sharded`
catches the case where that makes the model effectively unsharded.

Eager sharding: flax 0.12 shards a variable when it is *created* if it has
``out_sharding`` metadata (``nnx.use_eager_sharding``, on by default), using
the flax logical-axis-rule context and the ambient ``jax.set_mesh`` mesh, and
it fails on indivisible dimensions. :func:`init_sharded` therefore creates
models with eager sharding off and places every parameter with the shardings
computed here (inside one jitted initializer, so no host ever materializes the
full model). :func:`sharding_context` gives the same mesh + rules context to
code that wants flax's own mechanism or :func:`with_logical_constraint`.

Process start-up (``jax.distributed.initialize`` on several hosts, the
compilation cache, the host allocator) lives in :mod:`metacog_jax.runtime`;
it must run before a mesh is built, since :func:`make_mesh` reads the global
device list.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from flax.core import spmd as flax_spmd
from jax.sharding import Mesh, NamedSharding, PartitionSpec

logger = logging.getLogger(__name__)

MESH_AXES: tuple[str, str, str] = ("data", "fsdp", "tensor")

# Logical name -> mesh axes (str, tuple of str, or None = replicated).
DEFAULT_LOGICAL_AXIS_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", None),  # head_dim
    ("kv_heads", "tensor"),
    ("vocab", "tensor"),
    ("layers", None),
    ("length", None),
    ("lora_rank", None),
)

Rules = Sequence[tuple[str, Any]]
MeshShape = Mapping[str, int] | Sequence[int]


# ---------------------------------------------------------------------------
# Mesh
# ---------------------------------------------------------------------------


def resolve_mesh_shape(shape: MeshShape, device_count: int) -> tuple[int, int, int]:
    """Resolve a ``(data, fsdp, tensor)`` shape with at most one ``-1`` against ``device_count``.

    Args:
      shape: a mapping with keys among ``data``, ``fsdp``, ``tensor`` (missing
        keys mean 1) or a sequence of three ints.
      device_count: number of devices the mesh must cover exactly.

    Returns:
      The three positive axis sizes, whose product is ``device_count``.

    Raises:
      ValueError: unknown axis names, wrong length, more than one ``-1``, a
        size < 1, or a shape that does not match / divide the device count.
    """
    if isinstance(shape, Mapping):
        unknown = set(shape) - set(MESH_AXES)
        if unknown:
            raise ValueError(
                f"mesh shape {dict(shape)}: unknown axes {sorted(unknown)}; axes are {MESH_AXES}")
        sizes = [int(shape.get(axis, 1)) for axis in MESH_AXES]
    else:
        sizes = [int(s) for s in shape]
        if len(sizes) != len(MESH_AXES):
            raise ValueError(
                f"mesh shape {tuple(shape)}: expected {len(MESH_AXES)} sizes for axes {MESH_AXES}")
    described = dict(zip(MESH_AXES, sizes))
    inferred = [i for i, s in enumerate(sizes) if s == -1]
    if len(inferred) > 1:
        raise ValueError(f"mesh shape {described}: at most one axis may be -1")
    if any(s < 1 for s in sizes if s != -1):
        raise ValueError(f"mesh shape {described}: sizes must be >= 1 (or -1 for one axis)")
    known = math.prod(s for s in sizes if s != -1)
    if inferred:
        if device_count % known:
            raise ValueError(
                f"mesh shape {described} does not divide the device count {device_count}: "
                f"the fixed axes multiply to {known}")
        sizes[inferred[0]] = device_count // known
    elif known != device_count:
        raise ValueError(
            f"mesh shape {described} has {known} devices but there are {device_count} devices; "
            "set one axis to -1 to infer it")
    return tuple(sizes)  # type: ignore[return-value]


def make_mesh(shape: MeshShape, devices: Sequence[Any] | None = None) -> Mesh:
    """Build the ``("data", "fsdp", "tensor")`` mesh.

    Args:
      shape: ``(data, fsdp, tensor)`` or ``{"data": .., "fsdp": .., "tensor": ..}``;
        one axis may be -1 (inferred from the device count).
      devices: devices to use (default: all global devices, ``jax.devices()``,
        laid out by ``jax.make_mesh`` for a good physical topology).

    Returns:
      A Mesh with ``Auto`` axis types (classic pjit semantics: shardings are
      given at jit boundaries and propagated by the compiler).

    Raises:
      ValueError: the shape does not match the device count (message names both).
    """
    device_list = list(jax.devices() if devices is None else devices)
    sizes = resolve_mesh_shape(shape, len(device_list))
    axis_types = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
    if devices is None:
        return jax.make_mesh(sizes, MESH_AXES, axis_types=axis_types)
    grid = np.asarray(device_list, dtype=object).reshape(sizes)
    return Mesh(grid, MESH_AXES, axis_types=axis_types)


# ---------------------------------------------------------------------------
# Logical axis rules
# ---------------------------------------------------------------------------


def _as_axes(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(value)


def normalize_rules(rules: Any) -> tuple[tuple[str, str | tuple[str, ...] | None], ...]:
    """Turn a rules table from a config or JSON (lists, nested lists) into tuples.

    Each rule is ``(logical_name, mesh_axes)`` with ``mesh_axes`` a mesh axis
    name, a sequence of them, or None.

    Raises:
      ValueError: a rule that is not a pair of (str, axes) or names an axis not in the mesh.
    """
    normalized = []
    for index, rule in enumerate(rules):
        if not isinstance(rule, (tuple, list)) or len(rule) != 2 or not isinstance(rule[0], str):
            raise ValueError(f"logical axis rule #{index} {rule!r}: expected (logical_name, mesh_axes)")
        name, target = rule
        axes = _as_axes(target)
        bad = [a for a in axes if a not in MESH_AXES]
        if bad:
            raise ValueError(
                f"logical axis rule #{index} {rule!r}: unknown mesh axes {bad}; mesh axes are {MESH_AXES}")
        value: str | tuple[str, ...] | None
        value = None if not axes else axes[0] if len(axes) == 1 else axes
        normalized.append((name, value))
    return tuple(normalized)


def logical_to_mesh_spec(
    logical_axes: Sequence[str | None],
    rules: Rules = DEFAULT_LOGICAL_AXIS_RULES,
    shape: Sequence[int] | None = None,
    mesh: Mesh | Any | None = None,
    name: str = "array",
) -> PartitionSpec:
    """Map logical axis names to a PartitionSpec.

    For each dimension the first rule for its logical name is used; mesh axes
    already used by an earlier dimension are dropped (e.g. ``("batch",
    "length", "embed")`` gives ``P(("data", "fsdp"), None, None)``, since
    ``embed``'s ``fsdp`` is taken). A logical name that is itself a mesh axis
    name and has no rule is used as is. When ``shape`` and ``mesh`` are given,
    trailing mesh axes are dropped from a dimension until their size product
    divides it (logged as a fallback to replication).

    Args:
      logical_axes: one logical name (or None) per dimension.
      rules: ``(logical_name, mesh_axes)`` pairs.
      shape: the array shape, for the divisibility fallback.
      mesh: a Mesh / AbstractMesh (anything with ``.shape`` mapping axis -> size).
      name: how to call the array in log and error messages.

    Returns:
      A PartitionSpec with one entry per dimension.

    Raises:
      ValueError: a logical name with no rule, or ``shape`` of another rank.
    """
    if shape is not None and len(shape) != len(logical_axes):
        raise ValueError(
            f"{name}: logical axes {tuple(logical_axes)} have rank {len(logical_axes)} "
            f"but the shape {tuple(shape)} has rank {len(shape)}")
    table: dict[str, tuple[str, ...]] = {}
    for logical, target in normalize_rules(rules):
        table.setdefault(logical, _as_axes(target))
    mesh_sizes: Mapping[str, int] = dict(mesh.shape) if mesh is not None else {}
    used: set[str] = set()
    entries: list[str | tuple[str, ...] | None] = []
    for dim, logical in enumerate(logical_axes):
        if logical is None:
            entries.append(None)
            continue
        if logical in table:
            axes = table[logical]
        elif logical in MESH_AXES:
            axes = (logical,)
        else:
            raise ValueError(
                f"{name}: logical axis {logical!r} (dim {dim}) has no rule; "
                f"rules cover {sorted(table)}")
        axes = tuple(a for a in axes if a not in used)
        if shape is not None and mesh_sizes:
            kept = list(axes)
            while kept and shape[dim] % math.prod(mesh_sizes.get(a, 1) for a in kept):
                kept.pop()
            if len(kept) < len(axes):
                logger.info(
                    "%s: dim %d (%s, size %d) is not divisible by mesh axes %s (sizes %s); "
                    "replicating it over %s", name, dim, logical, shape[dim], axes,
                    [mesh_sizes.get(a, 1) for a in axes], axes[len(kept):])
            axes = tuple(kept)
        used.update(axes)
        entries.append(None if not axes else axes[0] if len(axes) == 1 else axes)
    return PartitionSpec(*entries)


def variable_logical_axes(variable: nnx.Variable) -> tuple[str | None, ...] | None:
    """The logical axis names stored on an nnx Variable, or None when it has none."""
    metadata = variable.get_metadata()
    for key in ("logical_axes", "out_sharding", "sharding_names", "sharding"):
        names = metadata.get(key)
        if names:
            if isinstance(names, NamedSharding):
                names = names.spec
            return tuple(names)
    return None


def _path_name(path: Sequence[Any]) -> str:
    parts = []
    for key in path:
        if isinstance(key, jax.tree_util.GetAttrKey) and key.name == "value":
            continue  # the array inside an nnx Variable
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(str(key))
    return "/".join(parts) or "<root>"


def state_shardings(abstract_state: Any, mesh: Mesh, rules: Rules = DEFAULT_LOGICAL_AXIS_RULES) -> Any:
    """NamedShardings for every leaf of an nnx State (or any pytree of arrays).

    Args:
      abstract_state: e.g. ``nnx.split(nnx.eval_shape(factory))[1]``: a tree
        whose leaves are nnx Variables (holding arrays or ShapeDtypeStructs) or
        plain arrays.
      mesh: the device mesh.
      rules: logical-axis rules.

    Returns:
      A tree of the same structure: each Variable is replaced by the same
      Variable type holding a NamedSharding (the form ``jax.jit``'s
      ``in_shardings``/``out_shardings`` accept for an nnx State); variables
      without logical names and plain leaves get a replicated sharding.
      Indivisible dimensions fall back to replication (logged).
    """
    replicated = NamedSharding(mesh, PartitionSpec())

    def one(path, leaf):
        if isinstance(leaf, nnx.Variable):
            value = leaf.get_value()
            names = variable_logical_axes(leaf)
            if names is None or not hasattr(value, "shape"):
                return leaf.replace(replicated)
            spec = logical_to_mesh_spec(names, rules, value.shape, mesh, name=_path_name(path))
            return leaf.replace(NamedSharding(mesh, spec))
        return replicated

    return jax.tree_util.tree_map_with_path(
        one, abstract_state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def abstract_with_shardings(abstract_state: Any, shardings: Any) -> Any:
    """Attach shardings to an abstract state: leaves become ShapeDtypeStructs with ``sharding``.

    This is the target orbax needs to restore a checkpoint onto a (possibly
    different) topology.
    """
    return jax.tree.map(
        lambda value, sharding: jax.ShapeDtypeStruct(value.shape, value.dtype, sharding=sharding),
        abstract_state, shardings)


def init_sharded(
    factory: Callable[[], nnx.Module],
    mesh: Mesh,
    rules: Rules = DEFAULT_LOGICAL_AXIS_RULES,
) -> nnx.Module:
    """Create ``factory()`` with every parameter placed on its sharding.

    The model is first traced abstractly to learn shapes and logical names,
    then built inside one jitted function whose ``out_shardings`` are
    :func:`state_shardings`, so each device only materializes its shards.

    Args:
      factory: builds the module (including its ``nnx.Rngs``), no arguments.
      mesh: the device mesh.
      rules: logical-axis rules.

    Returns:
      The module with sharded ``jax.Array`` parameters.
    """
    with nnx.use_eager_sharding(False):
        abstract_model = nnx.eval_shape(factory)
    graphdef, abstract_state = nnx.split(abstract_model)
    shardings = state_shardings(abstract_state, mesh, rules)

    def build():
        return nnx.split(factory())[1]

    with nnx.use_eager_sharding(False):
        state = jax.jit(build, out_shardings=shardings)()
    return nnx.merge(graphdef, state)


@contextlib.contextmanager
def sharding_context(mesh: Mesh, rules: Rules = DEFAULT_LOGICAL_AXIS_RULES) -> Iterator[None]:
    """``jax.set_mesh(mesh)`` plus flax's logical-axis-rule context, for model code that uses them."""
    with jax.set_mesh(mesh), flax_spmd.logical_axis_rules(normalize_rules(rules)):
        yield


@contextlib.contextmanager
def activation_context(mesh: Mesh | None, rules: Rules = DEFAULT_LOGICAL_AXIS_RULES) -> Iterator[None]:
    """The mesh (as an abstract mesh) and rules that :func:`with_logical_constraint` reads, for use *inside*
    a jitted function (``jax.set_mesh`` is refused there): the jitted steps trace their body under it, so the
    model's activation constraints apply. ``mesh=None``: nothing (the constraints stay no-ops)."""
    if mesh is None:
        yield
        return
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), flax_spmd.logical_axis_rules(normalize_rules(rules)):
        yield


def with_logical_constraint(x: jax.Array, logical_axes: Sequence[str | None], rules: Rules | None = None) -> jax.Array:
    """Constrain an activation's sharding by logical names, under the current mesh.

    A no-op when no mesh is set (``jax.set_mesh``), so model code can call it
    unconditionally. Rules default to flax's context rules, else the defaults.
    Indivisible dimensions are replicated (see module docstring).

    Args:
      x: an array of rank ``len(logical_axes)``.
      logical_axes: one logical name (or None) per dimension of ``x``.
      rules: logical-axis rules.
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    if rules is None:
        rules = flax_spmd.get_logical_axis_rules() or DEFAULT_LOGICAL_AXIS_RULES
    spec = logical_to_mesh_spec(logical_axes, rules, x.shape, mesh, name="activation")
    return jax.lax.with_sharding_constraint(x, spec)


# ---------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------


def _model_parallel_degree(sharding: Any, mesh: Mesh) -> int:
    """How many ways a leaf is split over the ``fsdp`` and ``tensor`` axes."""
    if not isinstance(sharding, NamedSharding):
        return 1
    sizes = dict(mesh.shape)
    degree = 1
    for entry in sharding.spec:
        for axis in _as_axes(entry):
            if axis in ("fsdp", "tensor"):
                degree *= sizes.get(axis, 1)
    return degree


def assert_sufficiently_sharded(
    state: Any, mesh: Mesh, min_size: int = 2**20, fraction: float = 0.5
) -> dict[str, float]:
    """Fail when large parameters are replicated on a mesh that could shard them.

    Only leaves with at least ``min_size`` elements count. Among them, the
    fraction of elements that live in leaves split over ``fsdp``/``tensor``
    must be at least ``fraction``. Nothing is checked when ``fsdp * tensor == 1``.

    Args:
      state: a tree of arrays (``jax.Array`` or ShapeDtypeStruct with a
        ``sharding``), e.g. an nnx State after :func:`init_sharded`.
      mesh: the mesh the state lives on.
      min_size: size threshold in elements.
      fraction: required sharded fraction of the large elements, in [0, 1].

    Returns:
      ``{"large_elements", "sharded_elements", "sharded_fraction"}``.

    Raises:
      AssertionError: naming the largest replicated parameters.
    """
    sizes = dict(mesh.shape)
    large = sharded = 0
    replicated: list[tuple[int, str, tuple[int, ...]]] = []
    for path, leaf in jax.tree_util.tree_leaves_with_path(state):
        shape = getattr(leaf, "shape", None)
        if shape is None:
            continue
        count = math.prod(shape)
        if count < min_size:
            continue
        large += count
        if _model_parallel_degree(getattr(leaf, "sharding", None), mesh) > 1:
            sharded += count
        else:
            replicated.append((count, _path_name(path), tuple(shape)))
    summary = {
        "large_elements": float(large),
        "sharded_elements": float(sharded),
        "sharded_fraction": sharded / large if large else 1.0,
    }
    if sizes.get("fsdp", 1) * sizes.get("tensor", 1) == 1 or large == 0:
        return summary
    if summary["sharded_fraction"] < fraction:
        worst = ", ".join(f"{name} {shape}" for _, name, shape in sorted(replicated, reverse=True)[:5])
        raise AssertionError(
            f"only {summary['sharded_fraction']:.1%} of the elements in parameters with >= {min_size} "
            f"elements are sharded over fsdp/tensor on mesh {sizes} (required {fraction:.0%}); "
            f"largest replicated: {worst}. Check the parameters' logical axis names and the rules.")
    return summary


# ---------------------------------------------------------------------------
# Batches
# ---------------------------------------------------------------------------


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding for ``(batch, length)`` arrays: batch over ``data`` x ``fsdp``, length replicated."""
    return NamedSharding(mesh, PartitionSpec(("data", "fsdp"), None))


def check_batch_divisible(batch_size: int, mesh: Mesh) -> None:
    """Raise when a global batch cannot be split evenly over the data-parallel devices and hosts.

    Raises:
      ValueError: naming the batch size, the ``data x fsdp`` degree and the process count.
    """
    sizes = dict(mesh.shape)
    degree = sizes.get("data", 1) * sizes.get("fsdp", 1)
    if batch_size % degree:
        raise ValueError(
            f"global batch size {batch_size} is not divisible by data x fsdp = "
            f"{sizes.get('data', 1)} x {sizes.get('fsdp', 1)} = {degree} (mesh {sizes})")
    processes = jax.process_count()
    if batch_size % processes:
        raise ValueError(
            f"global batch size {batch_size} is not divisible by the process count {processes}")


def shard_batch(local_batch: Any, mesh: Mesh) -> Any:
    """Assemble global batch arrays from each process's local rows.

    Every process passes its own ``global_batch / process_count`` rows (in
    process order); each leaf is sharded over batch like :func:`batch_sharding`
    with its remaining dimensions replicated. Works unchanged with one process.

    Args:
      local_batch: a pytree of host arrays with the batch as leading dimension.
      mesh: the device mesh.

    Returns:
      The same pytree of global ``jax.Array``s.
    """
    def one(array):
        array = np.asarray(array)
        spec = PartitionSpec(("data", "fsdp"), *([None] * (array.ndim - 1)))
        return jax.make_array_from_process_local_data(NamedSharding(mesh, spec), array)

    return jax.tree.map(one, local_batch)
