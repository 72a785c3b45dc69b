"""File-free domains generated on the fly, with graded difficulty.

Two families, so a small instruct model is right on some questions and wrong
on others (which calibration training needs):

* ``arithmetic`` (numeric, in-domain): integer +, -, * expressions; the level
  (1-5) sets digit counts and the number of operations.
* ``comparison`` (multiple choice, out-of-domain): "Which of these numbers is
  the largest/smallest?" over 4 options; the level sets how close the numbers
  are, up to decimals with different lengths (3.9 vs 3.45 vs 3.125), a
  classic trap.

Generation is deterministic: question ``i`` depends only on
``(name, seed, i)`` (a string-seeded ``random.Random``, which is stable
across platforms and Python hash seeds), so ``generate(n=10)`` is a prefix of
``generate(n=100)``. The train/test split hashes the *question text* (not the
seed), so an identical question never lands in both splits, whatever seeds
the two splits use. Repeated texts within one call are skipped.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from decimal import Decimal

from metacog_jax.data import splits
from metacog_jax.data.records import OPTION_LETTERS, Question

LEVELS = (1, 2, 3, 4, 5)
ROLES = {"arithmetic": "in_domain", "comparison": "out_of_domain"}
KINDS = {"arithmetic": "numeric", "comparison": "multiple_choice"}


def _evaluate(terms: Sequence[int], ops: Sequence[str]) -> int:
    """Evaluates ``terms[0] ops[0] terms[1] ...`` with * before + and -."""
    # Fold products first, then add/subtract left to right.
    values, signs = [terms[0]], []
    for op, term in zip(ops, terms[1:]):
        if op == "*":
            values[-1] *= term
        else:
            values.append(term)
            signs.append(op)
    total = values[0]
    for sign, value in zip(signs, values[1:]):
        total = total + value if sign == "+" else total - value
    return total


def _arithmetic(rng: random.Random, level: int) -> tuple[str, str, dict[str, str]]:
    """Returns (question text, canonical answer, meta) for one expression."""
    def num(digits: int) -> int:
        return rng.randint(10 ** (digits - 1) if digits > 1 else 1, 10**digits - 1)

    if level == 1:  # one-digit sum, difference or product: SmolLM2-135M gets about a third right
        a, b = num(1), num(1)
        op = rng.choice("+-*")
        if op == "-" and b > a:
            a, b = b, a
        terms, ops = [a, b], [op]
    elif level == 2:
        terms, ops = [num(2), num(1)], [rng.choice("+-")]
    elif level == 3:
        if rng.random() < 0.5:
            terms, ops = [num(2), num(1)], ["*"]
        else:
            terms, ops = [num(2), num(2), num(2)], [rng.choice("+-"), rng.choice("+-")]
    elif level == 4:
        if rng.random() < 0.5:
            terms, ops = [num(2), num(2)], ["*"]
        else:
            terms, ops = [num(2), num(1), num(2)], ["*", rng.choice("+-")]
            if rng.random() < 0.5:  # put the product second: a +- b * c
                terms, ops = [terms[2], terms[0], terms[1]], [ops[1], "*"]
    elif level == 5:
        if rng.random() < 0.5:
            terms, ops = [num(3), num(2), num(3)], ["*", rng.choice("+-")]
        else:
            terms, ops = [num(3), num(3), num(2), num(2)], [rng.choice("+-"), "*", rng.choice("+-")]
    else:
        raise ValueError(f"arithmetic level must be one of {LEVELS}, got {level}")
    expression = " ".join([str(terms[0])] + [f"{op} {t}" for op, t in zip(ops, terms[1:])])
    answer = _evaluate(terms, ops)
    return f"What is {expression}?", str(answer), {"expression": expression}


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
    return f"Which of these numbers is the {target}?", tuple(texts), letter, {"target": target}


def _make(name: str, rng: random.Random, level: int, qid: str, seed: int,
          test_fraction: float) -> Question:
    meta = {"difficulty": str(level), "seed": str(seed)}
    if name == "arithmetic":
        text, answer, extra = _arithmetic(rng, level)
        options: tuple[str, ...] = ()
        kind = "numeric"
    elif name == "comparison":
        text, options, answer, extra = _comparison(rng, level)
        kind = "multiple_choice"
    else:
        raise ValueError(f"unknown procedural domain {name!r}; known: {sorted(ROLES)}")
    meta.update(extra)
    # Split on the text (+ options), so the same question cannot be in both.
    split_key = f"{name}:{text}|{'|'.join(options)}"
    return Question(id=qid, domain=name, split=splits.assign_split(split_key, test_fraction),
                    question=text, kind=kind, options=options, answers=(answer,), meta=meta)


def generate(name: str, n: int, seed: int = 0, split: str = "train", *,
             test_fraction: float = splits.DEFAULT_TEST_FRACTION,
             levels: Sequence[int] = LEVELS) -> list[Question]:
    """Generates ``n`` questions of a procedural domain for one split.

    Candidates ``i = 0, 1, ...`` are drawn with level ``levels[i % len(levels)]``
    and kept when their hashed split equals ``split`` and their text is new,
    until ``n`` are kept.

    Args:
      name: ``"arithmetic"`` or ``"comparison"``.
      n: number of questions (>= 0).
      seed: generation seed; ids are ``<name>/s<seed>/<i>``.
      split: ``"train"``, ``"test"`` or ``"all"`` (no filtering).
      test_fraction: share of the question space assigned to test.
      levels: difficulty levels to cycle through (subset of 1-5).

    Returns:
      ``n`` Questions, deterministic in all arguments.

    Raises:
      ValueError: unknown name, split or level, or the domain cannot supply
        ``n`` distinct questions for the split.
    """
    if name not in ROLES:
        raise ValueError(f"unknown procedural domain {name!r}; known: {sorted(ROLES)}")
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    bad = [lv for lv in levels if lv not in LEVELS]
    if bad or not levels:
        raise ValueError(f"levels must be a non-empty subset of {LEVELS}, got {list(levels)}")
    out: list[Question] = []
    seen: set[tuple[str, tuple[str, ...]]] = set()
    max_candidates = 50 * n + 1000
    i = 0
    while len(out) < n:
        if i >= max_candidates:
            raise ValueError(f"{name}: found only {len(out)} distinct {split} questions in "
                             f"{max_candidates} candidates (levels {list(levels)}); ask for fewer")
        rng = random.Random(f"{name}:{seed}:{i}")
        q = _make(name, rng, levels[i % len(levels)], f"{name}/s{seed}/{i}", seed, test_fraction)
        i += 1
        key = (q.question, q.options)
        if (split != "all" and q.split != split) or key in seen:
            continue
        seen.add(key)
        out.append(q)
    return out

