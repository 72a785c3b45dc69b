"""The debiased pairwise readout and question-level (cluster) bootstrap intervals."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from metacog_jax.evaluation import bootstrap, paired, run


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _design(seed=0, n_items=30, n_pairs=120):
    rng = np.random.default_rng(seed)
    strength = rng.normal(size=n_items)
    consistency = np.round(rng.random(n_items), 1)
    correct = (rng.random(n_items) < _sigmoid(2 * strength)).astype(float)
    pairs = set()
    while len(pairs) < n_pairs:
        a, b = rng.choice(n_items, 2, replace=False)
        pairs.add((int(a), int(b)))
    a, b = np.asarray(sorted(pairs)).T
    return strength, consistency, correct, a, b


def test_debiased_readout_removes_an_additive_position_bias_exactly():
    strength, consistency, correct, a, b = _design()
    d = strength[a] - strength[b]  # the model's unbiased log-odds that A is the better question
    counts = np.ones(len(strength))
    stat = lambda bias: run.pairwise_cluster_stat(counts, a, b, _sigmoid(d + bias), _sigmoid(-d + bias),
                                                   consistency, correct)
    clean, biased = stat(0.0), stat(2.5)
    for key in ("auc_c", "auc_a"):  # the choice (sign of p~ - 1/2) is bias-free, so these are equal
        assert float(biased[key]) == float(clean[key])
    assert float(clean["q1_choice_rate"]) == pytest.approx(0.5)
    assert float(biased["q1_choice_rate"]) > 0.9  # the diagnostic still shows the bias
    # One presentation alone is swamped by the bias: it picks Q1 on almost every pair.
    raw = run.raw_pairwise_cluster_stat(counts, a, b, _sigmoid(d + 2.5), consistency, correct)
    assert float(raw["q1_choice_rate"]) > 0.9 and abs(float(raw["auc_c"]) - 0.5) < abs(float(clean["auc_c"]) - 0.5)
    # p~ itself: 1/2 when the two presentations disagree only by the bias.
    assert np.allclose(run.debiased_preference(_sigmoid(0.0 + 1.0), _sigmoid(0.0 + 1.0)), 0.5)


def _slow_auc_c(pairs, p_tilde, consistency):
    """Choice agreement with consistency over the materialized list of pairs (NumPy)."""
    scores = []
    for k, (a, b) in enumerate(pairs):
        if consistency[a] == consistency[b]:
            continue
        p = p_tilde[k]
        scores.append(0.5 if p == 0.5 else float((p > 0.5) == (consistency[a] > consistency[b])))
    return np.mean(scores) if scores else np.nan


def _slow_auc_a_auroc(pairs, p_tilde, correct):
    """Threshold-free AUC_a: AUROC over mixed pairs listed in both directions (scikit-learn)."""
    score, label = [], []
    for k, (a, b) in enumerate(pairs):
        if correct[a] != correct[b]:
            score += [p_tilde[k], 1 - p_tilde[k]]
            label += [correct[a], correct[b]]
    return roc_auc_score(label, score) if len(set(label)) == 2 else np.nan


def test_cluster_bootstrap_matches_materialized_resamples():
    strength, consistency, correct, a, b = _design(seed=3, n_items=12, n_pairs=30)
    p_ab = _sigmoid(strength[a] - strength[b] + 0.7)
    p_ba = _sigmoid(strength[b] - strength[a] + 0.7)
    p_tilde = 0.5 * (p_ab + 1 - p_ba)
    n_res = 25
    point, samples = bootstrap.point_and_clustered_samples(
        run.pairwise_cluster_stat, len(strength), (a, b, p_ab, p_ba, consistency, correct), n_res, seed=11)
    counts = bootstrap.resample_counts(len(strength), n_res, seed=11)
    assert counts.shape == (n_res, len(strength)) and (counts.sum(axis=1) == len(strength)).all()
    for r in range(n_res):
        c = counts[r].astype(int)
        # Keep every pair whose two questions were drawn, count[a] * count[b] times.
        kept = [k for k in range(len(a)) for _ in range(c[a[k]] * c[b[k]])]
        pairs = [(a[k], b[k]) for k in kept]
        want_c = _slow_auc_c(pairs, p_tilde[kept], consistency)
        want_a = _slow_auc_a_auroc(pairs, p_tilde[kept], correct)
        np.testing.assert_allclose(samples["auc_c"][r], want_c, atol=1e-6)
        np.testing.assert_allclose(samples["auc_a_auroc"][r], want_a, atol=1e-6)
    all_pairs = list(zip(a, b))
    np.testing.assert_allclose(point["auc_c"], _slow_auc_c(all_pairs, p_tilde, consistency), atol=1e-6)


def test_cluster_bootstrap_is_wider_than_pair_resampling_when_pairs_share_questions():
    # 6 questions in 60 pairs, the preference driven by which question is listed first: resampling pairs as
    # if independent understates the uncertainty that resampling the 6 questions shows.
    rng = np.random.default_rng(0)
    n = 6
    a = rng.integers(0, n, 200)
    b = rng.integers(0, n, 200)
    keep = a != b
    a, b = a[keep][:60], b[keep][:60]
    lean = rng.random(n)
    p = np.clip(lean[a] + 0.05 * rng.normal(size=len(a)), 0, 1)
    consistency, correct = rng.random(n), (rng.random(n) < 0.5).astype(float)
    cluster = bootstrap.bootstrap_clustered(run.raw_pairwise_cluster_stat, n, (a, b, p, consistency, correct), 400,
                                            seed=1)["q1_choice_rate"]
    by_pair = bootstrap.bootstrap_cis(lambda x: {"rate": (x > 0.5).mean()}, (p,), 400, seed=1)["rate"]
    assert cluster["estimate"] == pytest.approx(by_pair["estimate"])
    assert cluster["high"] - cluster["low"] > 1.5 * (by_pair["high"] - by_pair["low"])


def _write_rows(path, ids, conf, correct, pairs, p_ab, p_ba, consistency):
    rows = [{"task": "single", "id": q, "expected": float(c), "correct": bool(y)}
            for q, c, y in zip(ids, conf, correct)]
    rows += [{"task": "pairwise", "ids": [ids[a], ids[b]], "p_q1": float(x), "p_q1_swapped": float(z),
              "consistency": [float(consistency[a]), float(consistency[b])]}
             for (a, b), x, z in zip(pairs, p_ab, p_ba)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return paired.ItemRows(path)


def test_paired_differences_match_materialized_resamples(tmp_path):
    strength, consistency, correct_b, a, b = _design(seed=5, n_items=14, n_pairs=35)
    rng = np.random.default_rng(2)
    ids = [f"q{i}" for i in range(len(strength))]
    correct_x = correct_b.copy()
    correct_x[:2] = 1 - correct_x[:2]  # the tuned model answers two questions differently
    conf_b, conf_x = rng.random(len(ids)), _sigmoid(strength + 0.3 * rng.normal(size=len(ids)))
    pairs = list(zip(a, b))
    p = {name: (_sigmoid(s * (strength[a] - strength[b]) + 1.0), _sigmoid(s * (strength[b] - strength[a]) + 1.0))
         for name, s in (("x", 1.5), ("b", 0.2))}
    rows_x = _write_rows(tmp_path / "x.jsonl", ids, conf_x, correct_x, pairs, *p["x"], consistency)
    rows_b = _write_rows(tmp_path / "b.jsonl", ids, conf_b, correct_b, pairs, *p["b"], consistency)
    n_res = 20
    intervals, samples = paired.paired_differences(rows_x, rows_b, n_resamples=n_res, seed=4)
    counts = bootstrap.resample_counts(len(ids), n_res, seed=4)
    tilde = {k: 0.5 * (v[0] + 1 - v[1]) for k, v in p.items()}
    for r in range(n_res):
        c = counts[r].astype(int)
        items = [i for i in range(len(ids)) for _ in range(c[i])]
        kept = [k for k in range(len(a)) for _ in range(c[a[k]] * c[b[k]])]
        kept_pairs = [pairs[k] for k in kept]

        def auroc(conf, corr):
            y = corr[items]
            return roc_auc_score(y, conf[items]) if 0 < y.sum() < len(y) else np.nan

        np.testing.assert_allclose(samples["auroc"][r], auroc(conf_x, correct_x) - auroc(conf_b, correct_b),
                                   atol=1e-5)
        np.testing.assert_allclose(samples["accuracy"][r], correct_x[items].mean() - correct_b[items].mean(),
                                   atol=1e-6)
        want = (_slow_auc_c(kept_pairs, tilde["x"][kept], consistency)
                - _slow_auc_c(kept_pairs, tilde["b"][kept], consistency))
        np.testing.assert_allclose(samples["auc_c"][r], want, atol=1e-6)
    est = intervals["auc_c"]["estimate"]
    assert est == pytest.approx(_slow_auc_c(pairs, tilde["x"], consistency) - _slow_auc_c(pairs, tilde["b"], consistency),
                                abs=1e-6)
    # Mismatched question sets are an error naming both files.
    _write_rows(tmp_path / "y.jsonl", ids[:-1], conf_x[:-1], correct_x[:-1], [], [], [], consistency)
    with pytest.raises(ValueError, match="different test questions"):
        paired.paired_differences(paired.ItemRows(tmp_path / "y.jsonl"), rows_b, n_resamples=5)
