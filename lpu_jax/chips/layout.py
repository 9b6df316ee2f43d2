"""How many emulated chips a deployment has and how the model is split across them."""

from __future__ import annotations

import dataclasses
import math

from lpu_jax.config import ModelConfig
from lpu_jax.errors import UserError

TP_AXIS = "tp"


@dataclasses.dataclass(frozen=True)
class Layout:
    """tp chips split every layer Megatron-style (heads, MLP columns, vocabulary)."""

    tp: int = 1

    @property
    def num_chips(self) -> int:
        return self.tp

    def check(self, config: ModelConfig) -> None:
        if self.tp < 1:
            raise UserError(f"--tp must be >= 1, got {self.tp}")
        if self.tp not in valid_tp(config):
            raise UserError(
                f"--tp={self.tp} does not divide the model (num_attention_heads="
                f"{config.num_heads}, num_key_value_heads={config.num_kv_heads}, "
                f"intermediate_size={config.intermediate_size}); valid: "
                f"{', '.join(map(str, valid_tp(config)))}")


def valid_tp(config: ModelConfig) -> list[int]:
    """Chip counts that split query heads, KV heads and the MLP evenly (the vocabulary is padded)."""
    heads = math.gcd(config.num_heads, config.num_kv_heads)
    return [t for t in range(1, heads + 1)
            if heads % t == 0 and config.intermediate_size % t == 0]
