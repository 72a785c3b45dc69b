"""PubMedQA, expert-labelled subset PQA-L (Jin et al. 2019): yes / no / maybe.

Files (``pubmedqa/pubmedqa`` ``data/``): ``ori_pqal.json`` (1,000 questions
keyed by PMID, each with ``QUESTION``, ``CONTEXTS``, ``final_decision``, ...)
and ``test_ground_truth.json`` (PMID -> label for the 500 official test
questions).

Split policy: the official test split is kept: PMIDs in
``test_ground_truth.json`` are ``test``, the other 500 are ``train``.
Context: the abstract sections (``CONTEXTS``) joined by newlines.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

from metacog_jax.data.records import Question
from metacog_jax.data.sources.base import (MalformedRecordError, QuestionBuilder, make_question,
                                           read_json, require)

_RAW = "https://raw.githubusercontent.com/pubmedqa/pubmedqa/master/data/"
LABELS = ("yes", "no", "maybe")


class PubMedQa(QuestionBuilder, skip_registration=True):
    """TFDS builder for PubMedQA PQA-L; splits ``train`` and ``test``."""

    name = "metacog_pubmedqa"
    DOMAIN = "pubmedqa"
    MANUAL_SUBDIR = "pubmedqa"
    FILES = {"questions": "ori_pqal.json", "test_labels": "test_ground_truth.json"}
    URLS = {key: _RAW + rel for key, rel in FILES.items()}
    SPLIT_POLICY = {"train": "train", "test": "test"}
    HOMEPAGE = "https://pubmedqa.github.io/"
    DESCRIPTION = "PubMedQA expert-labelled yes/no/maybe questions with their abstracts."

    def _questions(self, split: str, paths: Mapping[str, Path]) -> Iterator[Question]:
        for question in parse_pubmedqa(paths["questions"], paths["test_labels"], self.DOMAIN):
            if question.split == split:
                yield question


def parse_pubmedqa(questions_path: Path, test_labels_path: Path,
                   domain: str = "pubmedqa") -> Iterator[Question]:
    """Yields all 1,000 PQA-L Questions in file order; ids ``pubmedqa/<PMID>``.

    Raises:
      MalformedRecordError: a field is missing or of the wrong type, a label
        is not yes/no/maybe, or the test file disagrees with
        ``final_decision`` or names an unknown PMID.
    """
    records = read_json(questions_path)
    test_labels = read_json(test_labels_path)
    if not isinstance(records, dict):
        raise MalformedRecordError(f"{questions_path}: expected a JSON object keyed by PMID")
    if not isinstance(test_labels, dict):
        raise MalformedRecordError(f"{test_labels_path}: expected a JSON object PMID -> label")
    unknown = sorted(set(test_labels) - set(records))
    if unknown:
        raise MalformedRecordError(f"{test_labels_path}[{unknown[0]}]: PMID not in {questions_path}")
    for pmid, record in records.items():
        location = f"{questions_path}[{pmid}]"
        label = require(record, "final_decision", str, location)
        if label not in LABELS:
            raise MalformedRecordError(
                f"{location}: field 'final_decision' must be one of {LABELS}, got {label!r}")
        if pmid in test_labels and test_labels[pmid] != label:
            raise MalformedRecordError(
                f"{test_labels_path}[{pmid}]: label {test_labels[pmid]!r} disagrees with "
                f"final_decision {label!r} in {questions_path}")
        contexts = require(record, "CONTEXTS", list, location)
        if any(not isinstance(c, str) for c in contexts):
            raise MalformedRecordError(f"{location}: field 'CONTEXTS' must hold strings")
        sections = record.get("LABELS") or []
        yield make_question(
            location,
            id=f"{domain}/{pmid}",
            domain=domain,
            split="test" if pmid in test_labels else "train",
            question=require(record, "QUESTION", str, location),
            kind="label",
            answers=(label,),
            labels=LABELS,
            context="\n".join(c.strip() for c in contexts),
            meta={"pmid": pmid, "year": str(record.get("YEAR") or ""),
                  "sections": ",".join(str(s) for s in sections),
                  "long_answer": str(record.get("LONG_ANSWER") or ""),
                  "source_split": "test" if pmid in test_labels else "train"},
        )
