"""TruthfulQA (Lin, Hilton, Evans 2022), multiple-choice mc1.

Files (``sylinrl/TruthfulQA``): ``TruthfulQA.csv`` (817 questions with
``Type`` and ``Category``; UTF-8 with BOM) and ``data/mc_task.json`` (the same
817 questions with ``mc1_targets``: answer -> 0/1, exactly one 1, the correct
answer always listed first). The JSON is in a different order, so the two are
joined on the question text (whitespace-stripped; one CSV question carries a
trailing space).

Options are the mc1 answers in a deterministic order derived from the
question id (the published order would make "A" always correct). Options go
up to 13 (letters A-M).

Split policy: one file, split by hashing the id. Ids are
``truthfulqa/<row>`` with ``<row>`` the 0-based CSV data row.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator, Mapping
from pathlib import Path

from metacog_jax.data import splits
from metacog_jax.data.records import OPTION_LETTERS, Question
from metacog_jax.data.sources.base import (MalformedRecordError, QuestionBuilder, SplitFn,
                                           make_question, read_json, require)

_RAW = "https://raw.githubusercontent.com/sylinrl/TruthfulQA/main/"


class TruthfulQa(QuestionBuilder, skip_registration=True):
    """TFDS builder for TruthfulQA mc1; one split ``validation`` (the only one)."""

    name = "metacog_truthfulqa"
    DOMAIN = "truthfulqa"
    MANUAL_SUBDIR = "truthfulqa"
    FILES = {"csv": "TruthfulQA.csv", "mc": "mc_task.json"}
    URLS = {"csv": _RAW + "TruthfulQA.csv", "mc": _RAW + "data/mc_task.json"}
    SPLIT_POLICY = {"validation": "hashed"}
    HOMEPAGE = "https://github.com/sylinrl/TruthfulQA"
    DESCRIPTION = "TruthfulQA mc1 multiple-choice questions with shuffled options."

    def _questions(self, split: str, paths: Mapping[str, Path]) -> Iterator[Question]:
        yield from parse_truthfulqa(paths["csv"], paths["mc"], self.our_split, self.DOMAIN)


def option_order(question_id: str, n: int) -> list[int]:
    """A permutation of ``range(n)`` fixed by ``question_id`` (SHA-256 based)."""
    salt = f"truthfulqa-options:{question_id}"
    return sorted(range(n), key=lambda i: splits.hash_unit(str(i), salt))


def parse_truthfulqa(csv_path: Path, mc_path: Path, split_fn: SplitFn,
                     domain: str = "truthfulqa") -> Iterator[Question]:
    """Yields mc1 Questions in CSV order, with category and type in meta.

    Raises:
      MalformedRecordError: a CSV question has no mc1 entry, or an mc1 entry
        does not have exactly one correct answer.
    """
    mc_items = read_json(mc_path)
    if not isinstance(mc_items, list):
        raise MalformedRecordError(f"{mc_path}: expected a JSON list")
    by_text: dict[str, tuple[int, dict]] = {}
    for i, item in enumerate(mc_items):
        text = require(item, "question", str, f"{mc_path}[{i}]").strip()
        by_text[text] = (i, item)
    # utf-8-sig drops the byte-order mark, so the first column is "Type".
    with Path(csv_path).open(encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        for column in ("Type", "Category", "Question"):
            if column not in (reader.fieldnames or []):
                raise MalformedRecordError(f"{csv_path}:1: header lacks column {column!r}")
        for row_no, row in enumerate(reader):
            location = f"{csv_path}:{reader.line_num}"
            text = (row["Question"] or "").strip()
            if text not in by_text:
                raise MalformedRecordError(
                    f"{location}: column 'Question' {text!r} has no entry in {mc_path}")
            mc_index, item = by_text[text]
            mc_location = f"{mc_path}[{mc_index}]"
            targets = require(item, "mc1_targets", dict, mc_location)
            answers = list(targets)
            correct = [a for a, v in targets.items() if v == 1]
            if len(correct) != 1:
                raise MalformedRecordError(
                    f"{mc_location}: field 'mc1_targets' must mark exactly one answer 1, got {len(correct)}")
            question_id = f"{domain}/{row_no}"
            order = option_order(question_id, len(answers))
            options = tuple(answers[i] for i in order)
            letter = OPTION_LETTERS[options.index(correct[0])]
            yield make_question(
                location,
                id=question_id,
                domain=domain,
                split=split_fn("validation", question_id),
                question=text,
                kind="multiple_choice",
                options=options,
                answers=(letter,),
                meta={"category": (row.get("Category") or "").strip(),
                      "type": (row.get("Type") or "").strip(),
                      "source_split": "validation"},
            )
