"""Reading a JSON or TOML file a user points at, with one clear error when it is missing or bad;
and finding the configs shipped with the package (configs/, installed as lpu_jax.configs)."""

from __future__ import annotations

import json
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

from lpu_jax.errors import UserError


def read_json(path: Path) -> Any:
    return _read(path, json.loads, json.JSONDecodeError, "JSON")


def read_text(path: Path) -> str:
    return _read(path, lambda text: text, ValueError, "UTF-8 text")


def read_toml(path: Path) -> dict:
    return _read(path, tomllib.loads, tomllib.TOMLDecodeError, "TOML")


def _read(path: Path, loads, decode_error: type[Exception], kind: str) -> Any:
    try:
        return loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a directory, not a {kind} file") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None
    except (decode_error, ValueError, RecursionError) as e:  # ValueError: an absurd literal
        raise UserError(f"{path}: not valid {kind} ({e})") from None


def shipped(folder: str, suffix: str = ".toml") -> list[str]:
    """Names of the shipped configs in configs/<folder>."""
    return sorted(p.stem for p in _configs(folder).glob(f"*{suffix}"))


def shipped_or_path(folder: str, name_or_path: str, what: str, suffix: str = ".toml") -> Path:
    """A shipped configs/<folder>/<name><suffix> by name, or any <suffix> file by path."""
    path = Path(name_or_path)
    if path.suffix == suffix:
        return path
    path = _configs(folder) / f"{name_or_path}{suffix}"
    if not path.exists():
        raise UserError(f"unknown {what} {name_or_path!r}; shipped: "
                        f"{', '.join(shipped(folder, suffix))}, or pass a {suffix} file")
    return path


def _configs(folder: str) -> Path:
    return Path(str(resources.files("lpu_jax.configs"))) / folder
