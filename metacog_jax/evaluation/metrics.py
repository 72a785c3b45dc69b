"""Calibration and discrimination metrics with the definitions pinned in METHOD.md.

Every metric is pure ``jax.numpy``: fixed shapes, no boolean indexing, so each
can be jitted and vmapped (bootstrap resamples vmap over index arrays).
Instead of dropping examples, metrics take an optional ``weights`` array of
non-negative per-example weights: a 0/1 mask is the special case, and an
integer weight ``k`` means "this example appears ``k`` times" (for the
metrics marked exact below, the result is the same as repeating it).

Conventions shared by all functions:

* ``conf`` is P(the answer is correct) in [0, 1] (not top-label confidence),
  shape ``(N,)``.
* ``correct`` is 1/0 (or bool) per example, shape ``(N,)``.
* A metric whose denominator is empty (no weight at all, or for AUROC no
  correct or no incorrect example) returns NaN, never a silent 0 or 0.5.

The jitted functions do not validate their inputs (NaNs would just flow
through); call :func:`validate_confidences` on host data first, as
:func:`compute_all` and :func:`compute_pairwise` do.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
ArrayLike = Any

def ece_definition(n_bins: int = 10) -> str:
    """The one-sentence ECE definition used here, for reports (METHOD.md, STYLE.md pitfall 10)."""
    return (
        f"ECE: {n_bins} equal-width confidence bins on [0, 1] (bin m = [m/{n_bins}, (m+1)/{n_bins}), "
        "last bin closed so confidence 1.0 falls in it), bin confidence = mean confidence "
        "in the bin, empty bins skipped, bins weighted by their share of examples: "
        "ECE = sum_m |B_m|/N * |conf(B_m) - acc(B_m)|; confidence = P(answer correct), "
        "not top-label."
    )


ECE_DEFINITION = ece_definition(10)


# ----------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------


def _as_float(x: ArrayLike) -> Array:
    # Default float dtype: float32 unless jax_enable_x64 is on.
    return jnp.asarray(x, dtype=float)


def _weights_like(x: Array, weights: ArrayLike | None) -> Array:
    if weights is None:
        return jnp.ones_like(x)
    return jnp.broadcast_to(_as_float(weights), x.shape)


def _safe_ratio(num: Array, den: Array) -> Array:
    """num / den, NaN where den == 0 (no 0/0 warnings or infs leak out)."""
    return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), jnp.nan)


def equal_width_bin_index(conf: ArrayLike, n_bins: int = 10) -> Array:
    """Bin index in ``[0, n_bins)`` for each confidence, equal-width bins on [0, 1].

    Bin ``m`` is ``[m/n_bins, (m+1)/n_bins)``; the last bin is closed, so 1.0
    goes to bin ``n_bins - 1``. The edges are computed in the working float
    dtype (``m / n_bins`` correctly rounded), so a confidence written as an
    edge value, e.g. ``0.7``, lands in the upper bin ``[0.7, 0.8)``.

    Args:
      conf: ``(N,)`` confidences in [0, 1].
      n_bins: number of bins (static).

    Returns:
      ``(N,)`` int32 bin indices.
    """
    conf = _as_float(conf)
    # Edges are built on the host with NumPy: IEEE division is correctly rounded there,
    # while XLA may divide via a reciprocal and land one ulp off (9/10 in float32).
    dtype = np.dtype(conf.dtype)
    inner_edges = np.arange(1, n_bins, dtype=dtype) / dtype.type(n_bins)
    return jnp.searchsorted(inner_edges, conf, side="right").astype(jnp.int32)


def _binned_calibration_error(
    conf: Array, correct: Array, w: Array, bins: Array, n_bins: int
) -> Array:
    # sum_m W_m/W |conf_m - acc_m| == (1/W) sum_m |sum_{i in m} w_i (conf_i - y_i)|;
    # empty bins contribute exactly 0, i.e. they are skipped.
    per_bin = jax.ops.segment_sum(w * (conf - correct), bins, num_segments=n_bins)
    return _safe_ratio(jnp.sum(jnp.abs(per_bin)), jnp.sum(w))


# ----------------------------------------------------------------------------
# single-question metrics
# ----------------------------------------------------------------------------


@jax.jit
def accuracy(correct: ArrayLike, weights: ArrayLike | None = None) -> Array:
    """Weighted fraction correct. ``correct``: ``(N,)`` 0/1. Returns a scalar in [0, 1]."""
    correct = _as_float(correct)
    w = _weights_like(correct, weights)
    return _safe_ratio(jnp.sum(w * correct), jnp.sum(w))


@jax.jit
def cohen_kappa(a: ArrayLike, b: ArrayLike, weights: ArrayLike | None = None) -> Array:
    """Cohen's kappa between two binary gradings of the same items (e.g. two graders' right/wrong).

    ``kappa = (p_o - p_e) / (1 - p_e)``: ``p_o`` the weighted share of items the two agree on, ``p_e`` the
    agreement expected by chance from each grader's own share of 1s (``p_a p_b + (1 - p_a)(1 - p_b)``).
    NaN when ``p_e`` is 1 (both graders give every item the same one label: agreement is not informative).

    Args:
      a, b: ``(N,)`` 0/1 per item.
      weights: optional ``(N,)`` non-negative weights (bootstrap multiplicities).
    """
    a, b = _as_float(a), _as_float(b)
    w = _weights_like(a, weights)
    total = jnp.sum(w)
    p_o = _safe_ratio(jnp.sum(w * (a == b)), total)
    p_a, p_b = _safe_ratio(jnp.sum(w * a), total), _safe_ratio(jnp.sum(w * b), total)
    p_e = p_a * p_b + (1.0 - p_a) * (1.0 - p_b)
    return _safe_ratio(p_o - p_e, jnp.where(1.0 - p_e > 1e-6, 1.0 - p_e, 0.0))  # 1e-6: float32 rounding


@jax.jit
def mean_confidence(conf: ArrayLike, weights: ArrayLike | None = None) -> Array:
    """Weighted mean confidence. ``conf``: ``(N,)`` in [0, 1]. Returns a scalar."""
    conf = _as_float(conf)
    w = _weights_like(conf, weights)
    return _safe_ratio(jnp.sum(w * conf), jnp.sum(w))


@functools.partial(jax.jit, static_argnames=("n_bins",))
def calibration_bins(
    conf: ArrayLike, correct: ArrayLike, n_bins: int = 10, weights: ArrayLike | None = None
) -> tuple[Array, Array, Array]:
    """Per-bin statistics of the equal-width binning used by :func:`ece`.

    Args:
      conf: ``(N,)`` confidences in [0, 1].
      correct: ``(N,)`` 0/1 correctness.
      n_bins: number of equal-width bins (static).
      weights: optional ``(N,)`` non-negative weights.

    Returns:
      ``(count, mean_conf, acc)``, each ``(n_bins,)``: total weight per bin, and
      the weighted mean confidence and accuracy per bin (NaN for empty bins).
    """
    conf, correct = _as_float(conf), _as_float(correct)
    w = _weights_like(conf, weights)
    bins = equal_width_bin_index(conf, n_bins)
    count = jax.ops.segment_sum(w, bins, num_segments=n_bins)
    conf_sum = jax.ops.segment_sum(w * conf, bins, num_segments=n_bins)
    correct_sum = jax.ops.segment_sum(w * correct, bins, num_segments=n_bins)
    return count, _safe_ratio(conf_sum, count), _safe_ratio(correct_sum, count)


@functools.partial(jax.jit, static_argnames=("n_bins",))
def ece(
    conf: ArrayLike, correct: ArrayLike, n_bins: int = 10, weights: ArrayLike | None = None
) -> Array:
    """Expected calibration error with equal-width bins (see ``ECE_DEFINITION``).

    ECE = sum_m |B_m|/N * |mean conf(B_m) - acc(B_m)| over non-empty bins
    ``B_m = [m/n_bins, (m+1)/n_bins)`` (last bin closed). Exact under integer
    ``weights`` (a weight k equals k copies).

    Args:
      conf: ``(N,)`` P(correct) in [0, 1].
      correct: ``(N,)`` 0/1.
      n_bins: number of bins (static), 10 in METHOD.md.
      weights: optional ``(N,)`` non-negative weights.

    Returns:
      Scalar in [0, 1]; NaN if the total weight is 0.
    """
    conf, correct = _as_float(conf), _as_float(correct)
    w = _weights_like(conf, weights)
    bins = equal_width_bin_index(conf, n_bins)
    return _binned_calibration_error(conf, correct, w, bins, n_bins)


@functools.partial(jax.jit, static_argnames=("n_bins",))
def ace(
    conf: ArrayLike, correct: ArrayLike, n_bins: int = 10, weights: ArrayLike | None = None
) -> Array:
    """Adaptive calibration error: the ECE formula over equal-mass bins.

    Binning rule: sort examples by confidence ascending with a *stable* sort
    (tied confidences keep their input order and may be split across bins);
    an example whose preceding weight in that order is ``c`` (out of total
    ``W``) goes to bin ``floor(n_bins * c / W)``. With unit weights the example
    of rank ``r`` (0-based) goes to bin ``floor(n_bins * r / N)``, so bins hold
    ``floor(N/n_bins)`` or ``ceil(N/n_bins)`` examples; with ``N < n_bins``
    some bins are empty and are skipped. Then
    ACE = sum_m W_m/W * |mean conf(B_m) - acc(B_m)|.

    Args:
      conf: ``(N,)`` P(correct) in [0, 1].
      correct: ``(N,)`` 0/1.
      n_bins: number of bins (static).
      weights: optional ``(N,)`` non-negative weights (bin edges follow the
        weight mass, so an integer weight is *not* exactly k copies here).

    Returns:
      Scalar in [0, 1]; NaN if the total weight is 0.
    """
    conf, correct = _as_float(conf), _as_float(correct)
    w = _weights_like(conf, weights)
    order = jnp.argsort(conf, stable=True)
    conf_s, correct_s, w_s = conf[order], correct[order], w[order]
    total = jnp.sum(w_s)
    weight_before = jnp.cumsum(w_s) - w_s
    # floor(n_bins * c / W) as a count of thresholds m * W <= n_bins * c (m = 1..n_bins-1):
    # products of integer weights are exact in float, a quotient on XLA may be one ulp low.
    thresholds = jnp.arange(1, n_bins, dtype=conf.dtype) * total
    bins = jnp.sum(n_bins * weight_before[:, None] >= thresholds[None, :], axis=1).astype(jnp.int32)
    return _binned_calibration_error(conf_s, correct_s, w_s, bins, n_bins)


@jax.jit
def brier(conf: ArrayLike, correct: ArrayLike, weights: ArrayLike | None = None) -> Array:
    """Brier score: weighted mean of ``(conf - correct)**2``; ``(N,)`` inputs, scalar in [0, 1]."""
    conf, correct = _as_float(conf), _as_float(correct)
    w = _weights_like(conf, weights)
    return _safe_ratio(jnp.sum(w * (conf - correct) ** 2), jnp.sum(w))


@jax.jit
def auroc(conf: ArrayLike, correct: ArrayLike, weights: ArrayLike | None = None) -> Array:
    """Discrimination AUC: P(conf of a correct answer > conf of an incorrect one).

    Ties count 1/2 (Mann-Whitney U / (n_pos * n_neg)). Computed exactly in
    O(N log N): for every correct example, the weighted number of incorrect
    examples with strictly lower confidence plus half of those with equal
    confidence (found by binary search in the sorted confidences). Exact under
    integer ``weights``. Ties are equality in the working float dtype.

    Args:
      conf: ``(N,)`` scores (any real values; confidences in [0, 1] here).
      correct: ``(N,)`` 0/1 labels (the positive class is "correct").
      weights: optional ``(N,)`` non-negative weights.

    Returns:
      Scalar in [0, 1]; 0.5 = chance. NaN when there is no (weighted) correct
      or no incorrect example: the AUC is undefined then, and callers decide
      (e.g. skip the participant in the human AUC of paper 2).
    """
    conf, correct = _as_float(conf), _as_float(correct)
    w = _weights_like(conf, weights)
    w_pos = w * correct
    w_neg = w * (1.0 - correct)
    order = jnp.argsort(conf, stable=True)
    conf_sorted = conf[order]
    neg_cum = jnp.concatenate([jnp.zeros((1,), conf.dtype), jnp.cumsum(w_neg[order])])
    below = neg_cum[jnp.searchsorted(conf_sorted, conf, side="left")]
    below_or_equal = neg_cum[jnp.searchsorted(conf_sorted, conf, side="right")]
    wins = below + 0.5 * (below_or_equal - below)
    return _safe_ratio(jnp.sum(w_pos * wins), jnp.sum(w_pos) * jnp.sum(w_neg))


@jax.jit
def aurc(conf: ArrayLike, correct: ArrayLike, mask: ArrayLike | None = None) -> Array:
    """Area under the risk-coverage curve (selective prediction; lower is better).

    Sort by confidence descending; for coverage k = 1..N the selective risk is
    the error rate of the k most confident examples; AURC is the mean of these
    N risks: AURC = (1/N) sum_k errors(top k) / k. Tied confidences have no
    order, so within a tie group the errors of the top k are their expected
    value under a uniformly random order of the group,
    ``errors_before_group + (k - n_before_group) * group_error_rate``; the
    result is therefore independent of input order. Range [0, 1]; an oracle
    ranking gives the lowest value attainable at that accuracy.

    Args:
      conf: ``(N,)`` confidences.
      correct: ``(N,)`` 0/1.
      mask: optional ``(N,)`` 0/1 (or bool) keep-mask. Unlike the other
        metrics this is a mask, not general weights: each kept example is one
        coverage step (non-integer weights have no discrete curve).

    Returns:
      Scalar; NaN if nothing is kept.
    """
    conf, correct = _as_float(conf), _as_float(correct)
    keep = (jnp.ones_like(conf) if mask is None else (_as_float(mask) > 0).astype(conf.dtype))
    keep = jnp.broadcast_to(keep, conf.shape)
    order = jnp.argsort(-conf, stable=True)
    neg_conf_sorted = -conf[order]
    keep_s = keep[order]
    err_s = keep_s * (1.0 - correct[order])
    zero = jnp.zeros((1,), conf.dtype)
    kept_cum = jnp.concatenate([zero, jnp.cumsum(keep_s)])
    err_cum = jnp.concatenate([zero, jnp.cumsum(err_s)])
    start = jnp.searchsorted(neg_conf_sorted, neg_conf_sorted, side="left")
    stop = jnp.searchsorted(neg_conf_sorted, neg_conf_sorted, side="right")
    n_before, err_before = kept_cum[start], err_cum[start]
    group_rate = _safe_ratio(err_cum[stop] - err_before, kept_cum[stop] - n_before)
    coverage = kept_cum[1:]  # 1-based coverage index of each kept example
    expected_errors = err_before + (coverage - n_before) * jnp.nan_to_num(group_rate)
    risk = jnp.where(keep_s > 0, expected_errors / jnp.maximum(coverage, 1.0), 0.0)
    return _safe_ratio(jnp.sum(risk), jnp.sum(keep_s))


selective_auc = aurc


# ----------------------------------------------------------------------------
# pairwise metrics
# ----------------------------------------------------------------------------


def _pairwise_agreement(p_q1: Array, q1_better: Array, w: Array, mode: str) -> Array:
    if mode == "choice":
        # The model picks Q1 when p > 0.5 and Q2 when p < 0.5; p == 0.5 is no
        # choice and scores 1/2, like a tie in Mann-Whitney.
        score = jnp.where(
            p_q1 > 0.5, q1_better, jnp.where(p_q1 < 0.5, 1.0 - q1_better, 0.5)
        )
        return _safe_ratio(jnp.sum(w * score), jnp.sum(w))
    if mode == "auroc":
        return auroc(p_q1, q1_better, weights=w)
    raise ValueError(f"mode must be 'choice' or 'auroc', got {mode!r}")


@functools.partial(jax.jit, static_argnames=("mode",))
def auc_c(
    p_q1: ArrayLike,
    consistency_q1: ArrayLike,
    consistency_q2: ArrayLike,
    weights: ArrayLike | None = None,
    mode: str = "choice",
) -> Array:
    """Pairwise agreement with the consistency-based ranking (AUC_c).

    Over pairs whose consistencies differ, the fraction where the model's
    choice names the question with the higher consistency. Pass bin-level
    consistency confidences instead of raw consistencies to rank by those.

    Args:
      p_q1: ``(P,)`` the model's probability that it is more likely correct on
        Q1 than on Q2 (a hard choice is 1.0 / 0.0).
      consistency_q1, consistency_q2: ``(P,)`` self-consistency of each question.
      weights: optional ``(P,)`` non-negative pair weights.
      mode: ``"choice"`` (default): choice = Q1 if p > 0.5, Q2 if p < 0.5,
        p == 0.5 scores 1/2. ``"auroc"``: threshold-free, the AUROC of
        ``p_q1`` for the label "Q1 has higher consistency" over the same pairs
        (meaningful when Q1/Q2 order was randomized).

    Returns:
      Scalar in [0, 1]; 0.5 = chance; NaN if no pair has differing consistencies.
    """
    p_q1 = _as_float(p_q1)
    c1, c2 = _as_float(consistency_q1), _as_float(consistency_q2)
    w = _weights_like(p_q1, weights) * (c1 != c2)
    return _pairwise_agreement(p_q1, (c1 > c2).astype(p_q1.dtype), w, mode)


@functools.partial(jax.jit, static_argnames=("mode",))
def auc_a(
    p_q1: ArrayLike,
    correct_q1: ArrayLike,
    correct_q2: ArrayLike,
    weights: ArrayLike | None = None,
    mode: str = "choice",
) -> Array:
    """Pairwise agreement with actual correctness (AUC_a).

    Over mixed pairs (exactly one of the two questions answered correctly),
    the fraction where the model's choice names the correctly answered one.
    ``mode`` and tie handling as in :func:`auc_c`.

    Args:
      p_q1: ``(P,)`` probability the model prefers Q1.
      correct_q1, correct_q2: ``(P,)`` 0/1 correctness of the model's answers.
      weights: optional ``(P,)`` non-negative pair weights.
      mode: ``"choice"`` or ``"auroc"``.

    Returns:
      Scalar in [0, 1]; NaN if there is no mixed pair.
    """
    p_q1 = _as_float(p_q1)
    y1, y2 = _as_float(correct_q1), _as_float(correct_q2)
    w = _weights_like(p_q1, weights) * (y1 != y2)
    return _pairwise_agreement(p_q1, y1, w, mode)


# ----------------------------------------------------------------------------
# host-side validation and convenience
# ----------------------------------------------------------------------------


def validate_confidences(conf: ArrayLike, name: str) -> np.ndarray:
    """Check on the host that ``conf`` is a 1-D array of finite values in [0, 1].

    Args:
      conf: array-like of confidences.
      name: what to call the input in the error message.

    Returns:
      ``conf`` as a float64 NumPy array.

    Raises:
      ValueError: naming ``name`` and the first offending index and value
        (NaN, infinite, below 0 or above 1), or a wrong shape / non-numeric.
    """
    try:
        arr = np.asarray(conf, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name}: confidences must be numeric ({e})") from None
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array of confidences, got shape {arr.shape}")
    bad = ~np.isfinite(arr) | (arr < 0.0) | (arr > 1.0)
    if bad.any():
        i = int(np.argmax(bad))
        what = "NaN" if np.isnan(arr[i]) else "outside [0, 1]"
        raise ValueError(
            f"{name}[{i}] = {arr[i]!r} is {what}; confidences must be probabilities in [0, 1] "
            f"({int(bad.sum())} offending value(s) in total)"
        )
    return arr


def validate_binary(x: ArrayLike, name: str) -> np.ndarray:
    """Check on the host that ``x`` is 1-D and holds only 0/1 (or bools).

    Returns ``x`` as a float64 NumPy array; raises ValueError naming ``name``
    and the first offending index otherwise.
    """
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array, got shape {arr.shape}")
    try:
        arr = arr.astype(np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name}: values must be 0/1 or booleans ({e})") from None
    bad = ~((arr == 0.0) | (arr == 1.0))
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"{name}[{i}] = {arr[i]!r}; expected 0/1 or a boolean")
    return arr


def _check_same_length(**arrays: np.ndarray) -> int:
    lengths = {k: len(v) for k, v in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"inputs differ in length: {lengths}")
    return next(iter(lengths.values()))


def compute_all(conf: ArrayLike, correct: ArrayLike, n_bins: int = 10) -> dict[str, float]:
    """All single-question metrics for one task, validated, as Python floats.

    Args:
      conf: ``(N,)`` P(correct) in [0, 1].
      correct: ``(N,)`` 0/1.
      n_bins: bins for ECE and ACE.

    Returns:
      ``{"n", "accuracy", "mean_confidence", "ece", "ace", "brier", "auroc",
      "aurc"}``; NaN where undefined (e.g. auroc with one class).
    """
    conf_np = validate_confidences(conf, "conf")
    correct_np = validate_binary(correct, "correct")
    n = _check_same_length(conf=conf_np, correct=correct_np)
    return {
        "n": n,
        "accuracy": float(accuracy(correct_np)),
        "mean_confidence": float(mean_confidence(conf_np)),
        "ece": float(ece(conf_np, correct_np, n_bins=n_bins)),
        "ace": float(ace(conf_np, correct_np, n_bins=n_bins)),
        "brier": float(brier(conf_np, correct_np)),
        "auroc": float(auroc(conf_np, correct_np)),
        "aurc": float(aurc(conf_np, correct_np)),
    }


def compute_pairwise(
    p_q1: ArrayLike,
    consistency_q1: ArrayLike | None = None,
    consistency_q2: ArrayLike | None = None,
    correct_q1: ArrayLike | None = None,
    correct_q2: ArrayLike | None = None,
) -> dict[str, float]:
    """All pairwise-comparison metrics, validated, as Python floats.

    Args:
      p_q1: ``(P,)`` probability that the model prefers Q1, in [0, 1].
      consistency_q1, consistency_q2: ``(P,)`` consistencies in [0, 1], or
        None to skip AUC_c.
      correct_q1, correct_q2: ``(P,)`` 0/1 correctness, or None to skip AUC_a.

    Returns:
      ``n_pairs``, ``q1_choice_rate`` (fraction with p > 0.5; position bias
      check), and when given ``auc_c``, ``auc_c_auroc``,
      ``n_pairs_consistency_differs``, ``auc_a``, ``auc_a_auroc``, ``n_pairs_mixed``.
    """
    p = validate_confidences(p_q1, "p_q1")
    out: dict[str, float] = {
        "n_pairs": len(p),
        "q1_choice_rate": float(np.mean(p > 0.5)) if len(p) else float("nan"),
    }
    if (consistency_q1 is None) != (consistency_q2 is None):
        raise ValueError("consistency_q1 and consistency_q2 must be given together")
    if (correct_q1 is None) != (correct_q2 is None):
        raise ValueError("correct_q1 and correct_q2 must be given together")
    if consistency_q1 is not None:
        c1 = validate_confidences(consistency_q1, "consistency_q1")
        c2 = validate_confidences(consistency_q2, "consistency_q2")
        _check_same_length(p_q1=p, consistency_q1=c1, consistency_q2=c2)
        out["n_pairs_consistency_differs"] = int(np.sum(c1 != c2))
        out["auc_c"] = float(auc_c(p, c1, c2))
        out["auc_c_auroc"] = float(auc_c(p, c1, c2, mode="auroc"))
    if correct_q1 is not None:
        y1 = validate_binary(correct_q1, "correct_q1")
        y2 = validate_binary(correct_q2, "correct_q2")
        _check_same_length(p_q1=p, correct_q1=y1, correct_q2=y2)
        out["n_pairs_mixed"] = int(np.sum(y1 != y2))
        out["auc_a"] = float(auc_a(p, y1, y2))
        out["auc_a_auroc"] = float(auc_a(p, y1, y2, mode="auroc"))
    return out
