"""MedQA-USMLE, 4-option English test set (Jin et al. 2021).

File (JSON lines): ``phrases_no_exclude_test.jsonl`` (1,273), each with
``question``, ``options`` {"A".."D": text}, ``answer_idx`` (letter),
``answer`` (text of the correct option) and ``meta_info`` (USMLE step).

Split policy: only the test file is available offline, so it is split by
hashing the id (the role of MedQA here is out-of-domain evaluation, which
normally uses its ``test`` part; ``split="all"`` gives every question).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

from metacog_jax.data.records import OPTION_LETTERS, Question
from metacog_jax.data.sources.base import (MalformedRecordError, QuestionBuilder, SplitFn,
                                           make_question, read_jsonl, require)

# The official release lives on Google Drive (jind11/MedQA); the Hugging Face
# mirror holds the same 4-option files.
_URL = ("https://huggingface.co/datasets/GBaker/MedQA-USMLE-4-options/resolve/main/"
        "phrases_no_exclude_test.jsonl")


class MedQa(QuestionBuilder, skip_registration=True):
    """TFDS builder for the MedQA-USMLE 4-option test file; split ``test``."""

    name = "metacog_medqa"
    DOMAIN = "medqa"
    MANUAL_SUBDIR = "medqa"
    FILES = {"test": "phrases_no_exclude_test.jsonl"}
    URLS = {"test": _URL}
    SPLIT_POLICY = {"test": "hashed"}
    HOMEPAGE = "https://github.com/jind11/MedQA"
    DESCRIPTION = "MedQA-USMLE 4-option multiple-choice questions."

    def _questions(self, split: str, paths: Mapping[str, Path]) -> Iterator[Question]:
        yield from parse_medqa(paths[split], self.our_split, self.DOMAIN)


def parse_medqa(path: Path, split_fn: SplitFn, domain: str = "medqa") -> Iterator[Question]:
    """Yields Questions from a MedQA JSONL file; ids ``medqa/test/<row>``."""
    for row_no, (line_no, row) in enumerate(read_jsonl(path)):
        location = f"{path}:{line_no}"
        options = require(row, "options", dict, location)
        letters = sorted(options)
        if letters != list(OPTION_LETTERS[: len(letters)]):
            raise MalformedRecordError(
                f"{location}: field 'options' keys must be A, B, C, ...; got {letters}")
        texts = tuple(options[k] for k in letters)
        letter = require(row, "answer_idx", str, location).strip()
        answer_text = row.get("answer")
        if letter in options and isinstance(answer_text, str) and options[letter] != answer_text:
            raise MalformedRecordError(
                f"{location}: field 'answer' {answer_text!r} differs from option {letter} "
                f"{options[letter]!r}")
        question_id = f"{domain}/test/{row_no}"
        yield make_question(
            location,
            id=question_id,
            domain=domain,
            split=split_fn("test", question_id),
            question=require(row, "question", str, location),
            kind="multiple_choice",
            options=texts,
            answers=(letter,),
            meta={"step": str(row.get("meta_info") or ""), "source_split": "test"},
        )
