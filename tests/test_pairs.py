"""The pairwise task's pairs: training pairs, their labels and order, evaluation pairs."""

from __future__ import annotations

import pytest

from metacog_jax.data import pairs
from metacog_jax.data.records import Question


def _question(i: int) -> Question:
    return Question(id=f"q{i:02d}", domain="arithmetic", split="train", question=f"What is {i} + 1?", answers=(str(i + 1),),
                    kind="numeric")


def _single(i: int, domain: str = "arithmetic") -> dict:
    consistency = (i % 5) / 4
    return {"question_id": f"q{i:02d}", "domain": domain, "bin": i % 5, "consistency": consistency,
            "target": 0.1 * (i % 3), "target_raw": 0.1 * (i % 3), "answer": str(i + 1), "answer_correct": i % 2 == 0}


def test_evaluation_pairs_distinct_and_reproducible():
    a = pairs.evaluation_pairs(30, 50, seed=1)
    assert a == pairs.evaluation_pairs(30, 50, seed=1) and a != pairs.evaluation_pairs(30, 50, seed=2)
    assert len(a) == len(set(a)) == 50 and all(0 <= i < j < 30 for i, j in a)
    assert sorted(pairs.evaluation_pairs(4, 100, seed=0)) == [(i, j) for i in range(4) for j in range(i + 1, 4)]
    assert pairs.evaluation_pairs(1, 10, seed=0) == []


def test_order_pair_names_the_better_position_and_is_seeded():
    qa, qb = _question(1), _question(2)
    seen = set()
    for key in map(str, range(40)):
        q1, q2, choice = pairs.order_pair(qa, qb, True, seed=3, key=key)
        assert {q1.id, q2.id} == {qa.id, qb.id}
        assert choice in pairs.CHOICE_LABELS
        assert (q1 if choice == "Q1" else q2) is qa  # the better question is where the label points
        assert pairs.order_pair(qa, qb, True, seed=3, key=key) == (q1, q2, choice)
        seen.add(choice)
    assert seen == {"Q1", "Q2"}  # both positions occur


@pytest.mark.parametrize("label_by", pairs.LABEL_SOURCES)
def test_training_pairs_cross_bins_and_label_the_better_question(label_by):
    single = [_single(i) for i in range(20)]
    questions = {f"q{i:02d}": _question(i) for i in range(20)}
    out, stats = pairs.training_pairs(single, questions, n_pairs=2, scope="domain", label_by=label_by, seed=0,
                                      split="train")
    assert out and stats["unpaired"] == 0
    by_id = {r["question_id"]: r for r in single}
    field = "consistency" if label_by == "consistency" else "target_raw"
    keys = set()
    for p in out:
        a, b = by_id[p["q1"]], by_id[p["q2"]]
        assert a["bin"] != b["bin"] and p["split"] == "train"
        assert p["choice"] == ("Q1" if a[field] > b[field] else "Q2")
        keys.add(frozenset((p["q1"], p["q2"])))
    assert len(keys) == len(out)  # no unordered pair twice


def test_training_pairs_scope_and_bad_options():
    single = [_single(i, "a") for i in range(6)] + [_single(i + 6, "b") for i in range(6)]
    questions = {f"q{i:02d}": _question(i) for i in range(12)}
    within, _ = pairs.training_pairs(single, questions, n_pairs=3, scope="domain", label_by="consistency", seed=0,
                                     split="train")
    domain = {r["question_id"]: r["domain"] for r in single}
    assert all(domain[p["q1"]] == domain[p["q2"]] for p in within)
    across, _ = pairs.training_pairs(single, questions, n_pairs=3, scope="all", label_by="consistency", seed=0,
                                     split="train")
    assert any(domain[p["q1"]] != domain[p["q2"]] for p in across)
    with pytest.raises(ValueError, match="pair label"):
        pairs.training_pairs(single, questions, n_pairs=1, scope="domain", label_by="bins", seed=0, split="train")
    with pytest.raises(ValueError, match="pair scope"):
        pairs.training_pairs(single, questions, n_pairs=1, scope="world", label_by="target", seed=0, split="train")


def test_both_orders_mirror_each_pair_with_the_label_flipped():
    single = [_single(i) for i in range(20)]
    questions = {f"q{i:02d}": _question(i) for i in range(20)}
    kw = dict(n_pairs=2, scope="domain", label_by="consistency", seed=0, split="train")
    once, stats_once = pairs.training_pairs(single, questions, **kw)
    both, stats_both = pairs.training_pairs(single, questions, orders="both", **kw)
    assert stats_both == stats_once and len(both) == 2 * len(once)
    assert both[0::2] == once  # the first of each two is the seeded random order, as before
    by_id = {r["question_id"]: r for r in single}
    for shown, mirror in zip(both[0::2], both[1::2]):  # the two orders are adjacent
        assert (mirror["q1"], mirror["q2"]) == (shown["q2"], shown["q1"])
        assert {shown["choice"], mirror["choice"]} == {"Q1", "Q2"}
        for name in pairs.POSITION_FIELDS:
            assert mirror[name] == shown[name][::-1], name
        assert mirror["split"] == shown["split"] == "train"
        assert pairs.swap_order(mirror) == shown
    for p in both:  # every record, mirrored or not, labels the question with the higher consistency
        a, b = by_id[p["q1"]], by_id[p["q2"]]
        assert p["choice"] == ("Q1" if a["consistency"] > b["consistency"] else "Q2")
        assert p["consistency"] == [a["consistency"], b["consistency"]] and p["bins"] == [a["bin"], b["bin"]]
        assert p["answers"] == [a["answer"], b["answer"]] and p["correct"] == [a["answer_correct"], b["answer_correct"]]
    assert sum(p["choice"] == "Q1" for p in both) * 2 == len(both)  # position says nothing about the label
    # each ordered pair once, each unordered pair in exactly its two orders
    assert len({(p["q1"], p["q2"]) for p in both}) == len(both)
    assert len({frozenset((p["q1"], p["q2"])) for p in both}) == len(once)
    with pytest.raises(ValueError, match="pair orders"):
        pairs.training_pairs(single, questions, orders="mirror", **kw)
