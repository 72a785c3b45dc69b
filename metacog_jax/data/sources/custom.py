"""Question sets declared in the config: your own files (or a Hugging Face hub dataset) read through a
field map, with no code and no registry edit.

A set is one entry of ``config.data.custom``::

    c.data.custom.mine = ml_collections.ConfigDict(dict(
        path="data/mine.csv",        # a file, a folder (every file of the format, sorted), or hf://org/dataset[/folder]
        kind="multiple_choice",      # multiple_choice | numeric | open | label (label also needs `labels`)
        role="in_domain",            # in_domain (list it in data.domains) | out_of_domain (data.ood_domains)
        fields=dict(question="question", options=("A", "B", "C", "D"), answer="answer", answer_type="letter"),
    ))

and is then named in ``data.domains`` / ``data.ood_domains`` like a built-in set. It goes through the same
path as the built-in sources: :class:`CustomQuestions` (a ``QuestionBuilder``) writes it to array_record
under the run's TFDS dir once, and ``as_data_source()`` reads it back. The builder config is named
``<name>_<hash12>`` after a SHA-256 of the files' bytes and the settings that shape the questions, so an
edited file (or field map) builds afresh and an unchanged one is only read.

Ids: ``<name>/<id field>`` when ``fields.id`` is set, else ``<name>/<file sha8>/<row>`` (the 0-based row
within its file), so ids survive a reload and, with an id field, an edit. Splits: with ``fields.split`` the
file's own values decide (:data:`SPLIT_VALUES`); without it ``test_fraction`` of the ids are hashed into
test (``splits.assign_split``), as for the built-in single-file sources.

Every bad row fails with its place and the field: ``file:line`` for JSONL and CSV (the physical line on
which a CSV row ends; quoted fields may span lines), ``file[row N]`` for Parquet.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import logging
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import tensorflow_datasets as tfds

from metacog_jax.artifacts import iter_jsonl
from metacog_jax.data.grading import canonical_number, normalize_text
from metacog_jax.data.records import KINDS, OPTION_LETTERS, Question
from metacog_jax.data.sources import ROLES
from metacog_jax.data.sources.base import (MalformedRecordError, MissingSourceError, QuestionBuilder,
                                           make_question, read_delimited)

HUB_PREFIX = "hf://"
# Format -> file extensions a folder (or a hub dataset) is searched for.
FORMATS = {"jsonl": (".jsonl",), "csv": (".csv",), "parquet": (".parquet",)}
ANSWER_TYPES = ("letter", "index", "option_text", "number", "aliases")
# The answer types each kind can read; the first is the default. For kind "label", "option_text" is the
# label as spelled (case-insensitive) and "index" its 0-based position in `labels`.
KIND_ANSWER_TYPES = {
    "multiple_choice": ("letter", "index", "option_text"),
    "numeric": ("number",),
    "open": ("aliases",),
    "label": ("option_text", "index"),
}
# A file's split values (case-insensitive) -> our split. Anything else is an error naming the row.
SPLIT_VALUES = {
    **{v: "train" for v in ("train", "training", "dev", "development", "val", "valid", "validation")},
    **{v: "test" for v in ("test", "testing")},
}
SET_KEYS = ("path", "kind", "role", "format", "labels", "test_fraction", "fields", "revision", "hf_split")
FIELD_KEYS = ("question", "options", "answer", "answer_type", "id", "split", "category", "context")
_HUB_ONLY = ("revision", "hf_split")
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")
# A gold number as written in a file: optional sign, digits (thousands commas allowed), optional decimals.
_GOLD_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")


# -- the declaration ----------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class FieldMap:
    """Which field (JSONL key, CSV column, Parquet column) holds what; ``""`` = not in the file.

    Attributes:
      question: the question text.
      options: multiple choice only: one field holding a list of option texts (in CSV a JSON list such as
        ``["4", "5"]``), or several fields, one option each (``("A", "B", "C", "D")``; empty trailing
        options are dropped, so 4- and 5-option questions can share columns).
      answer: the gold answer, read as ``answer_type``.
      answer_type: ``letter`` (A, B, ...), ``index`` (0-based), ``option_text`` (the option's or label's
        text), ``number`` or ``aliases`` (a list of accepted strings, or one string).
      id: a unique id per row (else ids come from the file's hash and the row's position).
      split: the row's split in the file (see ``SPLIT_VALUES``); else ids are hashed into test.
      category: kept as ``Question.meta["category"]`` (e.g. MMLU's ``subject``).
      context: a passage the question refers to (``Question.context``).

    A name with dots (``answer.aliases``) reaches into nested objects (JSONL, Parquet structs) when no
    field has the whole name.
    """

    question: str = "question"
    options: str | tuple[str, ...] = ""
    answer: str = "answer"
    answer_type: str = ""
    id: str = ""
    split: str = ""
    category: str = ""
    context: str = ""

    def columns(self) -> tuple[str, ...]:
        """Every field named, in a fixed order (a CSV header must have them all)."""
        options = (self.options,) if isinstance(self.options, str) else self.options
        named = (self.question, *options, self.answer, self.id, self.split, self.category, self.context)
        return tuple(dict.fromkeys(n for n in named if n))


@dataclasses.dataclass(frozen=True)
class CustomSpec:
    """One validated ``config.data.custom.<name>`` entry (see :func:`spec_from_config`)."""

    name: str
    path: str
    kind: str
    fields: FieldMap
    role: str = "in_domain"
    format: str = ""
    labels: tuple[str, ...] = ()
    test_fraction: float | None = None
    revision: str = ""
    hf_split: str = ""

    @property
    def where(self) -> str:
        """The config path of this set, for messages: ``data.custom.<name>``."""
        return f"data.custom.{self.name}"

    @property
    def hub_id(self) -> str | None:
        """``org/dataset`` of an ``hf://`` path, else None."""
        if not self.path.startswith(HUB_PREFIX):
            return None
        return "/".join(self.path[len(HUB_PREFIX):].split("/")[:2])

    @property
    def hub_subpath(self) -> str:
        """The folder or file inside the hub dataset (``""`` = the whole dataset)."""
        return "/".join(self.path[len(HUB_PREFIX):].strip("/").split("/")[2:])

    def settings(self) -> dict[str, Any]:
        """What shapes the built questions besides the files' bytes (hashed into the builder name).

        Not the path (a moved file reuses its build), nor role or test_fraction (applied on reading)."""
        return {"name": self.name, "kind": self.kind, "labels": list(self.labels),
                "fields": dataclasses.asdict(self.fields)}


def _plain(value: Any) -> Any:
    """A ConfigDict (or Mapping) as a plain dict; anything else unchanged."""
    to_dict = getattr(value, "to_dict", None)
    if callable(to_dict):
        return to_dict()
    return dict(value) if isinstance(value, Mapping) else value


def _check_keys(given: Mapping[str, Any], allowed: Sequence[str], where: str) -> None:
    for key in given:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"config {where}.{key}: unknown key{hint} (keys: {', '.join(allowed)})")


def _text_setting(given: Mapping[str, Any], key: str, where: str, default: str = "",
                  choices: Sequence[str] | None = None, required: bool = False) -> str:
    value = given.get(key, default)
    if value is None:
        value = default
    if not isinstance(value, str):
        raise ValueError(f"config {where}.{key}={value!r} must be a string")
    value = value.strip()
    if required and not value:
        raise ValueError(f"config {where}.{key} is required" + (f"; choose one of {', '.join(choices)}"
                                                               if choices else ""))
    if choices is not None and value not in choices:
        raise ValueError(f"config {where}.{key}={value!r}; choose one of {', '.join(c or repr(c) for c in choices)}")
    return value


def _strings_setting(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise ValueError(f"config {where}={value!r} must be a tuple of strings")
    if any(not isinstance(v, str) or not v.strip() for v in value):
        raise ValueError(f"config {where}={value!r} must hold non-empty strings")
    return tuple(v.strip() for v in value)


def spec_from_config(name: str, config: Any) -> CustomSpec:
    """Validates one ``config.data.custom.<name>`` entry.

    Args:
      name: the set's name (its ``data.domains`` entry, ``Question.domain`` and file names).
      config: a ConfigDict (or mapping) with the keys in ``SET_KEYS``; ``fields`` holds those in
        ``FIELD_KEYS``.

    Raises:
      ValueError: naming ``data.custom.<name>.<field>``: an unknown key, a missing ``path`` or ``kind``,
        a value of the wrong type or outside its choices, or settings that do not fit together.
    """
    where = f"data.custom.{name}"
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"config {where}: a set name must start with a letter and hold only letters, digits "
                         f"and '_' (it names files and data.domains entries), got {name!r}")
    given = _plain(config)
    if not isinstance(given, dict):
        raise ValueError(f"config {where} must be a ConfigDict of settings (path, kind, fields, ...), "
                         f"got {type(config).__name__}")
    _check_keys(given, SET_KEYS, where)
    path = _text_setting(given, "path", where, required=True)
    kind = _text_setting(given, "kind", where, choices=KINDS, required=True)
    role = _text_setting(given, "role", where, default="in_domain", choices=ROLES)
    fmt = _text_setting(given, "format", where, choices=("", *FORMATS))
    labels = _strings_setting(given.get("labels") or (), f"{where}.labels")
    if kind == "label":
        folded = [label.casefold() for label in labels]
        if len(labels) < 2 or len(set(folded)) != len(folded):
            raise ValueError(f"config {where}.labels={labels!r}: kind 'label' needs two or more labels, "
                             "distinct ignoring case, e.g. ('yes', 'no')")
    elif labels:
        raise ValueError(f"config {where}.labels is only for kind 'label', got kind {kind!r}")
    test_fraction = given.get("test_fraction")
    if test_fraction is not None:
        if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)) \
                or not 0.0 <= test_fraction <= 1.0:
            raise ValueError(f"config {where}.test_fraction={test_fraction!r} must be a number in [0, 1] "
                             "(or None for data.test_fraction)")
        test_fraction = float(test_fraction)
    hub = path.startswith(HUB_PREFIX)
    if hub and not _HUB_ID.fullmatch("/".join(path[len(HUB_PREFIX):].split("/")[:2])):
        raise ValueError(f"config {where}.path={path!r}: a hub path is hf://<org>/<dataset>[/<folder or file>]")
    for key in _HUB_ONLY:
        _text_setting(given, key, where)
        if given.get(key) and not hub:
            raise ValueError(f"config {where}.{key} is only for hub paths (hf://<org>/<dataset>), got path {path!r}")
    fields = _field_map(given.get("fields", {}), kind, f"{where}.fields")
    if fields.split and test_fraction is not None:
        raise ValueError(f"config {where}.test_fraction is set, but fields.split={fields.split!r} already decides "
                         "train/test; drop one of them")
    return CustomSpec(name=name, path=path, kind=kind, fields=fields, role=role, format=fmt, labels=labels,
                      test_fraction=test_fraction, revision=_text_setting(given, "revision", where),
                      hf_split=_text_setting(given, "hf_split", where))


def _field_map(value: Any, kind: str, where: str) -> FieldMap:
    given = _plain(value)
    if not isinstance(given, dict):
        raise ValueError(f"config {where} must be a ConfigDict of field names, got {type(value).__name__}")
    _check_keys(given, FIELD_KEYS, where)
    names = {}
    for key in FIELD_KEYS:
        if key in ("options", "answer_type"):
            continue
        default = getattr(FieldMap, key)
        names[key] = _text_setting(given, key, where, default=default, required=key in ("question", "answer"))
    options = given.get("options") or ""
    if not isinstance(options, str):
        options = _strings_setting(options, f"{where}.options")
        if len(options) < 2:
            raise ValueError(f"config {where}.options={options!r}: give one list field ('choices') or two or "
                             "more option fields (('A', 'B', 'C', 'D'))")
    if kind == "multiple_choice" and not options:
        raise ValueError(f"config {where}.options is required for kind 'multiple_choice': one list field "
                         "('choices') or several option fields (('A', 'B', 'C', 'D'))")
    if kind != "multiple_choice" and options:
        raise ValueError(f"config {where}.options is only for kind 'multiple_choice', got kind {kind!r}")
    answer_type = _text_setting(given, "answer_type", where, choices=("", *ANSWER_TYPES))
    fitting = KIND_ANSWER_TYPES[kind]
    if answer_type and answer_type not in fitting:
        raise ValueError(f"config {where}.answer_type={answer_type!r} does not fit kind {kind!r}; "
                         f"choose one of {', '.join(fitting)}")
    return FieldMap(options=options, answer_type=answer_type or fitting[0], **names)


# -- the files ----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class SourceFiles:
    """The files one set is read from, in reading order, with their contents' SHA-256.

    Attributes:
      base: the file or folder the set's path names (for a hub set: inside the downloaded snapshot).
      paths: the files, sorted by their path relative to ``base``.
      format: ``jsonl``, ``csv`` or ``parquet``.
      hashes: hex SHA-256 of each file's bytes.
    """

    base: Path
    paths: tuple[Path, ...]
    format: str
    hashes: tuple[str, ...]

    def relative(self, path: Path) -> str:
        """``path`` relative to ``base`` (its name when the set is one file)."""
        return path.name if path == self.base else path.relative_to(self.base).as_posix()

    def digest(self, spec: CustomSpec) -> str:
        """SHA-256 (hex) of ``spec.settings()`` and every file's name and bytes: the build's identity."""
        h = hashlib.sha256(json.dumps(spec.settings(), sort_keys=True).encode("utf-8"))
        for path, file_hash in zip(self.paths, self.hashes):
            h.update(f"\x00{self.relative(path)}\x00{file_hash}".encode("utf-8"))
        return h.hexdigest()


def _format_of(path: Path) -> str | None:
    return next((fmt for fmt, exts in FORMATS.items() if path.suffix.lower() in exts), None)


def _split_pattern(split: str) -> re.Pattern[str]:
    # The hub's file naming: the split is a word of the path (train-00000-of-00001.parquet, data/test.csv,
    # test/0000.parquet, mmlu_dev.csv).
    return re.compile(rf"(?:^|[/\-._ ]){re.escape(split)}(?:[/\-._ 0-9]|$)", re.IGNORECASE)


def source_files(spec: CustomSpec) -> SourceFiles:
    """Finds (for a hub path: downloads) and hashes the files of ``spec``.

    A folder is searched recursively (hidden entries skipped) for files of ``spec.format``, or of the one
    format it holds when no format is set. ``hf_split`` keeps the files whose path has the split as a word.

    Raises:
      MissingSourceError: the path does not exist, holds no file of the format, or the hub download failed
        (naming the dataset id).
      ValueError: the format cannot be told (unknown extension, or a folder with several formats).
    """
    if spec.hub_id is not None:
        snapshot = _download(spec)
        base = snapshot / spec.hub_subpath if spec.hub_subpath else snapshot
        shown = f"{spec.path} (downloaded to {base})"
    else:
        base = Path(spec.path).expanduser()
        shown = str(base)
    if base.is_file():
        fmt = spec.format or _format_of(base)
        if fmt is None:
            raise ValueError(f"{spec.where}.path: cannot tell the format of {base} from its extension; set "
                             f"{spec.where}.format to one of {', '.join(FORMATS)}")
        paths = [base]
    elif base.is_dir():
        candidates = sorted((p for p in base.rglob("*") if p.is_file()
                             and not any(part.startswith(".") for part in p.relative_to(base).parts)),
                            key=lambda p: p.relative_to(base).as_posix())
        if spec.hf_split:
            pattern = _split_pattern(spec.hf_split)
            candidates = [p for p in candidates if pattern.search(p.relative_to(base).as_posix())]
        present = sorted({f for p in candidates if (f := _format_of(p))})
        fmt = spec.format
        if not fmt:
            if len(present) > 1:
                raise ValueError(f"{spec.where}.path: {shown} holds files of several formats ({', '.join(present)}); "
                                 f"set {spec.where}.format")
            fmt = present[0] if present else ""
        paths = [p for p in candidates if fmt and p.suffix.lower() in FORMATS[fmt]]
        if not paths:
            what = f"{fmt} files" if fmt else f"files of a known format ({', '.join(FORMATS)})"
            split = f" whose name has the split {spec.hf_split!r}" if spec.hf_split else ""
            hint = (" (a dataset that ships a loading script instead of data files may have them on the "
                    "revision 'refs/convert/parquet')") if spec.hub_id else ""
            raise MissingSourceError(f"{spec.where}.path: no {what}{split} in {shown}{hint}")
    else:
        raise MissingSourceError(f"{spec.where}.path: {shown} does not exist")
    hashes = []
    for path in paths:
        with path.open("rb") as f:
            hashes.append(hashlib.file_digest(f, "sha256").hexdigest())
    return SourceFiles(base=base, paths=tuple(paths), format=fmt, hashes=tuple(hashes))


def _hub_patterns(spec: CustomSpec) -> list[str]:
    """``allow_patterns`` for ``snapshot_download``: only the data files wanted (fnmatch; ``*`` spans ``/``)."""
    sub = spec.hub_subpath
    if sub and _format_of(Path(sub)) is not None:
        return [sub]
    prefix = f"{sub}/" if sub else ""
    split = f"*{spec.hf_split}" if spec.hf_split else ""
    exts = FORMATS[spec.format] if spec.format else tuple(e for exts in FORMATS.values() for e in exts)
    return [f"{prefix}{split}*{ext}" for ext in exts]


def _download(spec: CustomSpec) -> Path:
    """The local snapshot folder of a hub set's data files (the hub client caches it)."""
    repo_id = spec.hub_id
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:
        raise MissingSourceError(f"{spec.where}.path: reading the hub dataset {repo_id!r} needs the "
                                 "huggingface_hub package (pip install huggingface_hub)") from e
    at = f" at revision {spec.revision!r}" if spec.revision else ""
    try:
        local = snapshot_download(repo_id=repo_id, repo_type="dataset", revision=spec.revision or None,
                                  allow_patterns=_hub_patterns(spec))
    except Exception as e:  # no network, no such dataset or revision, gated, offline mode: all alike here
        raise MissingSourceError(f"{spec.where}.path: could not download the hub dataset {repo_id!r}{at}: "
                                 f"{type(e).__name__}: {e}") from e
    return Path(local)


# -- rows -> questions --------------------------------------------------------------------------------------
def _rows(path: Path, fmt: str, fields: FieldMap) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """Yields ``(location, row)`` in file order; ``location`` is ``file:line`` or ``file[row N]``."""
    if fmt == "jsonl":
        for line_no, row in iter_jsonl(path, MalformedRecordError, encoding="utf-8-sig"):
            yield f"{path}:{line_no}", row
    elif fmt == "csv":
        columns = fields.columns()
        for line_no, row in read_delimited(path, columns, delimiter=",", encoding="utf-8-sig"):
            if row.get(None):
                raise MalformedRecordError(f"{path}:{line_no}: row has {len(row) - 1 + len(row[None])} values but "
                                           f"the header has {len(row) - 1} columns (an unquoted comma?)")
            yield f"{path}:{line_no}", row
    else:
        import pyarrow
        import pyarrow.parquet as pq

        try:
            parquet = pq.ParquetFile(path)
        except pyarrow.ArrowException as e:
            raise MalformedRecordError(f"{path}: not a readable Parquet file ({e})") from None
        names = parquet.schema_arrow.names
        top = [c if c in names else c.split(".")[0] for c in fields.columns()]
        missing = [c for c, t in zip(fields.columns(), top) if t not in names]
        if missing:
            raise MalformedRecordError(f"{path}: no column(s) {missing}; the file has {names}")
        row_no = 0
        batches = parquet.iter_batches(columns=list(dict.fromkeys(top)))
        while True:
            try:
                batch = next(batches, None)
            except pyarrow.ArrowException as e:
                raise MalformedRecordError(f"{path}[row {row_no}]: the Parquet data cannot be read ({e})") from None
            if batch is None:
                break
            for row in batch.to_pylist():
                yield f"{path}[row {row_no}]", row
                row_no += 1


def _value(row: Mapping[str, Any], field: str, location: str) -> Any:
    if field in row:
        return row[field]
    value: Any = row
    for part in field.split("."):
        if not isinstance(value, Mapping) or part not in value:
            raise MalformedRecordError(f"{location}: missing field {field!r}")
        value = value[part]
    return value


def _scalar_text(value: Any, location: str, field: str, what: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise MalformedRecordError(f"{location}: field {field!r} ({what}) must be text, got "
                                   f"{type(value).__name__} {value!r}"[:300])
    return str(value).strip()


def _text(row: Mapping[str, Any], field: str, location: str, what: str, required: bool = True) -> str:
    """The field as stripped text; not ``required``: a missing, null or empty field is ``""``."""
    try:
        value = _value(row, field, location)
    except MalformedRecordError:
        if required:
            raise
        value = None
    text = "" if value is None else _scalar_text(value, location, field, what)
    if required and not text:
        raise MalformedRecordError(f"{location}: field {field!r} ({what}) is empty")
    return text


def _text_list(row: Mapping[str, Any], field: str, location: str, what: str, single_ok: bool = False,
               csv: bool = False) -> list[str]:
    """A list field; in CSV (``csv``) a JSON list (``["a", "b"]``); with ``single_ok`` one string is a list
    of one (outside CSV also one that starts with "[", such as "[citation needed]")."""
    value = _value(row, field, location)
    if isinstance(value, str):
        text = value.strip()
        if csv and text.startswith("["):
            try:
                value = json.loads(text)
            except json.JSONDecodeError as e:
                raise MalformedRecordError(f"{location}: field {field!r} ({what}) starts with '[' but is not a "
                                           f"JSON list: {e.msg}") from None
        elif single_ok:
            value = [text]
    if not isinstance(value, (list, tuple)):
        hint = " (in CSV: a JSON list such as [\"a\", \"b\"])" if isinstance(value, str) else ""
        raise MalformedRecordError(f"{location}: field {field!r} ({what}) must be a list{hint}, got "
                                   f"{type(value).__name__}")
    items = []
    for i, item in enumerate(value):
        text = "" if item is None else _scalar_text(item, location, field, f"{what} item {i}")
        if not text:
            raise MalformedRecordError(f"{location}: field {field!r} ({what}) item {i} is empty")
        items.append(text)
    if not items:
        raise MalformedRecordError(f"{location}: field {field!r} ({what}) is an empty list")
    return items


def _options(row: Mapping[str, Any], fields: FieldMap, location: str, csv: bool) -> list[str]:
    if isinstance(fields.options, str):
        return _text_list(row, fields.options, location, "options", csv=csv)
    values = [_text(row, column, location, f"option {OPTION_LETTERS[i]}", required=False)
              for i, column in enumerate(fields.options)]
    while values and not values[-1]:
        values.pop()
    for column, value, letter in zip(fields.options, values, OPTION_LETTERS):
        if not value:
            raise MalformedRecordError(f"{location}: field {column!r} (option {letter}) is empty, but a later "
                                       "option is not")
    return values


def _index(value: Any, field: str, location: str, n: int, what: str) -> int:
    index = None
    if isinstance(value, int) and not isinstance(value, bool):
        index = value
    elif isinstance(value, float) and value.is_integer():
        index = int(value)
    elif isinstance(value, str) and re.fullmatch(r"[-+]?\d+", value.strip()):
        index = int(value.strip())
    if index is None:
        raise MalformedRecordError(f"{location}: field {field!r} (answer_type index) must be a whole number, "
                                   f"got {value!r}")
    if not 0 <= index < n:
        raise MalformedRecordError(f"{location}: field {field!r} (answer_type index, 0-based) is {index}, but "
                                   f"the question has {n} {what} (0-{n - 1})")
    return index


def _matching_text(value: Any, field: str, location: str, choices: Sequence[str], what: str) -> int:
    text = _scalar_text(value, location, field, "answer_type option_text")
    matches = [i for i, c in enumerate(choices) if c == text]
    if not matches:  # case only matters where it tells the choices apart
        matches = [i for i, c in enumerate(choices) if c.casefold() == text.casefold()]
    if len(matches) == 1:
        return matches[0]
    if matches:
        which = ", ".join(f"{i} ({choices[i]!r})" for i in matches)
        raise MalformedRecordError(f"{location}: field {field!r} (answer_type option_text) is {text!r}, which "
                                   f"matches more than one of the {what}: {which}"[:500])
    listed = ", ".join(repr(c) for c in choices)
    raise MalformedRecordError(f"{location}: field {field!r} (answer_type option_text) is {text!r}, which is "
                               f"none of the {what}: {listed}"[:500])


def gold_number(value: Any, field: str, location: str) -> str:
    """A gold number in canonical form (``"1,234.50"`` -> ``"1234.5"``; ints and floats too).

    Raises:
      MalformedRecordError: not a plain number (words, units, NaN, exponents, booleans).
    """
    number = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = Decimal(value)
    elif isinstance(value, float) and math.isfinite(value):
        number = Decimal(repr(value))  # the shortest decimal that reads back as this float
    elif isinstance(value, Decimal) and value.is_finite():  # a Parquet decimal column
        number = value
    elif isinstance(value, str) and _GOLD_NUMBER.fullmatch(value.strip()):
        try:
            number = Decimal(value.strip().replace(",", ""))
        except InvalidOperation:
            number = None
    if number is None:
        raise MalformedRecordError(f"{location}: field {field!r} (answer_type number) is {value!r}, not a number "
                                   "(digits with an optional sign, decimal part and thousands commas)")
    return canonical_number(number)


def _answers(row: Mapping[str, Any], spec: CustomSpec, location: str, options: list[str],
             csv: bool) -> tuple[str, ...]:
    field, answer_type = spec.fields.answer, spec.fields.answer_type
    if answer_type == "aliases":
        aliases = tuple(_text_list(row, field, location, "aliases", single_ok=True, csv=csv))
        blank = [a for a in aliases if not normalize_text(a)]
        if blank:  # graded answers are compared after normalization: nothing could ever match these
            raise MalformedRecordError(f"{location}: field {field!r} (aliases) has {blank!r}, which is only "
                                       "punctuation, articles or spaces; no answer could match it"[:500])
        return aliases
    value = _value(row, field, location)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise MalformedRecordError(f"{location}: field {field!r} (the answer) is empty")
    if answer_type == "number":
        return (gold_number(value, field, location),)
    choices, what = (list(spec.labels), "labels") if spec.kind == "label" else (options, "options")
    if answer_type == "letter":
        letters = OPTION_LETTERS[:len(options)]
        letter = value.strip().upper() if isinstance(value, str) else None
        if letter is None or len(letter) != 1 or letter not in letters:
            numeral = isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit())
            hint = " (use answer_type 'index' for numbers)" if numeral else ""
            raise MalformedRecordError(f"{location}: field {field!r} (answer_type letter) is {value!r}; expected one "
                                       f"of the {len(options)} option letters {letters}{hint}")
        return (letter,)
    if answer_type == "index":
        i = _index(value, field, location, len(choices), what)
    else:
        i = _matching_text(value, field, location, choices, what)
    return (choices[i],) if spec.kind == "label" else (OPTION_LETTERS[i],)


def _row_question(spec: CustomSpec, row: Mapping[str, Any], location: str, default_id: str,
                  source: str, csv: bool) -> tuple[str, Question]:
    """``(TFDS split, Question)`` of one row: ``train``/``test`` from the split field, else ``unsplit``."""
    f = spec.fields
    question_text = _text(row, f.question, location, "the question")
    options = _options(row, f, location, csv) if spec.kind == "multiple_choice" else []
    if spec.kind == "multiple_choice" and len(options) < 2:
        raise MalformedRecordError(f"{location}: field(s) {f.options!r} hold {len(options)} option(s); a multiple "
                                   "choice question needs 2 or more")
    answers = _answers(row, spec, location, options, csv)
    question_id = f"{spec.name}/{_text(row, f.id, location, 'the id')}" if f.id else default_id
    meta = {"source": source}
    tfds_split = "unsplit"
    if f.split:
        raw = _text(row, f.split, location, "the split")
        if raw.casefold() not in SPLIT_VALUES:
            known = ", ".join(f"{ours} ({', '.join(v for v, s in SPLIT_VALUES.items() if s == ours)})"
                              for ours in ("train", "test"))
            raise MalformedRecordError(f"{location}: field {f.split!r} (the split) is {raw!r}; known values: {known}")
        tfds_split = SPLIT_VALUES[raw.casefold()]
        meta["source_split"] = raw
    if f.category:
        meta["category"] = _text(row, f.category, location, "the category", required=False)
    question = make_question(
        location, id=question_id, domain=spec.name, split="test" if tfds_split == "test" else "train",
        question=question_text, kind=spec.kind, options=tuple(options), answers=answers, labels=spec.labels,
        context=_text(row, f.context, location, "the context", required=False) if f.context else "", meta=meta)
    return tfds_split, question


def read_custom(spec: CustomSpec, files: SourceFiles) -> list[tuple[str, Question]]:
    """Every question of a set as ``(TFDS split, Question)``, in file order.

    The TFDS split is ``train``/``test`` (from the split field) or ``unsplit`` (split later by hashing the id).

    Raises:
      MalformedRecordError: a bad row (``file:line`` or ``file[row N]``, and the field), a repeated id, or no
        rows at all.
    """
    out: list[tuple[str, Question]] = []
    first_seen: dict[str, str] = {}
    for path, file_hash in zip(files.paths, files.hashes):
        rel = files.relative(path)
        for position, (location, row) in enumerate(_rows(path, files.format, spec.fields)):
            source = rel + location[len(str(path)):]
            split, question = _row_question(spec, row, location, f"{spec.name}/{file_hash[:8]}/{position}", source,
                                            csv=files.format == "csv")
            if question.id in first_seen:
                cause = f"field {spec.fields.id!r}" if spec.fields.id else "two files with the same bytes?"
                raise MalformedRecordError(f"{location}: duplicate id {question.id!r} ({cause}; first at "
                                           f"{first_seen[question.id]})")
            first_seen[question.id] = location
            out.append((split, question))
    if not out:
        raise MalformedRecordError(f"{spec.where}: no rows in {', '.join(map(str, files.paths))}")
    return out


# -- the TFDS builder ---------------------------------------------------------------------------------------
class _DropMessages(logging.Filter):
    """Drops log records whose message starts with ``prefix``."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


class CustomQuestions(QuestionBuilder, skip_registration=True):
    """TFDS builder for one config-declared set; one builder config ``<name>_<hash12>`` per content.

    Splits written: ``train`` and ``test`` (a split field) or ``unsplit`` (hashed on reading), whichever hold
    questions.
    """

    name = "metacog_custom"
    MANUAL_SUBDIR = ""
    FILES: Mapping[str, str] = {}
    URLS: Mapping[str, str] = {}
    SPLIT_POLICY = {"train": "train", "test": "test", "unsplit": "hashed"}
    DESCRIPTION = "Questions from files declared in config.data.custom, read through a field map."

    def __init__(self, *, spec: CustomSpec, files: SourceFiles, data_dir: str | Path, **kwargs: Any) -> None:
        """Args:
          spec: the validated declaration.
          files: its files (``source_files(spec)``); their hash names the builder config.
          data_dir: where TFDS writes the array_record files.
        """
        self._spec, self._files = spec, files
        self._by_split: dict[str, list[Question]] = {}
        config = tfds.core.BuilderConfig(name=f"{spec.name}_{files.digest(spec)[:12]}",
                                         description=f"{spec.where}: {spec.path}")
        # TFDS warns about every config not in BUILDER_CONFIGS; ours never are (one per content hash).
        quiet = _DropMessages("Using custom data configuration")
        logging.getLogger("absl").addFilter(quiet)
        try:
            super().__init__(data_dir=data_dir, manual_dir=None, config=config, **kwargs)
        finally:
            logging.getLogger("absl").removeFilter(quiet)

    @property
    def DOMAIN(self) -> str:  # noqa: N802 (overrides the class attribute of the base)
        return self._spec.name

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        self._by_split = {}
        for split, question in read_custom(self._spec, self._files):
            self._by_split.setdefault(split, []).append(question)
        return {split: self._generate_examples(split, {}) for split in self._by_split}

    def _questions(self, split: str, paths: Mapping[str, Path]) -> Iterator[Question]:
        yield from self._by_split[split]


def prepare(spec: CustomSpec, tfds_dir: str | Path) -> CustomQuestions:
    """Builds ``spec``'s array_record files under ``tfds_dir`` unless this content was built already.

    Raises:
      MissingSourceError, ValueError: see :func:`source_files`.
      MalformedRecordError: see :func:`read_custom`.
    """
    builder = CustomQuestions(spec=spec, files=source_files(spec), data_dir=Path(tfds_dir))
    builder.download_and_prepare()
    return builder
