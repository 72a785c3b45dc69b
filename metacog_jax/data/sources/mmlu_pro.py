"""MMLU-Pro (TIGER-Lab): multiple choice with 3 to 10 options (A-J).

Files (parquet, as published on the Hugging Face hub ``TIGER-Lab/MMLU-Pro``):
``test-00000-of-00001.parquet`` (12,032 questions) and
``validation-00000-of-00001.parquet`` (70 chain-of-thought exemplars).

Split policy: the test file is the only large labelled file, so it is split
by hashing the id (15% test by default); the 70 validation exemplars are
always ``train`` (they are the published few-shot prompts, never a test set).

Gold: the ``answer`` letter. One test record (question_id 3983) has an
``answer_index`` that disagrees with its ``answer`` letter; the letter is what
the official evaluation compares against, so the letter is kept.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

import pyarrow.parquet as pq

from metacog_jax.data.records import Question
from metacog_jax.data.sources.base import (MalformedRecordError, QuestionBuilder, SplitFn,
                                           make_question, require)

_HF = "https://huggingface.co/datasets/TIGER-Lab/MMLU-Pro/resolve/main/data/"


class MmluPro(QuestionBuilder, skip_registration=True):
    """TFDS builder for MMLU-Pro; splits ``test`` and ``validation``."""

    name = "metacog_mmlu_pro"
    DOMAIN = "mmlu_pro"
    MANUAL_SUBDIR = "mmlu_pro"
    FILES = {"test": "test-00000-of-00001.parquet",
             "validation": "validation-00000-of-00001.parquet"}
    URLS = {key: _HF + rel for key, rel in FILES.items()}
    SPLIT_POLICY = {"test": "hashed", "validation": "train"}
    HOMEPAGE = "https://github.com/TIGER-AI-Lab/MMLU-Pro"
    DESCRIPTION = "MMLU-Pro multiple-choice questions (3-10 options) as metacog_jax Questions."

    def _questions(self, split: str, paths: Mapping[str, Path]) -> Iterator[Question]:
        yield from parse_mmlu_pro(paths[split], split, self.our_split, self.DOMAIN)


def parse_mmlu_pro(path: Path, source_split: str, split_fn: SplitFn,
                   domain: str = "mmlu_pro") -> Iterator[Question]:
    """Yields Questions from one MMLU-Pro parquet file, in file order.

    Args:
      path: the parquet file.
      source_split: ``"test"`` or ``"validation"`` (recorded in meta).
      split_fn: ``(source_split, id) -> "train" | "test"``.
      domain: value for ``Question.domain``.
    """
    rows = pq.read_table(path).to_pylist()
    for row_no, row in enumerate(rows):
        location = f"{path}[row {row_no}]"
        qid = require(row, "question_id", int, location)
        location = f"{path}[row {row_no}, question_id {qid}]"
        options = require(row, "options", list, location)
        answer = require(row, "answer", str, location)
        if any(not isinstance(o, str) for o in options):
            raise MalformedRecordError(f"{location}: field 'options' must hold strings")
        question_id = f"{domain}/{qid}"
        yield make_question(
            location,
            id=question_id,
            domain=domain,
            split=split_fn(source_split, question_id),
            question=require(row, "question", str, location),
            kind="multiple_choice",
            options=tuple(options),
            answers=(answer.strip(),),
            meta={"category": str(row.get("category") or ""),
                  "src": str(row.get("src") or ""),
                  "source_split": source_split},
        )
