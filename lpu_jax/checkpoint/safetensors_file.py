"""A validating, streaming reader for .safetensors files.

The safetensors package cannot hand bfloat16 to numpy, and memory-mapping would count every touched
page of the file in the process's resident memory. This reader checks the header against the file's
real size first (so a truncated download is named, not half-loaded) and then reads one tensor at a
time with pread: host memory holds one tensor beyond what the caller keeps.
"""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path

import ml_dtypes
import numpy as np

from lpu_jax.errors import UserError

def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


DTYPES = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
}
MAX_HEADER_BYTES = 100 * 1024 * 1024


class SafetensorsFile:
    """The tensors of one file, read on demand; use as a context manager or call close()."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self._fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            raise UserError(f"{self.path}: no such file") from None
        except OSError as e:
            raise UserError(f"{self.path}: cannot open ({e.strerror})") from None
        try:
            self._entries, self._data_start = self._read_header()
        except Exception:
            os.close(self._fd)
            raise

    def _read_header(self) -> tuple[dict, int]:
        size = os.fstat(self._fd).st_size
        prefix = os.pread(self._fd, 8, 0)
        if len(prefix) < 8:
            raise UserError(f"{self.path}: truncated safetensors file ({size} bytes, no header)")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > min(size - 8, MAX_HEADER_BYTES):
            raise UserError(f"{self.path}: truncated or not a safetensors file "
                            f"(header claims {header_len} bytes, file has {size})")
        try:
            header = json.loads(os.pread(self._fd, header_len, 8))
        except (ValueError, RecursionError):  # not JSON, not UTF-8, an absurd literal
            raise UserError(f"{self.path}: corrupt safetensors header (not JSON)") from None
        if not isinstance(header, dict):
            raise UserError(f"{self.path}: corrupt safetensors header (a JSON "
                            f"{type(header).__name__}, not an object of tensors)")
        header.pop("__metadata__", None)
        data_start = 8 + header_len
        spans = []
        for name, entry in header.items():
            begin, end, shape = self._check_entry(name, entry, size - data_start)
            if entry["dtype"] in DTYPES:
                expected = math.prod(shape) * DTYPES[entry["dtype"]].itemsize
                if end - begin != expected:
                    raise UserError(f"{self.path}: tensor {name!r} holds {end - begin} bytes, its "
                                    f"shape {shape} and dtype {entry['dtype']} need {expected}")
            spans.append((begin, end, name))
        spans.sort()
        for (_, end, first), (begin, _, second) in zip(spans, spans[1:]):
            if begin < end:
                raise UserError(f"{self.path}: corrupt header: tensors {first!r} and {second!r} "
                                "overlap in the data")
        return header, data_start

    def _check_entry(self, name: str, entry, data_bytes: int) -> tuple[int, int, list[int]]:
        """A header entry's (begin, end, shape), each checked: offsets are byte positions in the
        data region (after the header), begin <= end; the shape a list of whole numbers."""
        def bad(what: str) -> UserError:
            return UserError(f"{self.path}: corrupt header entry for tensor {name!r}: {what}")

        if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= set(entry):
            raise bad("it needs dtype, shape and data_offsets")
        offsets, shape = entry["data_offsets"], entry["shape"]
        if not isinstance(entry["dtype"], str):
            raise bad(f"dtype must be a string, got {entry['dtype']!r}")
        if not (isinstance(shape, list) and all(_whole(n) for n in shape)):
            raise bad(f"shape must be a list of whole numbers >= 0, got {shape!r}")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_whole, offsets))
                and offsets[0] <= offsets[1]):
            raise bad(f"data_offsets must be [begin, end] with 0 <= begin <= end, got {offsets!r}")
        if offsets[1] > data_bytes:
            raise UserError(f"{self.path}: truncated: tensor {name!r} ends at byte "
                            f"{offsets[1]} of the data, which has {data_bytes} bytes; download "
                            "it again")
        return offsets[0], offsets[1], shape

    def names(self) -> list[str]:
        return list(self._entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._entries[name]["shape"])

    def read(self, name: str) -> np.ndarray:
        """The tensor as a fresh numpy array in its stored dtype."""
        entry = self._entries[name]
        dtype = DTYPES.get(entry["dtype"])
        if dtype is None:
            raise UserError(f"{self.path}: tensor {name!r} has dtype {entry['dtype']}; "
                            f"lpu_jax reads {', '.join(DTYPES)}")
        begin, end = entry["data_offsets"]
        buffer = bytearray(end - begin)
        view = memoryview(buffer)
        done = 0
        while done < len(buffer):  # pread may return fewer bytes than asked for
            n = os.preadv(self._fd, [view[done:]], self._data_start + begin + done)
            if n == 0:
                raise UserError(f"{self.path}: file shrank while reading tensor {name!r}")
            done += n
        return np.frombuffer(buffer, dtype=dtype).reshape(entry["shape"])

    def close(self):
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
