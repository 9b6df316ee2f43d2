"""Reading a JSON or TOML file a user points at, with one clear error when it is missing or bad."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

from lpu_jax.errors import UserError


def read_json(path: Path) -> Any:
    return _read(path, json.loads, json.JSONDecodeError, "JSON")


def read_toml(path: Path) -> dict:
    return _read(path, tomllib.loads, tomllib.TOMLDecodeError, "TOML")


def _read(path: Path, loads, decode_error: type[Exception], kind: str) -> Any:
    try:
        return loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except (decode_error, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid {kind} ({e})") from None
