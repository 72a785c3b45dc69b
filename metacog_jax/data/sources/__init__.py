"""Registry of question domains and the one function that loads them.

``DOMAINS`` maps a name to its :class:`DomainInfo` (answer kind, role in the
paper's design, and the TFDS builder or procedural generator behind it).
:func:`load_questions` builds a file-backed domain once into ``tfds_dir``
(array_record files; later calls only read) and reads it back through
``builder.as_data_source()``; procedural domains are generated in memory.

Sets declared in the config (``config.data.custom.<name>``, see ``custom.py``) join the registry per
call: pass ``custom=config.data.custom`` to :func:`domain_info`, :func:`builders` and
:func:`load_questions`, and the name resolves like a built-in one (same TFDS path, cached per content).

TFDS builder modules are imported lazily, so importing this registry is cheap.
``Question.domain`` of every returned question is the registry name it was
loaded under (``"legalbench"`` for the union of the three LegalBench tasks,
``"legalbench_hearsay"`` for one task).
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from metacog_jax.data import procedural, splits
from metacog_jax.data.records import Question

# Number of questions a procedural domain yields when ``n`` is None.
PROCEDURAL_DEFAULT_N = 1000

ROLES = ("in_domain", "out_of_domain")
_LEGAL_TASKS = ("hearsay", "contract_qa", "learned_hands_courts")


@dataclasses.dataclass(frozen=True)
class DomainInfo:
    """What the registry knows about one domain.

    Attributes:
      name: registry name (``Question.domain`` of loaded questions).
      kind: answer kind of its questions (see ``records.KINDS``).
      role: ``"in_domain"`` (trained on, paper Table "train + in-domain
        test") or ``"out_of_domain"`` (evaluation only).
      builder: ``"module:Class"`` of the TFDS builder under this package, or
        None for procedural domains.
      configs: builder configs to read and concatenate (LegalBench tasks);
        empty for single-config builders.
      description: one line for listings.
      custom: the validated ``custom.CustomSpec`` of a set declared in ``config.data.custom``; None for
        built-in sets.
    """

    name: str
    kind: str
    role: str
    builder: str | None
    configs: tuple[str, ...] = ()
    description: str = ""
    custom: Any = None

    @property
    def procedural(self) -> bool:
        """True when questions are generated, not read from files."""
        return self.builder is None

    def builder_class(self) -> type:
        """Imports and returns the builder class (a ``QuestionBuilder``)."""
        if self.builder is None:
            raise ValueError(f"domain {self.name!r} is procedural; it has no TFDS builder")
        module_name, class_name = self.builder.split(":")
        module = importlib.import_module(f"{__name__}.{module_name}")
        return getattr(module, class_name)


def _domains() -> dict[str, DomainInfo]:
    entries = [
        DomainInfo("mmlu_pro", "multiple_choice", "in_domain", "mmlu_pro:MmluPro",
                   description="MMLU-Pro, 3-10 options, 12,032 test + 70 validation"),
        DomainInfo("gsm8k", "numeric", "in_domain", "gsm8k:Gsm8k",
                   description="GSM8K grade-school math, 7,473 train + 1,319 test"),
        DomainInfo("triviaqa", "open", "in_domain", "triviaqa:TriviaQa",
                   description="TriviaQA (official JSON; download or manual dir)"),
        DomainInfo("nq_open", "open", "in_domain", "nq_open:NqOpen",
                   description="NQ-open dev, 3,610; offline stand-in for TriviaQA"),
        DomainInfo("medqa", "multiple_choice", "out_of_domain", "medqa:MedQa",
                   description="MedQA-USMLE 4-option test, 1,273"),
        DomainInfo("pubmedqa", "label", "out_of_domain", "pubmedqa:PubMedQa",
                   description="PubMedQA PQA-L yes/no/maybe, 1,000 (500 official test)"),
        DomainInfo("truthfulqa", "multiple_choice", "out_of_domain", "truthfulqa:TruthfulQa",
                   description="TruthfulQA mc1, 817"),
        DomainInfo("legalbench", "label", "out_of_domain", "legalbench:LegalBench",
                   configs=_LEGAL_TASKS, description="LegalBench Yes/No, 3 tasks together"),
    ]
    entries += [
        DomainInfo(f"legalbench_{task}", "label", "out_of_domain", "legalbench:LegalBench",
                   configs=(task,), description=f"LegalBench task {task}")
        for task in _LEGAL_TASKS
    ]
    entries += [
        DomainInfo(name, procedural.KINDS[name], procedural.ROLES[name], None,
                   description=f"procedural {name}, difficulty levels {procedural.LEVELS}")
        for name in procedural.ROLES
    ]
    return {info.name: info for info in entries}


DOMAINS: dict[str, DomainInfo] = _domains()


def custom_domains(custom: Any = None) -> dict[str, DomainInfo]:
    """Registry entries of the sets declared in ``config.data.custom`` (validated; none when empty).

    Args:
      custom: ``config.data.custom`` (a ConfigDict or mapping of set name -> settings), or None.

    Raises:
      ValueError: a set named like a built-in domain, or a declaration error naming
        ``data.custom.<name>.<field>`` (see ``custom.spec_from_config``).
    """
    if not custom:
        return {}
    from metacog_jax.data.sources.custom import spec_from_config  # lazy: imports TFDS

    out = {}
    for name in custom.keys():
        if name in DOMAINS:
            raise ValueError(f"config data.custom.{name}: {name!r} is a built-in domain ({DOMAINS[name].description}); "
                             "give the custom set another name")
        spec = spec_from_config(name, custom[name])
        out[name] = DomainInfo(name, spec.kind, spec.role, "custom:CustomQuestions",
                               description=f"custom set from {spec.path}", custom=spec)
    return out


def domain_info(name: str, custom: Any = None) -> DomainInfo:
    """Returns the registry entry for ``name``: a built-in domain or a set of ``custom``.

    Args:
      name: a registry name, or the name of a set declared in ``custom``.
      custom: ``config.data.custom`` (see :func:`custom_domains`), or None for built-in domains only.

    Raises:
      ValueError: unknown name (the message lists the known ones), or a bad ``custom`` declaration.
    """
    known = {**DOMAINS, **custom_domains(custom)}
    try:
        return known[name]
    except KeyError:
        raise ValueError(unknown_domain_message(name, known)) from None


def unknown_domain_message(name: str, known: Sequence[str]) -> str:
    """``unknown domain 'x'; did you mean 'y'? known domains: ...`` for a name not in ``known``."""
    close = difflib.get_close_matches(name, list(known), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown domain {name!r}{hint}; known domains: {', '.join(sorted(known))}"


def tfds_dir_for(config, workdir: str | os.PathLike[str]) -> Path:
    """Where a run's TFDS builders write their array_record files: ``config.data.tfds_dir``, else
    ``<workdir>/tfds``."""
    return Path(config.data.tfds_dir) if config.data.tfds_dir else Path(workdir) / "tfds"


def builders(name: str, manual_dir: str | os.PathLike[str] | None,
             tfds_dir: str | os.PathLike[str], custom: Any = None) -> list[Any]:
    """Returns the prepared TFDS builder(s) of a file-backed domain.

    Builds the array_record files under ``tfds_dir`` if they are not there
    yet (later calls only open them).

    Args:
      name: a non-procedural registry name.
      manual_dir: root of the official files (layout as ``shared/data``), or
        None to download them from the official URLs.
      tfds_dir: writable output root for the TFDS files (in the run workdir).
      custom: ``config.data.custom``, so that ``name`` may be a declared set (its files are
        found, hashed and, when new, built; ``manual_dir`` does not apply).

    Raises:
      MissingSourceError: the manual dir or a file in it is missing.
      MalformedRecordError: a source row cannot be parsed (``file:line``).
    """
    info = domain_info(name, custom)
    if info.custom is not None:
        from metacog_jax.data.sources.custom import prepare  # lazy: imports TFDS

        return [prepare(info.custom, tfds_dir)]
    cls = info.builder_class()
    out = []
    for config in info.configs or (None,):
        kwargs = {} if config is None else {"config": config}
        builder = cls(data_dir=Path(tfds_dir), manual_dir=manual_dir, **kwargs)
        builder.download_and_prepare()
        out.append(builder)
    return out


def _read_built(name: str, builder: Any, test_fraction: float) -> list[Question]:
    """All questions of one prepared builder, in source-file order."""
    from metacog_jax.data.sources.base import decode_example  # lazy: imports TFDS

    rows: list[tuple[int, int, Question]] = []
    split_order = list(builder.SPLIT_POLICY)
    for source_split, source in builder.as_data_source().items():
        examples = source.__getitems__(list(range(len(source))))
        rank = split_order.index(source_split) if source_split in split_order else len(split_order)
        for example in examples:
            index, q = decode_example(example)
            q = dataclasses.replace(q, domain=name,
                                    split=builder.our_split(source_split, q.id, test_fraction))
            rows.append((rank, index, q))
    rows.sort(key=lambda r: (r[0], r[1]))
    return [q for _, _, q in rows]


def load_questions(name: str, manual_dir: str | os.PathLike[str] | None,
                   tfds_dir: str | os.PathLike[str], split: str, n: int | None = None,
                   seed: int = 0, *, test_fraction: float = splits.DEFAULT_TEST_FRACTION,
                   levels: Sequence[int] | None = None, validation_fraction: float = 0.0,
                   custom: Any = None) -> list[Question]:
    """Loads one domain's questions for one split.

    Args:
      name: registry name (see ``DOMAINS``).
      manual_dir: root of the official files (layout as ``shared/data``);
        None downloads from the official URLs (connected machines only).
        Ignored for procedural domains.
      tfds_dir: output root for the built TFDS files (cached there).
      split: ``"train"``, ``"validation"``, ``"test"`` or ``"all"``; the mapping from each
        source's published splits is the builder's ``SPLIT_POLICY``
        (published splits kept where they exist, else hashed on the id).
      n: keep at most ``n`` questions (deterministic, nested in ``n``; see
        ``splits.subsample``); None keeps all. Procedural domains generate
        exactly ``n`` (``PROCEDURAL_DEFAULT_N`` when None).
      seed: subsampling seed; the generation seed for procedural domains.
      test_fraction: share held out as test where splits are hashed.
      levels: procedural domains only: difficulty levels to draw from (default all).
      validation_fraction: share of the train questions carved out as ``"validation"``
        (``splits.carve_validation`` on the canonical form, else the id); 0 = none.
      custom: ``config.data.custom`` (sets declared in the config); a set's own ``test_fraction``,
        when given, replaces ``test_fraction``.

    Returns:
      Questions in source-file order.

    Raises:
      ValueError: unknown name or split (lists the valid ones).
      MissingSourceError: the manual dir or one of its files is missing.
      MalformedRecordError: a source row is malformed (``file:line``, field).
    """
    info = domain_info(name, custom)
    if info.custom is not None and info.custom.test_fraction is not None:
        test_fraction = info.custom.test_fraction
    if split not in ("train", "validation", "test", "all"):
        raise ValueError(f"split must be 'train', 'validation', 'test' or 'all', got {split!r}")
    if info.procedural:
        return procedural.generate(name, PROCEDURAL_DEFAULT_N if n is None else n, seed, split,
                                   test_fraction=test_fraction, levels=tuple(levels or procedural.LEVELS),
                                   validation_fraction=validation_fraction)
    questions: list[Question] = []
    for builder in builders(name, manual_dir, tfds_dir, custom):
        questions.extend(_read_built(name, builder, test_fraction))
    if validation_fraction > 0:
        questions = [dataclasses.replace(q, split=splits.carve_validation(q.meta.get("canonical", q.id), q.split,
                                                                          validation_fraction))
                     for q in questions]
    if split != "all":
        questions = [q for q in questions if q.split == split]
    return splits.subsample(questions, n, seed)
