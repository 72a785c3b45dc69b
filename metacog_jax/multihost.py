"""Stages on several processes: who runs which batch, gathering what they made, one writer.

In a multi-host run (``runtime.maybe_initialize_distributed``) every process runs the same program over
the same questions. The model calls of ``sample``, ``eval``, ``explain`` and ``grade`` (the sampler's
``generate`` and the scorer's ``label_logprobs``) share their work in one of two ways, chosen from where
the model's weights live (:func:`spanning_mesh`):

* **local replicas** (the default: ``build_model`` puts a whole copy on each process's first device):
  the call forms its batches exactly as a one-process run would, batch ``b`` is run by process
  ``b % process_count`` alone (:func:`owns`), and the results are gathered to every process at the end
  of the call (:func:`gather_results`). Each prompt is computed once, in the same batch as in one
  process, so the results are bitwise those of one process.
* **one global mesh** (a model too big for one host, restored onto ``config.mesh`` spanning every
  process): every process runs every batch together, its rows sharded over the mesh's ``data`` x ``fsdp``
  axes (:func:`place`), and the outputs are gathered (:func:`to_host`), as the trainer runs its steps.

Either way every process ends a call holding the whole result, so what follows (grading, metrics, which
item comes next) is decided identically everywhere and every process reaches the same collectives.
Files are written by process 0 only (:func:`is_writer`); :func:`leader_value` runs a piece of work
(reading a file to resume, writing the outputs, building targets) on process 0 and hands every process
its result, or its error, so the others wait for it and never race it. The division depends only on the
inputs, never on timing. With one process every helper here is a plain call: no collective is made.

The workdir is shared by every process (as the trainer's checkpoints already require); processes other
than 0 read what process 0 wrote only after a :func:`leader_value` that follows the write.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import jax
import numpy as np

T = TypeVar("T")


# -- who is who ---------------------------------------------------------------------------------------------
def is_writer() -> bool:
    """Whether this process writes the run's files (process 0)."""
    return jax.process_index() == 0


def owns(batch_index: int) -> bool:
    """Whether this process runs batch ``batch_index`` of a divided call (round-robin by batch)."""
    return batch_index % jax.process_count() == jax.process_index()


def divided() -> bool:
    """Whether there are several processes to divide work between."""
    return jax.process_count() > 1


# -- moving Python objects between processes ------------------------------------------------------------------
def _words(payload: bytes) -> np.ndarray:
    """``payload`` as int32 words, zero-padded to a power-of-two count (few distinct shapes to compile)."""
    n = max(1, -(-len(payload) // 4))
    width = 1 << (n - 1).bit_length()
    buf = np.zeros(width * 4, np.uint8)
    buf[:len(payload)] = np.frombuffer(payload, np.uint8)
    return buf.view(np.int32)


def _allgather_bytes(payload: bytes) -> list[bytes]:
    from jax.experimental import multihost_utils

    sizes = np.asarray(multihost_utils.process_allgather(np.asarray([len(payload)], np.int32))).reshape(-1)
    width = max(len(_words(b"\0" * int(s))) for s in sizes)
    words = np.zeros(width, np.int32)
    mine = _words(payload)
    words[:len(mine)] = mine
    rows = np.asarray(multihost_utils.process_allgather(words)).reshape(len(sizes), width)
    return [rows[i].tobytes()[:int(sizes[i])] for i in range(len(sizes))]


def _broadcast_bytes(payload: bytes) -> bytes:
    """Process 0's ``payload`` on every process (the others pass anything)."""
    from jax.experimental import multihost_utils

    size = int(np.asarray(multihost_utils.broadcast_one_to_all(np.asarray([len(payload)], np.int32)))[0])
    words = np.zeros(len(_words(b"\0" * size)), np.int32)
    if is_writer():
        words[:] = _words(payload)
    return np.asarray(multihost_utils.broadcast_one_to_all(words)).tobytes()[:size]


def _outcome(fn: Callable[[], T]) -> tuple[str, Any]:
    try:
        return "ok", fn()
    except Exception as e:  # handed to every process, which raises it
        return "error", e


def _dumps(outcome: tuple[str, Any]) -> bytes:
    try:
        return pickle.dumps(outcome)
    except Exception:  # an error (or value) that does not pickle: its text still reaches everyone
        status, value = outcome
        return pickle.dumps(("error", RuntimeError(f"process {jax.process_index()}: {type(value).__name__}: "
                                                   f"{value}")))


def _raise_or_return(outcome: tuple[str, Any], process: int):
    status, value = outcome
    if status == "error":
        if process == jax.process_index():
            raise value
        raise value from RuntimeError(f"raised on process {process}")
    return value


def leader_value(fn: Callable[[], T]) -> T:
    """``fn()`` run on process 0 only; every process returns its result or raises its error.

    Use it for what must happen once (resume decisions read from files, writing outputs, a one-process
    stage such as ``targets``): the other processes wait here until process 0 is done, so they never
    read a half-written file nor go on after process 0 failed. Every process must call it (in the same
    order); with one process it is ``fn()``.
    """
    if not divided():
        return fn()
    payload = _dumps(_outcome(fn)) if is_writer() else b""
    return _raise_or_return(pickle.loads(_broadcast_bytes(payload)), 0)


def gather_results(fn: Callable[[], T]) -> list[T]:
    """``fn()`` run on every process (its own share of some work); every process gets all the results,
    in process order, or the first process's error when any failed. With one process: ``[fn()]``."""
    if not divided():
        return [fn()]
    outcomes = [pickle.loads(b) for b in _allgather_bytes(_dumps(_outcome(fn)))]
    for process, outcome in enumerate(outcomes):
        if outcome[0] == "error":
            _raise_or_return(outcome, process)
    return [value for _, value in outcomes]


def merge_shares(fn: Callable[[], dict]) -> dict:
    """The union of the dicts each process's ``fn()`` returns (keys are disjoint: each its own share)."""
    merged: dict = {}
    for part in gather_results(fn):
        merged.update(part)
    return merged


# -- a model sharded over every process ------------------------------------------------------------------------
def spanning_mesh(tree: Any):
    """The mesh of the first array in ``tree`` that this process cannot address whole, or None when every
    array lives on this process's devices (a local replica)."""
    from jax.sharding import NamedSharding

    for leaf in jax.tree.leaves(tree):
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            if not isinstance(leaf.sharding, NamedSharding):
                raise ValueError(f"a model array spans processes with a {type(leaf.sharding).__name__}; "
                                 "expected a NamedSharding over a mesh (sharding.init_sharded)")
            return leaf.sharding.mesh
    return None


def row_sharding(mesh, rows: int, ndim: int):
    """Rows over the mesh's ``data`` x ``fsdp`` axes when they divide ``rows``, else replicated."""
    from jax.sharding import NamedSharding, PartitionSpec

    axes = tuple(a for a in ("data", "fsdp") if a in mesh.shape)
    split = int(np.prod([mesh.shape[a] for a in axes])) if axes else 1
    if axes and rows % split == 0:
        return NamedSharding(mesh, PartitionSpec(axes, *([None] * (ndim - 1))))
    return NamedSharding(mesh, PartitionSpec())


def place(arrays: Sequence[np.ndarray], mesh, rows: bool = True) -> list[jax.Array]:
    """Global arrays from the full host copies every process holds: rows sharded (:func:`row_sharding`),
    or whole on every device with ``rows=False``."""
    from jax.sharding import NamedSharding, PartitionSpec

    out = []
    for a in arrays:
        a = np.asarray(a)
        sharding = (row_sharding(mesh, a.shape[0], a.ndim) if a.ndim and rows
                    else NamedSharding(mesh, PartitionSpec()))
        out.append(jax.make_array_from_callback(a.shape, sharding, lambda index, a=a: a[index]))
    return out


def to_host(x: jax.Array) -> np.ndarray:
    """The whole of ``x`` on this host, gathered from every process when it spans several."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        x = multihost_utils.process_allgather(x, tiled=True)
    return np.asarray(jax.device_get(x))
