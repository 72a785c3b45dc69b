"""Run files: atomic writes, the one JSON-cleaning rule, and JSONL reading."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from metacog_jax import artifacts
from conftest import read_strict_json


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_atomic_output_replaces_on_success_and_fsyncs(tmp_path, monkeypatch):
    target = tmp_path / "sub" / "out.txt"
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    with artifacts.atomic_output(target) as f:
        f.write("new")
        tmp_name = Path(f.name)
        assert tmp_name.parent == target.parent and tmp_name != target and not target.exists()
    assert target.read_text() == "new" and synced
    assert _leftovers(target.parent) == []


def test_atomic_output_error_keeps_old_file_and_removes_temp(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with artifacts.atomic_output(target) as f:
            f.write("half")
            raise RuntimeError("killed half-way")
    assert target.read_text() == "old"
    assert _leftovers(tmp_path) == []


def test_atomic_output_unique_temp_names_and_bytes(tmp_path):
    target = tmp_path / "x.png"
    with artifacts.atomic_output(target, "wb") as a, artifacts.atomic_output(target, "wb") as b:
        assert a.name != b.name  # two writers of one file never share a temporary
        a.write(b"first")
        b.write(b"second")
    assert target.read_bytes() == b"first"  # the outer block closes last: its rename wins, whole
    with pytest.raises(ValueError, match="mode"):
        with artifacts.atomic_output(target, "a"):
            pass


def test_write_jsonl_generator_error_leaves_nothing(tmp_path):
    target = tmp_path / "rows.jsonl"

    def rows():
        yield {"a": 1}
        raise ValueError("bad row")

    with pytest.raises(ValueError, match="bad row"):
        artifacts.write_jsonl(target, rows())
    assert not target.exists() and _leftovers(tmp_path) == []
    assert artifacts.write_jsonl(target, [{"a": np.int64(1)}, {"b": float("nan")}]) == 2
    assert [r for _, r in artifacts.iter_jsonl(target)] == [{"a": 1}, {"b": None}]


def test_json_ready_rule():
    cfg = ml_collections.ConfigDict({"a": (1, 2), "b": {"c": None}})
    value = {
        "np_float": np.float32(0.5), "np_int": np.int64(3), "np_bool": np.bool_(True), "nan": float("nan"),
        "inf": -math.inf, "np_nan": np.float64("nan"), "array": np.array([[1.0, np.nan], [2.0, 3.0]]),
        "jax": jnp.arange(3), "tuple": (1, "x", None), "path": Path("/tmp/x"), "config": cfg, 7: "int key",
    }
    out = artifacts.json_ready(value)
    assert out == {
        "np_float": 0.5, "np_int": 3, "np_bool": True, "nan": None, "inf": None, "np_nan": None,
        "array": [[1.0, None], [2.0, 3.0]], "jax": [0, 1, 2], "tuple": [1, "x", None], "path": "/tmp/x",
        "config": {"a": [1, 2], "b": {"c": None}}, "7": "int key",
    }
    assert type(out["np_float"]) is float and type(out["np_int"]) is int and type(out["np_bool"]) is bool
    json.dumps(out, allow_nan=False)


@pytest.mark.parametrize("bad, where", [({"a": [1, {"b": object()}]}, r"value\['a'\]\[1\]\['b'\]"),
                                        ({"s": {1, 2}}, r"value\['s'\]: set"),
                                        (np.array(["x"]), "dtype")])
def test_json_ready_unknown_object_is_an_error(bad, where):
    with pytest.raises(TypeError, match=where):
        artifacts.json_ready(bad)


def test_write_json_is_strict(tmp_path):
    path = artifacts.write_json(tmp_path / "m.json", {"auc": float("nan"), "n": np.int32(4)})
    assert read_strict_json(path) == {"auc": None, "n": 4}
    assert path.read_text().endswith("\n")


def test_iter_jsonl_errors_name_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"a": 1}\n\n[1, 2]\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:3: expected a JSON object"):
        list(artifacts.iter_jsonl(path))
    path.write_text('{"a": 1}\n{"a": \n')
    with pytest.raises(KeyError, match=r"bad.jsonl:2: invalid JSON"):
        list(artifacts.iter_jsonl(path, KeyError))


def test_keyed_log_appends_reads_back_and_cuts_a_torn_line(tmp_path):
    path = tmp_path / "sub" / "cache.jsonl"
    log = artifacts.KeyedLog(path, "test line", lambda row: None if "v" in row else "no 'v'")
    assert len(log) == 0 and not path.exists()
    log.add([{"key": "a", "v": 1}, {"key": "b", "v": "é"}])
    log.add([])
    with path.open("a", encoding="utf-8") as f:
        f.write('{"key": "c", "v"')  # a kill mid-append
    again = artifacts.KeyedLog(path, "test line")
    assert len(again) == 2 and again["b"] == {"key": "b", "v": "é"} and "c" not in again
    assert path.read_text(encoding="utf-8").endswith("\n")
    path.write_text('{"key": "a"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"cache\.jsonl:1: a bad test line \(no 'v'\); delete the file"):
        artifacts.KeyedLog(path, "test line", lambda row: None if "v" in row else "no 'v'")
    memory = artifacts.KeyedLog(None, "test line")
    memory.add([{"key": "x"}])
    assert "x" in memory
