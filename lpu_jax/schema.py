"""Reading typed fields out of a parsed file (a config.json, a TOML table, GGUF metadata) with
one clear error naming the file, the field and what was expected.

JSON and TOML give Python values of any type for any key; a field read through a `Fields` is a
value of the promised type and range, or a UserError. bool is not accepted as a number (True is
an int in Python), and a whole number must be integral, not 2.7.
"""

from __future__ import annotations

import math
from typing import Any

from lpu_jax.errors import UserError

REQUIRED = object()


class Fields:
    """Typed access to a mapping read from `source` (a file name, for messages)."""

    def __init__(self, raw: Any, source: str):
        if not isinstance(raw, dict):
            raise UserError(f"{source}: expected a table of fields, got {type(raw).__name__}")
        self.raw, self.source = raw, source

    def __bool__(self) -> bool:
        return bool(self.raw)  # an empty table reads as absent

    def _get(self, key: str, default):
        value = self.raw.get(key)
        if value is None:
            if default is REQUIRED:
                raise UserError(f"{self.source}: lacks {key!r}")
            return default, False
        return value, True

    def _fail(self, key: str, expected: str, value) -> UserError:
        return UserError(f"{self.source}: {key} must be {expected}, got {value!r}")

    def integer(self, key: str, default=REQUIRED, low: int = 1, high: int | None = None):
        """A whole number in [low, high] (an integral float such as 4096.0 is taken)."""
        value, given = self._get(key, default)
        if not given:
            return value
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            value = int(value)
        expected = f"a whole number >= {low}" + (f" and <= {high:,}" if high is not None else "")
        if isinstance(value, bool) or not isinstance(value, int) or value < low or (
                high is not None and value > high):
            raise self._fail(key, expected, value)
        return value

    def number(self, key: str, default=REQUIRED, positive: bool = True):
        """A finite number (> 0 when `positive`)."""
        value, given = self._get(key, default)
        if not given:
            return value
        if (isinstance(value, bool) or not isinstance(value, (int, float))
                or not math.isfinite(value) or (positive and value <= 0)):
            raise self._fail(key, "a finite number" + (" > 0" if positive else ""), value)
        return float(value)

    def flag(self, key: str, default=REQUIRED) -> bool:
        value, given = self._get(key, default)
        if given and not isinstance(value, bool):
            raise self._fail(key, "true or false", value)
        return value

    def text(self, key: str, default=REQUIRED) -> str:
        value, given = self._get(key, default)
        if given and not isinstance(value, str):
            raise self._fail(key, "a string", value)
        return value

    def table(self, key: str) -> "Fields | None":
        """A nested table, or None when absent."""
        value, given = self._get(key, None)
        if not given:
            return None
        if not isinstance(value, dict):
            raise self._fail(key, "a table of fields", value)
        return Fields(value, f"{self.source} [{key}]")

    def integers(self, key: str, low: int = 0, high: int | None = None) -> tuple[int, ...]:
        """One whole number or a list of them (e.g. eos_token_id); () when absent."""
        value, given = self._get(key, None)
        if not given:
            return ()
        values = value if isinstance(value, list) else [value]
        fields = Fields({f"{key}[{i}]": v for i, v in enumerate(values)}, self.source)
        return tuple(fields.integer(f"{key}[{i}]", low=low, high=high)
                     for i in range(len(values)))
