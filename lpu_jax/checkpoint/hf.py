"""Hugging Face checkpoint directories: config.json plus one or several .safetensors files."""

from __future__ import annotations

from pathlib import Path

from lpu_jax.checkpoint.assemble import build_params
from lpu_jax.checkpoint.safetensors_file import SafetensorsFile
from lpu_jax.config import ModelConfig
from lpu_jax.errors import UserError
from lpu_jax.model import Params
from lpu_jax.schema import Fields
from lpu_jax.textfiles import read_json

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def safetensors_files(directory: Path) -> list[Path]:
    """The weight files, from the sharded index when there is one; pickles are refused."""
    index = directory / INDEX_FILE
    if index.exists():
        raw = read_json(index)
        weight_map = raw.get("weight_map") if isinstance(raw, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise UserError(f"{index}: not a valid safetensors index (no weight_map object)")
        files = []
        names = list(weight_map.values())
        for name in dict.fromkeys(n if isinstance(n, str) else repr(n) for n in names):
            # A file of the checkpoint, never a path that leads out of its directory.
            if (name not in names or Path(name).name != name
                    or not name.endswith(".safetensors")):
                raise UserError(f"{index}: weight_map names {name!r}; it must name .safetensors "
                                "files in the checkpoint's own directory")
            files.append(directory / name)
        return files
    if (directory / SINGLE_FILE).exists():
        return [directory / SINGLE_FILE]
    loose = sorted(directory.glob("*.safetensors"))
    if loose:
        return loose
    pickles = sorted(p.name for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise UserError(f"{directory}: holds only pickle weights ({pickles[0]}); lpu_jax never "
                        "unpickles checkpoints. Convert them to safetensors, e.g. "
                        "model.save_pretrained(dir, safe_serialization=True)")
    raise UserError(f"{directory}: no model.safetensors or {INDEX_FILE} found")


def load_hf_dir(directory: Path, config: ModelConfig) -> Params:
    files = []
    try:
        for path in safetensors_files(directory):
            files.append(SafetensorsFile(path))
        owner = {name: f for f in files for name in f.names()}
        return build_params(config, owner, lambda name, _: owner[name].read(name),
                            str(directory))
    finally:
        for f in files:
            f.close()


def read_generation_eos(directory: Path) -> tuple[int, ...]:
    """Stop ids from generation_config.json (often a list for instruct models), if present."""
    path = directory / "generation_config.json"
    if not path.exists():
        return ()
    return Fields(read_json(path), str(path)).integers("eos_token_id")
