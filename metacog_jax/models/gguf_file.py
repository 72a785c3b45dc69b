"""A GGUF file's metadata and tensor directory, read in one pass (the data stays memory-mapped).

`gguf.GGUFReader` builds a NumPy view for every part of every metadata value; on SmolLM2's file (49,152
tokens and 48,900 merges as string arrays) that takes seconds, paid by every process that loads the model
or only its tokenizer. This reader parses the same header with `struct` over an `mmap`, 32x faster there
(benchmarks/gguf_header.py), and exposes what the loaders use: `metadata` (key -> Python value: numbers, bool, str,
lists) and `tensors` (name, ggml dims innermost first, ggml type, data as the same NumPy view
`gguf.GGUFReader` gives, which `gguf.quants.dequantize` takes). Layout (ggml's GGUF spec, versions 2 and 3):

    magic "GGUF" | version u32 | tensor count u64 | metadata count u64
    metadata: key string | value type u32 | value      (string = u64 length + UTF-8 bytes;
                                                        array = item type u32 + count u64 + items)
    tensor infos: name string | n_dims u32 | dims u64 x n_dims | ggml type u32 | offset u64
    padding to `general.alignment` (32 by default) | tensor data (each offset relative to here)

Byte order is read from the version field, as ggml writes big-endian files with the same layout.
"""

from __future__ import annotations

import dataclasses
import mmap
import struct
from pathlib import Path

import numpy as np

_MAGIC = b"GGUF"
_DEFAULT_ALIGNMENT = 32
# GGUF metadata value types: (struct format, NumPy dtype) for the scalar ones.
_SCALARS = {0: ("B", np.uint8), 1: ("b", np.int8), 2: ("H", np.uint16), 3: ("h", np.int16), 4: ("I", np.uint32),
            5: ("i", np.int32), 6: ("f", np.float32), 7: ("?", np.bool_), 10: ("Q", np.uint64), 11: ("q", np.int64),
            12: ("d", np.float64)}
_STRING, _ARRAY = 8, 9
# ggml tensor types stored as plain NumPy items (the rest are blocks of bytes, as gguf.GGUFReader keeps them).
_PLAIN = {0: np.float32, 1: np.float16, 24: np.int8, 25: np.int16, 26: np.int32, 27: np.int64, 28: np.float64}


class GGUFFormatError(ValueError):
    """The file is not a GGUF file this reader understands (names the file and the offset)."""


@dataclasses.dataclass(frozen=True)
class GGUFTensor:
    name: str
    shape: tuple[int, ...]  # ggml order: innermost (contiguous) dimension first
    tensor_type: int  # a gguf.GGMLQuantizationType
    data: np.ndarray  # memory-mapped: typed [*reversed(shape)] for plain types, else uint8 [..., row bytes]


@dataclasses.dataclass(frozen=True)
class GGUFFile:
    path: str
    version: int
    metadata: dict
    tensors: list[GGUFTensor]

    def get(self, key: str, default=None):
        return self.metadata.get(key, default)


class _Cursor:
    def __init__(self, buf, order: str, source: str):
        self.buf, self.order, self.source, self.pos = buf, order, source, 0

    def fail(self, what: str):
        raise GGUFFormatError(f"{self.source}: not a readable GGUF file ({what} at byte {self.pos})")

    def unpack_many(self, fmt: str) -> tuple:
        size = struct.calcsize(self.order + fmt)
        if self.pos + size > len(self.buf):
            self.fail("the header is cut short")
        out = struct.unpack_from(self.order + fmt, self.buf, self.pos)
        self.pos += size
        return out

    def unpack(self, fmt: str):
        out = self.unpack_many(fmt)
        return out[0] if len(out) == 1 else out

    def string(self) -> str:
        n = self.unpack("Q")
        if self.pos + n > len(self.buf):
            self.fail(f"a string of {n} bytes runs past the end of the file")
        raw = self.buf[self.pos:self.pos + n]
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            self.fail("a string that is not UTF-8")

    def value(self, kind: int):
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            item, count = self.unpack("IQ")
            if item == _STRING:
                return [self.string() for _ in range(count)]
            if item == _ARRAY:  # an array of arrays: each item carries its own item type and count
                return [self.value(_ARRAY) for _ in range(count)]
            if item not in _SCALARS:
                self.fail(f"unknown array item type {item}")
            dtype = np.dtype(_SCALARS[item][1]).newbyteorder(self.order)
            end = self.pos + count * dtype.itemsize
            if end > len(self.buf):
                self.fail(f"an array of {count} items runs past the end of the file")
            values = np.frombuffer(self.buf, dtype, count, self.pos).tolist()
            self.pos = end
            return values
        if kind not in _SCALARS:
            self.fail(f"unknown metadata value type {kind}")
        return self.unpack(_SCALARS[kind][0])


def read_gguf(path: str | Path) -> GGUFFile:
    """Parse a GGUF file's header; the tensor data stay memory-mapped (nothing is copied).

    Raises:
      GGUFFormatError: not a GGUF file, an unsupported version, or a header that is cut short or malformed.
    """
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    path = str(path)
    with open(path, "rb") as f:
        try:
            buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:  # an empty file cannot be mapped
            raise GGUFFormatError(f"{path}: not a GGUF file (it is empty)") from None
    if buf[:4] != _MAGIC:
        raise GGUFFormatError(f"{path}: not a GGUF file (it starts with {bytes(buf[:4])!r}, not b'GGUF')")
    order = "<"
    version = struct.unpack_from("<I", buf, 4)[0] if len(buf) >= 8 else 0
    if version & 0xFFFF == 0 and version:  # written big-endian
        order, version = ">", struct.unpack_from(">I", buf, 4)[0]
    if version not in (2, 3):
        raise GGUFFormatError(f"{path}: GGUF version {version} is not supported (2 and 3 are)")
    cur = _Cursor(buf, order, path)
    cur.pos = 8
    n_tensors, n_kv = cur.unpack("QQ")
    metadata = {}
    for _ in range(n_kv):
        key = cur.string()
        if key in metadata:
            cur.fail(f"metadata key {key!r} given twice")
        metadata[key] = cur.value(cur.unpack("I"))
    infos = []
    for _ in range(n_tensors):
        name = cur.string()
        n_dims = cur.unpack("I")
        if n_dims > 8:  # ggml's GGML_MAX_DIMS is 4
            cur.fail(f"tensor {name!r} with {n_dims} dimensions")
        dims = tuple(int(d) for d in cur.unpack_many("Q" * n_dims))
        kind, offset = cur.unpack("IQ")
        infos.append((name, dims, kind, offset))
    alignment = int(metadata.get("general.alignment", _DEFAULT_ALIGNMENT))
    if alignment <= 0 or alignment & (alignment - 1):
        raise GGUFFormatError(f"{path}: general.alignment={alignment} is not a power of two")
    start = -(-cur.pos // alignment) * alignment
    tensors, names = [], set()
    for name, dims, kind, offset in infos:
        if name in names:
            raise GGUFFormatError(f"{path}: tensor {name!r} appears twice")
        names.add(name)
        try:
            qtype = GGMLQuantizationType(kind)
        except ValueError:
            raise GGUFFormatError(f"{path}: tensor {name!r} has unknown ggml type {kind}") from None
        block, type_size = GGML_QUANT_SIZES[qtype]
        n = int(np.prod(dims, dtype=np.int64)) if dims else 1
        np_dims = tuple(reversed(dims))
        if kind in _PLAIN:
            dtype, count = np.dtype(_PLAIN[kind]).newbyteorder(order), n
        else:
            if not dims or dims[0] % block:
                raise GGUFFormatError(f"{path}: tensor {name!r} of shape {dims} does not fill {qtype.name} blocks")
            dtype, count = np.dtype(np.uint8), n // block * type_size
            np_dims = (*np_dims[:-1], dims[0] // block * type_size)
        if start + offset + count * dtype.itemsize > len(buf):
            raise GGUFFormatError(f"{path}: tensor {name!r} runs past the end of the file (truncated?)")
        data = np.frombuffer(buf, dtype, count, start + offset).reshape(np_dims)
        tensors.append(GGUFTensor(name, dims, qtype, data))
    return GGUFFile(path, version, metadata, tensors)
