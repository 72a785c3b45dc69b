"""TriviaQA (Joshi et al. 2017): open answers graded against aliases.

Official files are JSON documents ``{"Data": [...], "Split": ..., ...}`` where
each item has ``Question``, ``QuestionId`` and ``Answer`` with ``Value``,
``Aliases`` and ``NormalizedAliases``. Either release works:

* unfiltered: ``triviaqa-unfiltered/unfiltered-web-{train,dev}.json``
  (the "unfiltered.nocontext" questions; preferred, one entry per question);
* rc: ``qa/wikipedia-{train,dev}.json`` or ``qa/web-{train,dev}.json``.

No copy is available offline here (see shared/data/SOURCES.md), so without a
manual dir the unfiltered archive is downloaded from the official site. With
a manual dir, put the JSON file(s) in ``<manual_dir>/triviaqa/`` (directly or
keeping the archive's subfolder). The dev file is required, train optional.

Split policy: published train -> ``train``; published dev -> ``test`` (the
official test file has no answers).
Gold: ``Value``, then ``Aliases``, then ``NormalizedAliases``, de-duplicated.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

from metacog_jax.data.records import Question
from metacog_jax.data.sources.base import (SOURCES_HINT, MalformedRecordError, MissingSourceError,
                                           QuestionBuilder, SplitFn, make_question, read_json,
                                           require)

_URL = "https://nlp.cs.washington.edu/triviaqa/data/triviaqa-unfiltered.tar.gz"

# Searched in order under the manual dir; the first that exists is used.
_CANDIDATES = {
    split: (f"unfiltered-web-{name}.json", f"triviaqa-unfiltered/unfiltered-web-{name}.json",
            f"wikipedia-{name}.json", f"qa/wikipedia-{name}.json",
            f"web-{name}.json", f"qa/web-{name}.json")
    for split, name in (("train", "train"), ("validation", "dev"))
}


class TriviaQa(QuestionBuilder, skip_registration=True):
    """TFDS builder for TriviaQA questions without evidence documents."""

    name = "metacog_triviaqa"
    DOMAIN = "triviaqa"
    MANUAL_SUBDIR = "triviaqa"
    FILES = {split: names[0] for split, names in _CANDIDATES.items()}
    URLS = {"archive": _URL}
    SPLIT_POLICY = {"train": "train", "validation": "test"}
    HOMEPAGE = "https://nlp.cs.washington.edu/triviaqa/"
    DESCRIPTION = "TriviaQA questions (no context) with all answer aliases."

    def resolve_files(self, dl_manager) -> dict[str, Path]:
        folder = self.manual_path()
        if folder is None:
            if dl_manager is None:
                raise MissingSourceError(f"{self.name}: no manual dir and no download manager")
            root = Path(dl_manager.download_and_extract(_URL)) / "triviaqa-unfiltered"
            return {split: root / names[0] for split, names in _CANDIDATES.items()}
        if not folder.is_dir():
            raise MissingSourceError(
                f"{self.name}: manual dir {folder} does not exist (looked for "
                f"{_CANDIDATES['validation'][0]} there). {SOURCES_HINT}")
        found = {}
        for split, names in _CANDIDATES.items():
            for name in names:
                if (folder / name).is_file():
                    found[split] = folder / name
                    break
        if "validation" not in found:
            raise MissingSourceError(
                f"{self.name}: no dev file in {folder}; looked for {list(_CANDIDATES['validation'])}. "
                f"{SOURCES_HINT}")
        return found

    def _split_generators(self, dl_manager):
        paths = self.resolve_files(dl_manager)
        return {split: self._generate_examples(split, paths) for split in paths}

    def _questions(self, split: str, paths: Mapping[str, Path]) -> Iterator[Question]:
        yield from parse_triviaqa(paths[split], split, self.our_split, self.DOMAIN)


def parse_triviaqa(path: Path, source_split: str, split_fn: SplitFn,
                   domain: str = "triviaqa") -> Iterator[Question]:
    """Yields Questions from one official TriviaQA JSON file.

    Items without an ``Answer`` (the test-without-answers file) are an error:
    they cannot be graded. Ids are ``triviaqa/<QuestionId>``; an id repeated
    within the file (rc files list a question once per evidence set) keeps
    its first occurrence.
    """
    document = read_json(path)
    items = require(document, "Data", list, str(path))
    seen = set()
    for i, item in enumerate(items):
        location = f"{path}[Data[{i}]]"
        qid = require(item, "QuestionId", str, location)
        location = f"{path}[Data[{i}], QuestionId {qid}]"
        answer = require(item, "Answer", dict, location)
        aliases: list[str] = []
        value = answer.get("Value")
        for alias in ([value] if isinstance(value, str) else []) + \
                list(require(answer, "Aliases", list, f"{location} Answer")) + \
                list(answer.get("NormalizedAliases") or []):
            if not isinstance(alias, str):
                raise MalformedRecordError(f"{location}: field 'Answer.Aliases' must hold strings")
            alias = alias.strip()
            if alias and alias not in aliases:
                aliases.append(alias)
        if not aliases:
            raise MalformedRecordError(f"{location}: field 'Answer' has no non-empty alias")
        if qid in seen:
            continue
        seen.add(qid)
        question_id = f"{domain}/{qid}"
        yield make_question(
            location,
            id=question_id,
            domain=domain,
            split=split_fn(source_split, question_id),
            question=require(item, "Question", str, location),
            kind="open",
            answers=tuple(aliases),
            meta={"source_split": source_split, "answer_type": str(answer.get("Type") or "")},
        )
