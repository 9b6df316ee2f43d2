"""A validating reader for the GGUF container: metadata, tensor directory, raw tensor bytes.

The `gguf` package's own reader builds a numpy view per metadata item, which takes seconds for a
50k-token vocabulary; this one parses the header in one pass and checks every tensor's extent against
the file's size, so a truncated file is named before any weight is read. Dequantizing the blocks is
left to `gguf.quants`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np

from lpu_jax.errors import UserError
from lpu_jax.schema import Fields

MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
# GGUF metadata value types -> struct format (8: string, 9: array are handled apart)
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q",
            12: "d"}
_STRING, _ARRAY = 8, 9


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # numpy order: slowest dimension first
    ggml_type: int
    offset: int  # absolute, in the file
    nbytes: int


class _Cursor:
    """Reads little-endian values from the header bytes, failing with a truncation message."""

    def __init__(self, data: bytes, path: Path):
        self.data, self.pos, self.path = data, 0, path

    def take(self, fmt: str):
        size = struct.calcsize("<" + fmt)
        if self.pos + size > len(self.data):
            raise UserError(f"{self.path}: truncated GGUF header; download the file again")
        (value,) = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += size
        return value

    def string(self) -> str:
        n = self.take("Q")
        raw = self.data[self.pos:self.pos + n]
        if len(raw) < n:
            raise UserError(f"{self.path}: truncated GGUF header; download the file again")
        self.pos += n
        return raw.decode("utf-8", errors="replace")

    def value(self, kind: int) -> Any:
        if kind in _SCALARS:
            return self.take(_SCALARS[kind])
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            item_kind, count = self.take("I"), self.take("Q")
            if item_kind == _ARRAY:  # no field of a model is an array of arrays
                raise UserError(f"{self.path}: corrupt GGUF metadata (an array of arrays)")
            if item_kind in _SCALARS and item_kind != 7:  # numeric arrays in one read
                dtype = np.dtype("<" + _SCALARS[item_kind])
                end = self.pos + count * dtype.itemsize
                if end > len(self.data):
                    raise UserError(f"{self.path}: truncated GGUF header; download the file again")
                array = np.frombuffer(self.data, dtype, count, self.pos)
                self.pos = end
                return array.tolist()
            return [self.value(item_kind) for _ in range(count)]
        raise UserError(f"{self.path}: corrupt GGUF metadata (value type {kind})")


class GGUFFile:
    """Metadata and tensor directory of a GGUF v2/v3 file; tensors are read on demand."""

    def __init__(self, path: str | Path):
        from gguf.constants import GGML_QUANT_SIZES  # block size and bytes per block, by type

        self.path = Path(path)
        try:
            size = self.path.stat().st_size
            with open(self.path, "rb") as f:
                # The header of even a large model fits well within this; grow if it does not.
                header = f.read(min(size, 64 << 20))
        except FileNotFoundError:
            raise UserError(f"{self.path}: no such file") from None
        except OSError as e:
            raise UserError(f"{self.path}: cannot read ({e.strerror})") from None
        if header[:4] != MAGIC:
            raise UserError(f"{self.path}: not a GGUF file (bad magic bytes)")
        cur = _Cursor(header, self.path)
        cur.pos = 4
        version = cur.take("I")
        if version not in (2, 3):
            raise UserError(f"{self.path}: GGUF version {version} is not supported (2 or 3)")
        tensor_count, kv_count = cur.take("Q"), cur.take("Q")
        self.metadata: dict[str, Any] = {}
        for _ in range(kv_count):
            key = cur.string()
            self.metadata[key] = cur.value(cur.take("I"))

        infos = []
        for _ in range(tensor_count):
            name = cur.string()
            dims = [cur.take("Q") for _ in range(cur.take("I"))]
            infos.append((name, dims, cur.take("I"), cur.take("Q")))
        alignment = Fields(self.metadata, f"{self.path}: GGUF metadata").integer(
            "general.alignment", DEFAULT_ALIGNMENT, high=1 << 20)
        data_start = -(-cur.pos // alignment) * alignment

        self.tensors: dict[str, TensorInfo] = {}
        for name, dims, ggml_type, offset in infos:
            if name in self.tensors:
                raise UserError(f"{self.path}: corrupt GGUF: tensor {name!r} appears twice")
            if ggml_type not in GGML_QUANT_SIZES:
                raise UserError(f"{self.path}: tensor {name!r} has unknown ggml type {ggml_type}")
            block, block_bytes = GGML_QUANT_SIZES[ggml_type]
            count = math.prod(dims)  # Python integers: no overflow to hide a corrupt size
            if count == 0 or count % block or (dims[0] if dims else 1) % block:
                raise UserError(f"{self.path}: tensor {name!r} has dimensions {dims} that do not "
                                f"hold whole blocks of {block} values")
            info = TensorInfo(name, tuple(reversed(dims)), ggml_type, data_start + offset,
                              count // block * block_bytes)
            if offset % alignment:
                raise UserError(f"{self.path}: tensor {name!r} starts at offset {offset}, not "
                                f"a multiple of the alignment {alignment}")
            if info.offset + info.nbytes > size:
                raise UserError(f"{self.path}: truncated: tensor {name!r} ends at byte "
                                f"{info.offset + info.nbytes}, the file has {size} bytes; "
                                "download it again")
            self.tensors[name] = info
        spans = sorted((t.offset, t.offset + t.nbytes, t.name) for t in self.tensors.values())
        for (_, end, first), (begin, _, second) in zip(spans, spans[1:]):
            if begin < end:
                raise UserError(f"{self.path}: corrupt GGUF: tensors {first!r} and {second!r} "
                                "overlap in the data")

    def read_raw(self, name: str) -> np.ndarray:
        """The tensor's bytes shaped [..., bytes per row], as gguf.quants.dequantize expects."""
        info = self.tensors[name]
        with open(self.path, "rb") as f:
            f.seek(info.offset)
            raw = np.frombuffer(f.read(info.nbytes), dtype=np.uint8)
        return raw.reshape(*info.shape[:-1], -1)
