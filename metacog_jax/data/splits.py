"""Deterministic train/test splits and subsampling keyed on stable ids.

The paper holds out 15% of each domain's questions as an in-domain test set.
Several sources publish only one labelled file (MMLU-Pro test, MedQA test,
NQ-open dev, TruthfulQA); those are split here by hashing each question's
stable id, so the assignment

* does not depend on file order, process, machine or Python's hash seed;
* is the same for a question whichever other questions are loaded with it;
* moves only the questions near the threshold when ``test_fraction`` changes.

Sources that publish a real train/test split (GSM8K, PubMedQA, LegalBench,
TriviaQA) keep it; see each builder's ``SPLIT_POLICY``.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence

from metacog_jax.data.records import Question

DEFAULT_TEST_FRACTION = 0.15


def hash_unit(key: str, salt: str = "") -> float:
    """Maps a string to a uniform number in [0, 1) via SHA-256.

    Args:
      key: the string to hash (a question id).
      salt: distinguishes independent uses (split vs. subsampling seed).

    Returns:
      A float in [0, 1), identical on every machine and run.
    """
    digest = hashlib.sha256(f"{salt}\x00{key}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def assign_split(key: str, test_fraction: float = DEFAULT_TEST_FRACTION) -> str:
    """Returns ``"test"`` for about ``test_fraction`` of keys, else ``"train"``.

    Args:
      key: the question's stable id.
      test_fraction: share held out as test, in [0, 1].
    """
    if not 0.0 <= test_fraction <= 1.0:
        raise ValueError(f"test_fraction must be in [0, 1], got {test_fraction}")
    return "test" if hash_unit(key, salt="split") < test_fraction else "train"


def carve_validation(key: str, split: str, validation_fraction: float) -> str:
    """``"validation"`` for about ``validation_fraction`` of the TRAIN questions, else ``split`` unchanged.

    Settings are chosen on this carve, never on test: test questions stay test whatever the fraction, and
    the hash has its own salt, so the carve is independent of the train/test assignment.

    Args:
      key: the question's stable key (its canonical form where equivalent items exist).
      split: the question's split before carving.
      validation_fraction: share of the train questions moved to validation, in [0, 1).
    """
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction}")
    if split == "train" and validation_fraction > 0 and hash_unit(key, salt="validation") < validation_fraction:
        return "validation"
    return split


def with_hashed_split(question: Question,
                      test_fraction: float = DEFAULT_TEST_FRACTION) -> Question:
    """Returns ``question`` with ``split`` set by :func:`assign_split` on its id."""
    split = assign_split(question.id, test_fraction)
    if split == question.split:
        return question
    return dataclasses.replace(question, split=split)


def subsample(questions: Sequence[Question], n: int | None, seed: int = 0) -> list[Question]:
    """Deterministically picks at most ``n`` questions.

    Questions are ranked by a seeded hash of their id, so the choice does not
    depend on input order, and the sample for ``n`` is contained in the sample
    for any larger ``n`` with the same seed (growing a run keeps its questions).
    The result keeps the input order.

    Args:
      questions: the pool; ids must be unique.
      n: how many to keep; ``None`` keeps all. If the pool is smaller, all
        are returned.
      seed: different seeds give independent samples.
    """
    if n is None or n >= len(questions):
        return list(questions)
    if n < 0:
        raise ValueError(f"n must be >= 0 or None, got {n}")
    salt = f"subsample:{seed}"
    ranked = sorted(range(len(questions)), key=lambda i: (hash_unit(questions[i].id, salt), i))
    keep = set(ranked[:n])
    return [q for i, q in enumerate(questions) if i in keep]
