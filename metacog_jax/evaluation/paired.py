"""Differences between two conditions on the same test items, with paired bootstrap intervals.

Every condition is evaluated on the same test questions and the same evaluation pairs (same seed), so
the difference of a metric between a trained condition and base is estimated from one resample of the
questions applied to both (METHOD.md, comparing conditions): the counts of a cluster resample weight
the single-task items of both conditions and the pairs of both (count[A] * count[B]), and the statistic
is metric(condition) - metric(base) on those weights. This is tighter than comparing two independent
intervals, because the question-to-question variation common to both conditions cancels.

Single-task metrics use each condition's own greedy answers (a fine-tuned model answers for itself);
AUC_c ranks by the base model's self-consistency in both, as the eval stage does.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from metacog_jax.artifacts import iter_jsonl
from metacog_jax.evaluation import bootstrap, bradley_terry, metrics
from metacog_jax.evaluation.run import debiased_preference, pairwise_cluster_stat

# Metric name in the difference -> (task, name in that task's statistic).
SINGLE_DIFFS = ("accuracy", "ece", "auroc", "brier")
PAIRWISE_DIFFS = ("auc_c", "auc_c_auroc", "auc_a", "auc_a_auroc", "bt_auroc", "bt_spearman_consistency")


def _single_weighted(counts, conf, correct) -> dict[str, Any]:
    return {"accuracy": metrics.accuracy(correct, weights=counts), "ece": metrics.ece(conf, correct, weights=counts),
            "auroc": metrics.auroc(conf, correct, weights=counts), "brier": metrics.brier(conf, correct, weights=counts)}


def single_diff_stat(counts, conf_x, correct_x, conf_b, correct_b):
    """Single-task metrics of condition x minus base under question multiplicities `counts` [N]."""
    x, b = _single_weighted(counts, conf_x, correct_x), _single_weighted(counts, conf_b, correct_b)
    return {k: x[k] - b[k] for k in SINGLE_DIFFS}


def full_diff_stat(counts, conf_x, correct_x, conf_b, correct_b, item_a, item_b, p_ab_x, p_ba_x, p_ab_b, p_ba_b,
                   consistency, strength_x, pairs_x, strength_b, pairs_b):
    """Single-task, debiased pairwise and Bradley-Terry metrics of condition x minus base on one resample."""
    out = single_diff_stat(counts, conf_x, correct_x, conf_b, correct_b)
    px = pairwise_cluster_stat(counts, item_a, item_b, p_ab_x, p_ba_x, consistency, correct_x, strength_x, pairs_x)
    pb = pairwise_cluster_stat(counts, item_a, item_b, p_ab_b, p_ba_b, consistency, correct_b, strength_b, pairs_b)
    out.update({k: px[k] - pb[k] for k in PAIRWISE_DIFFS})
    return out


class ItemRows:
    """One condition's per-item rows of one dataset (`<eval>/<dataset>.jsonl`), indexed by question id."""

    def __init__(self, path: Path):
        self.path = path
        self.single: dict[str, tuple[float, float]] = {}
        self.pairs: dict[tuple[str, str], dict[str, Any]] = {}
        for line_no, row in iter_jsonl(path):
            if row.get("task") == "single":
                if "expected" not in row or "correct" not in row or "id" not in row:
                    raise ValueError(f"{path}:{line_no}: single item lacks 'id', 'expected' or 'correct'")
                self.single[str(row["id"])] = (float(row["expected"]), float(bool(row["correct"])))
            elif row.get("task") == "pairwise":
                self.pairs[tuple(row.get("ids", ()))] = row
        # Pairs scored in both orders (eval layout 2); older eval files hold one order only.
        self.both_orders = bool(self.pairs) and all("p_q1_swapped" in r for r in self.pairs.values())


def paired_differences(rows_x: ItemRows, rows_b: ItemRows, n_resamples: int = 1000, seed: int = 0,
                       alpha: float = 0.05) -> tuple[dict[str, dict[str, float]], dict[str, np.ndarray]]:
    """Metric(x) - metric(base) on the same questions, with paired cluster-bootstrap intervals.

    Returns:
      (intervals {name: {"estimate", "low", "high", "n_undefined_resamples"}}, resampled differences
      {name: [n_resamples]}) over SINGLE_DIFFS, plus PAIRWISE_DIFFS when both conditions scored the same
      pairs in both orders.

    Raises:
      ValueError: the two conditions were evaluated on different questions or pairs (files named).
    """
    ids = list(rows_b.single)
    if set(ids) != set(rows_x.single):
        raise ValueError(f"{rows_x.path} and {rows_b.path} hold different test questions "
                         f"({len(rows_x.single)} vs {len(rows_b.single)}); evaluate both on the same sets")
    if not ids:
        raise ValueError(f"{rows_b.path}: no single-task items")
    index = {q: i for i, q in enumerate(ids)}
    conf_b, corr_b = (np.asarray(v) for v in zip(*(rows_b.single[q] for q in ids)))
    conf_x, corr_x = (np.asarray(v) for v in zip(*(rows_x.single[q] for q in ids)))
    operands: tuple[Any, ...] = (conf_x, corr_x, conf_b, corr_b)
    stat = single_diff_stat
    if rows_x.both_orders and rows_b.both_orders:
        keys = list(rows_b.pairs)
        if set(keys) != set(rows_x.pairs):
            raise ValueError(f"{rows_x.path} and {rows_b.path} scored different pairs; evaluate both with the "
                             "same eval.n_pairs and seed")
        if any(q not in index for key in keys for q in key):
            raise ValueError(f"{rows_b.path}: a pair names a question with no single-task item")
        item_a = np.asarray([index[a] for a, _ in keys])
        item_b = np.asarray([index[b] for _, b in keys])
        consistency = np.zeros(len(ids))
        for (a, b), row in rows_b.pairs.items():
            consistency[index[a]], consistency[index[b]] = row["consistency"]
        arr = lambda rows, field: np.asarray([float(rows.pairs[k][field]) for k in keys])
        strengths = []
        for rows in (rows_x, rows_b):
            p_tilde = debiased_preference(arr(rows, "p_q1"), arr(rows, "p_q1_swapped"))
            fit = bradley_terry.fit_strengths(item_a, item_b, p_tilde, len(ids))
            strengths += [np.asarray(fit.strength, np.float64), np.asarray(fit.pair_weight, np.float64)]
        operands += (item_a, item_b, arr(rows_x, "p_q1"), arr(rows_x, "p_q1_swapped"), arr(rows_b, "p_q1"),
                     arr(rows_b, "p_q1_swapped"), consistency, *strengths)
        stat = full_diff_stat
    point, samples = bootstrap.point_and_clustered_samples(stat, len(ids), operands, n_resamples, seed)
    return bootstrap.intervals_from_samples(point, samples, alpha), {k: np.asarray(v) for k, v in samples.items()}


def mean_of_differences(per_dataset: Mapping[str, tuple[dict[str, Any], dict[str, np.ndarray]]],
                        alpha: float = 0.05) -> dict[str, dict[str, float]]:
    """The mean over datasets of each difference, its interval from averaging the datasets' (independent)
    resamples index by index. A metric missing or undefined in a dataset is left out of that mean."""
    out = {}
    names = {k for point, _ in per_dataset.values() for k in point}
    for name in sorted(names):
        parts = [(p[name]["estimate"], s[name]) for p, s in per_dataset.values()
                 if name in p and p[name]["estimate"] is not None and np.isfinite(p[name]["estimate"])]
        if not parts:
            continue
        est = float(np.mean([e for e, _ in parts]))
        samples = np.mean(np.stack([s for _, s in parts]), axis=0)
        low, high = bootstrap.percentile_interval(samples, alpha)
        out[name] = {"estimate": est, "low": low, "high": high, "n_datasets": len(parts)}
    return out
