"""Load a checkpoint -- a Hugging Face directory, a .gguf file or the embedded default -- as a
LoadedModel: strict config, parameters on the device, tokenizer and stop tokens."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

from lpu_jax.checkpoint.default import default_model_path
from lpu_jax.checkpoint.gguf import GGUFCheckpoint
from lpu_jax.checkpoint.hf import PICKLE_SUFFIXES, load_hf_dir, read_generation_eos
from lpu_jax.config import ModelConfig
from lpu_jax.errors import UserError
from lpu_jax.model import Params
from lpu_jax.numerics.recipe import Recipe
from lpu_jax.tokenizer import Tokenizer


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    config: ModelConfig
    params: Params | None  # None where they are drawn, or once an Engine holds them
    tokenizer: Tokenizer | None  # None: the checkpoint ships none, prompts must be token ids
    stop_token_ids: tuple[int, ...]
    source: str
    # Weights with no checkpoint (random): drawn straight into a recipe's storage formats when
    # an Engine places them, so no f32 copy of the model is ever made.
    draw_stored: Callable[[Recipe], Params] | None = None


def load_model(path: str | Path | None = None) -> LoadedModel:
    """Load from a Hugging Face directory or a .gguf file; None means the embedded default."""
    path = checkpoint_path(path)
    return _load_hf(path) if path.is_dir() else _load_gguf(path)


def load_config(path: str | Path | None = None) -> ModelConfig:
    """Only the checkpoint's config (its JSON, or the GGUF header): no weights are read, so
    flags can be checked against the model in a moment, before a long load."""
    path = checkpoint_path(path)
    return _hf_config(path) if path.is_dir() else GGUFCheckpoint(path).config()


def checkpoint_path(path: str | Path | None) -> Path:
    """The checkpoint to read (None: the embedded default), refused here unless it is a Hugging
    Face directory or a .gguf file."""
    path = default_model_path() if path is None else Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file or directory")
    if path.is_dir() or path.suffix == ".gguf":
        return path
    if path.suffix in PICKLE_SUFFIXES:
        raise UserError(f"{path}: pickle checkpoints are refused (unpickling can run code); "
                        "convert it to safetensors")
    if path.suffix == ".safetensors":
        raise UserError(f"{path}: pass the directory holding it and its config.json instead")
    raise UserError(f"{path}: not a checkpoint (expected a Hugging Face directory or a .gguf file)")


def _hf_config(directory: Path) -> ModelConfig:
    config_path = directory / "config.json"
    if not config_path.exists():
        raise UserError(f"{directory}: no config.json; is this a Hugging Face model directory?")
    return ModelConfig.from_json_file(config_path)


def _load_hf(directory: Path) -> LoadedModel:
    config = _hf_config(directory)
    tokenizer = Tokenizer.from_hf_dir(directory)
    params = load_hf_dir(directory, config)
    stops = read_generation_eos(directory) or config.eos_token_ids
    if tokenizer is not None and tokenizer.eos_token_id is not None:
        stops = stops + (tokenizer.eos_token_id,)
    return LoadedModel(config, params, tokenizer, tuple(dict.fromkeys(stops)), str(directory))


def _load_gguf(path: Path) -> LoadedModel:
    checkpoint = GGUFCheckpoint(path)
    config = checkpoint.config()
    try:
        tokenizer = Tokenizer.from_gguf_metadata(checkpoint.metadata, str(path))
    except UserError:
        tokenizer = None  # the weights still run from --prompt_ids
    params = checkpoint.params(config)
    return LoadedModel(config, params, tokenizer, config.eos_token_ids, str(path))
