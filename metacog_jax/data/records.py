"""The one question schema every stage shares, and its JSONL form.

A :class:`Question` is what sources produce, prompts render, the sampler
answers and the grader checks. It is frozen and validated on construction, so
a malformed record fails where it is made, with the field named.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

from metacog_jax.artifacts import iter_jsonl, write_jsonl

# Option letters: letter i of a multiple-choice question is OPTION_LETTERS[i].
# MMLU-Pro uses at most 10 (A-J); TruthfulQA mc1 has up to 13 options (A-M),
# so the schema allows the whole alphabet rather than stopping at J.
OPTION_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
MAX_OPTIONS = len(OPTION_LETTERS)

KINDS = ("multiple_choice", "numeric", "open", "label")
SPLITS = ("train", "validation", "test")

# Gold numeric answers are stored canonically: optional minus, digits, optional
# decimal part; no thousands separators, units or exponents.
_NUMERIC_GOLD = re.compile(r"-?\d+(?:\.\d+)?")

_FIELDS = ("id", "domain", "split", "question", "kind", "options", "answers",
           "labels", "context", "meta")
_REQUIRED = ("id", "domain", "split", "question", "kind", "answers")


class RecordError(ValueError):
    """A question record is invalid; the message names the record and field."""


@dataclasses.dataclass(frozen=True)
class Question:
    """One benchmark or procedural question with its gold answer(s).

    Attributes:
      id: stable unique id, e.g. ``"gsm8k/test/17"`` or ``"mmlu_pro/70"``.
      domain: registry name the question was loaded under (``"gsm8k"``).
      split: ``"train"``, ``"validation"`` (carved from train for choosing settings) or ``"test"``
        (our split, see ``data/splits.py``).
      question: the question text shown to the model.
      kind: ``"multiple_choice" | "numeric" | "open" | "label"``.
      options: multiple choice only: option texts in order; option i has
        letter ``OPTION_LETTERS[i]``. Empty for other kinds.
      answers: gold. multiple_choice: ``(letter,)``; numeric: canonical
        numbers such as ``("18",)``; open: every accepted alias; label:
        ``(label,)`` with the label spelled as in ``labels``.
      labels: label only: the allowed labels, e.g. ``("yes", "no", "maybe")``.
      context: passage the question refers to (abstract, clause); ``""`` if
        none.
      meta: free-form string metadata (category, difficulty, source split).
    """

    id: str
    domain: str
    split: str
    question: str
    kind: str
    options: tuple[str, ...] = ()
    answers: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()
    context: str = ""
    meta: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        # Accept lists (e.g. from JSON) but store tuples so records stay
        # immutable and comparable.
        for name in ("options", "answers", "labels"):
            value = getattr(self, name)
            if isinstance(value, str) or not isinstance(value, (list, tuple)):
                self._fail(name, f"must be a list of strings, got {type(value).__name__}")
            object.__setattr__(self, name, tuple(value))
        if not isinstance(self.meta, Mapping):
            self._fail("meta", f"must be a mapping of str to str, got {type(self.meta).__name__}")
        object.__setattr__(self, "meta", dict(self.meta))
        self._validate()

    def _fail(self, field: str, problem: str) -> None:
        raise RecordError(f"question {self.id!r}: field {field!r} {problem}")

    def _validate(self) -> None:
        for name in ("id", "domain", "split", "question", "kind", "context"):
            if not isinstance(getattr(self, name), str):
                self._fail(name, f"must be a string, got {type(getattr(self, name)).__name__}")
        for name in ("id", "domain", "question"):
            if not getattr(self, name).strip():
                self._fail(name, "must not be empty")
        if self.split not in SPLITS:
            self._fail("split", f"must be one of {SPLITS}, got {self.split!r}")
        if self.kind not in KINDS:
            self._fail("kind", f"must be one of {KINDS}, got {self.kind!r}")
        for name in ("options", "answers", "labels"):
            for i, item in enumerate(getattr(self, name)):
                if not isinstance(item, str):
                    self._fail(name, f"item {i} must be a string, got {type(item).__name__}")
                if not item.strip():
                    self._fail(name, f"item {i} must not be empty")
        for key, value in self.meta.items():
            if not isinstance(key, str) or not isinstance(value, str):
                self._fail("meta", f"entry {key!r} must map str to str, got {type(value).__name__}")
        if not self.answers:
            self._fail("answers", "must hold at least one gold answer")
        if self.kind != "multiple_choice" and self.options:
            self._fail("options", f"must be empty for kind {self.kind!r}")
        if self.kind != "label" and self.labels:
            self._fail("labels", f"must be empty for kind {self.kind!r}")
        getattr(self, f"_validate_{self.kind}")()

    def _validate_multiple_choice(self) -> None:
        if not 2 <= len(self.options) <= MAX_OPTIONS:
            self._fail("options", f"must hold 2 to {MAX_OPTIONS} options, got {len(self.options)}")
        if len(self.answers) != 1:
            self._fail("answers", f"must be exactly one letter, got {self.answers!r}")
        letters = OPTION_LETTERS[: len(self.options)]
        if self.answers[0] not in letters:
            self._fail("answers", f"letter {self.answers[0]!r} is not one of the "
                       f"{len(self.options)} option letters {letters}")

    def _validate_numeric(self) -> None:
        for answer in self.answers:
            if not _NUMERIC_GOLD.fullmatch(answer):
                self._fail("answers", f"numeric gold {answer!r} is not a plain number "
                           "(digits, optional '-' and decimal part, no commas)")

    def _validate_open(self) -> None:
        pass  # any non-empty alias is acceptable

    def _validate_label(self) -> None:
        if len(self.labels) < 2:
            self._fail("labels", f"must hold at least two labels, got {self.labels!r}")
        folded = [label.casefold() for label in self.labels]
        if len(set(folded)) != len(folded):
            self._fail("labels", f"must be distinct ignoring case, got {self.labels!r}")
        if len(self.answers) != 1:
            self._fail("answers", f"must be exactly one label, got {self.answers!r}")
        if self.answers[0] not in self.labels:
            self._fail("answers", f"label {self.answers[0]!r} is not one of {self.labels!r}")

    def __hash__(self) -> int:
        # meta is a dict, so the generated field hash would fail; ids are
        # unique, and equal questions have equal ids.
        return hash(self.id)

    @property
    def option_letters(self) -> str:
        """Letters of this question's options (``""`` unless multiple choice)."""
        return OPTION_LETTERS[: len(self.options)]

    def to_json(self) -> dict[str, Any]:
        """Returns a JSON-serializable dict (tuples become lists)."""
        return {
            "id": self.id,
            "domain": self.domain,
            "split": self.split,
            "question": self.question,
            "kind": self.kind,
            "options": list(self.options),
            "answers": list(self.answers),
            "labels": list(self.labels),
            "context": self.context,
            "meta": dict(self.meta),
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Question:
        """Builds a Question from :meth:`to_json` output.

        Raises:
          RecordError: a required field is missing, a field is unknown, or a
            value is invalid (the message names the field).
        """
        if not isinstance(d, Mapping):
            raise RecordError(f"question record must be a JSON object, got {type(d).__name__}")
        record_id = d.get("id", "<no id>")
        missing = [k for k in _REQUIRED if k not in d]
        if missing:
            raise RecordError(f"question {record_id!r}: missing field(s) {missing}")
        unknown = sorted(set(d) - set(_FIELDS))
        if unknown:
            raise RecordError(f"question {record_id!r}: unknown field(s) {unknown}")
        return cls(**{k: d[k] for k in _FIELDS if k in d})


def write_questions(path: str | os.PathLike[str], questions: Iterable[Question]) -> int:
    """Writes questions as JSON lines, atomically (see :func:`metacog_jax.artifacts.atomic_output`).

    Returns:
      The number of records written.
    """
    return write_jsonl(path, (q.to_json() for q in questions))


def read_questions(path: str | os.PathLike[str]) -> list[Question]:
    """Reads a JSONL file written by :func:`write_questions`.

    Blank lines are skipped.

    Raises:
      FileNotFoundError: ``path`` does not exist.
      RecordError: a line is not valid JSON or not a valid question; the
        message starts with ``file:line``.
    """
    out = []
    for line_no, record in iter_jsonl(path, RecordError):
        try:
            out.append(Question.from_json(record))
        except RecordError as e:
            raise RecordError(f"{path}:{line_no}: {e}") from e
    return out
