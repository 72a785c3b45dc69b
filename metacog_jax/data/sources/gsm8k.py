"""GSM8K (OpenAI grade-school math): numeric answers.

Files (JSON lines, ``openai/grade-school-math``): ``train.jsonl`` (7,473) and
``test.jsonl`` (1,319). Each has ``question`` and ``answer`` (a worked
solution ending in ``#### <number>``).

Split policy: the published train/test split is kept.
Gold: the number after ``####`` with thousands separators removed.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from pathlib import Path

from metacog_jax.data.records import Question
from metacog_jax.data.sources.base import (MalformedRecordError, QuestionBuilder, make_question,
                                           read_jsonl, require)

_RAW = "https://raw.githubusercontent.com/openai/grade-school-math/master/grade_school_math/data/"
_FINAL = re.compile(r"####\s*(-?[\d,]*\.?\d+)\s*$")


class Gsm8k(QuestionBuilder, skip_registration=True):
    """TFDS builder for GSM8K; splits ``train`` and ``test``."""

    name = "metacog_gsm8k"
    DOMAIN = "gsm8k"
    MANUAL_SUBDIR = "gsm8k"
    FILES = {"train": "train.jsonl", "test": "test.jsonl"}
    URLS = {key: _RAW + rel for key, rel in FILES.items()}
    SPLIT_POLICY = {"train": "train", "test": "test"}
    HOMEPAGE = "https://github.com/openai/grade-school-math"
    DESCRIPTION = "GSM8K math word problems with their final numeric answer."

    def _questions(self, split: str, paths: Mapping[str, Path]) -> Iterator[Question]:
        yield from parse_gsm8k(paths[split], split, self.DOMAIN)


def final_answer(solution: str) -> str | None:
    """Returns the canonical number after ``####`` in a GSM8K solution, or None."""
    match = _FINAL.search(solution.strip())
    if match is None:
        return None
    return match.group(1).replace(",", "")


def parse_gsm8k(path: Path, split: str, domain: str = "gsm8k") -> Iterator[Question]:
    """Yields Questions from one GSM8K JSONL file; ids are ``gsm8k/<split>/<row>``.

    ``<row>`` is the 0-based record number in the file.
    """
    for row_no, (line_no, row) in enumerate(read_jsonl(path)):
        location = f"{path}:{line_no}"
        solution = require(row, "answer", str, location)
        gold = final_answer(solution)
        if gold is None:
            raise MalformedRecordError(f"{location}: field 'answer' has no '#### <number>' final answer")
        yield make_question(
            location,
            id=f"{domain}/{split}/{row_no}",
            domain=domain,
            split=split,
            question=require(row, "question", str, location),
            kind="numeric",
            answers=(gold,),
            meta={"solution": solution, "source_split": split},
        )
