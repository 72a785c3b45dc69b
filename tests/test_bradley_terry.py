"""Bradley-Terry strengths: recovery of known strengths, optimality, pair weights, jit/vmap, Spearman
against scipy, AUROC of strengths on hand-worked cases, and the question-level bootstrap."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import spearmanr

from metacog_jax.evaluation import bradley_terry as bt


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def simulate(seed: int, n_items: int = 40, pairs_per_item: int = 10, soft: bool = False, repeats: int = 1):
    """True strengths spread over [-3, 3] and random pairs (``n_items * pairs_per_item / 2`` of them).

    The debiased preference of a pair scored in both orders is the mean of two Bernoulli(sigmoid(s_a -
    s_b)) choices; with ``repeats`` it is the mean over that many such pairs (what a pair weight of
    ``repeats`` stands for), and with ``soft`` it is the probability itself.
    """
    rng = np.random.default_rng(seed)
    true = rng.permutation(np.linspace(-3.0, 3.0, n_items))
    n_pairs = n_items * pairs_per_item // 2
    a = rng.integers(0, n_items, n_pairs)
    b = (a + rng.integers(1, n_items, n_pairs)) % n_items  # never a self-pair
    p = _sigmoid(true[a] - true[b])
    choices = (rng.random((2 * repeats, n_pairs)) < p).astype(float)
    pref = p if soft else choices.mean(axis=0)
    return true, a, b, pref


@jax.jit
def reference_objective(s, a, b, pref, w, l2):
    # The brief's objective, written out independently of the module.
    d = s[a] - s[b]
    return (jnp.sum(w * (pref * jnp.log(jax.nn.sigmoid(d)) + (1 - pref) * jnp.log(jax.nn.sigmoid(-d))))
            - 0.5 * l2 * jnp.sum(s ** 2))


# ----------------------------------------------------------------------------
# the fit (most tests share 40 questions in 200 pairs, so one compiled fit serves them)
# ----------------------------------------------------------------------------


def test_recovers_exact_strengths_from_expected_preferences():
    # With preferences equal to the model's probabilities the likelihood optimum is the truth (up to a
    # shift); a tiny ridge leaves it there.
    true, a, b, pref = simulate(0, soft=True)
    fit = bt.fit_strengths(a, b, pref, 40, l2=1e-6)
    s = np.asarray(fit.strength)
    np.testing.assert_allclose(s - s.mean(), true - true.mean(), atol=1e-3)
    # The default ridge shrinks only slightly.
    s = np.asarray(bt.fit_strengths(a, b, pref, 40).strength)
    np.testing.assert_allclose(s - s.mean(), true - true.mean(), atol=0.2)


def test_recovers_ranking_from_simulated_choices():
    # ~10 pairs per question, as in the evaluation: the ranking comes back; averaged over seeds so the
    # threshold is not one lucky draw (single seeds range about 0.90-0.97).
    rhos = []
    for seed in range(5):
        true, a, b, pref = simulate(seed)
        rhos.append(spearmanr(np.asarray(bt.fit_strengths(a, b, pref, 40).strength), true).statistic)
    assert np.mean(rhos) > 0.9, rhos
    assert min(rhos) > 0.85, rhos


def test_strengths_converge_to_truth_at_large_sample():
    # Each of the 200 pairs scored 200 times (weight 200 on the mean preference): ~4000 choices per
    # question. Over seeds the error is about 0.04-0.07 RMS, 0.09-0.21 at worst (0.13 RMS at 40 times).
    true, a, b, pref = simulate(1, repeats=200)
    s = np.asarray(bt.fit_strengths(a, b, pref, 40, weights=np.full(len(a), 200.0)).strength)
    err = (s - s.mean()) - (true - true.mean())
    assert np.sqrt(np.mean(err ** 2)) < 0.1
    assert np.max(np.abs(err)) < 0.3


@pytest.mark.parametrize("l2", [1e-2, 1e-4])
def test_gradient_vanishes_at_the_solution(l2):
    # Hard case: question 0 wins every comparison, question 1 loses every one, and question 39's pairs
    # have weight 0, so it is in no pair.
    true, a, b, pref = simulate(2)
    pref = pref.copy()
    pref[a == 0], pref[b == 0] = 1.0, 0.0
    pref[a == 1], pref[b == 1] = 0.0, 1.0
    w = np.random.default_rng(0).integers(1, 4, len(a)).astype(float)
    w[(a == 39) | (b == 39)] = 0.0
    fit = bt.fit_strengths(a, b, pref, 40, weights=w, l2=l2)
    s = fit.strength
    grad = jax.grad(reference_objective)(s, a, b, pref, w, l2)
    assert float(jnp.max(jnp.abs(grad))) < 1e-4
    assert float(fit.max_abs_grad) < 1e-4
    assert bool(jnp.all(jnp.isfinite(s)))
    assert float(s[0]) > 5.0 and float(s[1]) < -5.0  # far out, yet finite: the ridge holds them
    assert float(s[39]) == 0.0 and float(fit.pair_weight[39]) == 0.0
    # The ridge makes the optimum centred: the pair terms of the gradient cancel.
    assert abs(float(jnp.mean(s))) < 1e-4
    # And it is a maximum: random perturbations only lower the objective.
    base = float(bt.objective(s, a, b, pref, w, l2=l2))
    assert base == pytest.approx(float(reference_objective(s, a, b, pref, w, l2)), rel=1e-6)
    rng = np.random.default_rng(1)
    for _ in range(5):
        assert float(bt.objective(s + 0.05 * rng.normal(size=40), a, b, pref, w, l2=l2)) < base


def test_zero_weight_pairs_equal_removing_them():
    true, a, b, pref = simulate(3)
    w = (np.random.default_rng(3).random(len(a)) < 0.7).astype(float)
    weighted = bt.fit_strengths(a, b, pref, 40, weights=w)
    keep = w > 0
    removed = bt.fit_strengths(a[keep], b[keep], pref[keep], 40)
    np.testing.assert_allclose(weighted.strength, removed.strength, atol=1e-5)
    np.testing.assert_array_equal(weighted.pair_weight, removed.pair_weight)
    # Zero weight drops a pair whatever its preference.
    flipped = bt.fit_strengths(a, b, np.where(keep, pref, 1.0 - pref), 40, weights=w)
    np.testing.assert_allclose(flipped.strength, weighted.strength, atol=1e-5)


def test_duplicating_a_pair_equals_weight_two():
    # Rows 193-199 are copies of rows 0-6; the weighted version counts rows 0-6 twice and drops the copies
    # (weight 0 = removal, tested above), so both have the same shape.
    true, a, b, pref = simulate(4)
    a, b, pref = (np.r_[x[:193], x[:7]] for x in (a, b, pref))
    duplicated = bt.fit_strengths(a, b, pref, 40)
    w = np.ones(len(a))
    w[:7], w[193:] = 2.0, 0.0
    weighted = bt.fit_strengths(a, b, pref, 40, weights=w)
    np.testing.assert_allclose(weighted.strength, duplicated.strength, atol=1e-5)
    np.testing.assert_array_equal(weighted.pair_weight, duplicated.pair_weight)


def test_jit_and_vmap_over_weight_vectors_match_single_calls():
    true, a, b, pref = simulate(5)
    rng = np.random.default_rng(5)
    weights = rng.integers(0, 3, (4, len(a))).astype(float)
    batched = jax.jit(jax.vmap(lambda w: bt.fit_strengths(a, b, pref, 40, weights=w)))(jnp.asarray(weights))
    assert batched.strength.shape == (4, 40)
    for k in range(4):
        single = bt.fit_strengths(a, b, pref, 40, weights=weights[k])
        np.testing.assert_allclose(batched.strength[k], single.strength, atol=1e-5)
        np.testing.assert_array_equal(batched.pair_weight[k], single.pair_weight)
        assert float(batched.max_abs_grad[k]) < 1e-4


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(item_b=[1, 4]), r"item_b\[1\] = 4 is outside range\(n_items=4\)"),
        (dict(item_a=[0, -1]), r"item_a\[1\] = -1"),
        (dict(item_b=[0, 2]), r"pair 0 compares item 0 with itself"),
        (dict(pref=[0.5, 1.5]), r"pref\[1\] = .*1.5.* is outside \[0, 1\]"),
        (dict(pref=[0.5]), r"differ in length"),
        (dict(weights=[1.0, -1.0]), r"weights\[1\] = -1.0; weights must be finite and non-negative"),
        (dict(item_weights=[1.0, 0.0, 1.0, 1.0]), r"item_weights\[1\] = 0 but item 1 is in pairs"),
        (dict(item_a=[0.0, 1.0]), r"item_a: item indices must be integers"),
    ],
)
def test_bad_inputs_are_named(kwargs, match):
    args = dict(item_a=[0, 1], item_b=[1, 2], pref=[0.5, 0.5]) | kwargs
    extra = {k: args.pop(k) for k in ("weights", "item_weights") if k in args}
    with pytest.raises(ValueError, match=match):
        bt.fit_strengths(args["item_a"], args["item_b"], args["pref"], 4, **extra)


# ----------------------------------------------------------------------------
# Spearman
# ----------------------------------------------------------------------------


def test_spearman_matches_scipy_with_ties():
    rng = np.random.default_rng(6)
    x = rng.integers(0, 4, (40, 8)).astype(float)  # many ties
    y = x + rng.integers(-2, 3, (40, 8))
    x[:5], y[:5] = rng.normal(size=(5, 8)), rng.normal(size=(5, 8))  # and none
    x[5], y[5] = np.arange(8.0), -np.exp(np.arange(8.0))
    got = jax.vmap(bt.spearman)(x, y)
    for k in range(len(x)):
        if len(set(x[k])) > 1 and len(set(y[k])) > 1:
            assert float(got[k]) == pytest.approx(spearmanr(x[k], y[k]).statistic, abs=1e-5), k
    assert float(got[5]) == pytest.approx(-1.0)


def test_spearman_weights_are_repetitions():
    rng = np.random.default_rng(7)
    x = rng.integers(0, 5, 20).astype(float)
    y = rng.integers(0, 5, 20).astype(float)
    w = rng.integers(0, 4, 20)
    expected = spearmanr(np.repeat(x, w), np.repeat(y, w)).statistic
    assert float(bt.spearman(x, y, w)) == pytest.approx(expected, abs=1e-5)
    # A zero weight drops the example from everyone's ranks too: an extreme value changes nothing.
    w[0] = 0
    expected = spearmanr(np.repeat(x, w), np.repeat(y, w)).statistic
    x[0], y[0] = 100.0, -100.0
    assert float(bt.spearman(x, y, w)) == pytest.approx(expected, abs=1e-5)


def test_spearman_undefined_is_nan():
    ones = [1.0, 1.0, 1.0]
    assert math.isnan(float(bt.spearman([1.0, 1.0, 1.0], [1.0, 2.0, 3.0], ones)))
    assert math.isnan(float(bt.spearman([1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [0.0, 0.0, 0.0])))
    # Constant over the weighted examples, though not over all of them.
    assert math.isnan(float(bt.spearman([1.0, 1.0, 3.0], [1.0, 2.0, 3.0], [1.0, 1.0, 0.0])))


# ----------------------------------------------------------------------------
# metrics of the strengths
# ----------------------------------------------------------------------------


def test_bt_auroc_one_when_the_model_always_prefers_correct_questions():
    # Every pair sets a correct question (0-2) against an incorrect one (3-5); 0 and 1 are in two pairs.
    correct = np.array([1, 1, 1, 0, 0, 0])
    consistency = np.full(6, 0.5)
    a, b, pref = [0, 1, 2, 3], [3, 4, 5, 1], np.array([1.0, 1.0, 1.0, 0.0])
    assert float(bt.strength_metrics(a, b, pref, correct, consistency)["bt_auroc"]) == pytest.approx(1.0)
    assert float(bt.strength_metrics(a, b, 1.0 - pref, correct, consistency)["bt_auroc"]) == pytest.approx(0.0)


def test_bt_metrics_on_a_chain():
    # Chain 0 > 1 > 2 > 3 > 4 (each preferred 0.8 over the next), and question 5 in no pair.
    a, b, pref = [0, 1, 2, 3], [1, 2, 3, 4], [0.8, 0.8, 0.8, 0.8]
    fit = bt.fit_strengths(a, b, pref, 6)
    np.testing.assert_array_equal(fit.pair_weight, [1, 2, 2, 2, 1, 0])
    s = np.asarray(fit.strength)
    assert np.all(np.diff(s[:5]) < 0) and s[5] == 0.0
    correct = [1, 0, 1, 0, 0, 1]
    out = bt.strength_metrics(a, b, pref, correct, consistency=[0.9, 0.9, 0.5, 0.1, 0.1, 0.0])
    # Correct 0 beats all three incorrect questions, correct 2 beats 3 and 4 but not 1: 5/6. Question 5
    # (correct, strength 0 = mid-table) would change this if it were not left out.
    assert float(out["bt_auroc"]) == pytest.approx(5 / 6)
    assert float(out["bt_spearman_consistency"]) == pytest.approx(
        spearmanr(s[:5], [0.9, 0.9, 0.5, 0.1, 0.1]).statistic, abs=1e-5)
    assert float(out["bt_n_items_without_pairs"]) == 1.0


def small_study():
    """12 questions in 36 pairs; correctness and consistency follow the true strengths, with noise."""
    true, a, b, pref = simulate(8, n_items=12, pairs_per_item=6)
    rng = np.random.default_rng(8)
    correct = (true + rng.normal(size=12) > 0).astype(float)
    consistency = np.round(_sigmoid(true + rng.normal(size=12)), 1)
    return a, b, pref, correct, consistency


def test_resample_counts_equal_explicit_duplication():
    # A resample with question counts c must give what the data with every question copied c_i times
    # gives: pairs between all copies, each question's ridge counted per copy.
    a, b, pref, correct, consistency = small_study()
    counts = np.array([2, 0, 1, 3, 1, 1, 0, 2, 1, 1, 2, 1])
    got = bt.strength_metrics(a, b, pref, correct, consistency, item_counts=counts)

    copies = [(i, k) for i in range(12) for k in range(counts[i])]
    index = {c: j for j, c in enumerate(copies)}
    dup_pairs = [(index[i, k], index[j, m], p) for i, j, p in zip(a, b, pref)
                 for k in range(counts[i]) for m in range(counts[j])]
    da, db, dp = (np.array(x) for x in zip(*dup_pairs))
    orig = np.array([i for i, _ in copies])
    explicit = bt.strength_metrics(da, db, dp, correct[orig], consistency[orig])
    assert set(got) == {"bt_auroc", "bt_spearman_consistency", "bt_n_items_without_pairs"} == set(explicit)
    for name in got:
        assert float(got[name]) == pytest.approx(float(explicit[name]), abs=1e-5), name
    fit = bt.fit_resample(jnp.asarray(counts, float), a, b, pref)  # what the statistic fits
    dup_fit = bt.fit_strengths(da, db, dp, len(copies))
    np.testing.assert_allclose(fit.strength[orig], dup_fit.strength, atol=1e-5)
    np.testing.assert_array_equal(fit.pair_weight[orig], dup_fit.pair_weight * counts[orig])
    # The weighted objective is the duplicated one.
    assert float(bt.objective(fit.strength, a, b, pref, counts[a] * counts[b], counts)) == pytest.approx(
        float(bt.objective(dup_fit.strength, da, db, dp)), rel=1e-5)


def test_question_bootstrap():
    a, b, pref, correct, consistency = small_study()
    point = bt.strength_metrics(a, b, pref, correct, consistency)
    refit = bt.bootstrap_strength_metrics(a, b, pref, correct, consistency, n_resamples=40, seed=0)
    fixed = bt.bootstrap_strength_metrics(a, b, pref, correct, consistency, n_resamples=40, seed=0, refit=False)
    for out in (refit, fixed):
        for name in ("bt_auroc", "bt_spearman_consistency"):
            m = out[name]
            assert m["estimate"] == pytest.approx(float(point[name]), abs=1e-6), name
            assert m["high"] > m["low"], name  # resampling varies the data
        assert out["bt_n_items_without_pairs"]["estimate"] == 0.0
    assert refit["bt_auroc"]["estimate"] > 0.7  # strengths track correctness here
    # Refitting on a resample sees fewer distinct pairs: some drawn questions have no drawn partner, and
    # the spread is wider than with the strengths held fixed.
    assert refit["bt_n_items_without_pairs"]["high"] > 0.0 == fixed["bt_n_items_without_pairs"]["high"]
    for name in ("bt_auroc", "bt_spearman_consistency"):
        assert (refit[name]["high"] - refit[name]["low"]) > (fixed[name]["high"] - fixed[name]["low"]), name


def test_strength_metrics_validate_items():
    with pytest.raises(ValueError, match=r"correct\[1\] = .*0.5.*expected 0/1"):
        bt.strength_metrics([0], [1], [0.5], [1, 0.5])
    with pytest.raises(ValueError, match=r"consistency has 3 items, correct has 2"):
        bt.strength_metrics([0], [1], [0.5], [1, 0], consistency=[0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match=r"item_b\[0\] = 2 is outside range\(n_items=2\)"):
        bt.strength_metrics([0], [2], [0.5], [1, 0])
