"""Procedural domains: determinism, split hygiene, correctness of gold answers."""

from __future__ import annotations

import ast
import collections
import dataclasses
import operator
from decimal import Decimal

import pytest

from metacog_jax.data import grading, procedural, splits
from metacog_jax.data.records import OPTION_LETTERS, Question
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
    a = procedural.generate(name, 100, seed=3, split="train")
    assert a == procedural.generate(name, 100, seed=3, split="train")
    assert procedural.generate(name, 10, seed=3, split="train") == a[:10]
    assert procedural.generate(name, 37, seed=3, split="train", levels=(1, 1, 2)) == \
        procedural.generate(name, 80, seed=3, split="train", levels=(1, 1, 2))[:37]
    assert len({q.id for q in a}) == 100
    assert len({q.meta["canonical"] for q in a}) == 100  # no two equivalent items in one call
    assert all(q.id.startswith(f"{name}/s3/") and q.split == "train" and q.domain == name for q in a)
    assert all(q.meta["canonical"] == procedural.canonical_form(q) for q in a)
    assert [q.question for q in a] != [q.question for q in procedural.generate(name, 100, seed=4, split="train")]


def test_ids_name_the_draw_not_the_call():
    """Same seed: train and test ids never collide; an item keeps its id whatever levels or n drew it."""
    train = procedural.generate("arithmetic", 200, seed=0, split="train")
    test = procedural.generate("arithmetic", 60, seed=0, split="test")
    assert not {q.id for q in train} & {q.id for q in test}
    only4 = {q.id: q for q in procedural.generate("arithmetic", 100, seed=0, split="train", levels=(4,))}
    shared = [q for q in train if q.id in only4]
    assert shared and all(only4[q.id] == q for q in shared)


def _all_levels(name, split, n_per_level):
    """Every level of a domain for one split (arithmetic level 1: its whole split)."""
    out = []
    for level in procedural.LEVELS:
        n = procedural.distinct_items(name, level, split) if (name, level) == ("arithmetic", 1) else n_per_level
        out += procedural.generate(name, n, seed=0 if split == "train" else 7, split=split, levels=(level,))
    return out


@pytest.mark.parametrize("name", ["arithmetic", "comparison"])
def test_canonical_split_keeps_equivalent_items_together(name):
    train = _all_levels(name, "train", 600)
    test = _all_levels(name, "test", 150)
    assert all(q.split == "train" for q in train) and all(q.split == "test" for q in test)
    keys = {split: [q.meta["canonical"] for q in qs] for split, qs in (("train", train), ("test", test))}
    assert len(set(keys["train"])) == len(keys["train"]) and len(set(keys["test"])) == len(keys["test"])
    assert not set(keys["train"]) & set(keys["test"])
    for q in train + test:  # the split is the hash of the canonical form, nothing else
        assert q.meta["canonical"] == procedural.canonical_form(q)
        assert q.split == splits.assign_split(q.meta["canonical"])
    if name == "arithmetic":
        # Commuted twins are possible at all: + and * come in both operand orders.
        forms = [q.meta["expression"].split() for q in train + test if q.meta["expression"].split()[1] in "+*"]
        assert any(int(a) < int(b) for a, _, b in forms) and any(int(a) > int(b) for a, _, b in forms)


def _arith(expression: str, i: int = 0) -> Question:
    return Question(id=f"t/{i}", domain="arithmetic", split="train", question=f"What is {expression}?",
                    kind="numeric", answers=("0",))


def test_arithmetic_canonical_form():
    key = procedural.canonical_form
    assert key(_arith("5 + 3")) == key(_arith("3 + 5")) == "arithmetic:3 + 5"
    assert key(_arith("7 * 12")) == key(_arith("12 * 7")) == "arithmetic:7 * 12"
    assert key(_arith("8 - 3")) != key(_arith("3 - 8"))
    assert key(_arith("5 + 3")) != key(_arith("5 * 3"))
    assert key(_arith("1 + 2 + 3")) == key(_arith("3 + (2 + 1)"))  # associativity of one operation
    assert splits.assign_split(key(_arith("5 + 3"))) == splits.assign_split(key(_arith("3 + 5")))
    with pytest.raises(ValueError, match="domain"):
        key(Question(id="g", domain="gsm8k", split="test", question="What is 3 + 5?", kind="numeric",
                     answers=("8",)))


def test_whole_level_is_enumerated_once():
    """Level 1 in full: every canonical item once, twins merged, train + test = all."""
    everything = procedural.generate("arithmetic", 135, seed=5, split="all", levels=(1,))
    keys = {q.meta["canonical"] for q in everything}
    assert len(keys) == 135 == procedural.distinct_items("arithmetic", 1)
    assert keys == set(procedural._arithmetic_keys(1))
    by_split = collections.Counter(q.split for q in everything)
    assert by_split == {s: procedural.distinct_items("arithmetic", 1, s) for s in ("train", "test")}
    assert collections.Counter(k.split()[1] for k in keys) == {"+": 45, "-": 45, "*": 45}
    for level in (1, 2, 3):
        parts = [procedural.distinct_items("arithmetic", level, s) for s in ("train", "test")]
        assert sum(parts) == procedural.distinct_items("arithmetic", level)
    assert procedural.distinct_items("arithmetic", 3) == 2 * 90 * 91 // 2
    assert procedural.distinct_items("comparison", 1) is None


def test_level_mix_is_exact():
    qs = procedural.generate("arithmetic", 90, seed=0, split="train", levels=(1, 1, 2))
    assert collections.Counter(q.meta["difficulty"] for q in qs) == {"1": 60, "2": 30}
    assert [q.meta["difficulty"] for q in qs] == ["1", "1", "2"] * 30
    qs = procedural.generate("comparison", 91, seed=0, split="test", levels=(5, 3))
    assert collections.Counter(q.meta["difficulty"] for q in qs) == {"5": 46, "3": 45}


def test_exhausted_level_raises_a_clear_error():
    n_test = procedural.distinct_items("arithmetic", 1, "test")
    assert len(procedural.generate("arithmetic", n_test, split="test", levels=(1,))) == n_test
    with pytest.raises(ValueError, match=rf"arithmetic level 1: found only {n_test} distinct items "
                                         r"for the test split .* need \d+"):
        procedural.generate("arithmetic", n_test + 1, split="test", levels=(1,))
    # A mix that asks too much of level 1 fails rather than drifting toward level 2.
    need = 3 * n_test // 2 + 3
    with pytest.raises(ValueError, match="arithmetic level 1: found only"):
        procedural.generate("arithmetic", need, split="test", levels=(1, 1, 2))
    with pytest.raises(ValueError, match="for all splits"):
        procedural.generate("arithmetic", 136, split="all", levels=(1,))


# Level -> (digits of the first operand, digits of the second, operations allowed).
LEVEL_SHAPES = {1: (1, 1, "+-*"), 2: (2, 1, "+-"), 3: (2, 2, "+-"), 4: (3, 2, "+-"), 5: (3, 3, "+-")}


def test_arithmetic_gold_is_correct_and_levels_graded():
    qs = procedural.generate("arithmetic", 250, seed=0, split="all")
    for q in qs:
        assert q.kind == "numeric"
        expression = q.meta["expression"]
        assert q.question == f"What is {expression}?"
        assert int(q.answers[0]) == _reference_eval(expression) == eval(expression)  # noqa: S307
        assert int(q.answers[0]) >= 0  # no negative results at any level
        a, op, b = expression.split()
        first, second, ops = LEVEL_SHAPES[int(q.meta["difficulty"])]
        assert op in ops and "0" not in (a[0], b[0])
        if first == second:
            assert len(a) == len(b) == first
        else:
            assert (len(a), len(b)) == (first, second)
    levels = collections.Counter(q.meta["difficulty"] for q in qs)
    assert levels == {lv: 50 for lv in "12345"}
    # Difficulty grows: more digits in the answer at higher levels.
    mean_len = {lv: sum(len(q.answers[0]) for q in qs if q.meta["difficulty"] == lv) / 50 for lv in levels}
    assert mean_len["1"] < mean_len["2"] < mean_len["3"] < mean_len["4"] < mean_len["5"]


def test_comparison_permuted_options_share_a_key():
    q = procedural.generate("comparison", 1, seed=2, split="all", levels=(5,))[0]
    order = [2, 0, 3, 1]
    options = tuple(q.options[i] for i in order)
    letter = OPTION_LETTERS[order.index(OPTION_LETTERS.index(q.answers[0]))]
    permuted = dataclasses.replace(q, id="t/permuted", options=options, answers=(letter,), meta={})
    assert procedural.canonical_form(permuted) == procedural.canonical_form(q) == q.meta["canonical"]
    other = "smallest" if "largest" in q.question else "largest"
    flipped = dataclasses.replace(permuted, question=f"Which of these numbers is the {other}?")
    assert procedural.canonical_form(flipped) != q.meta["canonical"]
    assert q.meta["canonical"].split(":")[1] == q.meta["target"]


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
        procedural.generate("arithmetic", 300, levels=(1,))  # 135 one-digit items in all, fewer in train
    with pytest.raises(ValueError, match="split"):
        procedural.distinct_items("arithmetic", 1, "dev")


def test_registered_and_loadable_without_manual_dir(tmp_path):
    assert DOMAINS["arithmetic"].procedural and DOMAINS["arithmetic"].role == "in_domain"
    assert DOMAINS["comparison"].role == "out_of_domain"
    qs = load_questions("arithmetic", None, tmp_path, "test", n=15, seed=2)
    assert qs == procedural.generate("arithmetic", 15, seed=2, split="test")
    assert len(load_questions("comparison", None, tmp_path, "train")) == 1000
    assert not list(tmp_path.iterdir())  # nothing built on disk
