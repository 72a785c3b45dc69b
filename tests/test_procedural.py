"""Procedural domains: determinism, split hygiene, correctness of gold answers."""

from __future__ import annotations

import ast
import collections
import operator
from decimal import Decimal

import pytest

from metacog_jax.data import grading, procedural
from metacog_jax.data.records import OPTION_LETTERS
from metacog_jax.data.sources import DOMAINS, load_questions

_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}


def _reference_eval(expression: str) -> int:
    """Independent evaluator (Python's own parser) for the generated expressions."""
    def walk(node):
        if isinstance(node, ast.BinOp):
            return _OPS[type(node.op)](walk(node.left), walk(node.right))
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        raise AssertionError(f"unexpected node {ast.dump(node)}")
    return walk(ast.parse(expression, mode="eval").body)


@pytest.mark.parametrize("name", ["arithmetic", "comparison"])
def test_deterministic_prefix_and_unique(name):
    a = procedural.generate(name, 60, seed=3, split="train")
    assert a == procedural.generate(name, 60, seed=3, split="train")
    assert procedural.generate(name, 20, seed=3, split="train") == a[:20]
    assert len({q.id for q in a}) == 60
    assert len({(q.question, q.options) for q in a}) == 60
    assert all(q.id.startswith(f"{name}/s3/") and q.split == "train" and q.domain == name for q in a)
    assert [q.id for q in a] != [q.id for q in procedural.generate(name, 60, seed=4, split="train")]


@pytest.mark.parametrize("name", ["arithmetic", "comparison"])
def test_train_and_test_never_share_a_question(name):
    train = procedural.generate(name, 400, seed=0, split="train")
    test = procedural.generate(name, 100, seed=7, split="test")
    assert all(q.split == "test" for q in test)
    assert not {(q.question, q.options) for q in train} & {(q.question, q.options) for q in test}


def test_arithmetic_gold_is_correct_and_levels_balanced():
    qs = procedural.generate("arithmetic", 250, seed=0, split="all")
    for q in qs:
        assert q.kind == "numeric"
        expression = q.meta["expression"]
        assert q.question == f"What is {expression}?"
        assert int(q.answers[0]) == _reference_eval(expression)
    levels = collections.Counter(q.meta["difficulty"] for q in qs)
    # Levels cycle; level 1 loses a few repeats of its small question space.
    assert set(levels) == {"1", "2", "3", "4", "5"} and min(levels.values()) >= 40
    # Difficulty grows: more digits in the answer at higher levels.
    mean_len = {lv: sum(len(q.answers[0].lstrip("-")) for q in qs if q.meta["difficulty"] == lv)
                / levels[lv] for lv in levels}
    assert mean_len["1"] < mean_len["3"] < mean_len["5"]


def test_comparison_gold_is_correct():
    qs = procedural.generate("comparison", 250, seed=1, split="all")
    positions = collections.Counter()
    for q in qs:
        values = [Decimal(o) for o in q.options]
        assert len(set(values)) == 4
        target = max(values) if "largest" in q.question else min(values)
        assert q.answers == (OPTION_LETTERS[values.index(target)],)
        positions[q.answers[0]] += 1
        # The grader reads the option text back to the right letter.
        assert grading.grade(q, q.options[values.index(target)]).correct
    assert set(positions) == set("ABCD")
    hard = [q for q in qs if q.meta["difficulty"] == "5"]
    assert any(len({len(o.split(".")[-1]) for o in q.options}) > 1 for q in hard)


def test_levels_argument_and_errors():
    qs = procedural.generate("arithmetic", 10, seed=0, split="train", levels=(4,))
    assert {q.meta["difficulty"] for q in qs} == {"4"}
    with pytest.raises(ValueError, match="unknown procedural domain"):
        procedural.generate("algebra", 1)
    with pytest.raises(ValueError, match="split"):
        procedural.generate("arithmetic", 1, split="dev")
    with pytest.raises(ValueError, match="levels"):
        procedural.generate("arithmetic", 1, levels=(9,))
    with pytest.raises(ValueError, match="distinct"):
        procedural.generate("arithmetic", 300, levels=(1,))  # only ~130 one-digit sums/differences


def test_registered_and_loadable_without_manual_dir(tmp_path):
    assert DOMAINS["arithmetic"].procedural and DOMAINS["arithmetic"].role == "in_domain"
    assert DOMAINS["comparison"].role == "out_of_domain"
    qs = load_questions("arithmetic", None, tmp_path, "test", n=15, seed=2)
    assert qs == procedural.generate("arithmetic", 15, seed=2, split="test")
    assert len(load_questions("comparison", None, tmp_path, "train")) == 1000
    assert not list(tmp_path.iterdir())  # nothing built on disk
