"""Paper 2: the calibration and discrimination gap between model and human confidence.

Inputs
------
*Items file* (JSONL, one object per line): ``item_id`` (string or integer),
``correct`` (bool or 0/1: is the model's answer correct), ``model_confidence``
(the model's internal P(its answer is correct), in [0, 1]); any other fields
are kept.

*Ratings file* (CSV with a header; one row per rating; extra columns kept as
strings). Columns, see ``RATINGS_COLUMNS``:

=====================  ===============================================================
``participant_id``     non-empty
``condition``          non-empty, e.g. ``default``, ``selected`` or a fixed style
``item_id``            non-empty; must be in the items file unless an attention check
``style``              explanation style shown; non-empty unless an attention check
``rating``             the participant's probability that the model's answer is
                       correct, in [0, 1]; may be empty only for attention checks
``own_answer``         the participant's own answer; may be empty
``is_attention_check`` ``0``/``1`` (also ``true``/``false``)
``created_at``         timestamp, kept as text
=====================  ===============================================================

Attention-check rows are excluded from every gap statistic and counted.

Definitions (METHOD.md, paper 2)
--------------------------------
* Model ECE / AUC: over the distinct items rated (in the condition), each
  item once, confidence = ``model_confidence``.
* Human ECE: pooled over all ratings, confidence = rating, correctness = the
  rated item's ``correct``.
* Human AUC: AUROC of each participant's ratings against item correctness,
  averaged over participants; participants whose rated items are all
  correct or all incorrect have no AUC and are skipped (and counted).
* calibration gap = ECE_human - ECE_model; discrimination gap = AUC_model -
  AUC_human.
* 95% intervals: two-way bootstrap, participants and items resampled with
  replacement independently; a rating enters a resample with multiplicity
  count(participant) x count(item) (see ``evaluation.bootstrap``).
"""

from __future__ import annotations

import csv
import functools
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from metacog_jax.evaluation import bootstrap, metrics, plots
from metacog_jax import artifacts
from metacog_jax.artifacts import from_spreadsheet_cell, iter_jsonl
from metacog_jax.perception.explanations import CERTAINTY_LEVELS, LENGTHS

RATINGS_COLUMNS = (
    "participant_id",
    "condition",
    "item_id",
    "style",
    "rating",
    "own_answer",
    "is_attention_check",
    "created_at",
)
ITEM_FIELDS = ("item_id", "correct", "model_confidence")
GAP_METRICS = (
    "model_ece",
    "human_ece",
    "calibration_gap",
    "model_auc",
    "human_auc",
    "discrimination_gap",
    "model_accuracy",
    "mean_model_confidence",
    "mean_human_rating",
)
_TRUE = {"1", "true", "yes"}
_FALSE = {"0", "false", "no"}


# ----------------------------------------------------------------------------
# reading and checking the tables
# ----------------------------------------------------------------------------


def _probability(value: Any, where: str, field: str) -> float:
    if isinstance(value, bool):
        raise ValueError(f"{where}: {field} must be a number in [0, 1], got a boolean {value!r}")
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: {field} must be a number in [0, 1], got {value!r}") from None
    if not math.isfinite(x) or not 0.0 <= x <= 1.0:
        raise ValueError(
            f"{where}: {field} = {value!r} is outside [0, 1] (must be a probability; "
            "convert percentages to fractions)"
        )
    return x


def _item_correct(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError(f"{where}: correct must be a boolean or 0/1, got {value!r}")


def _check_item(raw: dict[str, Any], where: str) -> dict[str, Any]:
    missing = [f for f in ITEM_FIELDS if f not in raw]
    if missing:
        raise ValueError(f"{where}: missing field(s) {missing}; items need {list(ITEM_FIELDS)}")
    item_id = raw["item_id"]
    if isinstance(item_id, bool) or not isinstance(item_id, (str, int)) or str(item_id).strip() == "":
        raise ValueError(f"{where}: item_id must be a non-empty string or integer, got {item_id!r}")
    item = dict(raw)
    item["item_id"] = str(item_id)
    item["correct"] = _item_correct(raw["correct"], where)
    item["model_confidence"] = _probability(raw["model_confidence"], where, "model_confidence")
    return item


def read_items_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read the items file (JSONL; fields in the module docstring).

    Returns:
      One dict per item with ``item_id`` as str, ``correct`` as bool and
      ``model_confidence`` as float; other fields unchanged.

    Raises:
      ValueError: ``file:line`` plus the field and what is wrong (bad JSON,
        missing field, confidence outside [0, 1], duplicate ``item_id``).
    """
    items: list[dict[str, Any]] = []
    first_line: dict[str, int] = {}
    # utf-8-sig: files saved by spreadsheet tools often start with a byte-order mark.
    for lineno, raw in iter_jsonl(path, encoding="utf-8-sig"):
        where = f"{path}:{lineno}"
        item = _check_item(raw, where)
        if item["item_id"] in first_line:
            raise ValueError(
                f"{where}: duplicate item_id {item['item_id']!r} "
                f"(first at line {first_line[item['item_id']]})"
            )
        first_line[item["item_id"]] = lineno
        items.append(item)
    return items


def _check_rating(raw: dict[str, Any], where: str) -> dict[str, Any]:
    row = dict(raw)
    flag = str(raw.get("is_attention_check", "")).strip().lower()
    if flag not in _TRUE | _FALSE:
        raise ValueError(
            f"{where}: column is_attention_check must be 0 or 1, got {raw.get('is_attention_check')!r}"
        )
    attention = flag in _TRUE
    row["is_attention_check"] = attention
    for col in ("participant_id", "condition", "item_id") + (() if attention else ("style",)):
        value = raw.get(col)
        if value is None or str(value).strip() == "":
            raise ValueError(f"{where}: column {col} is empty")
        row[col] = str(value).strip()
    row["style"] = str(raw.get("style") or "").strip()
    rating = raw.get("rating")
    if attention and (rating is None or str(rating).strip() == ""):
        row["rating"] = None
    else:
        row["rating"] = _probability(rating, where, "column rating")
    row["own_answer"] = "" if raw.get("own_answer") is None else str(raw.get("own_answer"))
    row["created_at"] = "" if raw.get("created_at") is None else str(raw.get("created_at"))
    return row


def read_ratings_csv(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read the human ratings file (CSV with header; columns in ``RATINGS_COLUMNS``).

    Returns:
      One dict per row: ``rating`` as float (None only for an attention
      check with an empty rating), ``is_attention_check`` as bool, the other
      documented columns as stripped strings, extra columns unchanged.

    Raises:
      ValueError: missing columns (naming them and the file), or
        ``file:line: column X ...`` for an empty required value, a rating
        that is not a number in [0, 1], or a bad attention-check flag.
    """
    rows: list[dict[str, Any]] = []
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames
        if header is None:
            raise ValueError(f"{path}: empty file, expected a header with columns {list(RATINGS_COLUMNS)}")
        header = [h.strip() for h in header]
        reader.fieldnames = header
        missing = [c for c in RATINGS_COLUMNS if c not in header]
        if missing:
            raise ValueError(f"{path}:1: missing column(s) {missing}; header has {header}")
        for raw in reader:
            where = f"{path}:{reader.line_num}"
            # Cells escaped against formula injection by `metacog study export` read back as typed.
            raw = {k: from_spreadsheet_cell(v) if isinstance(v, str) else v for k, v in raw.items()}
            if None in raw:
                raise ValueError(f"{where}: more values than header columns ({len(header)})")
            if any(v is None for v in raw.values()):
                short = [k for k, v in raw.items() if v is None]
                raise ValueError(f"{where}: too few values; missing column(s) {short}")
            if not any(str(v).strip() for v in raw.values()):
                continue
            rows.append(_check_rating(raw, where))
    return rows


# ----------------------------------------------------------------------------
# assembling arrays
# ----------------------------------------------------------------------------


@dataclass(frozen=True)
class GapData:
    """Ratings of one condition (or all) as index arrays.

    Shapes: I rated items, P participants, R ratings, L = most ratings by one
    participant.
    """

    item_ids: list[str]
    participant_ids: list[str]
    item_correct: np.ndarray  # (I,) float 0/1
    item_confidence: np.ndarray  # (I,) model confidence
    rating: np.ndarray  # (R,)
    rating_item: np.ndarray  # (R,) int index into items
    rating_participant: np.ndarray  # (R,) int index into participants
    by_participant_item: np.ndarray  # (P, L) int item index (0 where padded)
    by_participant_rating: np.ndarray  # (P, L) rating (0 where padded)
    by_participant_mask: np.ndarray  # (P, L) 1 = real rating, 0 = padding
    n_attention_checks: int


def _first_seen(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(values))


def _items_by_id(items: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    by_id: dict[str, dict[str, Any]] = {}
    for i, raw in enumerate(items):
        item = _check_item(raw, f"items[{i}]")
        if item["item_id"] in by_id:
            raise ValueError(f"items[{i}]: duplicate item_id {item['item_id']!r}")
        by_id[item["item_id"]] = item
    return by_id


def conditions_of(ratings: Sequence[dict[str, Any]]) -> list[str]:
    """Conditions present among non-attention-check ratings, in order of first appearance."""
    return _first_seen(str(r.get("condition")) for r in ratings if not _is_attention(r))


def _is_attention(row: dict[str, Any]) -> bool:
    flag = row.get("is_attention_check", False)
    if isinstance(flag, str):
        return flag.strip().lower() in _TRUE
    return bool(flag)


def gap_data(
    items: Sequence[dict[str, Any]],
    ratings: Sequence[dict[str, Any]],
    condition: str | None = None,
) -> GapData:
    """Select the non-attention-check ratings of ``condition`` (None = all) and index them.

    Raises:
      ValueError: no ratings for the condition, a rating outside [0, 1], or a
        rating whose item_id is not in ``items``.
    """
    by_id = _items_by_id(items)
    rows, n_attention = [], 0
    for i, raw in enumerate(ratings):
        if condition is not None and str(raw.get("condition")) != condition:
            continue
        if _is_attention(raw):
            n_attention += 1
            continue
        row = _check_rating({**raw, "is_attention_check": 0}, f"ratings[{i}]")
        if row["item_id"] not in by_id:
            raise ValueError(
                f"ratings[{i}]: item_id {row['item_id']!r} (participant {row['participant_id']!r}) "
                "is not in the items file"
            )
        rows.append(row)
    if not rows:
        raise ValueError(
            f"no non-attention-check ratings for condition {condition!r}; "
            f"conditions present: {conditions_of(ratings)}"
        )
    item_ids = _first_seen(r["item_id"] for r in rows)
    participant_ids = _first_seen(r["participant_id"] for r in rows)
    item_index = {k: i for i, k in enumerate(item_ids)}
    participant_index = {k: i for i, k in enumerate(participant_ids)}
    rating = np.array([r["rating"] for r in rows], dtype=np.float64)
    rating_item = np.array([item_index[r["item_id"]] for r in rows], dtype=np.int32)
    rating_participant = np.array([participant_index[r["participant_id"]] for r in rows], dtype=np.int32)

    per_participant = np.bincount(rating_participant, minlength=len(participant_ids))
    width = int(per_participant.max())
    shape = (len(participant_ids), width)
    by_item = np.zeros(shape, np.int32)
    by_rating = np.zeros(shape, np.float64)
    by_mask = np.zeros(shape, np.float64)
    fill = np.zeros(len(participant_ids), np.int64)
    for r, (p, it) in enumerate(zip(rating_participant, rating_item)):
        j = fill[p]
        by_item[p, j], by_rating[p, j], by_mask[p, j] = it, rating[r], 1.0
        fill[p] += 1

    return GapData(
        item_ids=item_ids,
        participant_ids=participant_ids,
        item_correct=np.array([float(by_id[k]["correct"]) for k in item_ids]),
        item_confidence=np.array([by_id[k]["model_confidence"] for k in item_ids]),
        rating=rating,
        rating_item=rating_item,
        rating_participant=rating_participant,
        by_participant_item=by_item,
        by_participant_rating=by_rating,
        by_participant_mask=by_mask,
        n_attention_checks=n_attention,
    )


def _gap_operands(data: GapData) -> tuple[jax.Array, ...]:
    """The arrays :func:`_gap_statistics` needs, in its argument order."""
    return (
        jnp.asarray(data.item_correct, dtype=float),
        jnp.asarray(data.item_confidence, dtype=float),
        jnp.asarray(data.rating, dtype=float),
        jnp.asarray(data.rating_item),
        jnp.asarray(data.rating_participant),
        jnp.asarray(data.by_participant_item),
        jnp.asarray(data.by_participant_rating, dtype=float),
        jnp.asarray(data.by_participant_mask, dtype=float),
    )


def _gap_statistics(
    participant_counts: jax.Array,  # (P,) multiplicity of each participant in the resample
    item_counts: jax.Array,  # (I,) multiplicity of each item
    item_correct: jax.Array,  # (I,)
    item_conf: jax.Array,  # (I,)
    rating: jax.Array,  # (R,)
    rating_item: jax.Array,  # (R,)
    rating_participant: jax.Array,  # (R,)
    p_item: jax.Array,  # (P, L)
    p_rating: jax.Array,  # (P, L)
    p_mask: jax.Array,  # (P, L)
    n_bins: int = 10,
    rating_keep: jax.Array | None = None,  # (R,) 0/1: ratings that enter (post-hoc selection); None = all
    p_keep: jax.Array | None = None,  # (P, L) the same in the per-participant layout
) -> dict[str, jax.Array]:
    """All gap statistics for one (re)sample given participant and item multiplicities.

    With `rating_keep` only the kept ratings count, and the model statistics use the items that have a
    kept rating."""
    rating_weight = participant_counts[rating_participant] * item_counts[rating_item]
    if rating_keep is not None:
        rating_weight = rating_weight * rating_keep
        p_mask = p_mask * p_keep
        rated = jax.ops.segment_sum(rating_keep, rating_item, num_segments=item_conf.shape[0]) > 0
        item_counts = item_counts * rated
    model_ece = metrics.ece(item_conf, item_correct, n_bins=n_bins, weights=item_counts)
    model_auc = metrics.auroc(item_conf, item_correct, weights=item_counts)
    human_ece = metrics.ece(rating, item_correct[rating_item], n_bins=n_bins, weights=rating_weight)
    per_participant_auc = jax.vmap(metrics.auroc)(p_rating, item_correct[p_item], p_mask * item_counts[p_item])
    # A participant drawn k times counts k times; one whose resampled items are all
    # correct or all incorrect has no AUC and drops out of the average.
    has_auc = (participant_counts > 0) & jnp.isfinite(per_participant_auc)
    auc_weight = jnp.where(has_auc, participant_counts, 0.0)
    auc_sum = jnp.sum(auc_weight * jnp.where(has_auc, per_participant_auc, 0.0))
    total_auc_weight = jnp.sum(auc_weight)
    human_auc = jnp.where(total_auc_weight > 0, auc_sum / jnp.maximum(total_auc_weight, 1.0), jnp.nan)
    return {
        "model_ece": model_ece,
        "human_ece": human_ece,
        "calibration_gap": human_ece - model_ece,
        "model_auc": model_auc,
        "human_auc": human_auc,
        "discrimination_gap": model_auc - human_auc,
        "model_accuracy": metrics.accuracy(item_correct, weights=item_counts),
        "mean_model_confidence": metrics.mean_confidence(item_conf, weights=item_counts),
        "mean_human_rating": metrics.mean_confidence(rating, weights=rating_weight),
        "n_participants_without_auc": jnp.sum((participant_counts > 0) & ~has_auc),
    }


@functools.lru_cache(maxsize=None)
def _gap_stat_fn(n_bins: int):
    # One object per n_bins, so the bootstrap's compiled function is reused across calls.
    return functools.partial(_gap_statistics, n_bins=n_bins)


# ----------------------------------------------------------------------------
# the gap
# ----------------------------------------------------------------------------


def calibration_gap(
    items: Sequence[dict[str, Any]],
    ratings: Sequence[dict[str, Any]],
    condition: str | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
    n_bins: int = 10,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """Calibration and discrimination gap for one condition (None = all ratings pooled).

    Args:
      items: item dicts (``item_id``, ``correct``, ``model_confidence``), e.g.
        from :func:`read_items_jsonl`.
      ratings: rating dicts, e.g. from :func:`read_ratings_csv`.
      condition: keep only ratings of this condition; None pools all.
      n_resamples: two-way bootstrap resamples for the intervals.
      seed: PRNG seed of the bootstrap.
      n_bins: ECE bins (10 in METHOD.md).
      alpha: 0.05 gives 95% intervals.

    Returns:
      A JSON-ready dict: ``condition`` ("all" when None), counts
      (``n_ratings``, ``n_participants``, ``n_items``,
      ``n_attention_checks_excluded``, ``n_participants_without_auc``:
      one-class participants skipped in the human AUC), ``ece_definition``,
      bootstrap settings, and ``metrics``: ``{name: {"estimate", "low",
      "high", "n_undefined_resamples"}}`` for every name in ``GAP_METRICS``.
      Values are floats (NaN where undefined, e.g. model AUC when all rated
      items are correct).
    """
    data = gap_data(items, ratings, condition)
    n_p, n_i = len(data.participant_ids), len(data.item_ids)
    intervals = bootstrap.bootstrap_two_way(
        _gap_stat_fn(n_bins), n_p, n_i, n_resamples=n_resamples, seed=seed, alpha=alpha,
        batch_size=200, operands=_gap_operands(data),
    )
    return {"condition": "all" if condition is None else condition,
            **_counts_and_settings(data, intervals, n_bins, "two-way (participants x items)", n_resamples, seed,
                                   alpha),
            "metrics": {name: intervals[name] for name in GAP_METRICS}}


def _counts_and_settings(data: GapData, intervals: dict, n_bins: int, scheme: str, n_resamples: int, seed: int,
                         alpha: float) -> dict[str, Any]:
    """The counts and settings every gap result reports (pops the participants-without-AUC count)."""
    return {
        "n_ratings": int(len(data.rating)),
        "n_participants": len(data.participant_ids),
        "n_items": len(data.item_ids),
        "n_attention_checks_excluded": data.n_attention_checks,
        "n_participants_without_auc": int(intervals.pop("n_participants_without_auc")["estimate"]),
        "ece_definition": metrics.ece_definition(n_bins),
        "n_bins": n_bins,
        "bootstrap": {"scheme": scheme, "n_resamples": n_resamples, "seed": seed, "alpha": alpha},
    }


# ----------------------------------------------------------------------------
# the paper's analysis: the selection rule applied after the fact to 3 x 3 ratings
# ----------------------------------------------------------------------------


class TooFewItems(ValueError):
    """Too few rated items to cross-fit the selection rule's thresholds over folds."""


def _style_parts(style: str) -> tuple[int, str] | None:
    """(certainty level 0/1/2, length) of a ``{certainty}_{length}`` style, None for any other style."""
    for level, certainty in enumerate(CERTAINTY_LEVELS):
        for length in LENGTHS:
            if style == f"{certainty}_{length}":
                return level, length
    return None


def threshold_grid(step: float = 0.05) -> np.ndarray:
    """Candidate (θ1, θ2) pairs, θ1 < θ2, on the grid step, 2·step, ..., < 1: shape (G, 2)."""
    if not 0.0 < step < 0.5:
        raise ValueError(f"threshold grid step must be in (0, 0.5), got {step}")
    values = np.round(np.arange(step, 1.0 - 1e-9, step), 10)
    return np.array([(a, b) for i, a in enumerate(values) for b in values[i + 1:]], dtype=np.float64)


def _level_of(conf: jax.Array, theta: jax.Array) -> jax.Array:
    """The rule's certainty level (0 not sure, 1 somewhat sure, 2 sure) of confidences, for θ = (θ1, θ2)."""
    return (conf > theta[0]).astype(jnp.int32) + (conf > theta[1]).astype(jnp.int32)


def _fold_thresholds(rating_weight, item_correct, item_conf, rating, rating_item, rating_level, item_fold, grid,
                     n_bins: int, n_folds: int) -> jax.Array:
    """(n_folds, 2): for each fold k the (θ1, θ2) of ``grid`` with the lowest human ECE over the ratings of
    the other folds' items that the rule keeps (ties: the first pair in the grid)."""
    item_levels = jax.vmap(_level_of, in_axes=(None, 0))(item_conf, grid)  # (G, I)
    selected = item_levels[:, rating_item] == rating_level[None, :]  # (G, R)
    correct = item_correct[rating_item]

    def fit(k):
        w = rating_weight * (item_fold[rating_item] != k)
        eces = jax.vmap(lambda sel: metrics.ece(rating, correct, n_bins=n_bins, weights=w * sel))(selected)
        return grid[jnp.argmin(jnp.where(jnp.isfinite(eces), eces, jnp.inf))]

    return jax.lax.map(fit, jnp.arange(n_folds))


def _posthoc_statistics(participant_counts, item_counts, item_correct, item_conf, rating, rating_item,
                        rating_participant, p_item, p_rating, p_mask, rating_level, p_level, item_fold, grid,
                        n_bins: int = 10, n_folds: int = 0):
    """Gap statistics on the ratings whose style the rule picks for their item.

    n_folds = 0: ``grid`` holds one (θ1, θ2), used for every item. Otherwise θ is cross-fitted
    (:func:`_fold_thresholds` on the resampled ratings, applied to each fold's own items), inside every
    bootstrap resample, so the intervals include the choice of θ."""
    rating_weight = participant_counts[rating_participant] * item_counts[rating_item]
    if n_folds == 0:
        theta_of_item = jnp.broadcast_to(grid[0], (item_conf.shape[0], 2))
    else:
        theta_of_item = _fold_thresholds(rating_weight, item_correct, item_conf, rating, rating_item, rating_level,
                                         item_fold, grid, n_bins, n_folds)[item_fold]
    item_level = (item_conf > theta_of_item[:, 0]).astype(jnp.int32) + (item_conf > theta_of_item[:, 1])
    keep = (item_level[rating_item] == rating_level).astype(rating.dtype)
    p_keep = (item_level[p_item] == p_level).astype(rating.dtype)
    out = _gap_statistics(participant_counts, item_counts, item_correct, item_conf, rating, rating_item,
                          rating_participant, p_item, p_rating, p_mask, n_bins=n_bins, rating_keep=keep,
                          p_keep=p_keep)
    item_weight = item_counts / jnp.maximum(jnp.sum(item_counts), 1.0)
    out["theta1"] = jnp.sum(item_weight * theta_of_item[:, 0])  # averaged over the items' folds
    out["theta2"] = jnp.sum(item_weight * theta_of_item[:, 1])
    out["n_selected_ratings"] = jnp.sum(rating_weight * keep)
    return out


@functools.lru_cache(maxsize=None)
def _posthoc_stat_fn(n_bins: int, n_folds: int):
    return functools.partial(_posthoc_statistics, n_bins=n_bins, n_folds=n_folds)


def _item_folds(item_ids: Sequence[str], n_folds: int, seed: int) -> np.ndarray:
    """Fold of each item: a seeded shuffle of the items dealt round-robin into n_folds."""
    order = np.random.default_rng(seed).permutation(len(item_ids))
    folds = np.empty(len(item_ids), np.int32)
    folds[order] = np.arange(len(item_ids)) % n_folds
    return folds


def posthoc_selection(
    items: Sequence[dict[str, Any]],
    ratings: Sequence[dict[str, Any]],
    length: str | None = None,
    theta: tuple[float, float] | None = None,
    n_folds: int = 5,
    grid_step: float = 0.1,
    n_resamples: int = 1000,
    seed: int = 0,
    n_bins: int = 10,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """The paper's "selected" analysis: ratings collected under the 3 x 3 styles, kept for each item only
    in the style the selection rule picks from the model's confidence (METHOD.md, paper 2).

    Args:
      items, ratings: as for :func:`calibration_gap`; every non-attention rating whose style is
        ``{certainty}_{length}`` takes part, whatever its condition.
      length: keep only styles of this length ("long", "short", "uncertainty_only"); None pools them.
      theta: (θ1, θ2) to use as given; None cross-fits them over ``n_folds`` folds of the items to
        minimise human ECE on the other folds (refit in every bootstrap resample).
      grid_step: spacing of the candidate thresholds when fitting.
      n_resamples, seed, n_bins, alpha: as for :func:`calibration_gap`.

    Returns:
      The fields of :func:`calibration_gap` (``condition`` = "selected (post hoc, <length>)") plus
      ``theta`` (how θ was set and, when fitted, each fold's θ at the point estimate), and in ``metrics``
      also ``theta1``, ``theta2`` (item-weighted over folds) and ``n_selected_ratings``.
    """
    lengths = LENGTHS if length is None else (length,)
    if length is not None and length not in LENGTHS:
        raise ValueError(f"length must be one of {', '.join(LENGTHS)} or None, got {length!r}")
    if theta is not None:
        t1, t2 = float(theta[0]), float(theta[1])
        if not 0.0 <= t1 <= t2 <= 1.0:
            raise ValueError(f"theta must satisfy 0 <= theta1 <= theta2 <= 1, got {theta}")
    def in_lengths(r):
        parts = _style_parts(str(r.get("style") or "").strip())
        return parts is not None and parts[1] in lengths

    chosen = [r for r in ratings if not _is_attention(r) and in_lengths(r)]
    name = f"selected (post hoc, {length or 'all lengths'})"
    if not chosen:
        raise ValueError(f"{name}: no ratings in the 3 x 3 styles"
                         + (f" of length {length!r}" if length else "") + " to select from")
    data = gap_data(items, chosen)
    level_of_rating = np.array([_style_parts(str(r["style"]).strip())[0] for r in chosen
                                if not _is_attention(r)], np.int32)
    p_level = np.zeros_like(data.by_participant_item)
    fill = np.zeros(len(data.participant_ids), np.int64)
    for r, p in enumerate(data.rating_participant):
        p_level[p, fill[p]] = level_of_rating[r]
        fill[p] += 1
    n_i = len(data.item_ids)
    if theta is None:
        if not 2 <= n_folds <= n_i:
            if n_folds < 2:
                raise ValueError(f"{name}: cross-fitting needs n_folds >= 2, got {n_folds}")
            raise TooFewItems(f"{name}: cross-fitting over {n_folds} folds needs at least {n_folds} rated items, "
                              f"got {n_i}; give --theta or fewer folds")
        folds, grid, k = _item_folds(data.item_ids, n_folds, seed), threshold_grid(grid_step), n_folds
    else:
        folds, grid, k = np.zeros(n_i, np.int32), np.array([[t1, t2]]), 0
    operands = _gap_operands(data) + (jnp.asarray(level_of_rating), jnp.asarray(p_level), jnp.asarray(folds),
                                      jnp.asarray(grid, dtype=float))
    n_p = len(data.participant_ids)
    intervals = bootstrap.bootstrap_two_way(_posthoc_stat_fn(n_bins, k), n_p, n_i, n_resamples=n_resamples,
                                            seed=seed, alpha=alpha, batch_size=16 if k else 200,
                                            operands=operands)
    theta_of_item = _point_thresholds(data, level_of_rating, folds, grid, n_bins, k)
    theta_info: dict[str, Any] = {"given": [t1, t2]} if theta is not None else {
        "cross_fitted": {"n_folds": n_folds, "grid_step": grid_step,
                         "per_fold": [[float(v) for v in theta_of_item[folds == f][0]] for f in range(k)]}}
    level = ((data.item_confidence > theta_of_item[:, 0]).astype(int)
             + (data.item_confidence > theta_of_item[:, 1]))
    keep = level[data.rating_item] == level_of_rating
    scheme = "two-way (participants x items)" + ("; θ refit in every resample" if k else "")
    return {
        "condition": name,
        "length": length or "all",
        "theta": theta_info,
        **_counts_and_settings(data, intervals, n_bins, scheme, n_resamples, seed, alpha),
        "metrics": {m: intervals[m] for m in GAP_METRICS + ("theta1", "theta2", "n_selected_ratings")},
        # for the calibration diagram: the kept ratings and their items' correctness at the point estimate
        "selected_ratings": {"rating": data.rating[keep].tolist(),
                             "correct": data.item_correct[data.rating_item][keep].tolist()},
    }


def _point_thresholds(data: GapData, level_of_rating, folds, grid, n_bins: int, n_folds: int) -> np.ndarray:
    """(n_items, 2): the θ each item is judged with at the point estimate (all ratings, no resampling)."""
    if not n_folds:
        return np.broadcast_to(np.asarray(grid[0]), (len(data.item_ids), 2))
    per_fold = _fold_thresholds(jnp.ones(len(data.rating)), jnp.asarray(data.item_correct),
                                jnp.asarray(data.item_confidence), jnp.asarray(data.rating),
                                jnp.asarray(data.rating_item), jnp.asarray(level_of_rating), jnp.asarray(folds),
                                jnp.asarray(grid, dtype=float), n_bins, n_folds)
    return np.asarray(per_fold)[folds]


def mean_rating_by_style(
    ratings: Sequence[dict[str, Any]], items: Sequence[dict[str, Any]] | None = None
) -> dict[str, dict[str, float]]:
    """Mean human rating per explanation style (attention checks excluded).

    Args:
      ratings: rating dicts.
      items: optional item dicts; when given, the mean is also split by
        whether the model's answer was correct.

    Returns:
      ``{style: {"n", "mean", "sem"}}`` in order of first appearance (``sem``
      = standard error, NaN for n < 2); with ``items`` also ``n_correct``,
      ``mean_correct``, ``n_incorrect``, ``mean_incorrect``.
    """
    by_id = _items_by_id(items) if items is not None else None
    groups: dict[str, list[tuple[float, bool | None]]] = {}
    for i, raw in enumerate(ratings):
        if _is_attention(raw):
            continue
        row = _check_rating({**raw, "is_attention_check": 0}, f"ratings[{i}]")
        correct = None
        if by_id is not None:
            if row["item_id"] not in by_id:
                raise ValueError(f"ratings[{i}]: item_id {row['item_id']!r} is not in the items file")
            correct = bool(by_id[row["item_id"]]["correct"])
        groups.setdefault(row["style"], []).append((row["rating"], correct))

    def summary(values: list[float]) -> tuple[int, float, float]:
        v = np.asarray(values, dtype=np.float64)
        if len(v) == 0:
            return 0, float("nan"), float("nan")
        sem = float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else float("nan")
        return len(v), float(v.mean()), sem

    out: dict[str, dict[str, float]] = {}
    for style, pairs in groups.items():
        n, mean, sem = summary([r for r, _ in pairs])
        entry: dict[str, float] = {"n": n, "mean": mean, "sem": sem}
        if by_id is not None:
            entry["n_correct"], entry["mean_correct"], _ = summary([r for r, c in pairs if c])
            entry["n_incorrect"], entry["mean_incorrect"], _ = summary([r for r, c in pairs if not c])
        out[style] = entry
    return out


# ----------------------------------------------------------------------------
# report
# ----------------------------------------------------------------------------


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "condition"


def _fmt(m: dict[str, float]) -> str:
    est, low, high = m["estimate"], m["low"], m["high"]
    if not math.isfinite(est):
        return "n/a"
    if not (math.isfinite(low) and math.isfinite(high)):
        return f"{est:.3f}"
    return f"{est:.3f} [{low:.3f}, {high:.3f}]"


def _markdown(report: dict[str, Any]) -> str:
    rows = list(report["conditions"].values()) + [report["overall"]]
    cols = [("model ECE", "model_ece"), ("human ECE", "human_ece"), ("calibration gap", "calibration_gap"),
            ("model AUC", "model_auc"), ("human AUC", "human_auc"), ("discrimination gap", "discrimination_gap")]
    level = round(100 * (1 - report["overall"]["bootstrap"]["alpha"]))
    lines = [
        "# Calibration gap (paper 2)",
        "",
        f"{report['ece_definition']}",
        "",
        "Calibration gap = ECE(human) - ECE(model); discrimination gap = AUC(model) - AUC(human). "
        "Human ECE pools all ratings; human AUC is computed per participant and averaged. "
        f"Brackets: {level}% two-way bootstrap intervals (participants and items resampled, "
        f"{report['overall']['bootstrap']['n_resamples']} resamples).",
        "",
        "| condition | participants | ratings | items | " + " | ".join(c for c, _ in cols) + " |",
        "|---|---:|---:|---:|" + "---|" * len(cols),
    ]
    for r in rows:
        cells = [r["condition"], str(r["n_participants"]), str(r["n_ratings"]), str(r["n_items"])]
        cells += [_fmt(r["metrics"][k]) for _, k in cols]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Attention-check rows excluded: {report['attention_checks_excluded']}. "
        "Participants without a human AUC (all rated items correct or all incorrect), per condition: "
        + ", ".join(f"{r['condition']}: {r['n_participants_without_auc']}" for r in rows[:-1]) + ".",
        "",
    ]
    if report["posthoc_skipped"]:
        lines += ["Post-hoc selection not computed: " + "; ".join(report["posthoc_skipped"].values()) + ".", ""]
    if report["posthoc"]:
        first = next(iter(report["posthoc"].values()))
        how = ("θ given: " + ", ".join(f"{v:g}" for v in first["theta"]["given"]) if "given" in first["theta"]
               else f"θ cross-fitted: {first['theta']['cross_fitted']['n_folds']} folds of the items, each fold's "
                    f"(θ1, θ2) chosen on a grid of step {first['theta']['cross_fitted']['grid_step']:g} to minimise "
                    "human ECE on the other folds' ratings and refit in every bootstrap resample")
        lines += [
            "## Post-hoc selection (the paper's analysis)",
            "",
            "Ratings collected under the 3 x 3 styles, kept for each item only in the style the selection rule "
            f"picks from the model's confidence (not sure if p <= θ1, somewhat sure if θ1 < p <= θ2, else sure); "
            f"{how}.",
            "",
            "| selection | θ1 | θ2 | ratings kept | items | " + " | ".join(c for c, _ in cols) + " |",
            "|---|---|---|---:|---:|" + "---|" * len(cols),
        ]
        for r in report["posthoc"].values():
            m = r["metrics"]
            cells = [r["condition"], _fmt(m["theta1"]), _fmt(m["theta2"]), f"{m['n_selected_ratings']['estimate']:.0f}",
                     str(r["n_items"])] + [_fmt(m[k]) for _, k in cols]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines += [
        "## Mean human confidence by explanation style",
        "",
        "| style | n | mean rating | mean (model correct) | mean (model incorrect) |",
        "|---|---:|---:|---:|---:|",
    ]
    for style, s in report["mean_rating_by_style"].items():
        def f(x: float) -> str:
            return "n/a" if not math.isfinite(x) else f"{x:.3f}"
        lines.append(f"| {style} | {s['n']} | {f(s['mean'])} | {f(s['mean_correct'])} | {f(s['mean_incorrect'])} |")
    lines += ["", "## Figures", ""]
    lines += [f"![{Path(p).stem}]({Path(p).name})" for p in report["figures"]]
    return "\n".join(lines) + "\n"


def gap_report(
    items: Sequence[dict[str, Any]],
    ratings: Sequence[dict[str, Any]],
    out_dir: str | os.PathLike,
    n_resamples: int = 1000,
    seed: int = 0,
    n_bins: int = 10,
    alpha: float = 0.05,
    theta: tuple[float, float] | None = None,
    n_folds: int = 5,
    grid_step: float = 0.1,
) -> dict[str, Any]:
    """Compute the gap per condition and overall and write the report files.

    When ratings were collected under the 3 x 3 styles, also the paper's post-hoc selection
    (:func:`posthoc_selection`) per length and over all lengths, with ``theta`` given or (None)
    cross-fitted over ``n_folds`` folds of the items on a grid of step ``grid_step``.

    Writes into ``out_dir``: ``gap.json`` (everything returned, NaN as null),
    ``gap.md`` (a Markdown table plus the ECE definition used), and PNGs:
    ``reliability_model_<condition>.png`` and ``reliability_human_<condition>.png``
    for every condition and ``all``, ``reliability_human_posthoc_<length>.png`` for the post-hoc
    selections, and ``mean_rating_by_style.png``.

    Returns:
      ``{"ece_definition", "conditions": {name: calibration_gap(...)},
      "overall": calibration_gap(condition=None), "posthoc": {length: posthoc_selection(...)},
      "attention_checks_excluded", "mean_rating_by_style", "figures": [paths], "json", "markdown"}``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    conditions = conditions_of(ratings)
    if not conditions:
        raise ValueError("ratings: no non-attention-check ratings, nothing to report")
    kw = dict(n_resamples=n_resamples, seed=seed, n_bins=n_bins, alpha=alpha)
    per_condition = {c: calibration_gap(items, ratings, condition=c, **kw) for c in conditions}
    overall = calibration_gap(items, ratings, condition=None, **kw)

    figures = []
    for name, cond in [(c, c) for c in conditions] + [("all", None)]:
        data = gap_data(items, ratings, cond)
        figures.append(plots.reliability_diagram(
            data.item_confidence, data.item_correct, out / f"reliability_model_{_slug(name)}.png",
            f"Model confidence ({name})", n_bins=n_bins))
        figures.append(plots.reliability_diagram(
            data.rating, data.item_correct[data.rating_item], out / f"reliability_human_{_slug(name)}.png",
            f"Human ratings ({name})", n_bins=n_bins))
    posthoc: dict[str, Any] = {}
    present = {parts[1] for r in ratings if not _is_attention(r)
               and (parts := _style_parts(str(r.get("style") or "").strip())) is not None}
    posthoc_skipped: dict[str, str] = {}
    for length in [x for x in LENGTHS if x in present] + (["all"] if len(present) > 1 else []):
        try:
            ph = posthoc_selection(items, ratings, length=None if length == "all" else length, theta=theta,
                                   n_folds=n_folds, grid_step=grid_step, **kw)
        except TooFewItems as e:
            posthoc_skipped[length] = str(e)
            continue
        kept = ph.pop("selected_ratings")
        figures.append(plots.reliability_diagram(
            np.asarray(kept["rating"]), np.asarray(kept["correct"]), out / f"reliability_human_posthoc_{length}.png",
            f"Human ratings, {ph['condition']}", n_bins=n_bins))
        posthoc[length] = ph
    by_style = mean_rating_by_style(ratings, items)
    figures.append(plots.bar_chart(
        list(by_style), [s["mean"] for s in by_style.values()], out / "mean_rating_by_style.png",
        "Mean human confidence by explanation style (error bars: 1 s.e.)", "mean rating (P(model correct))",
        errors=[s["sem"] for s in by_style.values()], counts=[s["n"] for s in by_style.values()]))

    report: dict[str, Any] = {
        "ece_definition": overall["ece_definition"],
        "conditions": per_condition,
        "overall": overall,
        "posthoc": posthoc,
        "posthoc_skipped": posthoc_skipped,
        "attention_checks_excluded": overall["n_attention_checks_excluded"],
        "mean_rating_by_style": by_style,
        "figures": figures,
        "json": str(out / "gap.json"),
        "markdown": str(out / "gap.md"),
    }
    artifacts.write_text(out / "gap.md", _markdown(report))
    artifacts.write_json(out / "gap.json", report)
    return report
