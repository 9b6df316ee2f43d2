"""Small GGUF files for the tests, written with the gguf package's writer."""

from pathlib import Path

import gguf
import numpy as np


def write_gguf(path: Path, fields: dict, tensors: dict[str, np.ndarray]) -> Path:
    """A llama GGUF with these metadata fields, each stored in the type its Python value has
    (integers as int64, clamped; lists of integers as int32 arrays), and these tensors."""
    writer = gguf.GGUFWriter(str(path), "llama")
    for key, value in fields.items():
        if isinstance(value, bool):
            writer.add_bool(key, value)
        elif isinstance(value, str):
            writer.add_string(key, value)
        elif isinstance(value, float):
            writer.add_float64(key, value)
        elif isinstance(value, int):
            writer.add_int64(key, max(min(value, 2**63 - 1), -2**63))
        elif isinstance(value, list) and all(isinstance(v, int) for v in value):
            writer.add_array(key, [max(min(v, 2**31 - 1), -2**31) for v in value])
    for name, array in tensors.items():
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
