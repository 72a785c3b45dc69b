"""Bradley-Terry strengths from the pairwise task, and their AUROC against correctness.

In the pairwise task the model sees two test questions (A, B) and says which
it is more likely to answer correctly. Every evaluation pair is scored in
both orders, and the debiased preference

    p~(A over B) = 1/2 [P(Q1 | A, B) + 1 - P(Q1 | B, A)]   in [0, 1]

is a soft outcome of a comparison between A and B. With each test question
in several pairs, a Bradley-Terry model gives every question ``i`` a
strength ``s_i`` (in logits) with

    P(A preferred over B) = sigmoid(s_A - s_B),

fitted to the soft outcomes by weighted maximum likelihood with a small ridge:

    max_s  sum_p w_p [p~_p log sigmoid(s_a - s_b) + (1 - p~_p) log sigmoid(s_b - s_a)]
           - (l2 / 2) sum_i v_i s_i^2

(``w_p`` pair weights, ``v_i`` item weights, both 1 by default). The
likelihood alone only fixes differences of strengths, and its maximum is at
infinity for a question that wins (or loses) every one of its comparisons,
or for a group of questions that beats everything it is compared with; the
ridge makes the problem strictly concave, so the maximiser is unique and
finite in every case. It is small (``l2 = 1e-2`` against comparisons of
weight 1), so it barely moves questions with mixed outcomes. At the
maximum the gradients of the likelihood terms cancel in pairs, so
``sum_i v_i s_i = 0``: the strengths come out centred (item-weighted) with no
separate step. Questions in no (positively weighted) pair carry no evidence;
they keep strength 0 and are reported through ``pair_weight == 0`` so
callers can leave them out.

The strengths are per-question confidence scores on the scale of the single
task: larger means "the model ranks this question as one it is more likely
to get right". Their AUROC against correctness (:func:`strength_metrics`,
``bt_auroc``) is therefore directly comparable with the single task's AUROC
of stated confidence; only the ranking matters, not the logit scale (the
strengths are not probabilities of being correct, so ECE does not apply).

For intervals, :func:`bootstrap_strength_metrics` resamples questions. By
default it refits the strengths on every resample; a resample keeps only
about 40% of the distinct pairs, so its strengths are noisier and the
resampled AUROC and Spearman sit below the point estimate (see there, and
``refit=False`` for strengths held fixed like stated confidences).

Everything is pure ``jax.numpy`` with a fixed number of damped Newton steps
(no data-dependent Python loops), so fits can be jitted and vmapped, e.g.
over the resamples of the question-level cluster bootstrap
(:func:`bootstrap_strength_metrics`). Each Newton step solves an
``n_items x n_items`` system (a Cholesky factorisation), fine for up to a few
hundred questions; memory per vmapped fit is ``n_items**2`` floats, which
``batch_size`` bounds.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from metacog_jax.evaluation import bootstrap, metrics

Array = jax.Array
ArrayLike = Any

DEFAULT_L2 = 1e-2
# Newton converges in well under 10 steps for mixed outcomes; a question that wins
# all of its comparisons drifts to a strength of order log(pairs / l2) and needs
# a few more damped steps. Tests check that the gradient vanishes at this default.
DEFAULT_N_STEPS = 20
# Step sizes 1, 1/2, ..., 2**-(N-1) tried by the line search of each Newton step.
_N_HALVINGS = 12


class BradleyTerryFit(NamedTuple):
    """Result of :func:`fit_strengths`.

    Attributes:
      strength: ``(n_items,)`` fitted strengths in logits; 0 for items in no
        positively weighted pair.
      pair_weight: ``(n_items,)`` total weight of the pairs each item is in
        (the number of pairs under unit weights); 0 flags an item with no
        evidence.
      max_abs_grad: scalar, largest absolute gradient of the objective at
        ``strength`` (in units of pair weight): near 0 when the fixed number of
        Newton steps has converged.
    """

    strength: Array
    pair_weight: Array
    max_abs_grad: Array


def _as_float(x: ArrayLike) -> Array:
    return jnp.asarray(x, dtype=float)


def _is_traced(*xs: Any) -> bool:
    return any(isinstance(x, jax.core.Tracer) for x in xs)


# ----------------------------------------------------------------------------
# the fit
# ----------------------------------------------------------------------------


def objective(
    strength: ArrayLike,
    item_a: ArrayLike,
    item_b: ArrayLike,
    pref: ArrayLike,
    weights: ArrayLike | None = None,
    item_weights: ArrayLike | None = None,
    l2: float = DEFAULT_L2,
) -> Array:
    """The penalised log-likelihood that :func:`fit_strengths` maximises.

    Args:
      strength: ``(n_items,)`` strengths in logits.
      item_a, item_b, pref, weights, item_weights, l2: as in :func:`fit_strengths`.

    Returns:
      Scalar, in nats (times pair weight).
    """
    s, pref = _as_float(strength), _as_float(pref)
    w = jnp.ones_like(pref) if weights is None else _as_float(weights)
    v = jnp.ones_like(s) if item_weights is None else _as_float(item_weights)
    d = s[item_a] - s[item_b]
    loglik = jnp.sum(w * (pref * jax.nn.log_sigmoid(d) + (1.0 - pref) * jax.nn.log_sigmoid(-d)))
    return loglik - 0.5 * l2 * jnp.sum(v * s * s)


@functools.partial(jax.jit, static_argnames=("n_items", "n_steps"))
def _fit(
    item_a: Array, item_b: Array, pref: Array, w: Array, ridge: Array, *, n_items: int, n_steps: int
) -> BradleyTerryFit:
    a, b = item_a, item_b
    pair_weight = (jax.ops.segment_sum(w, a, num_segments=n_items)
                   + jax.ops.segment_sum(w, b, num_segments=n_items))
    active = pair_weight > 0
    # An item in no pair has zero gradient forever; unit curvature on its diagonal keeps
    # the Newton system non-singular (even with a zero ridge) and leaves it at 0.
    pin = jnp.where(active, 0.0, 1.0)
    step_sizes = 2.0 ** -jnp.arange(_N_HALVINGS, dtype=pref.dtype)

    def gradient(s: Array) -> Array:
        resid = w * (pref - jax.nn.sigmoid(s[a] - s[b]))
        return (jax.ops.segment_sum(resid, a, num_segments=n_items)
                - jax.ops.segment_sum(resid, b, num_segments=n_items) - ridge * s)

    def newton_step(_, s: Array) -> Array:
        d = s[a] - s[b]
        p = jax.nn.sigmoid(d)
        curv = w * p * (1.0 - p)
        # Negative Hessian: weighted graph Laplacian of the comparisons plus the ridge.
        hess = (jnp.zeros((n_items, n_items), pref.dtype)
                .at[a, a].add(curv).at[b, b].add(curv).at[a, b].add(-curv).at[b, a].add(-curv))
        hess = hess + jnp.diag(ridge + pin)
        delta = jax.scipy.linalg.cho_solve(jax.scipy.linalg.cho_factor(hess, lower=True), gradient(s))
        dd = delta[a] - delta[b]

        # Along the Newton direction the objective is concave in t, so its slope falls
        # with t: the largest t with a non-negative slope is an ascent step within a
        # factor 2 of the exact line maximum. Comparing slopes rather than objective
        # values keeps the test meaningful near the optimum, where float32 loses the
        # tiny objective differences.
        def slope(t: Array) -> Array:
            resid = w * (pref - jax.nn.sigmoid(d + t * dd))
            return jnp.sum(resid * dd) - jnp.sum(ridge * (s + t * delta) * delta)

        uphill = jax.vmap(slope)(step_sizes) >= 0
        t = jnp.where(jnp.any(uphill), step_sizes[jnp.argmax(uphill)], 0.0)
        return s + t * delta

    s = jax.lax.fori_loop(0, n_steps, newton_step, jnp.zeros((n_items,), pref.dtype))
    return BradleyTerryFit(s, pair_weight, jnp.max(jnp.abs(gradient(s))))


def fit_strengths(
    item_a: ArrayLike,
    item_b: ArrayLike,
    pref: ArrayLike,
    n_items: int,
    *,
    weights: ArrayLike | None = None,
    item_weights: ArrayLike | None = None,
    l2: float = DEFAULT_L2,
    n_steps: int = DEFAULT_N_STEPS,
) -> BradleyTerryFit:
    """Bradley-Terry strengths from soft pairwise preferences (see the module docstring).

    Maximises ``sum_p w_p [pref_p log sigmoid(s_a - s_b) + (1 - pref_p) log
    sigmoid(s_b - s_a)] - (l2/2) sum_i v_i s_i^2`` with ``n_steps`` damped
    Newton steps from 0. Jit-able (``n_items`` and ``n_steps`` static) and
    vmappable over any array argument. Concrete inputs are validated first;
    traced inputs are not (an out-of-range index is then silently clamped or
    dropped by XLA).

    Args:
      item_a, item_b: ``(P,)`` int indices into ``range(n_items)`` of the two
        questions of each pair, ``item_a != item_b``.
      pref: ``(P,)`` soft preference for ``item_a`` over ``item_b`` in [0, 1]
        (the debiased p~; a hard choice is 1.0 / 0.0).
      n_items: number of questions (static).
      weights: optional ``(P,)`` non-negative pair weights; an integer weight k
        is the same as k copies of the pair, and weight 0 drops the pair
        exactly. The cluster bootstrap passes ``c[a] * c[b]``.
      item_weights: optional ``(n_items,)`` non-negative multiplicities scaling
        each item's ridge term; with the bootstrap counts ``c``, a resample
        gives exactly the strengths of the data with every question copied
        ``c_i`` times. Must be positive for items in a weighted pair.
      l2: ridge strength (per unit item weight), > 0.
      n_steps: Newton steps (static); check ``max_abs_grad`` if in doubt.

    Returns:
      :class:`BradleyTerryFit` with ``strength`` and ``pair_weight`` of shape
      ``(n_items,)`` and the scalar ``max_abs_grad``.

    Raises:
      ValueError: naming the bad input (index out of range or a self-pair,
        preference outside [0, 1], negative weight, mismatched lengths, ...).
    """
    if not isinstance(n_items, (int, np.integer)) or n_items < 1:
        raise ValueError(f"n_items must be a positive int, got {n_items!r}")
    if not isinstance(n_steps, (int, np.integer)) or n_steps < 1:
        raise ValueError(f"n_steps must be a positive int, got {n_steps!r}")
    if not _is_traced(item_a, item_b, pref, weights, item_weights, l2):
        _validate_pairs(item_a, item_b, pref, n_items, weights, item_weights, l2)
    pref = _as_float(pref)
    w = jnp.ones_like(pref) if weights is None else _as_float(weights)
    v = jnp.ones((n_items,), pref.dtype) if item_weights is None else _as_float(item_weights)
    return _fit(jnp.asarray(item_a, dtype=jnp.int32), jnp.asarray(item_b, dtype=jnp.int32), pref, w, l2 * v,
                n_items=int(n_items), n_steps=int(n_steps))


def _validate_pairs(
    item_a: ArrayLike, item_b: ArrayLike, pref: ArrayLike, n_items: int,
    weights: ArrayLike | None = None, item_weights: ArrayLike | None = None, l2: float = DEFAULT_L2,
) -> None:
    a, b = np.asarray(item_a), np.asarray(item_b)
    for name, idx in (("item_a", a), ("item_b", b)):
        if idx.ndim != 1:
            raise ValueError(f"{name}: expected a 1-D array of item indices, got shape {idx.shape}")
        if idx.size and not np.issubdtype(idx.dtype, np.integer):
            raise ValueError(f"{name}: item indices must be integers, got dtype {idx.dtype}")
        bad = (idx < 0) | (idx >= n_items)
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(f"{name}[{i}] = {int(idx[i])} is outside range(n_items={n_items})")
    lengths = {"item_a": len(a), "item_b": len(b), "pref": np.shape(pref)[0] if np.ndim(pref) else -1}
    if weights is not None:
        lengths["weights"] = np.shape(weights)[0] if np.ndim(weights) == 1 else -1
    if len(set(lengths.values())) > 1:
        raise ValueError(f"pair arrays differ in length (-1 = not 1-D): {lengths}")
    same = a == b
    if same.any():
        i = int(np.argmax(same))
        raise ValueError(f"pair {i} compares item {int(a[i])} with itself (item_a[{i}] == item_b[{i}])")
    metrics.validate_confidences(pref, "pref")
    w = np.ones(len(a)) if weights is None else np.asarray(weights, dtype=np.float64)
    if weights is not None:
        _check_non_negative(w, "weights")
    if item_weights is not None:
        v = np.asarray(item_weights, dtype=np.float64)
        if v.shape != (n_items,):
            raise ValueError(f"item_weights: expected shape ({n_items},), got {v.shape}")
        _check_non_negative(v, "item_weights")
        pair_weight = np.bincount(a, w, n_items) + np.bincount(b, w, n_items)
        unridged = (pair_weight > 0) & (v == 0)
        if unridged.any():
            i = int(np.argmax(unridged))
            raise ValueError(f"item_weights[{i}] = 0 but item {i} is in pairs of total weight "
                             f"{pair_weight[i]:g}; its strength would have no ridge")
    if not (np.isfinite(l2) and l2 > 0):
        raise ValueError(f"l2 must be a positive finite number, got {l2!r}")


def _check_non_negative(x: np.ndarray, name: str) -> None:
    if x.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array, got shape {x.shape}")
    bad = ~np.isfinite(x) | (x < 0)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"{name}[{i}] = {float(x[i])!r}; weights must be finite and non-negative")


# ----------------------------------------------------------------------------
# rank correlation
# ----------------------------------------------------------------------------


def _midranks(x: Array, w: Array) -> Array:
    # Weighted average rank: the weight strictly below plus half the weight of the tie
    # group (the usual average rank minus a constant 1/2, which Pearson ignores). With
    # integer weights this is the average rank among the repeated values.
    order = jnp.argsort(x, stable=True)
    x_sorted = x[order]
    cum = jnp.concatenate([jnp.zeros((1,), x.dtype), jnp.cumsum(w[order])])
    below = cum[jnp.searchsorted(x_sorted, x, side="left")]
    below_or_equal = cum[jnp.searchsorted(x_sorted, x, side="right")]
    return 0.5 * (below + below_or_equal)


def _is_constant(r: Array, w: Array) -> Array:
    kept = w > 0
    return jnp.max(jnp.where(kept, r, -jnp.inf)) <= jnp.min(jnp.where(kept, r, jnp.inf))


@jax.jit
def spearman(x: ArrayLike, y: ArrayLike, weights: ArrayLike | None = None) -> Array:
    """Spearman rank correlation with average ranks for ties.

    With ``weights``, ranks are weighted average ranks and the correlation is
    the weighted Pearson correlation of the ranks: an integer weight k is
    exactly k copies of the example, and weight 0 drops it (also from the
    ranks of the others).

    Args:
      x, y: ``(N,)`` real values.
      weights: optional ``(N,)`` non-negative weights.

    Returns:
      Scalar in [-1, 1]; NaN when the total weight is 0 or ``x`` or ``y`` is
      constant over the weighted examples.
    """
    x, y = _as_float(x), _as_float(y)
    w = jnp.ones_like(x) if weights is None else jnp.broadcast_to(_as_float(weights), x.shape)
    rx, ry = _midranks(x, w), _midranks(y, w)
    total = jnp.sum(w)
    safe_total = jnp.where(total > 0, total, 1.0)
    cx = rx - jnp.sum(w * rx) / safe_total
    cy = ry - jnp.sum(w * ry) / safe_total
    den = jnp.sqrt(jnp.sum(w * cx * cx) * jnp.sum(w * cy * cy))
    # The constancy test is on the ranks themselves: centred constant ranks can be a
    # rounding error away from 0 and would give a meaningless ratio.
    undefined = (total <= 0) | _is_constant(rx, w) | _is_constant(ry, w) | (den <= 0)
    rho = jnp.sum(w * cx * cy) / jnp.where(undefined, 1.0, den)
    return jnp.where(undefined, jnp.nan, jnp.clip(rho, -1.0, 1.0))


# ----------------------------------------------------------------------------
# metrics of the strengths, as a bootstrap statistic
# ----------------------------------------------------------------------------


def fit_resample(
    item_counts: Array,
    item_a: Array,
    item_b: Array,
    pref: Array,
    *,
    l2: float = DEFAULT_L2,
    n_steps: int = DEFAULT_N_STEPS,
) -> BradleyTerryFit:
    """The strengths of a question resample: the fit to the data with question ``i`` copied ``c_i`` times.

    Pair ``(a, b)`` gets weight ``c_a * c_b`` (every copy of ``a`` against
    every copy of ``b``) and question ``i`` a ridge of ``l2 * c_i`` (one per
    copy); all copies of a question share its strength. Jax-traceable; no
    validation.

    Args:
      item_counts: ``(n_items,)`` multiplicity of each question (its length
        sets ``n_items``).
      item_a, item_b, pref: ``(P,)`` as in :func:`fit_strengths`.
      l2, n_steps: as in :func:`fit_strengths`.

    Returns:
      :class:`BradleyTerryFit`; questions with count 0, or with no drawn
      partner, have ``pair_weight == 0`` and strength 0.
    """
    counts = _as_float(item_counts)
    return _fit(jnp.asarray(item_a, dtype=jnp.int32), jnp.asarray(item_b, dtype=jnp.int32), _as_float(pref),
                counts[item_a] * counts[item_b], l2 * counts, n_items=counts.shape[0], n_steps=n_steps)


def strength_statistics(
    item_counts: Array,
    item_a: Array,
    item_b: Array,
    pref: Array,
    correct: Array,
    consistency: Array | None = None,
    *,
    l2: float = DEFAULT_L2,
    n_steps: int = DEFAULT_N_STEPS,
) -> dict[str, Array]:
    """Metrics of the Bradley-Terry strengths for one (re)sample of questions.

    The bootstrap statistic (counts first, as in
    :func:`metacog_jax.evaluation.bootstrap.bootstrap_two_way`): question ``i``
    drawn ``c_i`` times weighs every pair by ``c_a * c_b`` and itself by
    ``c_i``, which is exactly the data with every drawn question copied.
    Jax-traceable; no validation.

    Args:
      item_counts: ``(n_items,)`` multiplicity of each question (all ones for
        the point estimate).
      item_a, item_b, pref: ``(P,)`` pairs and debiased preferences, as in
        :func:`fit_strengths`.
      correct: ``(n_items,)`` 0/1 correctness of the model's answer to each
        question.
      consistency: optional ``(n_items,)`` self-consistency of each question.
      l2, n_steps: as in :func:`fit_strengths`.

    Returns:
      ``bt_auroc`` (AUROC of the strengths against correctness; comparable to
      the single task's AUROC), ``bt_spearman_consistency`` (only with
      ``consistency``) and ``bt_n_items_without_pairs`` (drawn questions with
      no drawn partner, with multiplicity; they are left out of both metrics
      since their strength carries no evidence). Scalars; NaN where undefined
      (one class of correctness, constant consistency).
    """
    fit = fit_resample(item_counts, item_a, item_b, pref, l2=l2, n_steps=n_steps)
    return fixed_strength_statistics(item_counts, fit.strength, fit.pair_weight, correct, consistency)


def fixed_strength_statistics(
    item_counts: Array,
    strength: Array,
    pair_weight: Array,
    correct: Array,
    consistency: Array | None = None,
) -> dict[str, Array]:
    """The metrics of :func:`strength_statistics` for given strengths (no refit).

    As a bootstrap statistic this resamples questions with their strengths
    fixed at the full-data fit, the way the single task's bootstrap keeps
    each question's stated confidence.

    Args:
      item_counts: ``(n_items,)`` multiplicity of each question.
      strength, pair_weight: ``(n_items,)`` from :func:`fit_strengths`;
        questions with ``pair_weight == 0`` are left out.
      correct, consistency: as in :func:`strength_statistics`.

    Returns:
      The dict of :func:`strength_statistics`.
    """
    correct = _as_float(correct)
    counts = _as_float(item_counts)
    w = jnp.where(pair_weight > 0, counts, 0.0)
    out = {
        "bt_auroc": metrics.auroc(strength, correct, weights=w),
        "bt_n_items_without_pairs": jnp.sum(jnp.where(pair_weight > 0, 0.0, counts)),
    }
    if consistency is not None:
        out["bt_spearman_consistency"] = spearman(strength, consistency, w)
    return out


@functools.lru_cache(maxsize=None)
def strength_stat_fn(l2: float = DEFAULT_L2, n_steps: int = DEFAULT_N_STEPS):
    """:func:`strength_statistics` with fixed settings, one object per setting.

    The bootstrap's compiled function is keyed on the statistic object, so
    reusing this one avoids recompiling. Call it as ``stat(counts, item_a,
    item_b, pref, correct, consistency)``.
    """
    return functools.partial(strength_statistics, l2=l2, n_steps=n_steps)


# One compiled program for the whole statistic (fit, AUROC, Spearman) when called eagerly.
_strength_statistics_jit = jax.jit(strength_statistics, static_argnames=("l2", "n_steps"))


def _one_factor(item_counts: Array, _single_column_counts: Array, *operands: Any, stat: Any) -> Any:
    # bootstrap_two_way with a single dummy column is the one-factor (question) bootstrap:
    # the column count is always 1, so only the question counts vary.
    return stat(item_counts, *operands)


@functools.lru_cache(maxsize=None)
def _one_factor_stat_fn(l2: float | None, n_steps: int | None):
    stat = fixed_strength_statistics if l2 is None else strength_stat_fn(l2, n_steps)
    return functools.partial(_one_factor, stat=stat)


def _validate_items(correct: ArrayLike, consistency: ArrayLike | None) -> int:
    n_items = len(metrics.validate_binary(correct, "correct"))
    if consistency is not None:
        c = metrics.validate_confidences(consistency, "consistency")
        if len(c) != n_items:
            raise ValueError(f"consistency has {len(c)} items, correct has {n_items}")
    return n_items


def strength_metrics(
    item_a: ArrayLike,
    item_b: ArrayLike,
    pref: ArrayLike,
    correct: ArrayLike,
    consistency: ArrayLike | None = None,
    item_counts: ArrayLike | None = None,
    *,
    l2: float = DEFAULT_L2,
    n_steps: int = DEFAULT_N_STEPS,
) -> dict[str, Array]:
    """:func:`strength_statistics` with the arguments in data order, counts optional.

    Validates concrete inputs (see :func:`fit_strengths`); usable under jit
    and vmap like the statistic itself.

    Args:
      item_a, item_b, pref: ``(P,)`` as in :func:`fit_strengths`.
      correct: ``(n_items,)`` 0/1.
      consistency: optional ``(n_items,)`` in [0, 1].
      item_counts: optional ``(n_items,)`` question multiplicities (default 1).
      l2, n_steps: as in :func:`fit_strengths`.

    Returns:
      The dict of :func:`strength_statistics` (jnp scalars).
    """
    if not _is_traced(item_a, item_b, pref, correct, consistency, item_counts):
        n_items = _validate_items(correct, consistency)
        _validate_pairs(item_a, item_b, pref, n_items, l2=l2)
        if item_counts is not None:
            counts = np.asarray(item_counts, dtype=np.float64)
            if counts.shape != (n_items,):
                raise ValueError(f"item_counts: expected shape ({n_items},), got {counts.shape}")
            _check_non_negative(counts, "item_counts")
    counts = jnp.ones(np.shape(correct)) if item_counts is None else item_counts
    return _strength_statistics_jit(jnp.asarray(counts), jnp.asarray(item_a), jnp.asarray(item_b),
                                    jnp.asarray(pref), jnp.asarray(correct),
                                    None if consistency is None else jnp.asarray(consistency), l2=l2,
                                    n_steps=n_steps)


def bootstrap_strength_metrics(
    item_a: ArrayLike,
    item_b: ArrayLike,
    pref: ArrayLike,
    correct: ArrayLike,
    consistency: ArrayLike | None = None,
    *,
    refit: bool = True,
    n_resamples: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    batch_size: int | None = 100,
    l2: float = DEFAULT_L2,
    n_steps: int = DEFAULT_N_STEPS,
) -> dict[str, dict[str, float]]:
    """Point estimates and question-level cluster-bootstrap intervals of :func:`strength_statistics`.

    Each resample draws the ``n_items`` questions with replacement. With
    ``refit`` (default) it refits the strengths with pair weights
    ``c_a * c_b`` (the pairs whose questions were both drawn, with
    multiplicity), so the interval includes the uncertainty of the strengths.
    A resample keeps only about 40% of the distinct pairs, so its strengths are
    noisier than the full-data fit and the resampled AUROC and Spearman sit
    below the point estimate (percentile intervals can exclude it); check
    ``estimate`` against the interval. ``refit=False`` keeps the full-data
    strengths and resamples only the questions, as the single task's
    bootstrap keeps stated confidences. The point estimate is the same either way.

    Args:
      item_a, item_b, pref, correct, consistency: as in :func:`strength_metrics`.
      refit: refit the strengths in every resample (see above).
      n_resamples, seed, alpha: as in :func:`metacog_jax.evaluation.bootstrap.bootstrap_ci`.
      batch_size: resamples fitted together; each holds an ``n_items**2`` matrix.
      l2, n_steps: as in :func:`fit_strengths`.

    Returns:
      ``{name: {"estimate", "low", "high", "n_undefined_resamples"}}`` for
      the names of :func:`strength_statistics`.
    """
    n_items = _validate_items(correct, consistency)
    _validate_pairs(item_a, item_b, pref, n_items, l2=l2)
    items = (jnp.asarray(correct), None if consistency is None else jnp.asarray(consistency))
    if refit:
        stat = _one_factor_stat_fn(float(l2), int(n_steps))
        operands = (jnp.asarray(item_a), jnp.asarray(item_b), jnp.asarray(pref)) + items
    else:
        fit = fit_strengths(item_a, item_b, pref, n_items, l2=l2, n_steps=n_steps)
        stat = _one_factor_stat_fn(None, None)
        operands = (fit.strength, fit.pair_weight) + items
    return bootstrap.bootstrap_two_way(stat, n_items, 1, n_resamples=n_resamples, seed=seed, alpha=alpha,
                                       batch_size=batch_size, operands=operands)
