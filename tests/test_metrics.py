"""Metrics against plain-NumPy loop references written here, hand-checked cases, sklearn, jit/vmap,
bootstrap intervals and input validation."""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from metacog_jax.evaluation import bootstrap, metrics, plots

# ----------------------------------------------------------------------------
# independent reference implementations (loops, NumPy only)
# ----------------------------------------------------------------------------


def ref_bin(c: float, n_bins: int) -> int:
    # Edges m/n_bins rounded to float32, the library's working dtype; [lo, hi), last bin closed.
    for m in range(n_bins):
        lo = np.float32(m) / np.float32(n_bins)
        hi = np.float32(m + 1) / np.float32(n_bins)
        if lo <= c < hi or (m == n_bins - 1 and c == 1.0):
            return m
    raise AssertionError(c)


def ref_ece(conf, correct, n_bins=10):
    conf = np.asarray(conf, np.float32)
    correct = np.asarray(correct, np.float64)
    n = len(conf)
    total = 0.0
    for m in range(n_bins):
        members = [i for i in range(n) if ref_bin(conf[i], n_bins) == m]
        if not members:
            continue
        bin_conf = sum(float(conf[i]) for i in members) / len(members)
        bin_acc = sum(correct[i] for i in members) / len(members)
        total += len(members) / n * abs(bin_conf - bin_acc)
    return total


def ref_ace(conf, correct, n_bins=10):
    conf = np.asarray(conf, np.float32)
    n = len(conf)
    order = np.argsort(conf, kind="stable")
    bins: dict[int, list[int]] = {}
    for rank, i in enumerate(order):
        bins.setdefault(rank * n_bins // n, []).append(i)
    total = 0.0
    for members in bins.values():
        bin_conf = sum(float(conf[i]) for i in members) / len(members)
        bin_acc = sum(float(correct[i]) for i in members) / len(members)
        total += len(members) / n * abs(bin_conf - bin_acc)
    return total


def ref_auroc(conf, correct):
    pos = [c for c, y in zip(conf, correct) if y]
    neg = [c for c, y in zip(conf, correct) if not y]
    if not pos or not neg:
        return float("nan")
    wins = 0.0
    for a in pos:
        for b in neg:
            wins += 1.0 if a > b else 0.5 if a == b else 0.0
    return wins / (len(pos) * len(neg))


def ref_aurc_fixed_order(order, correct):
    errors, total = 0, 0.0
    for k, i in enumerate(order, start=1):
        errors += 1 - correct[i]
        total += errors / k
    return total / len(order)


def ref_aurc_brute_force(conf, correct):
    # Average over every arrival order of the examples, each sorted (stably) by confidence
    # descending: exactly the expectation over uniformly random tie-breaking.
    n = len(conf)
    values = []
    for perm in itertools.permutations(range(n)):
        order = sorted(perm, key=lambda i: -conf[i])
        values.append(ref_aurc_fixed_order(order, correct))
    return float(np.mean(values))


def ref_pairwise(p_q1, key_q1, key_q2):
    scores = []
    for p, a, b in zip(p_q1, key_q1, key_q2):
        if a == b:
            continue
        q1_better = a > b
        if p == 0.5:
            scores.append(0.5)
        else:
            scores.append(1.0 if (p > 0.5) == q1_better else 0.0)
    return float(np.mean(scores)) if scores else float("nan")


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(1234)
    conf = rng.random(257).astype(np.float32)
    # correctness loosely tied to confidence so the metrics are away from trivial values
    correct = (rng.random(257) < conf * 0.8 + 0.1).astype(np.float32)
    return conf, correct


# ----------------------------------------------------------------------------
# against the references
# ----------------------------------------------------------------------------


def test_ece_matches_numpy_reference(data):
    conf, correct = data
    assert float(metrics.ece(conf, correct)) == pytest.approx(ref_ece(conf, correct), abs=1e-5)
    assert float(metrics.ece(conf, correct, n_bins=15)) == pytest.approx(ref_ece(conf, correct, 15), abs=1e-5)


def test_ece_with_edge_values_matches_reference():
    # Many values sit exactly on bin edges (0.0, 0.1, ..., 1.0).
    conf = np.array([0.0, 0.1, 0.2, 0.3, 0.3, 0.5, 0.7, 0.7, 0.9, 1.0, 1.0, 0.95], np.float32)
    correct = np.array([0, 0, 1, 0, 1, 1, 1, 0, 1, 1, 0, 1], np.float32)
    assert float(metrics.ece(conf, correct)) == pytest.approx(ref_ece(conf, correct), abs=1e-6)


def test_ace_matches_numpy_reference(data):
    conf, correct = data
    assert float(metrics.ace(conf, correct)) == pytest.approx(ref_ace(conf, correct), abs=1e-5)
    few_conf, few_correct = conf[:7], correct[:7]  # fewer examples than bins: empty bins skipped
    assert float(metrics.ace(few_conf, few_correct)) == pytest.approx(ref_ace(few_conf, few_correct), abs=1e-6)


def test_brier_accuracy_match_numpy(data):
    conf, correct = data
    assert float(metrics.brier(conf, correct)) == pytest.approx(
        np.mean((conf.astype(np.float64) - correct) ** 2), abs=1e-6)
    assert float(metrics.accuracy(correct)) == pytest.approx(correct.mean(), abs=1e-7)


def test_auroc_matches_pairwise_reference_and_sklearn(data):
    conf, correct = data
    assert float(metrics.auroc(conf, correct)) == pytest.approx(ref_auroc(conf, correct), abs=1e-6)
    assert float(metrics.auroc(conf, correct)) == pytest.approx(roc_auc_score(correct, conf), abs=1e-6)
    # heavy ties: confidences on a 0.1 grid
    tied = np.round(conf, 1).astype(np.float32)
    assert float(metrics.auroc(tied, correct)) == pytest.approx(roc_auc_score(correct, tied), abs=1e-6)
    assert float(metrics.auroc(tied, correct)) == pytest.approx(ref_auroc(tied, correct), abs=1e-6)


def test_aurc_matches_reference_without_ties(data):
    conf, correct = data
    order = np.argsort(-conf.astype(np.float64), kind="stable")
    assert float(metrics.aurc(conf, correct)) == pytest.approx(ref_aurc_fixed_order(order, correct), abs=1e-5)


def test_aurc_ties_equal_expectation_over_random_tie_breaking():
    conf = [0.9, 0.5, 0.5, 0.5, 0.2, 0.9, 0.2]
    correct = [1, 0, 1, 1, 0, 0, 1]
    expected = ref_aurc_brute_force(conf, correct)
    got = float(metrics.aurc(np.array(conf, np.float32), np.array(correct, np.float32)))
    assert got == pytest.approx(expected, abs=1e-6)
    perm = [3, 6, 0, 5, 1, 4, 2]  # input order must not matter
    got_perm = float(metrics.aurc(np.array(conf, np.float32)[perm], np.array(correct, np.float32)[perm]))
    assert got_perm == pytest.approx(expected, abs=1e-6)


def test_pairwise_metrics_match_reference():
    rng = np.random.default_rng(7)
    n = 200
    p = rng.random(n).round(1)  # includes exact 0.5 (no choice)
    c1, c2 = rng.integers(0, 11, n) / 10, rng.integers(0, 11, n) / 10
    y1, y2 = rng.integers(0, 2, n), rng.integers(0, 2, n)
    assert (p == 0.5).any() and (c1 == c2).any() and (y1 == y2).any()
    assert float(metrics.auc_c(p, c1, c2)) == pytest.approx(ref_pairwise(p, c1, c2), abs=1e-6)
    assert float(metrics.auc_a(p, y1, y2)) == pytest.approx(ref_pairwise(p, y1, y2), abs=1e-6)
    differs = c1 != c2
    assert float(metrics.auc_c(p, c1, c2, mode="auroc")) == pytest.approx(
        roc_auc_score(c1[differs] > c2[differs], p[differs]), abs=1e-6)


# ----------------------------------------------------------------------------
# hand-checked cases
# ----------------------------------------------------------------------------


def test_all_correct_at_full_confidence():
    conf, correct = np.ones(5), np.ones(5)
    out = metrics.compute_all(conf, correct)
    assert out["accuracy"] == 1.0 and out["ece"] == 0.0 and out["brier"] == 0.0 and out["aurc"] == 0.0
    assert math.isnan(out["auroc"])  # no incorrect answer: AUROC undefined, not 0.5


def test_all_wrong_at_zero_confidence():
    out = metrics.compute_all(np.zeros(4), np.zeros(4))
    assert out["accuracy"] == 0.0 and out["ece"] == 0.0 and out["brier"] == 0.0 and out["aurc"] == 1.0
    assert math.isnan(out["auroc"])


def test_ece_hand_cases():
    # one bin [0.6, 0.7): mean conf 0.625, accuracy 0.5
    assert float(metrics.ece([0.61, 0.62, 0.63, 0.64], [1, 1, 0, 0])) == pytest.approx(0.125, abs=1e-6)
    # confidence 1.0 shares the closed last bin with 0.95: mean conf 0.98333, accuracy 2/3
    assert float(metrics.ece([1.0, 1.0, 0.95], [1, 0, 1])) == pytest.approx(0.98333333 - 2 / 3, abs=1e-6)
    # confidence 0.0 is in the first bin with 0.05: mean conf 0.025, accuracy 0.5
    assert float(metrics.ece([0.0, 0.05], [1, 0])) == pytest.approx(0.475, abs=1e-6)
    # 0.5 is the lower edge of bin 5, so it is not pooled with 0.45: (0.5 + 0.45) / 2
    assert float(metrics.ece([0.5, 0.45], [1, 0])) == pytest.approx(0.475, abs=1e-6)
    # constant 0.7 with everything correct: 0.3
    assert float(metrics.ece(np.full(6, 0.7), np.ones(6))) == pytest.approx(0.3, abs=1e-6)
    # empty bins skipped: two far-apart bins, weights 1/4 and 3/4
    assert float(metrics.ece([0.15, 0.85, 0.85, 0.85], [0, 1, 1, 0])) == pytest.approx(
        0.25 * 0.15 + 0.75 * abs(0.85 - 2 / 3), abs=1e-6)


def test_auroc_and_aurc_hand_cases():
    assert float(metrics.auroc([0.5, 0.5, 0.5, 0.5], [1, 0, 1, 0])) == pytest.approx(0.5)
    # pairs: (.8,.5)=1, (.8,.2)=1, (.5,.5)=1/2 tie, (.5,.2)=1 -> 3.5/4
    assert float(metrics.auroc([0.8, 0.5, 0.5, 0.2], [1, 1, 0, 0])) == pytest.approx(0.875)
    assert float(metrics.auroc([0.1, 0.9], [1, 0])) == pytest.approx(0.0)
    # risks at coverage 1, 2, 3: 0, 1/2, 1/3
    assert float(metrics.aurc([0.9, 0.8, 0.7], [1, 0, 1])) == pytest.approx((0 + 1 / 2 + 1 / 3) / 3, abs=1e-6)
    assert float(metrics.aurc([0.5, 0.5], [1, 0])) == pytest.approx(0.5)


def test_pairwise_hand_cases():
    p = [0.9, 0.1, 0.5, 0.7]
    # consistencies: Q1 better (chose Q1: 1), Q2 better (chose Q2: 1), equal (skipped), Q2 better (chose Q1: 0)
    assert float(metrics.auc_c(p, [0.8, 0.2, 0.3, 0.5], [0.1, 0.5, 0.3, 0.6])) == pytest.approx(2 / 3)
    # mixed pairs: 1, 1, p = 0.5 -> 1/2; the last pair (both wrong) is skipped
    assert float(metrics.auc_a(p, [1, 0, 1, 0], [0, 1, 0, 0])) == pytest.approx(2.5 / 3)
    assert math.isnan(float(metrics.auc_a(p, [1, 1, 1, 1], [1, 1, 1, 1])))
    out = metrics.compute_pairwise(p, [0.8, 0.2, 0.3, 0.5], [0.1, 0.5, 0.3, 0.6], [1, 0, 1, 0], [0, 1, 0, 0])
    assert out["n_pairs_consistency_differs"] == 3 and out["n_pairs_mixed"] == 3
    assert out["q1_choice_rate"] == pytest.approx(0.5)


# ----------------------------------------------------------------------------
# weights, jit, vmap
# ----------------------------------------------------------------------------


def test_integer_weights_equal_repetition(data):
    conf, correct = data[0][:40], data[1][:40]
    w = np.random.default_rng(3).integers(0, 4, 40)
    rep_conf, rep_correct = np.repeat(conf, w), np.repeat(correct, w)
    for fn in (metrics.ece, metrics.brier, metrics.auroc):
        assert float(fn(conf, correct, weights=w)) == pytest.approx(float(fn(rep_conf, rep_correct)), abs=1e-5)
    keep = w > 0
    assert float(metrics.aurc(conf, correct, mask=keep)) == pytest.approx(
        float(metrics.aurc(conf[keep], correct[keep])), abs=1e-6)


def test_jit_and_vmap(data):
    conf, correct = data
    batch_conf = np.stack([conf, conf[::-1], np.sqrt(conf)])
    batch_correct = np.stack([correct, correct, correct])
    for fn in (metrics.ece, metrics.ace, metrics.brier, metrics.auroc, metrics.aurc):
        batched = jax.vmap(fn)(batch_conf, batch_correct)
        single = [float(jax.jit(fn)(c, y)) for c, y in zip(batch_conf, batch_correct)]
        np.testing.assert_allclose(np.asarray(batched), single, rtol=1e-5, atol=1e-6)
    p = jnp.asarray(conf[:100])
    batched_c = jax.vmap(metrics.auc_c)(jnp.stack([p, 1 - p]), jnp.stack([conf[100:200]] * 2),
                                        jnp.stack([conf[:100]] * 2))
    assert batched_c.shape == (2,)


# ----------------------------------------------------------------------------
# validation
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("bad, index", [([0.2, 0.4, np.nan], 2), ([0.2, -0.1, 0.5], 1), ([1.2, 0.5], 0)])
def test_invalid_confidences_rejected(bad, index):
    with pytest.raises(ValueError, match=rf"my_conf\[{index}\]"):
        metrics.validate_confidences(bad, "my_conf")
    with pytest.raises(ValueError, match=rf"conf\[{index}\]"):
        metrics.compute_all(bad, [1] * len(bad))


def test_invalid_correctness_and_lengths_rejected():
    with pytest.raises(ValueError, match=r"correct\[1\]"):
        metrics.compute_all([0.5, 0.5], [1, 2])
    with pytest.raises(ValueError, match="length"):
        metrics.compute_all([0.5, 0.5, 0.5], [1, 0])
    with pytest.raises(ValueError, match="1-D"):
        metrics.validate_confidences([[0.5]], "conf")


# ----------------------------------------------------------------------------
# bootstrap
# ----------------------------------------------------------------------------


def test_bootstrap_interval_contains_point_and_narrows(data):
    conf, correct = data
    point, low, high = bootstrap.bootstrap_ci(metrics.auroc, (conf[:64], correct[:64]), n_resamples=200, seed=0)
    assert low <= point <= high
    big_conf, big_correct = np.tile(conf, 4), np.tile(correct, 4)  # 1028 examples
    _, low_big, high_big = bootstrap.bootstrap_ci(metrics.auroc, (big_conf, big_correct), n_resamples=200, seed=0)
    assert high_big - low_big < 0.6 * (high - low)
    # same seed, same interval; chunked evaluation draws the same resamples
    again = bootstrap.bootstrap_ci(metrics.auroc, (conf[:64], correct[:64]), n_resamples=200, seed=0, batch_size=64)
    assert again == pytest.approx((point, low, high), abs=1e-6)


def test_bootstrap_spread_matches_binomial_standard_error():
    correct = np.array([1.0] * 60 + [0.0] * 40)
    samples = bootstrap.bootstrap_samples(metrics.accuracy, (correct,), n_resamples=800, seed=1)
    assert samples.shape == (800,)
    assert np.mean(samples) == pytest.approx(0.6, abs=0.01)
    assert np.std(samples) == pytest.approx(math.sqrt(0.6 * 0.4 / 100), rel=0.15)


def test_bootstrap_nan_safe_with_rare_class():
    conf = np.linspace(0.05, 0.95, 20).astype(np.float32)
    correct = np.zeros(20, np.float32)
    correct[-1] = 1.0  # about a third of resamples have no correct example: AUROC NaN there
    out = bootstrap.bootstrap_cis(lambda c, y: {"auroc": metrics.auroc(c, y), "ece": metrics.ece(c, y)},
                                  (conf, correct), n_resamples=100, seed=0)
    assert out["auroc"]["n_undefined_resamples"] > 0
    assert np.isfinite(out["auroc"]["low"]) and np.isfinite(out["auroc"]["high"])
    assert out["ece"]["n_undefined_resamples"] == 0


# ----------------------------------------------------------------------------
# plot
# ----------------------------------------------------------------------------


def test_reliability_diagram_writes_png(tmp_path, data):
    conf, correct = data
    path = plots.reliability_diagram(conf, correct, tmp_path / "sub" / "rel.png", "test")
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["rel.png"]  # no temp file left behind
    with pytest.raises(ValueError, match=r"conf\[0\]"):
        plots.reliability_diagram([np.nan], [1], tmp_path / "bad.png", "bad")
    assert not (tmp_path / "bad.png").exists()


def test_ace_bin_sizes_when_n_is_a_multiple_of_bins():
    # N = 20, 10 bins: exactly two examples per bin (rank r goes to bin floor(10 r / 20)).
    conf = np.linspace(0.02, 0.98, 20).astype(np.float32)
    correct = np.tile([1.0, 0.0], 10).astype(np.float32)
    assert float(metrics.ace(conf, correct)) == pytest.approx(ref_ace(conf, correct), abs=1e-6)
    # each bin pairs a correct and an incorrect answer: |mean conf - 0.5| per bin, equal weights
    expected = np.mean([abs((conf[2 * m] + conf[2 * m + 1]) / 2 - 0.5) for m in range(10)])
    assert float(metrics.ace(conf, correct)) == pytest.approx(expected, abs=1e-6)
