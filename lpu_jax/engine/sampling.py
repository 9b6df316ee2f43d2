"""Choosing the next token from logits: greedy, or temperature with top-k / top-p, from a seed."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from lpu_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """temperature 0 means greedy; top_k 0 and top_p 1 mean no truncation."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self):
        if not (self.temperature >= 0.0) or self.temperature == float("inf"):
            raise UserError(f"--temperature must be a finite number >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise UserError(f"--top_k must be >= 0 (0 disables it), got {self.top_k}")
        if not (0.0 < self.top_p <= 1.0):
            raise UserError(f"--top_p must be in (0, 1], got {self.top_p}")
        if not -2**31 <= self.seed < 2**31:
            raise UserError(f"--seed must fit in 32 bits ({-2**31} to {2**31 - 1}), got "
                            f"{self.seed}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def sample(logits_BV: jax.Array, key: jax.Array, config: SamplingConfig) -> jax.Array:
    """Next token ids [B], int32. The key is the step's own (fold the position in before).

    A temperature so small that logits / temperature overflows float32 is greedy for that row:
    the limit of sampling as the temperature goes to zero.
    """
    greedy = jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
    if config.greedy:
        return greedy
    logits = logits_BV.astype(jnp.float32) / config.temperature
    overflowed = jnp.any(jnp.isfinite(logits_BV) & ~jnp.isfinite(logits), axis=-1)
    if config.top_k and config.top_k < logits.shape[-1]:
        kth_largest = jax.lax.top_k(logits, config.top_k)[0][:, -1:]
        logits = jnp.where(logits < kth_largest, -jnp.inf, logits)
    if config.top_p < 1.0:
        sorted_desc = jnp.sort(logits, axis=-1)[:, ::-1]
        probs = jax.nn.softmax(sorted_desc, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        # Keep the smallest prefix whose mass reaches top_p: a token stays if the mass before it
        # is still short of top_p. The most likely token always stays.
        kept = mass_before < config.top_p
        threshold = jnp.min(jnp.where(kept, sorted_desc, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits < threshold, -jnp.inf, logits)
    sampled = jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)
    return jnp.where(overflowed, greedy, sampled)
