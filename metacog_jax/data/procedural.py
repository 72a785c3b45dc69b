"""File-free domains generated on the fly, with graded difficulty.

Two families, so a small instruct model is right on some questions and wrong
on others (which calibration training needs):

* ``arithmetic`` (numeric, in-domain): one operation on two integers, the
  level sets the digit counts so that the levels span the competence of the
  embedded model (SmolLM2-135M-Instruct). The figures below were measured
  before this family was defined, on additions only, asked as a plain chat
  question (not this project's prompt) and answered greedily; they are a
  guide to the difficulty, not a property of this module:

  =====  ==================================================  ===============
  level  items                                               measured
  =====  ==================================================  ===============
  1      one-digit ``a + b``, ``a - b`` (a >= b), ``a * b``  1+1 digits: 88%
  2      two-digit ``+``/``-`` one-digit                     2+1 digits: 31%
  3      two-digit ``+``/``-`` two-digit                     2+2 digits: 12%
  4      three-digit ``+``/``-`` two-digit                   not measured
  5      three-digit ``+``/``-`` three-digit                 3+3 digits: 6%
  =====  ==================================================  ===============

  Operands are positive (1-9 for one digit, no leading zeros) and a
  difference always puts the larger operand first, so no answer is negative:
  negative results would add a second skill (the sign) on top of the digit
  count that the levels are meant to grade. Level 1 mixes three operations
  because one-digit sums alone are only 45 distinct items once commuted
  twins are merged; with differences and products it has 135.
  Distinct items per level (train / test at the default test_fraction 0.15;
  :func:`distinct_items` counts them): 1: 135 (119 / 16), 2: 1,620
  (1,383 / 237), 3: 8,190 (6,979 / 1,211), 4: 162,000 (137,771 / 24,229),
  5: 810,900 (688,942 / 121,958). Level 1 therefore caps a test set's
  level-1 share: 16 items at 0.15.
* ``comparison`` (multiple choice, out-of-domain): "Which of these numbers is
  the largest/smallest?" over 4 options; the level sets how close the numbers
  are, up to decimals with different lengths (3.9 vs 3.45 vs 3.125), a
  classic trap.

Canonical form. Equivalent items share one key (:func:`canonical_form`,
stored in ``meta["canonical"]``): the operands of ``+`` and ``*`` are sorted
(``"5 + 3"`` and ``"3 + 5"`` are one item), ``-`` keeps its order; a
comparison is its target and the sorted set of its numbers (the same numbers
in another option order are one item). The train/test split hashes that key
(not the text, not the seed), so equivalent items never straddle train and
test, whatever seeds the two splits use; and one :func:`generate` call never
returns two items with the same key.

Generation is deterministic. The ``k``-th question kept has level
``levels[k % len(levels)]`` (so ``levels=(1, 1, 2)`` gives exactly two
level-1 items per level-2 item), found by drawing candidates of that level
until one is new and in the requested split. Candidate ``j`` of a level
depends only on ``(name, seed, level, j)`` (a string-seeded
``random.Random``, stable across platforms and Python hash seeds), so
``generate(n=10)`` is a prefix of ``generate(n=100)``. Its id is
``<name>/s<seed>/<i>`` with ``i = j * len(LEVELS) + level - 1``: unique within
a call, never shared by a train and a test question of the same seed, and the
same whichever ``levels`` or ``n`` produced it. When a level has no new item
left for the split, :func:`generate` raises a ``ValueError`` naming the
domain, level, split and count found; it never changes the mix silently.
"""

from __future__ import annotations

import ast
import collections
import functools
import random
from collections.abc import Iterator, Sequence
from decimal import Decimal

from metacog_jax.data import splits
from metacog_jax.data.records import OPTION_LETTERS, Question

LEVELS = (1, 2, 3, 4, 5)
SPLIT_CHOICES = ("train", "validation", "test", "all")
ROLES = {"arithmetic": "in_domain", "comparison": "out_of_domain"}
KINDS = {"arithmetic": "numeric", "comparison": "multiple_choice"}

# Arithmetic level -> (digits of the first operand, digits of the second, operations).
_ARITHMETIC_LEVELS = {
    1: (1, 1, "+-*"),
    2: (2, 1, "+-"),
    3: (2, 2, "+-"),
    4: (3, 2, "+-"),
    5: (3, 3, "+-"),
}
# A level is exhausted for a split after this many draws in a row without a new item. The rarest
# level-1 item has probability 1/243 per draw, so a miss by chance has odds of about e^-80; arithmetic
# levels are checked against their exact count much earlier (after _CHECK_AFTER misses).
_MAX_MISSES = 20_000
_CHECK_AFTER = 500


# -- canonical form -------------------------------------------------------------------------------------
def _canonical_binary(a: int, op: str, b: int) -> str:
    """The canonical key of ``a op b`` (operands of + and * sorted)."""
    if op in "+*" and b < a:
        a, b = b, a
    return f"arithmetic:{a} {op} {b}"


_AST_OPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*"}


def _canonical_node(node: ast.AST, top: bool = False) -> str:
    """Canonical text of an expression tree: chains of + or * flattened and sorted."""
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return str(node.value)
    if not (isinstance(node, ast.BinOp) and type(node.op) in _AST_OPS):
        raise ValueError(f"not an integer +, -, * expression: {ast.dump(node)}")
    op = _AST_OPS[type(node.op)]
    if op == "-":
        parts = [_canonical_node(node.left), _canonical_node(node.right)]
    else:  # flatten a + b + c (or a * b * c) and sort the terms
        terms, stack = [], [node]
        while stack:
            current = stack.pop()
            if isinstance(current, ast.BinOp) and type(current.op) is type(node.op):
                stack += [current.left, current.right]
            else:
                terms.append(current)
        parts = sorted((_canonical_node(t) for t in terms),
                       key=lambda s: (0, int(s), s) if s.lstrip("-").isdigit() else (1, 0, s))
    text = f" {op} ".join(parts)
    return text if top else f"({text})"


def canonical_expression(expression: str) -> str:
    """The canonical key of an arithmetic expression such as ``"5 + 3"`` (-> ``"arithmetic:3 + 5"``).

    Operands of ``+`` and ``*`` are sorted (commutativity; chains of the same
    operation are flattened first, associativity); ``-`` keeps its order.
    """
    return "arithmetic:" + _canonical_node(ast.parse(expression, mode="eval").body, top=True)


def _canonical_comparison(target: str, options: Sequence[str]) -> str:
    values = sorted(Decimal(o) for o in options)
    return f"comparison:{target}:" + "|".join(_decimal_text(v) for v in values)


def canonical_form(question: Question) -> str:
    """The key shared by equivalent procedural questions (the split is hashed on it).

    Arithmetic: the expression with the operands of ``+`` and ``*`` sorted
    (``"What is 5 + 3?"`` and ``"What is 3 + 5?"`` give ``"arithmetic:3 + 5"``).
    Comparison: the target and the sorted numbers (``"comparison:largest:2|7|10|31"``),
    whatever the option order.

    Raises:
      ValueError: not an arithmetic or comparison question.
    """
    if question.domain == "arithmetic":
        expression = question.meta.get("expression")
        if expression is None:
            text = question.question.strip()
            if not (text.startswith("What is ") and text.endswith("?")):
                raise ValueError(f"question {question.id!r}: no arithmetic expression in {text!r}")
            expression = text[len("What is "):-1]
        return canonical_expression(expression)
    if question.domain == "comparison":
        target = question.meta.get("target")
        if target is None:
            target = "largest" if "largest" in question.question else "smallest"
        return _canonical_comparison(target, question.options)
    raise ValueError(f"question {question.id!r}: no canonical form for domain {question.domain!r}; "
                     f"known: {sorted(ROLES)}")


# -- arithmetic -----------------------------------------------------------------------------------------
def _num(rng: random.Random, digits: int) -> int:
    return rng.randint(10 ** (digits - 1) if digits > 1 else 1, 10**digits - 1)


def _arithmetic(rng: random.Random, level: int) -> tuple[str, str, dict[str, str]]:
    """Returns (question text, canonical answer, meta) for one expression."""
    if level not in _ARITHMETIC_LEVELS:
        raise ValueError(f"arithmetic level must be one of {LEVELS}, got {level}")
    first, second, ops = _ARITHMETIC_LEVELS[level]
    op = rng.choice(ops)
    a, b = _num(rng, first), _num(rng, second)
    if op == "-" and b > a:  # no negative results
        a, b = b, a
    # Equal digit counts: + and * come in either order (a and b are independent draws). Mixed counts
    # keep the longer operand first, the form the difficulty was measured on.
    answer = a + b if op == "+" else a - b if op == "-" else a * b
    expression = f"{a} {op} {b}"
    return f"What is {expression}?", str(answer), {"expression": expression,
                                                    "canonical": _canonical_binary(a, op, b)}


def _arithmetic_keys(level: int) -> Iterator[str]:
    """Every canonical key a level can produce."""
    first, second, ops = _ARITHMETIC_LEVELS[level]
    lo1, hi1 = (10 ** (first - 1) if first > 1 else 1), 10**first - 1
    lo2, hi2 = (10 ** (second - 1) if second > 1 else 1), 10**second - 1
    for a in range(lo1, hi1 + 1):
        for b in range(lo2, hi2 + 1):
            for op in ops:
                if first == second and b > a:
                    continue  # equal digit counts: each pair once, larger first (+ and * sort it back)
                yield _canonical_binary(a, op, b)


@functools.lru_cache(maxsize=None)
def _arithmetic_count(level: int, split: str, test_fraction: float, validation_fraction: float = 0.0) -> int:
    if split == "all":
        return sum(1 for _ in _arithmetic_keys(level))
    return sum(1 for key in _arithmetic_keys(level) if _split_of(key, test_fraction, validation_fraction) == split)


def _split_of(key: str, test_fraction: float, validation_fraction: float) -> str:
    """train / validation / test of a canonical key (validation is carved from train only)."""
    return splits.carve_validation(key, splits.assign_split(key, test_fraction), validation_fraction)


def distinct_items(name: str, level: int, split: str = "all",
                   test_fraction: float = splits.DEFAULT_TEST_FRACTION, validation_fraction: float = 0.0) -> int | None:
    """How many distinct (canonical) items a level has, in one split or in all.

    Args:
      name: ``"arithmetic"`` or ``"comparison"``.
      level: one of ``LEVELS``.
      split: ``"train"``, ``"validation"``, ``"test"`` or ``"all"``.
      test_fraction, validation_fraction: as for :func:`generate`.

    Returns:
      The exact count for arithmetic (by enumeration; level 5 takes about a
      second, then it is cached). ``None`` for comparison, whose levels have
      millions of items (level 1, the smallest of the first four: 7.5
      million), more than any request runs into.
    """
    if name not in ROLES:
        raise ValueError(f"unknown procedural domain {name!r}; known: {sorted(ROLES)}")
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level}")
    if split not in SPLIT_CHOICES:
        raise ValueError(f"split must be one of {SPLIT_CHOICES}, got {split!r}")
    if name == "comparison":
        return None
    return _arithmetic_count(level, split, float(test_fraction), float(validation_fraction))


# -- comparison -----------------------------------------------------------------------------------------
def _decimal_text(value: Decimal) -> str:
    return format(value.normalize(), "f")


def _comparison_numbers(rng: random.Random, level: int) -> list[Decimal]:
    """Four distinct numbers whose closeness grows with ``level``."""
    if level == 1:
        return [Decimal(v) for v in rng.sample(range(1, 100), 4)]
    if level == 2:
        return [Decimal(v) for v in rng.sample(range(100, 1000), 4)]
    if level == 3:
        base = rng.randint(10, 99) * 100
        return [Decimal(base + v) for v in rng.sample(range(100), 4)]
    if level == 4:
        # One or two decimals around the same integer part.
        whole = rng.randint(0, 9)
        return [Decimal(whole) + Decimal(v) / 100 for v in rng.sample(range(1, 100), 4)]
    if level == 5:
        # Longer decimals are not larger: mix 1 to 4 decimal places, and make
        # the whole set negative half the time.
        whole = Decimal(rng.randint(0, 9))
        values: list[Decimal] = []
        while len(values) < 4:
            places = rng.randint(1, 4)
            frac = Decimal(rng.randint(1, 10**places - 1)) / (Decimal(10) ** places)
            value = whole + frac
            if value.normalize() not in values:
                values.append(value.normalize())
        if rng.random() < 0.5:
            values = [-v for v in values]
        return values
    raise ValueError(f"comparison level must be one of {LEVELS}, got {level}")


def _comparison(rng: random.Random, level: int) -> tuple[str, tuple[str, ...], str, dict[str, str]]:
    """Returns (question, options, answer letter, meta)."""
    while True:
        numbers = _comparison_numbers(rng, level)
        texts = [_decimal_text(v) for v in numbers]
        if len(set(texts)) == len(texts) and len(set(numbers)) == len(numbers):
            break
    target = rng.choice(("largest", "smallest"))
    best = max(numbers) if target == "largest" else min(numbers)
    letter = OPTION_LETTERS[numbers.index(best)]
    return (f"Which of these numbers is the {target}?", tuple(texts), letter,
            {"target": target, "canonical": _canonical_comparison(target, texts)})


# -- generation -----------------------------------------------------------------------------------------
def _candidate(name: str, seed: int, level: int, j: int, test_fraction: float,
               validation_fraction: float) -> tuple[str, str, tuple[str, ...], str, dict[str, str]]:
    """Draw ``j`` of a level: (split, text, options, answer, meta); meta["canonical"] is the key."""
    rng = random.Random(f"{name}:{seed}:{level}:{j}")
    if name == "arithmetic":
        text, answer, meta = _arithmetic(rng, level)
        options: tuple[str, ...] = ()
    else:
        text, options, answer, meta = _comparison(rng, level)
    return _split_of(meta["canonical"], test_fraction, validation_fraction), text, options, answer, meta


def _exhausted(name: str, level: int, split: str, found: int, levels: Sequence[int], n: int,
               test_fraction: float, validation_fraction: float) -> ValueError:
    need = sum(1 for k in range(n) if levels[k % len(levels)] == level)
    total = distinct_items(name, level, split, test_fraction, validation_fraction)
    where = f"the {split} split" if split != "all" else "all splits"
    has = f"has {total}" if total is not None else "ran out"
    return ValueError(
        f"{name} level {level}: found only {found} distinct items for {where} (the level {has} at "
        f"test_fraction={test_fraction}), but {n} questions with levels {list(levels)} need {need}; "
        f"ask for fewer or give this level a smaller share")


def generate(name: str, n: int, seed: int = 0, split: str = "train", *,
             test_fraction: float = splits.DEFAULT_TEST_FRACTION,
             levels: Sequence[int] = LEVELS, validation_fraction: float = 0.0) -> list[Question]:
    """Generates ``n`` questions of a procedural domain for one split.

    Question ``k`` has level ``levels[k % len(levels)]``: the level's
    candidates are drawn in turn until one is in ``split`` and its canonical
    form (see :func:`canonical_form`) is new to this call.

    Args:
      name: ``"arithmetic"`` or ``"comparison"``.
      n: number of questions (>= 0).
      seed: generation seed; ids are ``<name>/s<seed>/<i>``.
      split: ``"train"``, ``"validation"``, ``"test"`` or ``"all"`` (no filtering).
      test_fraction: share of the (canonical) question space assigned to test.
      validation_fraction: share of the train items carved out as validation
        (``splits.carve_validation``; 0 = none, train keeps them).
      levels: difficulty levels to cycle through (from 1-5; repeats set the
        proportions, e.g. ``(1, 1, 2)`` is two thirds level 1).

    Returns:
      ``n`` Questions, deterministic in all arguments; a call's result is a
      prefix of the result for a larger ``n``.

    Raises:
      ValueError: unknown name, split or level, or a level has fewer distinct
        items for the split than its share of ``n`` (the message names the
        domain, level, split and count found; see :func:`distinct_items`).
    """
    if name not in ROLES:
        raise ValueError(f"unknown procedural domain {name!r}; known: {sorted(ROLES)}")
    if split not in SPLIT_CHOICES:
        raise ValueError(f"split must be one of {SPLIT_CHOICES}, got {split!r}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    levels = tuple(levels)
    bad = [lv for lv in levels if lv not in LEVELS]
    if bad or not levels:
        raise ValueError(f"levels must be a non-empty subset of {LEVELS}, got {list(levels)}")
    out: list[Question] = []
    seen: set[str] = set()
    draws = dict.fromkeys(levels, 0)  # next candidate index j per level
    found: collections.Counter[int] = collections.Counter()
    for k in range(n):
        level = levels[k % len(levels)]
        misses = 0
        while True:
            j = draws[level]
            draws[level] += 1
            q_split, text, options, answer, extra = _candidate(name, seed, level, j, test_fraction,
                                                                 validation_fraction)
            if extra["canonical"] not in seen and split in ("all", q_split):
                break
            misses += 1
            if misses == _CHECK_AFTER and name == "arithmetic" and \
                    found[level] >= distinct_items(name, level, split, test_fraction, validation_fraction):
                raise _exhausted(name, level, split, found[level], levels, n, test_fraction, validation_fraction)
            if misses >= _MAX_MISSES:
                raise _exhausted(name, level, split, found[level], levels, n, test_fraction, validation_fraction)
        seen.add(extra["canonical"])
        found[level] += 1
        meta = {"difficulty": str(level), "seed": str(seed), **extra}
        out.append(Question(id=f"{name}/s{seed}/{j * len(LEVELS) + level - 1}", domain=name,
                            split=q_split, question=text, kind=KINDS[name], options=options,
                            answers=(answer,), meta=meta))
    return out
