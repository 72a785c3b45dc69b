"""Shared machinery for the TFDS builders that turn official files into Questions.

Every builder stores one :class:`~metacog_jax.data.records.Question` per
example as a JSON string (plus its id and its position in the source file), so
the schema lives in ``records.py`` only. Files are array_record and are read
back with ``builder.as_data_source()``; TensorFlow is never needed (never call
``tfds.load`` / ``as_dataset`` / ``as_numpy``).

Input files come either from a *manual dir* (offline; layout as in
``shared/data``: one folder per dataset holding the files as published) or,
when no manual dir is given, from the official URLs through TFDS's download
manager. The output (``data_dir``) is a separate, writable directory.
"""

from __future__ import annotations

import contextlib
import csv
import inspect
import json
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from etils import epath
import tensorflow_datasets as tfds

from metacog_jax.data import splits
from metacog_jax.data.records import Question, RecordError
from metacog_jax.artifacts import iter_jsonl, open_text

# (source split, question id) -> "train" | "test"; see QuestionBuilder.our_split.
SplitFn = Callable[[str, str], str]

SOURCES_HINT = (
    "Get the files as described in shared/data/SOURCES.md (official commits, "
    "paths and URLs), or pass manual_dir=None on a connected machine to "
    "download them from the official URLs."
)


class MissingSourceError(FileNotFoundError):
    """The manual dir, or a file expected in it, does not exist."""


class MalformedRecordError(RecordError):
    """A row of a source file cannot be turned into a Question.

    The message starts with ``file:line`` (or ``file[key]`` for JSON objects)
    and names the field.
    """


def require(record: Mapping[str, Any], field: str, kind: type | tuple[type, ...],
            location: str) -> Any:
    """Returns ``record[field]`` after checking it exists and has type ``kind``.

    Raises:
      MalformedRecordError: naming ``location`` and ``field``.
    """
    if not isinstance(record, Mapping):
        raise MalformedRecordError(f"{location}: expected a JSON object, got {type(record).__name__}")
    if field not in record:
        raise MalformedRecordError(f"{location}: missing field {field!r}")
    value = record[field]
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise MalformedRecordError(
            f"{location}: field {field!r} must be {names}, got {type(value).__name__}")
    return value


def read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yields ``(line_number, object)`` for each non-blank line (1-based numbers).

    Raises:
      MalformedRecordError: a line is not a JSON object (``file:line``).
    """
    yield from iter_jsonl(path, MalformedRecordError)


def read_json(path: Path) -> Any:
    """Loads a whole JSON file; a syntax error names the file and line."""
    try:
        with open_text(path, MalformedRecordError) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise MalformedRecordError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from e


def read_tsv(path: Path, required: tuple[str, ...]) -> Iterator[tuple[int, dict[str, str]]]:
    """Yields ``(line_number, row)`` for each row of a tab-separated file with a header.

    ``line_number`` is the 1-based physical line on which the row ends (a
    quoted field may span lines), so errors can cite ``file:line``.

    Raises:
      MalformedRecordError: a required column is missing or a row is short.
    """
    yield from read_delimited(path, required, delimiter="\t")


def read_delimited(path: Path, required: tuple[str, ...], *, delimiter: str = ",",
                   encoding: str = "utf-8") -> Iterator[tuple[int, dict[str, str]]]:
    """:func:`read_tsv` for any delimiter and encoding (``"utf-8-sig"`` drops a byte-order mark).

    A row with more values than the header keeps the extra ones in a list under the key ``None``.
    """
    with open_text(path, MalformedRecordError, encoding=encoding, newline="") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        header = reader.fieldnames or []
        missing = [c for c in required if c not in header]
        if missing:
            raise MalformedRecordError(f"{path}:1: header lacks column(s) {missing}; has {header}")
        repeated = sorted({c for c in header if header.count(c) > 1})
        if repeated:
            raise MalformedRecordError(f"{path}:1: the header names column(s) {repeated} more than once")
        for row in reader:
            location = f"{path}:{reader.line_num}"
            for column in required:
                if row.get(column) is None:
                    raise MalformedRecordError(f"{location}: row has no value for column {column!r}")
            yield reader.line_num, row


def make_question(location: str, **fields: Any) -> Question:
    """Builds a Question, turning a validation error into one naming ``location``."""
    try:
        return Question(**fields)
    except RecordError as e:
        raise MalformedRecordError(f"{location}: {e}") from e


class _LocalDatasetInfo(tfds.core.DatasetInfo):
    """DatasetInfo of a set built here from local files: no look-up in TFDS's GCS bucket.

    TFDS asks its bucket for precomputed metadata whenever a builder starts on a set not yet prepared, and
    makes a temporary folder for the answer first, left behind empty in the system's temp dir every time (our
    sets are never in that bucket, and this TFDS keeps GCS access off by default anyway)."""

    def initialize_from_bucket(self) -> None:
        return None


class QuestionBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Base class: a TFDS builder whose examples are serialized Questions.

    Subclasses set the class attributes below and implement
    :meth:`_questions`. They are not registered in the global TFDS registry
    (their names would clash with TFDS's own ``gsm8k`` etc.), so construct
    them directly::

      builder = Gsm8k(data_dir=tfds_dir, manual_dir="shared/data")
      builder.download_and_prepare()
      source = builder.as_data_source()["test"]

    Class attributes:
      DOMAIN: registry name written into ``Question.domain`` (the loader may
        overwrite it with the name used to load).
      MANUAL_SUBDIR: folder under the manual dir holding this dataset's files.
      FILES: file key -> path relative to ``MANUAL_SUBDIR``.
      URLS: file key -> official download URL (used without a manual dir).
      SPLIT_POLICY: TFDS split -> ``"train"``, ``"test"`` or ``"hashed"``
        (split by :func:`metacog_jax.data.splits.assign_split` on the id).
    """

    def download_and_prepare(self, *args: Any, **kwargs: Any) -> None:
        """TFDS's ``download_and_prepare``; when it fails (a bad row, a missing file), the folders it made
        under the data dir are removed if empty (TFDS writes records into a temporary folder first, so
        nothing else is left behind)."""
        root = Path(self._data_dir_root)
        before = {p for p in root.rglob("*") if p.is_dir()} if root.is_dir() else set()
        try:
            super().download_and_prepare(*args, **kwargs)
        except BaseException:
            made = [p for p in (root.rglob("*") if root.is_dir() else ()) if p.is_dir() and p not in before]
            for folder in sorted(made, key=lambda p: len(p.parts), reverse=True):
                with contextlib.suppress(OSError):  # not empty: something else's, keep it
                    folder.rmdir()
            raise

    # Builds are cached per version under data_dir: bump it whenever the
    # conversion of a source changes, or stale Questions will be read.
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Questions serialized as JSON (metacog_jax.data.records)."}

    DOMAIN: ClassVar[str]
    MANUAL_SUBDIR: ClassVar[str]
    FILES: ClassVar[Mapping[str, str]]
    URLS: ClassVar[Mapping[str, str]]
    SPLIT_POLICY: ClassVar[Mapping[str, str]]
    HOMEPAGE: ClassVar[str] = ""
    DESCRIPTION: ClassVar[str] = ""

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        # TFDS derives this from the top-level package via importlib
        # resources, which needs the optional `importlib_resources` module
        # when the package is a namespace package; the defining file is all
        # it needs (checksums would sit next to it).
        return epath.Path(inspect.getfile(cls))

    def __init__(self, *, data_dir: str | Path, manual_dir: str | Path | None = None,
                 **kwargs: Any) -> None:
        """Args:
          data_dir: where TFDS writes the array_record files (per run workdir).
          manual_dir: root holding ``<MANUAL_SUBDIR>/<files>``; ``None`` means
            download from ``URLS``.
          **kwargs: passed to ``tfds.core.GeneratorBasedBuilder`` (e.g.
            ``config`` for multi-task sources).
        """
        kwargs.setdefault("file_format", tfds.core.FileFormat.ARRAY_RECORD)
        self._manual_root = None if manual_dir is None else Path(manual_dir)
        super().__init__(data_dir=str(data_dir), **kwargs)

    # ---- TFDS hooks -------------------------------------------------------

    def _info(self) -> tfds.core.DatasetInfo:
        return _LocalDatasetInfo(
            builder=self,
            description=self.DESCRIPTION,
            homepage=self.HOMEPAGE,
            features=tfds.features.FeaturesDict({
                "id": tfds.features.Text(),
                # Position in the source file, so readers can restore file
                # order (TFDS shuffles examples by key when writing).
                "index": tfds.features.Scalar(dtype=np.int64),
                "record": tfds.features.Text(),
            }),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        paths = self.resolve_files(dl_manager)
        return {split: self._generate_examples(split, paths) for split in self.SPLIT_POLICY}

    def _generate_examples(self, split: str, paths: Mapping[str, Path]):
        seen: set[str] = set()
        for index, question in enumerate(self._questions(split, paths)):
            if question.id in seen:
                raise MalformedRecordError(f"{self.name} split {split!r}: duplicate id {question.id!r}")
            seen.add(question.id)
            yield question.id, {
                "id": question.id,
                "index": index,
                "record": json.dumps(question.to_json(), ensure_ascii=False),
            }

    # ---- for subclasses ----------------------------------------------------

    def _questions(self, split: str, paths: Mapping[str, Path]) -> Iterator[Question]:
        """Yields the Questions of TFDS split ``split`` in source-file order."""
        raise NotImplementedError

    def our_split(self, source_split: str, question_id: str,
                  test_fraction: float = splits.DEFAULT_TEST_FRACTION) -> str:
        """Maps a TFDS split and id to ``"train"``/``"test"`` by ``SPLIT_POLICY``."""
        policy = self.SPLIT_POLICY[source_split]
        if policy == "hashed":
            return splits.assign_split(question_id, test_fraction)
        return policy

    def manual_path(self) -> Path | None:
        """The folder holding this dataset's files, or None when downloading."""
        if self._manual_root is None:
            return None
        return self._manual_root / self.MANUAL_SUBDIR

    def resolve_files(self, dl_manager: tfds.download.DownloadManager | None) -> dict[str, Path]:
        """Returns file key -> local path, from the manual dir or by download.

        Raises:
          MissingSourceError: the manual dir or one of its files is missing;
            the message says where it looked and how to get the files.
        """
        folder = self.manual_path()
        if folder is None:
            if dl_manager is None:
                raise MissingSourceError(f"{self.name}: no manual dir and no download manager")
            return self._download(dl_manager)
        if not folder.is_dir():
            raise MissingSourceError(
                f"{self.name}: manual dir {folder} does not exist (looked for "
                f"{', '.join(self.FILES.values())} there). {SOURCES_HINT}")
        paths = {key: folder / rel for key, rel in self.FILES.items()}
        missing = [str(p) for p in paths.values() if not p.is_file()]
        if missing:
            raise MissingSourceError(f"{self.name}: missing file(s) {missing}. {SOURCES_HINT}")
        return paths

    def _download(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Path]:
        """Fetches ``URLS``; override when files come inside an archive."""
        downloaded = dl_manager.download(dict(self.URLS))
        return {key: Path(path) for key, path in downloaded.items()}


def decode_example(example: Mapping[str, Any]) -> tuple[int, Question]:
    """Turns one ``as_data_source`` element into ``(file index, Question)``."""
    record = example["record"]
    if isinstance(record, bytes):
        record = record.decode("utf-8")
    return int(example["index"]), Question.from_json(json.loads(record))
