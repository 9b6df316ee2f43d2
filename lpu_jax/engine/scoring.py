"""Scoring a text under a precision recipe against the f32 reference (what lpu-sweep measures).

The text runs through one chip's model in windows of a fixed length with the KV cache carried
across them, so every position sees all the text before it and one executable serves every
window. At each position the recipe's next-token distribution is compared with the reference's:
the negative log-likelihood of the actual next token (-> perplexity), the KL divergence
KL(reference || recipe), and whether both rank the same token first.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from lpu_jax.checkpoint import LoadedModel
from lpu_jax.model import KVCache, forward_hidden, logits_from_hidden
from lpu_jax.numerics.formats import nbytes, num_values
from lpu_jax.numerics.recipe import Recipe
from lpu_jax.numerics.store import execution_copy, store_params

WINDOW = 256


@dataclasses.dataclass
class Score:
    recipe: str
    weight_bytes: int
    parameters: int
    tokens: int  # positions scored
    nll_sum: float = 0.0
    kl_sum: float = 0.0
    top1_matches: int = 0

    def as_row(self) -> dict:
        return {"recipe": self.recipe, "weight_bytes": self.weight_bytes,
                "bytes_per_parameter": self.weight_bytes / self.parameters,
                "perplexity": math.exp(self.nll_sum / self.tokens),
                "mean_kl": self.kl_sum / self.tokens,
                "top1_agreement": self.top1_matches / self.tokens, "tokens": self.tokens}


def _windows(tokens: np.ndarray, window: int):
    """(inputs [1, window], targets [window], count) per window; the last one padded."""
    inputs, targets = tokens[:-1], tokens[1:]
    for start in range(0, len(inputs), window):
        chunk_in = np.zeros((1, window), np.int32)
        chunk_target = np.zeros(window, np.int32)
        n = min(window, len(inputs) - start)
        chunk_in[0, :n] = inputs[start:start + n]
        chunk_target[:n] = targets[start:start + n]
        yield start, chunk_in, chunk_target, n


@jax.jit
def _compare(reference_lp, lp, targets, valid):
    """Sums over the valid positions: NLL of the targets, KL(reference || lp), top-1 matches."""
    nll = -jnp.take_along_axis(lp, targets[:, None], axis=1)[:, 0]
    kl = jnp.sum(jnp.exp(reference_lp) * (reference_lp - lp), axis=1)
    same = jnp.argmax(reference_lp, axis=1) == jnp.argmax(lp, axis=1)
    return (jnp.sum(jnp.where(valid, nll, 0.0)), jnp.sum(jnp.where(valid, kl, 0.0)),
            jnp.sum(valid & same))


class TextScorer:
    """Scores recipes on one token sequence; the f32 reference is run once and kept."""

    def __init__(self, model: LoadedModel, tokens: np.ndarray, window: int = WINDOW):
        if len(tokens) < 2:
            raise ValueError("scoring needs at least two tokens")
        self.model = model
        self.tokens = np.asarray(tokens, np.int32)
        self.window = window
        self._reference: list[jax.Array] | None = None
        self._reference_nll = 0.0

    def windows(self) -> int:
        return -(-(len(self.tokens) - 1) // self.window)

    def _log_probs(self, recipe: Recipe, params):
        """Per window: log-probabilities [window, V], targets [window] and the valid count."""
        config = self.model.config
        cache = KVCache.zeros(config, 1, self.windows() * self.window, recipe.kv_cache_dtype)

        @jax.jit
        def step(params, cache, tokens_1W, start):
            x, cache = forward_hidden(params, config, tokens_1W, start, cache, recipe)
            logits = logits_from_hidden(params, x, precision=recipe)[0, :, :config.vocab_size]
            return jax.nn.log_softmax(logits, axis=-1), cache

        for start, inputs, targets, n in _windows(self.tokens, self.window):
            lp, cache = step(params, cache, inputs, jnp.int32(start))
            yield lp, targets, n

    def reference_perplexity(self) -> float:
        """The f32 reference's perplexity (after the first score)."""
        return math.exp(self._reference_nll / (len(self.tokens) - 1))

    def _executable_params(self, recipe: Recipe):
        """The stored weights, and what the steps read (the same choice as Engine's "auto")."""
        stored = store_params(self.model.params, recipe)
        if jax.default_backend() == "cpu":
            return stored, execution_copy(stored)
        return stored, stored

    def score(self, recipe: Recipe, on_window: Callable[[], None] = lambda: None) -> Score:
        if self._reference is None:
            reference = Recipe()
            self._reference = []
            for lp, targets, n in self._log_probs(reference,
                                                  self._executable_params(reference)[1]):
                self._reference.append(lp)
                nll, _, _ = _compare(lp, lp, targets, np.arange(self.window) < n)
                self._reference_nll += float(nll)
                on_window()
        stored, params = self._executable_params(recipe)
        result = Score(recipe.name, nbytes(stored), num_values(stored), len(self.tokens) - 1)
        for reference_lp, (lp, targets, n) in zip(self._reference,
                                                   self._log_probs(recipe, params)):
            nll, kl, same = _compare(reference_lp, lp, targets, np.arange(self.window) < n)
            result.nll_sum += float(nll)
            result.kl_sum += float(kl)
            result.top1_matches += int(same)
            on_window()
        return result
