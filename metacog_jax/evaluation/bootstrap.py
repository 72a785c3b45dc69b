"""Percentile bootstrap intervals for the metrics, vectorized with ``jax.vmap``.

Three resampling schemes:

* :func:`bootstrap_ci` / :func:`bootstrap_cis`: resample the N examples with
  replacement; each resample is an index array drawn with ``jax.random`` and
  the metric is vmapped over the resamples.
* :func:`bootstrap_two_way`: resample two crossed factors at once (paper 2:
  participants and items). Each resample draws participants with
  replacement and items with replacement and passes their multiplicities
  (counts) to a statistic, which weights every rating by
  ``count[participant] * count[item]``; this is the same as keeping every
  rating whose participant and item were drawn, with multiplicity.
* :func:`bootstrap_clustered`: resample clusters (test questions) with
  replacement and pass their multiplicities to a statistic. Pairwise metrics
  weight each pair by ``count[a] * count[b]`` (pairs share questions, so the
  question is the unit: every pair whose two questions were drawn is kept,
  with multiplicity), and differences between conditions evaluated on the
  same counts are paired (the same questions in both).

Resamples where a statistic is undefined (NaN, e.g. AUROC of a resample with
a single class) are dropped from the percentiles (``np.nanpercentile``); the
number dropped is reported by the ``*_cis`` functions.

The point estimate is evaluated in the same compiled function as the
resamples (as entry 0, with the identity resample), and the metric and sizes
are static arguments of module-level jitted functions: calling again with
the same metric object and array shapes reuses the compiled code, whatever
the seed or data values. Pass data as arguments (``arrays``/``operands``)
rather than closing over it to benefit.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

ArrayLike = Any


def _point_and_resamples(
    one: Callable[[jax.Array, jax.Array], Any], key: jax.Array, n_resamples: int, batch_size: int | None
) -> Any:
    """Traced helper: ``one(key, is_point)`` stacked over entry 0 (point) and the resamples.

    Resample ``i`` uses the ``i``-th key of ``split(key, n_resamples)``
    whatever ``batch_size``, so chunking does not change the draws.
    """
    keys = jax.random.split(key, n_resamples)
    keys = jnp.concatenate([keys[:1], keys])  # entry 0 is the point estimate; its key is unused
    is_point = jnp.arange(n_resamples + 1) == 0
    if batch_size is None or batch_size >= n_resamples + 1:
        return jax.vmap(one)(keys, is_point)
    # lax.map with batch_size vmaps chunks of resamples: bounded memory for large N.
    return jax.lax.map(lambda a: one(*a), (keys, is_point), batch_size=batch_size)


@functools.partial(jax.jit, static_argnames=("metric_fn", "n_resamples", "batch_size"))
def _example_bootstrap(
    metric_fn: Callable[..., Any], arrays: tuple[jax.Array, ...], key: jax.Array,
    n_resamples: int, batch_size: int | None,
) -> Any:
    n = arrays[0].shape[0]

    def one(k: jax.Array, is_point: jax.Array) -> Any:
        idx = jnp.where(is_point, jnp.arange(n), jax.random.randint(k, (n,), 0, n))
        return metric_fn(*(a[idx] for a in arrays))

    return _point_and_resamples(one, key, n_resamples, batch_size)


@functools.partial(jax.jit, static_argnames=("stat_fn", "n_rows", "n_cols", "n_resamples", "batch_size"))
def _two_way_bootstrap(
    stat_fn: Callable[..., Any], operands: tuple[Any, ...], key: jax.Array,
    n_rows: int, n_cols: int, n_resamples: int, batch_size: int | None,
) -> Any:
    def one(k: jax.Array, is_point: jax.Array) -> Any:
        row_key, col_key = jax.random.split(k)
        rows = jax.random.randint(row_key, (n_rows,), 0, n_rows)
        cols = jax.random.randint(col_key, (n_cols,), 0, n_cols)
        row_counts = jnp.where(is_point, 1.0, jnp.bincount(rows, length=n_rows).astype(float))
        col_counts = jnp.where(is_point, 1.0, jnp.bincount(cols, length=n_cols).astype(float))
        return stat_fn(row_counts, col_counts, *operands)

    return _point_and_resamples(one, key, n_resamples, batch_size)


def _cluster_counts(k: jax.Array, is_point: jax.Array, n_clusters: int) -> jax.Array:
    """Multiplicities [n_clusters] of one resample of clusters drawn with replacement (all ones for the point)."""
    idx = jax.random.randint(k, (n_clusters,), 0, n_clusters)
    return jnp.where(is_point, 1.0, jnp.bincount(idx, length=n_clusters).astype(float))


@functools.partial(jax.jit, static_argnames=("stat_fn", "n_clusters", "n_resamples", "batch_size"))
def _clustered_bootstrap(
    stat_fn: Callable[..., Any], operands: tuple[Any, ...], key: jax.Array,
    n_clusters: int, n_resamples: int, batch_size: int | None,
) -> Any:
    def one(k: jax.Array, is_point: jax.Array) -> Any:
        return stat_fn(_cluster_counts(k, is_point, n_clusters), *operands)

    return _point_and_resamples(one, key, n_resamples, batch_size)


@functools.partial(jax.jit, static_argnames=("n_clusters", "n_resamples"))
def _resample_counts(key: jax.Array, n_clusters: int, n_resamples: int) -> jax.Array:
    keys = jax.random.split(key, n_resamples)
    return jax.vmap(lambda k: _cluster_counts(k, jnp.asarray(False), n_clusters))(keys)


def resample_counts(n_clusters: int, n_resamples: int = 1000, seed: int = 0) -> np.ndarray:
    """The multiplicities [n_resamples, n_clusters] that :func:`bootstrap_clustered` uses for `seed`.

    For checking a statistic against a slow reference that materializes each resample."""
    return np.asarray(_resample_counts(jax.random.key(seed), n_clusters, n_resamples))


def point_and_clustered_samples(
    stat_fn: Callable[..., Any], n_clusters: int, operands: tuple[Any, ...] = (), n_resamples: int = 1000,
    seed: int = 0, batch_size: int | None = None,
) -> tuple[Any, Any]:
    """``stat_fn(counts, *operands)`` with all-ones counts and on ``n_resamples`` cluster resamples.

    Args:
      stat_fn: jax-traceable and hashable; ``counts`` is a float array [n_clusters] of multiplicities.
      n_clusters: number of clusters (e.g. test questions).
      operands: arrays (pytrees) passed through.
      n_resamples, seed, batch_size: as in :func:`point_and_bootstrap_samples`.

    Returns:
      ``(point, samples)`` as NumPy, samples with a leading ``(n_resamples,)`` axis; resample ``i`` uses
      the counts ``resample_counts(n_clusters, n_resamples, seed)[i]``.
    """
    if n_clusters < 1:
        raise ValueError(f"clustered bootstrap needs n_clusters >= 1, got {n_clusters}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    out = _clustered_bootstrap(stat_fn, tuple(operands), jax.random.key(seed), n_clusters, n_resamples,
                               batch_size)
    return _split_point(out)


def bootstrap_clustered(
    stat_fn: Callable[..., Mapping[str, Any]], n_clusters: int, operands: tuple[Any, ...] = (),
    n_resamples: int = 1000, seed: int = 0, alpha: float = 0.05, batch_size: int | None = None,
) -> dict[str, dict[str, float]]:
    """Cluster bootstrap intervals of a dict-valued statistic (see :func:`point_and_clustered_samples`).

    Returns ``{name: {"estimate", "low", "high", "n_undefined_resamples"}}``; all entries share resamples.
    """
    return intervals_from_samples(*point_and_clustered_samples(stat_fn, n_clusters, operands, n_resamples, seed,
                                                               batch_size), alpha)


def _split_point(out: Any) -> tuple[Any, Any]:
    out = jax.tree.map(np.asarray, out)
    return jax.tree.map(lambda x: x[0], out), jax.tree.map(lambda x: x[1:], out)


def percentile_interval(samples: ArrayLike, alpha: float = 0.05) -> tuple[float, float]:
    """NaN-safe percentile interval ``(low, high)`` at level ``1 - alpha``.

    NaN samples are ignored; if every sample is NaN both bounds are NaN.
    """
    s = np.asarray(samples, dtype=np.float64)
    if not np.any(np.isfinite(s)):
        return float("nan"), float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        low, high = np.nanpercentile(s, [100.0 * alpha / 2.0, 100.0 * (1.0 - alpha / 2.0)])
    return float(low), float(high)


def point_and_bootstrap_samples(
    metric_fn: Callable[..., Any],
    arrays: tuple[ArrayLike, ...],
    n_resamples: int = 1000,
    seed: int = 0,
    batch_size: int | None = None,
) -> tuple[Any, Any]:
    """The metric on the full data and on ``n_resamples`` example-level resamples.

    Args:
      metric_fn: jax-traceable ``metric_fn(*arrays) -> scalar or pytree of scalars``
        (hashable: it is a static argument of the compiled function).
      arrays: arrays sharing the leading length N (e.g. ``(conf, correct)``).
      n_resamples: number of resamples.
      seed: PRNG seed; the same seed gives the same resamples.
      batch_size: resamples evaluated together (None = all at once).

    Returns:
      ``(point, samples)`` as NumPy: the metric's output on the full data, and
      with a leading ``(n_resamples,)`` axis on the resamples.
    """
    arrays = tuple(jnp.asarray(a) for a in arrays)
    if not arrays:
        raise ValueError("arrays: need at least one array to resample")
    n = arrays[0].shape[0]
    for i, a in enumerate(arrays):
        if a.shape[0] != n:
            raise ValueError(f"arrays[{i}] has leading length {a.shape[0]}, arrays[0] has {n}")
    if n == 0:
        raise ValueError("arrays: cannot bootstrap zero examples")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    out = _example_bootstrap(metric_fn, arrays, jax.random.key(seed), n_resamples, batch_size)
    return _split_point(out)


def bootstrap_samples(
    metric_fn: Callable[..., Any],
    arrays: tuple[ArrayLike, ...],
    n_resamples: int = 1000,
    seed: int = 0,
    batch_size: int | None = None,
) -> Any:
    """Only the resampled values of :func:`point_and_bootstrap_samples`: leading axis ``(n_resamples,)``."""
    return point_and_bootstrap_samples(metric_fn, arrays, n_resamples, seed, batch_size)[1]


def bootstrap_ci(
    metric_fn: Callable[..., Any],
    arrays: tuple[ArrayLike, ...],
    n_resamples: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    batch_size: int | None = None,
) -> tuple[float, float, float]:
    """Point estimate and percentile bootstrap interval of a scalar metric.

    Args:
      metric_fn: jax-traceable ``metric_fn(*arrays) -> scalar``, e.g.
        ``metrics.ece`` or ``metrics.auroc``.
      arrays: arrays sharing the leading length N, resampled together.
      n_resamples: number of resamples (1000 for reports; fewer in tests).
      seed: PRNG seed.
      alpha: 0.05 gives a 95% interval.
      batch_size: resamples evaluated together (None = all at once).

    Returns:
      ``(point, low, high)`` as floats; ``point`` is the metric on the full
      data. Resamples with an undefined metric (NaN) are ignored.
    """
    point, samples = point_and_bootstrap_samples(metric_fn, arrays, n_resamples, seed, batch_size)
    low, high = percentile_interval(samples, alpha)
    return float(point), low, high


def intervals_from_samples(
    point: Mapping[str, Any], samples: Mapping[str, Any], alpha: float = 0.05
) -> dict[str, dict[str, float]]:
    """``{name: {"estimate", "low", "high", "n_undefined_resamples"}}`` from a point and its resamples."""
    out = {}
    for name, value in point.items():
        s = np.asarray(samples[name], dtype=np.float64)
        low, high = percentile_interval(s, alpha)
        out[name] = {
            "estimate": float(value),
            "low": low,
            "high": high,
            "n_undefined_resamples": int(np.sum(~np.isfinite(s))),
        }
    return out


def bootstrap_cis(
    metric_fn: Callable[..., Mapping[str, Any]],
    arrays: tuple[ArrayLike, ...],
    n_resamples: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    batch_size: int | None = None,
) -> dict[str, dict[str, float]]:
    """Like :func:`bootstrap_ci` for a metric returning a dict of scalars.

    All entries share the same resamples (so differences between them are
    paired). Returns ``{name: {"estimate", "low", "high",
    "n_undefined_resamples"}}``.
    """
    point, samples = point_and_bootstrap_samples(metric_fn, arrays, n_resamples, seed, batch_size)
    return intervals_from_samples(point, samples, alpha)


def bootstrap_two_way(
    stat_fn: Callable[..., Mapping[str, Any]],
    n_rows: int,
    n_cols: int,
    n_resamples: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    batch_size: int | None = None,
    operands: tuple[Any, ...] = (),
) -> dict[str, dict[str, float]]:
    """Two-way (crossed) bootstrap over, e.g., participants and items.

    Each resample draws ``n_rows`` rows (participants) with replacement and,
    independently, ``n_cols`` columns (items) with replacement, and calls
    ``stat_fn(row_counts, col_counts, *operands)`` with the multiplicity of
    every row and column (float arrays of shapes ``(n_rows,)`` and
    ``(n_cols,)``). The point estimate uses all-ones counts.

    Args:
      stat_fn: jax-traceable and hashable, returns a dict of scalars (all
        from the same resample, so gaps between them are paired).
      n_rows, n_cols: sizes of the two factors.
      n_resamples, seed, alpha, batch_size: as in :func:`bootstrap_ci`.
      operands: arrays (pytrees) passed through to ``stat_fn``.

    Returns:
      ``{name: {"estimate", "low", "high", "n_undefined_resamples"}}``.
    """
    if n_rows < 1 or n_cols < 1:
        raise ValueError(f"two-way bootstrap needs n_rows, n_cols >= 1, got {n_rows}, {n_cols}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    out = _two_way_bootstrap(stat_fn, tuple(operands), jax.random.key(seed), n_rows, n_cols, n_resamples,
                             batch_size)
    return intervals_from_samples(*_split_point(out), alpha)
