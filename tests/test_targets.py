"""Consistency-bin targets, balancing, domain mixing and pairs on hand-made sample records."""

from __future__ import annotations

import collections
import random

import pytest

from metacog_jax.data.records import Question
from metacog_jax.data.targets import (POOLED, TargetError, bin_index, build_targets, fill_empty_bins, fit_bins,
                                      format_summary, read_targets, write_targets)


def make(specs, domain="math"):
    """specs: (id suffix, split, consistency, modal_correct). Returns (samples, questions)."""
    samples, questions = [], {}
    for suffix, split, c, ok in specs:
        qid = f"{domain}/{suffix}"
        questions[qid] = Question(id=qid, domain=domain, split=split, question=f"q {suffix}?", kind="numeric",
                                  answers=("1",))
        samples.append({"id": qid, "domain": domain, "split": split, "consistency": c, "modal_correct": ok,
                        "modal_answer": "1" if ok else "2"})
    return samples, questions


def by_id(single):
    return {r["question_id"]: r for r in single}


def test_bin_index_edges():
    assert bin_index(0.0) == 0 and bin_index(1.0) == 9 and bin_index(0.999) == 9
    assert bin_index(0.7) == 7 and bin_index(0.69) == 6 and bin_index(3 / 10) == 3 and bin_index(0.1) == 1
    assert bin_index(1.0, 4) == 3 and bin_index(0.25, 4) == 1
    with pytest.raises(ValueError):
        bin_index(1.01)


def test_fill_empty_bins_nearest_and_ties_averaged():
    assert fill_empty_bins([None, 0.2, None, None, 0.8, None]) == [0.2, 0.2, 0.2, 0.8, 0.8, 0.8]
    assert fill_empty_bins([0.2, None, 0.6]) == [0.2, pytest.approx(0.4), 0.6]
    assert fill_empty_bins([None, None]) == [None, None]


def test_bin_accuracy_is_fit_on_train_only():
    specs = [(f"tr{i}", "train", 1.0, i < 3) for i in range(4)]  # bin 9: 3 of 4 correct
    specs += [(f"tr_low{i}", "train", 0.1, i < 1) for i in range(4)]  # bin 1: 1 of 4 correct
    specs += [(f"te{i}", "test", 1.0, False) for i in range(10)]  # would drag bin 9 to 0.21 if it leaked
    samples, questions = make(specs)
    single, _, summary = build_targets(samples, questions, jitter=0.0, balance=False, pairs_per_question=0)
    recs = by_id(single)
    assert summary["bins"]["math"]["counts"][9] == 4 and summary["bins"]["math"]["accuracy"][9] == 0.75
    assert recs["math/te0"]["bin_accuracy"] == 0.75 and recs["math/te0"]["target"] == 0.75
    assert recs["math/tr_low0"]["target"] == 0.25 and recs["math/tr_low0"]["bin"] == 1
    # Raw fields are kept for every record; test records are all present (never balanced away).
    assert sum(r["split"] == "test" for r in single) == 10
    for r in single:
        assert {"consistency", "modal_correct", "bin", "bin_accuracy", "answer"} <= set(r)
    # An empty bin (e.g. 0.5) takes the nearest non-empty bin's accuracy; equidistant bins are averaged.
    fit = fit_bins([{"consistency": c, "modal_correct": ok} for _, _, c, ok in specs[:8]])
    assert fit["accuracy"][5] is None and fit["filled"][5] == pytest.approx(0.5)


def test_out_of_domain_test_only_domain_uses_pooled_bins():
    a, qa = make([(f"{i}", "train", 0.5, i % 2 == 0) for i in range(4)], domain="math")
    b, qb = make([("x", "test", 0.5, True)], domain="law")
    single, _, _ = build_targets(a + b, {**qa, **qb}, jitter=0.0, balance=False, pairs_per_question=0)
    law = by_id(single)["law/x"]
    assert law["bin_fit"] == POOLED and law["target"] == 0.5


def test_jitter_bounds_determinism_and_order_independence():
    rng = random.Random(0)
    samples, questions = make([(f"{i}", "train", rng.choice([0.0, 0.3, 0.6, 1.0]), rng.random() < 0.5)
                               for i in range(200)])
    kw = dict(jitter=0.05, balance=False, pairs_per_question=0)
    single, _, _ = build_targets(samples, questions, seed=1, **kw)
    again, _, _ = build_targets(list(reversed(samples)), questions, seed=1, **kw)
    other, _, _ = build_targets(samples, questions, seed=2, **kw)
    assert by_id(single) == by_id(again)
    assert [r["target"] for r in single] != [r["target"] for r in by_id(other).values()]
    offsets = [r["target"] - r["bin_accuracy"] for r in single if 0.05 <= r["bin_accuracy"] <= 0.95]
    assert all(-0.05 <= o <= 0.05 for o in offsets) and max(offsets) > 0.03 and min(offsets) < -0.03


def test_targets_are_clamped_to_unit_interval():
    samples, questions = make([(f"h{i}", "train", 1.0, True) for i in range(40)]
                              + [(f"l{i}", "train", 0.0, False) for i in range(40)])
    single, _, _ = build_targets(samples, questions, jitter=0.05, balance=False, pairs_per_question=0)
    targets = [r["target"] for r in single]
    assert all(0.0 <= t <= 1.0 for t in targets)
    assert targets.count(1.0) > 5 and targets.count(0.0) > 5  # about half of each group hits the bound


def test_modes():
    samples, questions = make([("a", "train", 0.3, True), ("b", "train", 0.3, False), ("c", "train", 0.9, True)])
    kw = dict(jitter=0.05, balance=False, pairs_per_question=0)
    cons = by_id(build_targets(samples, questions, mode="consistency", **kw)[0])
    assert all(abs(cons[q]["target"] - c) <= 0.05 + 1e-12 for q, c in [("math/a", 0.3), ("math/c", 0.9)])
    corr = by_id(build_targets(samples, questions, mode="correctness", **kw)[0])
    assert [corr[q]["target"] for q in ("math/a", "math/b", "math/c")] == [1.0, 0.0, 1.0]
    binned = by_id(build_targets(samples, questions, jitter=0.0, balance=False, pairs_per_question=0)[0])
    assert binned["math/a"]["target"] == 0.5 and binned["math/c"]["target"] == 1.0
    with pytest.raises(TargetError, match="mode"):
        build_targets(samples, questions, mode="accuracy")
    test_only, tq = make([("t", "test", 0.5, True)])
    with pytest.raises(TargetError, match="no sample has split 'train'"):
        build_targets(test_only, tq)
    assert build_targets(test_only, tq, mode="consistency", pairs_per_question=0)[0][0]["bin_accuracy"] is None


def test_greedy_answer_source_carries_the_greedy_answer_and_fits_bins_on_its_correctness():
    # Bin 3: the modal answer is right on a and b, the greedy answer only on a; bin 9: c, greedy wrong.
    samples, questions = make([("a", "train", 0.3, True), ("b", "train", 0.3, True), ("c", "train", 0.9, True)])
    greedy = {"math/a": ("1", True), "math/b": ("7", False), "math/c": ("8", False)}
    for s in samples:
        s["greedy"] = {"text": "", "answer": greedy[s["id"]][0], "correct": greedy[s["id"]][1]}
    kw = dict(jitter=0.0, balance=False, pairs_per_question=1, seed=0)
    modal, modal_pairs, _ = build_targets(samples, questions, **kw)
    single, pairs, summary = build_targets(samples, questions, answer_source="greedy", **kw)
    m, g = by_id(modal), by_id(single)
    assert [m[q]["target"] for q in ("math/a", "math/b", "math/c")] == [1.0, 1.0, 1.0]
    assert [g[q]["target"] for q in ("math/a", "math/b", "math/c")] == [0.5, 0.5, 0.0]
    assert [g[q]["answer"] for q in ("math/a", "math/b", "math/c")] == ["1", "7", "8"]
    assert [g[q]["answer_correct"] for q in ("math/a", "math/b", "math/c")] == [True, False, False]
    assert all(g[q]["modal_correct"] for q in g) and summary["answer_source"] == "greedy"
    assert summary["splits"]["train"]["answer_accuracy"] == pytest.approx(1 / 3)
    assert summary["splits"]["train"]["modal_accuracy"] == 1.0
    assert build_targets(samples, questions, answer_source="greedy", mode="correctness", **kw)[0][1]["target"] == 0.0
    for p in pairs:  # pair answers and correctness follow the source too
        assert p["answers"] == [g[p["q1"]]["answer"], g[p["q2"]]["answer"]]
        assert p["correct"] == [g[p["q1"]]["answer_correct"], g[p["q2"]]["answer_correct"]]
    assert modal_pairs and all(p["answers"] == [m[p["q1"]]["answer"], m[p["q2"]]["answer"]] for p in modal_pairs)
    with pytest.raises(TargetError, match="answer_source"):
        build_targets(samples, questions, answer_source="best")
    del samples[0]["greedy"]
    with pytest.raises(TargetError, match="'math/a' has no greedy answer"):
        build_targets(samples, questions, answer_source="greedy")


def test_balancing_caps_target_bins_and_counts_the_rest():
    # Targets are bin accuracies: consistency 1.0 -> all correct (target bin 9, 30 items),
    # 0.0 -> all wrong (bin 0, 10 items), 0.5 -> half correct (bin 5, 4 items).
    specs = ([(f"h{i}", "train", 1.0, True) for i in range(30)] + [(f"l{i}", "train", 0.0, False) for i in range(10)]
             + [(f"m{i}", "train", 0.5, i < 2) for i in range(4)] + [(f"t{i}", "test", 1.0, True) for i in range(30)])
    samples, questions = make(specs)
    single, _, summary = build_targets(samples, questions, jitter=0.0, balance_factor=2.0, pairs_per_question=0)
    train = [r for r in single if r["split"] == "train"]
    hist = collections.Counter(bin_index(r["target"]) for r in train)
    assert hist == {9: 8, 0: 8, 5: 4}  # cap = ceil(2.0 x 4)
    assert summary["balance"]["caps"]["math"] == 8
    s = summary["splits"]["train"]
    assert s["per_domain"]["math"]["balanced_out"] == 30 + 10 - 16
    assert s["samples"] == s["single"] + s["per_domain"]["math"]["balanced_out"]
    assert summary["splits"]["test"]["single"] == 30  # test never balanced
    single2, _, _ = build_targets(samples, questions, jitter=0.0, max_per_bin=3, pairs_per_question=0)
    hist2 = collections.Counter(bin_index(r["target"]) for r in single2 if r["split"] == "train")
    assert hist2 == {9: 3, 0: 3, 5: 3}
    # Never filtered to correct items: both labels survive balancing.
    assert {r["modal_correct"] for r in train} == {True, False}


def test_pairs_cross_bins_label_higher_consistency_and_balanced_order():
    rng = random.Random(3)
    samples, questions = make([(f"{i}", "train", rng.randrange(11) / 10, rng.random() < 0.5) for i in range(300)])
    single, pairs, summary = build_targets(samples, questions, balance=False, pairs_per_question=2, seed=5)
    recs = by_id(single)
    assert len(pairs) > 500
    for p in pairs:
        r1, r2 = recs[p["q1"]], recs[p["q2"]]
        assert r1["bin"] != r2["bin"] and p["bins"] == [r1["bin"], r2["bin"]]
        better = "Q1" if r1["consistency"] > r2["consistency"] else "Q2"
        assert p["choice"] == better
        assert p["consistency"] == [r1["consistency"], r2["consistency"]]
        assert p["targets"] == [r1["target"], r2["target"]] and p["answers"] == [r1["answer"], r2["answer"]]
        assert p["correct"] == [r1["modal_correct"], r2["modal_correct"]]
    assert len({tuple(sorted((p["q1"], p["q2"]))) for p in pairs}) == len(pairs)  # no repeated pair
    share = summary["splits"]["train"]["q1_share"]
    assert 0.42 < share < 0.58 and share == sum(p["choice"] == "Q1" for p in pairs) / len(pairs)
    again = build_targets(samples, questions, balance=False, pairs_per_question=2, seed=5)[1]
    assert again == pairs


def test_pairs_by_target_skip_equal_targets_and_unpaired_are_counted():
    samples, questions = make([("a", "train", 1.0, True), ("b", "train", 0.9, True), ("c", "train", 0.2, False)])
    single, pairs, _ = build_targets(samples, questions, jitter=0.0, balance=False, pair_label="target")
    # a and b are in different consistency bins but both have target 1.0: they are never paired.
    assert all({p["q1"], p["q2"]} != {"math/a", "math/b"} for p in pairs)
    for p in pairs:
        assert p["choice"] == ("Q1" if p["targets"][0] > p["targets"][1] else "Q2")
    lone, lq = make([("x", "train", 0.5, True), ("y", "train", 0.5, False)])
    _, none, summary = build_targets(lone, lq, balance=False)
    assert none == [] and summary["splits"]["train"]["unpaired"] == 2


def test_domain_filter_weights_caps_and_summary_counts():
    a, qa = make([(f"{i}", "train", (i % 11) / 10, i % 3 == 0) for i in range(60)], domain="math")
    b, qb = make([(f"{i}", "train", (i % 11) / 10, i % 2 == 0) for i in range(40)], domain="trivia")
    c, qc = make([(f"{i}", "train", 0.5, True) for i in range(5)], domain="law")
    questions = {**qa, **qb, **qc}
    single, pairs, summary = build_targets(a + b + c, questions, balance=False, domains=["math", "trivia"],
                                           domain_weights={"math": 1.0, "trivia": 3.0})
    counts = collections.Counter(r["domain"] for r in single)
    assert counts == {"trivia": 40, "math": 13}  # 40 / 3 = 13.33 per unit weight
    assert summary["excluded_by_domain_filter"] == {"law": 5}
    per = summary["splits"]["train"]["per_domain"]
    assert per["math"]["mixing_dropped"] == 47 and per["trivia"]["mixing_dropped"] == 0
    assert all(p["domains"][0] == p["domains"][1] for p in pairs)  # pairs stay within a domain by default
    capped, _, _ = build_targets(a + b, {**qa, **qb}, balance=False, domain_caps={"math": 10})
    assert collections.Counter(r["domain"] for r in capped) == {"math": 10, "trivia": 40}
    with pytest.raises(TargetError, match="no samples"):
        build_targets(a, qa, domains=["mathh"])
    with pytest.raises(TargetError, match="no weight"):
        build_targets(a + b, {**qa, **qb}, domain_weights={"math": 1.0})


def test_bad_samples_are_named():
    samples, questions = make([("a", "train", 0.5, True)])
    with pytest.raises(TargetError, match="'math/a' appears more than once"):
        build_targets(samples * 2, questions)
    with pytest.raises(TargetError, match="no Question record"):
        build_targets(samples, {})
    bad = [dict(samples[0], consistency=1.5)]
    with pytest.raises(TargetError, match="'consistency'"):
        build_targets(bad, questions)
    with pytest.raises(TargetError, match=r"missing field\(s\) \['modal_correct'\]"):
        build_targets([{k: v for k, v in samples[0].items() if k != "modal_correct"}], questions)


def test_write_read_and_format_summary(tmp_path):
    rng = random.Random(1)
    samples, questions = make([(f"{i}", rng.choice(["train", "test"]), rng.randrange(11) / 10, rng.random() < 0.6)
                               for i in range(80)])
    samples[0]["modal_answer"] = None  # an all-unparseable question is kept and counted
    samples[0]["modal_correct"] = False
    single, pairs, summary = build_targets(samples, questions, balance=False)
    write_targets(tmp_path, single, pairs, summary)
    assert read_targets(tmp_path) == (single, pairs, summary)
    text = format_summary(summary)
    assert "target [0.9,1.0]" in text and "Q1 share" in text and "[test]" in text
    assert "no parseable answer" in text and "consistency bins (math)" in text
    no_answer = sum(summary["splits"][s]["per_domain"]["math"]["no_answer"] for s in ("train", "test"))
    assert no_answer == 1
    assert summary["splits"]["train"]["samples"] + summary["splits"]["test"]["samples"] == 80


def test_pair_orders_both_doubles_pairs_and_balances_q1_exactly():
    rng = random.Random(7)
    samples, questions = make([(f"{i}", rng.choice(["train", "test"]), rng.randrange(11) / 10, rng.random() < 0.5)
                               for i in range(200)])
    kw = dict(balance=False, pairs_per_question=2, seed=5)
    single, once, summary_once = build_targets(samples, questions, **kw)
    single_both, both, summary = build_targets(samples, questions, pair_orders="both", **kw)
    assert single_both == single and both[0::2] == once and len(both) == 2 * len(once)
    assert summary["pair_orders"] == "both" and summary_once["pair_orders"] == "random"
    recs = by_id(single)
    for split in ("train", "test"):
        s, s_once = summary["splits"][split], summary_once["splits"][split]
        assert s["q1_share"] == 0.5  # exactly, in both splits
        assert s["pairwise"] == 2 * s_once["pairwise"] == 2 * s["distinct_pairs"]
        assert s_once["distinct_pairs"] == s_once["pairwise"]
    for p in both:  # the mirrored records carry the flipped label and swapped lists
        r1, r2 = recs[p["q1"]], recs[p["q2"]]
        assert p["choice"] == ("Q1" if r1["consistency"] > r2["consistency"] else "Q2")
        assert p["targets"] == [r1["target"], r2["target"]] and p["domains"] == [r1["domain"], r2["domain"]]
    assert "2 orders" in format_summary(summary) and "pair_orders=both" in format_summary(summary)
    with pytest.raises(TargetError, match="pair_orders"):
        build_targets(samples, questions, pair_orders="twice")


def test_pair_label_bin_accuracy_is_target_in_binned_mode_only():
    rng = random.Random(2)
    samples, questions = make([(f"{i}", "train", rng.randrange(11) / 10, rng.random() < 0.5) for i in range(120)])
    kw = dict(balance=False, pairs_per_question=2)
    by_target = build_targets(samples, questions, pair_label="target", **kw)
    by_bin_acc = build_targets(samples, questions, pair_label="bin_accuracy", **kw)
    assert by_bin_acc[:2] == by_target[:2]
    assert by_bin_acc[2]["pair_label"] == "bin_accuracy" and by_bin_acc[2]["pair_label_by"] == "target"
    recs = by_id(by_bin_acc[0])
    for p in by_bin_acc[1]:
        r1, r2 = recs[p["q1"]], recs[p["q2"]]
        assert p["choice"] == ("Q1" if r1["bin_accuracy"] > r2["bin_accuracy"] else "Q2")
    with pytest.raises(TargetError, match="pair_label 'bin_accuracy' needs mode 'binned_accuracy'"):
        build_targets(samples, questions, mode="consistency", pair_label="bin_accuracy")
    with pytest.raises(TargetError, match="domain_caps"):
        build_targets(samples, questions, domain_caps={"math": -1})


def test_config_defaults_give_the_same_targets_as_build_targets_defaults():
    """Every targets option of default_config(), passed explicitly, changes nothing (behaviour at defaults)."""
    from metacog_jax.experiment_config import default_config, domain_values

    t = default_config().targets
    explicit = dict(n_bins=t.n_bins, jitter=t.jitter, mode=t.mode, balance=t.balance,
                    balance_factor=t.balance_factor, max_per_bin=t.max_per_bin or None,
                    pairs_per_question=t.pairs_per_question, pair_scope=t.pair_scope, pair_label=t.pair_label,
                    per_domain_bins=t.per_domain_bins, domain_weights=domain_values(t.domain_weights, "w"),
                    domain_caps=domain_values(t.domain_caps, "c", int), pair_orders=t.pair_orders)
    rng = random.Random(4)
    a, qa = make([(f"{i}", rng.choice(["train", "test"]), rng.randrange(11) / 10, rng.random() < 0.5)
                  for i in range(150)], domain="math")
    b, qb = make([(f"{i}", rng.choice(["train", "test"]), rng.randrange(11) / 10, rng.random() < 0.7)
                  for i in range(90)], domain="trivia")
    assert build_targets(a + b, {**qa, **qb}, **explicit) == build_targets(a + b, {**qa, **qb})
