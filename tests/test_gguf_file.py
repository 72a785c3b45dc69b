"""metacog_jax.models.gguf_file reads what gguf.GGUFReader reads (metadata and tensor views), and names the
file when it cannot."""

from __future__ import annotations

import struct

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from metacog_jax.models.gguf_file import GGUFFormatError, read_gguf  # noqa: E402


def _same_as_gguf_reader(path) -> None:
    ours, ref = read_gguf(path), gguf.GGUFReader(str(path))
    ref_fields = {k: f for k, f in ref.fields.items() if not k.startswith("GGUF.")}  # its header pseudo-fields
    assert set(ours.metadata) == set(ref_fields)
    for key, field in ref_fields.items():
        if key == "test.nested":  # GGUFReader.contents() flattens an array of arrays; checked below instead
            continue
        expected = field.contents()
        if isinstance(expected, float):
            assert ours.metadata[key] == pytest.approx(expected), key
        else:
            assert ours.metadata[key] == expected, key
    assert [t.name for t in ours.tensors] == [t.name for t in ref.tensors]
    for a, b in zip(ours.tensors, ref.tensors):
        assert a.shape == tuple(int(d) for d in b.shape) and a.tensor_type == b.tensor_type, a.name
        assert a.data.dtype == b.data.dtype and a.data.shape == b.data.shape, a.name
        np.testing.assert_array_equal(a.data, b.data)


def _write(path, endianess=None):
    kw = {} if endianess is None else {"endianess": endianess}
    w = gguf.GGUFWriter(str(path), "llama", **kw)
    w.add_uint32("test.u32", 7)
    w.add_int64("test.i64", -3)
    w.add_float32("test.f32", 0.25)
    w.add_bool("test.flag", True)
    w.add_string("test.text", "héllo ▁world")
    w.add_array("test.ints", [1, 2, 3])
    w.add_array("test.floats", [0.5, -1.5])
    w.add_array("test.strings", ["a", "", "ß"])
    w.add_array("test.nested", [[1, 2], [3]])
    rng = np.random.default_rng(0)
    w.add_tensor("plain.f32", rng.normal(size=(3, 5)).astype(np.float32))
    w.add_tensor("plain.f16", rng.normal(size=(4,)).astype(np.float16))
    w.add_tensor("plain.i32", np.arange(6, dtype=np.int32).reshape(2, 3))
    from gguf.quants import quantize

    block = rng.normal(size=(2, 64)).astype(np.float32)
    for qtype in (gguf.GGMLQuantizationType.Q8_0, gguf.GGMLQuantizationType.Q4_1):
        w.add_tensor(f"quant.{qtype.name}", quantize(block, qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_reads_what_gguf_reader_reads_on_the_embedded_model(smol_gguf_path):
    _same_as_gguf_reader(smol_gguf_path)
    f = read_gguf(smol_gguf_path)
    assert len(f.get("tokenizer.ggml.tokens")) == 49152 and f.get("general.architecture") == "llama"


@pytest.mark.parametrize("order", [None, "big"])
def test_reads_what_gguf_reader_reads_on_every_value_type(tmp_path, order):
    endianess = None if order is None else gguf.GGUFEndian.BIG
    path = _write(tmp_path / "t.gguf", endianess)
    _same_as_gguf_reader(path)
    f = read_gguf(path)
    assert f.get("test.nested") == [[1, 2], [3]] and f.get("test.strings") == ["a", "", "ß"]
    q = next(t for t in f.tensors if t.name == "quant.Q4_1")
    from gguf.quants import dequantize

    assert dequantize(q.data, q.tensor_type).shape == (2, 64)


def test_malformed_files_name_the_file(tmp_path):
    good = _write(tmp_path / "good.gguf").read_bytes()
    cases = {"empty": b"", "magic": b"GGML" + good[4:], "version": good[:4] + struct.pack("<I", 9) + good[8:],
             "header": good[:60], "data": good[:-40]}  # the last tensor's 80 bytes + 16 of padding
    messages = {"empty": "empty", "magic": "not a GGUF file", "version": "version 9",
                "header": "cut short|runs past", "data": "runs past the end of the file"}
    for name, data in cases.items():
        path = tmp_path / f"{name}.gguf"
        path.write_bytes(data)
        with pytest.raises(GGUFFormatError, match=messages[name]) as err:
            read_gguf(path)
        assert str(path) in str(err.value), name
