"""NQ-open (Natural Questions, open-domain subset): open short answers.

File (JSON lines, ``google-research-datasets/natural-questions``):
``NQ-open.dev.jsonl`` (3,610), each ``{"question": str, "answer": [str, ...]}``.
It stands in for TriviaQA offline.

Split policy: only the dev file is available (the 88k-question train file is
not shipped), so it is split by hashing the id.
Gold: every string in ``answer`` is an accepted alias.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

from metacog_jax.data.records import Question
from metacog_jax.data.sources.base import (MalformedRecordError, QuestionBuilder, SplitFn,
                                           make_question, read_jsonl, require)

_URL = ("https://raw.githubusercontent.com/google-research-datasets/natural-questions/"
        "master/nq_open/NQ-open.dev.jsonl")


class NqOpen(QuestionBuilder, skip_registration=True):
    """TFDS builder for NQ-open dev; one split ``dev``."""

    name = "metacog_nq_open"
    DOMAIN = "nq_open"
    MANUAL_SUBDIR = "nq_open"
    FILES = {"dev": "NQ-open.dev.jsonl"}
    URLS = {"dev": _URL}
    SPLIT_POLICY = {"dev": "hashed"}
    HOMEPAGE = "https://github.com/google-research-datasets/natural-questions/tree/master/nq_open"
    DESCRIPTION = "NQ-open dev questions with all accepted answer strings."

    def _questions(self, split: str, paths: Mapping[str, Path]) -> Iterator[Question]:
        yield from parse_nq_open(paths[split], self.our_split, self.DOMAIN)


def parse_nq_open(path: Path, split_fn: SplitFn, domain: str = "nq_open") -> Iterator[Question]:
    """Yields Questions from ``NQ-open.dev.jsonl``; ids ``nq_open/dev/<row>``."""
    for row_no, (line_no, row) in enumerate(read_jsonl(path)):
        location = f"{path}:{line_no}"
        aliases = require(row, "answer", list, location)
        if not aliases or any(not isinstance(a, str) or not a.strip() for a in aliases):
            raise MalformedRecordError(f"{location}: field 'answer' must be a non-empty list of strings")
        question_id = f"{domain}/dev/{row_no}"
        yield make_question(
            location,
            id=question_id,
            domain=domain,
            split=split_fn("dev", question_id),
            question=require(row, "question", str, location),
            kind="open",
            answers=tuple(aliases),
            meta={"source_split": "dev"},
        )
