"""One JSONL reader for every file the project reads back (questions, targets, eval items, study items)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def iter_jsonl(path: str | os.PathLike[str], error: type[Exception] = ValueError, *,
               encoding: str = "utf-8") -> Iterator[tuple[int, dict[str, Any]]]:
    """Yields ``(line_number, object)`` for each non-blank line of ``path`` (1-based line numbers).

    Raises:
      FileNotFoundError: ``path`` does not exist.
      error: a line is not valid JSON or not a JSON object; the message starts with ``file:line``.
    """
    with Path(path).open(encoding=encoding) as f:
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
