"""LegalBench (Guha et al. 2023): three binary Yes/No tasks.

Tasks (TFDS builder configs): ``hearsay`` (94 test + 5 train),
``contract_qa`` (80 + 8) and ``learned_hands_courts`` (192 + 6). Files are
``<task>/{train,test}.tsv`` with a header row; columns per task are listed in
``TASKS``. ``train.tsv`` is the task's few-shot set from
``HazyResearch/legalbench``; ``test.tsv`` is the released test file.

Split policy: published train/test kept. Question text is the task's
instruction (our own wording of what the task asks) plus, for contract_qa,
the row's question; the case text, clause or post goes in ``context``.
Labels: ``("Yes", "No")``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from pathlib import Path

import tensorflow_datasets as tfds

from metacog_jax.data.records import Question
from metacog_jax.data.sources.base import (MalformedRecordError, QuestionBuilder, make_question,
                                           read_tsv)

LABELS = ("Yes", "No")
_TRAIN_URL = "https://raw.githubusercontent.com/HazyResearch/legalbench/main/tasks/{task}/train.tsv"
_TEST_URL = "https://huggingface.co/datasets/nguha/legalbench/resolve/main/data/{task}/test.tsv"


@dataclasses.dataclass(frozen=True)
class LegalTask:
    """How to read one LegalBench task's rows.

    Attributes:
      instruction: what the model is asked about ``context`` (our wording).
      columns: columns every row must have.
      question_column: per-row question appended to the instruction, if any.
      meta_columns: extra columns kept in ``Question.meta``.
    """

    instruction: str
    columns: tuple[str, ...]
    question_column: str | None = None
    meta_columns: tuple[str, ...] = ()


TASKS: dict[str, LegalTask] = {
    "hearsay": LegalTask(
        instruction=("Hearsay is a statement made out of court that is offered to prove "
                     "the truth of what it asserts. Is the evidence described here hearsay?"),
        columns=("index", "answer", "text"),
        meta_columns=("slice",),
    ),
    "contract_qa": LegalTask(
        instruction="Answer the question about the contract clause.",
        columns=("index", "question", "text", "answer"),
        question_column="question",
    ),
    "learned_hands_courts": LegalTask(
        instruction=("Does this post by a member of the public raise an issue about dealing "
                     "with courts or lawyers, such as court procedure and rules, filing a "
                     "lawsuit, hiring a lawyer, or representing oneself?"),
        columns=("index", "text", "answer"),
    ),
}


class LegalBench(QuestionBuilder, skip_registration=True):
    """TFDS builder for LegalBench; one builder config per task."""

    name = "metacog_legalbench"
    BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=task, description=f"LegalBench task {task}")
                       for task in TASKS]
    MANUAL_SUBDIR = "legalbench"
    SPLIT_POLICY = {"train": "train", "test": "test"}
    HOMEPAGE = "https://hazyresearch.stanford.edu/legalbench/"
    DESCRIPTION = "LegalBench Yes/No classification tasks."

    @property
    def task(self) -> str:
        return self.builder_config.name

    @property
    def DOMAIN(self) -> str:  # noqa: N802 (overrides the class attribute of the base)
        return f"legalbench_{self.task}"

    @property
    def FILES(self) -> dict[str, str]:  # noqa: N802
        return {split: f"{self.task}/{split}.tsv" for split in ("train", "test")}

    @property
    def URLS(self) -> dict[str, str]:  # noqa: N802
        return {"train": _TRAIN_URL.format(task=self.task), "test": _TEST_URL.format(task=self.task)}

    def _questions(self, split: str, paths: Mapping[str, Path]) -> Iterator[Question]:
        yield from parse_legalbench(paths[split], self.task, split, self.DOMAIN)


def parse_legalbench(path: Path, task: str, split: str, domain: str | None = None) -> Iterator[Question]:
    """Yields Questions of one task file; ids ``legalbench/<task>/<split>/<index>``.

    Raises:
      MalformedRecordError: unknown task, missing column, or an answer that
        is not Yes/No (``file:line`` and the column named).
    """
    if task not in TASKS:
        raise ValueError(f"unknown LegalBench task {task!r}; known: {sorted(TASKS)}")
    spec = TASKS[task]
    domain = domain or f"legalbench_{task}"
    for line_no, row in read_tsv(path, spec.columns):
        location = f"{path}:{line_no}"
        answer = row["answer"].strip()
        if answer not in LABELS:
            raise MalformedRecordError(f"{location}: column 'answer' must be one of {LABELS}, got {answer!r}")
        question = spec.instruction
        if spec.question_column is not None:
            question = f"{question}\n{row[spec.question_column].strip()}"
        meta = {"task": task, "source_split": split}
        meta.update({c: (row.get(c) or "").strip() for c in spec.meta_columns})
        yield make_question(
            location,
            id=f"legalbench/{task}/{split}/{row['index'].strip()}",
            domain=domain,
            split=split,
            question=question,
            kind="label",
            answers=(answer,),
            labels=LABELS,
            context=row["text"].strip(),
            meta=meta,
        )
