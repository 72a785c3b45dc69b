"""Run files: reading JSONL back, writing every artifact atomically, and one rule for what JSON holds.

Every file a stage writes (samples' questions, targets, eval items, metrics, reports, figures, configs,
study exports) goes through :func:`atomic_output`: the bytes land in a uniquely named temporary file
beside the target, are flushed and fsynced, and only then renamed over the target. A reader, or a run
resumed after a kill, sees either the old file or the whole new one, never half of one; on an error the
temporary file is removed.

:func:`json_ready` is the one statement of what goes into JSON here: mappings, sequences, strings,
booleans, integers and finite floats pass through; NumPy (and JAX) scalars and arrays become Python
values; NaN and infinities become ``null`` (strict JSON has neither); paths become strings. Anything else
is an error naming where it sits, rather than its ``repr`` written silently.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

log = logging.getLogger(__name__)


# -- reading ------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def open_text(path: str | os.PathLike[str], error: type[Exception] = ValueError, *, encoding: str = "utf-8",
              newline: str | None = None) -> Iterator[IO[str]]:
    """Opens a text file for reading; bytes that are not ``encoding`` raise ``error`` naming the file.

    Raises:
      FileNotFoundError: ``path`` does not exist.
      error: the file is not valid ``encoding`` text (e.g. Latin-1 or UTF-16 bytes read as UTF-8).
    """
    with Path(path).open(encoding=encoding, newline=newline) as f:
        try:
            yield f
        except UnicodeDecodeError as e:
            byte = e.object[e.start:e.start + 1].hex()
            codec = "UTF-8" if encoding.lower().replace("_", "-").startswith("utf-8") else encoding
            raise error(f"{path}: not {codec} text (byte 0x{byte}: {e.reason}); save the file as "
                        f"{codec}") from None


def iter_jsonl(path: str | os.PathLike[str], error: type[Exception] = ValueError, *,
               encoding: str = "utf-8") -> Iterator[tuple[int, dict[str, Any]]]:
    """Yields ``(line_number, object)`` for each non-blank line of ``path`` (1-based line numbers).

    Raises:
      FileNotFoundError: ``path`` does not exist.
      error: a line is not valid JSON or not a JSON object; the message starts with ``file:line``.
    """
    with open_text(path, error, encoding=encoding) as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise error(f"{path}:{line_no}: invalid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(obj, dict):
                raise error(f"{path}:{line_no}: expected a JSON object, got {type(obj).__name__}")
            yield line_no, obj


# -- JSON cleaning ------------------------------------------------------------------------------------------
def json_ready(value: Any, _where: str = "value") -> Any:
    """A copy of ``value`` that ``json.dumps(..., allow_nan=False)`` accepts.

    Mappings (including ``ml_collections.ConfigDict``) become dicts with string keys; lists and tuples
    become lists; NumPy/JAX scalars and arrays become Python numbers and nested lists; NaN and
    infinities become None; ``os.PathLike`` becomes its string.

    Raises:
      TypeError: an object of any other type, naming its place (e.g. ``value['a'][2]``) and type.
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, np.integer)) and not isinstance(value, np.bool_):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, Mapping) or _is_config_dict(value):
        return {str(k): json_ready(value[k], f"{_where}[{k!r}]") for k in value.keys()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v, f"{_where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, np.ndarray) or (hasattr(value, "__array__") and hasattr(value, "dtype")):
        array = np.asarray(value)
        if array.dtype.kind not in "biuf":
            raise TypeError(f"{_where}: array of dtype {array.dtype} has no JSON form")
        return json_ready(array.tolist(), _where)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"{_where}: {type(value).__name__} object has no JSON form: {value!r:.80}")


def _is_config_dict(value: Any) -> bool:
    # ConfigDict is not a Mapping subclass; checked by name so this module does not import ml_collections.
    return type(value).__name__ in ("ConfigDict", "FrozenConfigDict") and hasattr(value, "keys")


def json_text(obj: Any, *, indent: int | None = 2, sort_keys: bool = False) -> str:
    """``obj`` through :func:`json_ready` as JSON text (UTF-8 kept as is), ending with a newline."""
    return json.dumps(json_ready(obj), indent=indent, sort_keys=sort_keys, ensure_ascii=False,
                      allow_nan=False) + "\n"


# -- writing ------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str], mode: str = "w", *, encoding: str | None = "utf-8",
                  newline: str | None = None) -> Iterator[IO]:
    """Open a temporary file beside ``path`` for writing; on a clean exit it replaces ``path``.

    The temporary name is unique (``.<name>.<random>.tmp`` in the same folder, so the rename stays on one
    filesystem and concurrent writers never share it). On leaving the block the file is flushed, fsynced
    and renamed over ``path``; if the block raises, the temporary file is removed and ``path`` is left as
    it was. The handle's ``.name`` is the temporary path, so a caller may validate what it wrote before
    the rename. Parent folders are created.

    Args:
      path: the file to write.
      mode: "w" (text) or "wb" (bytes).
      encoding, newline: as for :func:`open`, text mode only.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_output mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        text_args = {} if "b" in mode else {"encoding": encoding, "newline": newline}
        with open(tmp, mode, **text_args) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    with atomic_output(path) as f:
        f.write(text)
    return Path(path)


def write_json(path: str | os.PathLike[str], obj: Any, *, indent: int | None = 2,
               sort_keys: bool = False) -> Path:
    """Write ``obj`` (through :func:`json_ready`) as indented JSON, atomically; returns the path."""
    return write_text(path, json_text(obj, indent=indent, sort_keys=sort_keys))


def write_jsonl(path: str | os.PathLike[str], rows: Iterable[Any]) -> int:
    """Write one JSON object a line (each through :func:`json_ready`), atomically; returns the count.

    ``rows`` may be a generator: it is consumed inside the temporary file, so an error part-way leaves
    the previous ``path`` untouched.
    """
    count = 0
    with atomic_output(path) as f:
        for row in rows:
            f.write(json.dumps(json_ready(row), ensure_ascii=False, allow_nan=False) + "\n")
            count += 1
    return count


# -- caches of finished work --------------------------------------------------------------------------------
class KeyedLog:
    """Rows by their ``key``, kept in memory and appended to a JSON-lines file: finished work that a killed
    run reads back instead of doing again (the judge's verdicts, ``explain``'s results).

    On opening, process 0 reads the file, cuts off a truncated last line (what a kill mid-append leaves)
    and hands every process the rows (``multihost.leader_value``); :meth:`add` appends rows in one
    fsynced write from process 0, and a failed write stops every process. With ``path`` None the rows
    are kept in memory only.

    Args:
      path: the JSON-lines file, or None.
      what: what a line is, for messages (``"judge-cache line"``).
      check: a line's problem as text, or None when it is valid; an invalid line is an error naming
        ``file:line``.
    """

    def __init__(self, path: str | os.PathLike[str] | None, what: str,
                 check: Callable[[dict[str, Any]], str | None] = lambda row: None):
        self.path = None if path is None else Path(path)
        self.what, self.check = what, check
        self.rows: dict[str, dict[str, Any]] = {}
        if self.path is not None:
            from metacog_jax import multihost

            self.rows = multihost.leader_value(lambda: self._load() if self.path.exists() else {})

    def _load(self) -> dict[str, dict[str, Any]]:
        rows: dict[str, dict[str, Any]] = {}
        data = self.path.read_bytes()
        complete = data.rfind(b"\n") + 1
        if complete < len(data):
            log.warning("%s: dropping a truncated last line (an interrupted run)", self.path)
            with self.path.open("r+b") as f:
                f.truncate(complete)
                f.flush()
                os.fsync(f.fileno())
        for line_no, raw in enumerate(data[:complete].split(b"\n")[:-1], start=1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw.decode("utf-8"))
                problem = (None if isinstance(row, dict) and isinstance(row.get("key"), str)
                           else "not an object with a string 'key'") or self.check(row)
            except (ValueError, UnicodeDecodeError) as e:
                problem = str(e)
            if problem:
                raise ValueError(f"{self.path}:{line_no}: a bad {self.what} ({problem}); delete the file to "
                                 "compute its contents again")
            rows[row["key"]] = row
        return rows

    def __contains__(self, key: str) -> bool:
        return key in self.rows

    def __getitem__(self, key: str) -> dict[str, Any]:
        return self.rows[key]

    def __len__(self) -> int:
        return len(self.rows)

    def add(self, rows: Sequence[dict[str, Any]]) -> None:
        """Records ``rows`` (each with a ``key``): one fsynced append for all of them, by process 0.

        Every process must call it, in the same order (it is a ``leader_value``)."""
        for row in rows:
            self.rows[row["key"]] = row
        if self.path is None or not rows:
            return
        from metacog_jax import multihost

        def append() -> None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as f:
                f.write("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
                f.flush()
                os.fsync(f.fileno())

        multihost.leader_value(append)


# -- spreadsheet-safe CSV cells -------------------------------------------------------------------------
# A cell that starts with one of these is read by spreadsheet programs as a formula ("=HYPERLINK(...)",
# "+1+1", "@SUM(...)", "-3") or loses its first character; the quote is the escape itself.
_FORMULA_LEADS = ("=", "+", "-", "@", "\t", "\r", "'")


def spreadsheet_cell(text: str) -> str:
    """``text`` made inert for spreadsheets: a leading ``'`` is added when it starts with ``= + - @``, tab,
    CR or ``'`` (OWASP's CSV-injection advice). :func:`from_spreadsheet_cell` undoes it exactly."""
    return "'" + text if text.startswith(_FORMULA_LEADS) else text


def from_spreadsheet_cell(text: str) -> str:
    """The inverse of :func:`spreadsheet_cell`: drops a ``'`` that precedes one of the escaped leads, and
    leaves every other text (a hand-written "'tis") as it is."""
    return text[1:] if text.startswith("'") and text[1:].startswith(_FORMULA_LEADS) else text
