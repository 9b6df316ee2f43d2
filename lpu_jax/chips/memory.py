"""Bytes per chip of a deployment, and the assignment of the vocabulary to stages that keeps
the fullest chip as empty as possible.

Layers split into contiguous stages whose sizes differ by at most one: every layer costs the
same, so no other split holds fewer on the fullest stage. The vocabulary (embedding and LM
head) then fills the stages with fewer layers first, up to one level (water-filling), so its
bytes land where the layers left room. The per-chip program pads short stages with identity
layers and short vocabulary blocks with zero rows; those pads cost compute in the program,
not memory on the hardware, and the plan counts only real layers and rows.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from lpu_jax.checkpoint.assemble import abstract_params
from lpu_jax.chips.layout import Layout, layouts_within
from lpu_jax.chips.split import split_layer
from lpu_jax.config import ModelConfig
from lpu_jax.errors import UserError
from lpu_jax.numerics.formats import nbytes
from lpu_jax.numerics.recipe import Recipe
from lpu_jax.numerics.store import store_params


@dataclasses.dataclass(frozen=True)
class ChipBytes:
    """The fullest chip's bytes: what decides whether a deployment fits."""

    weights: int
    kv_cache: int


class MemoryPlan:
    """Bytes per chip for any layout, from one abstract layer and the abstract vocabulary
    tensors, so finding the chips a model needs is arithmetic."""

    def __init__(self, config: ModelConfig, recipe: Recipe):
        self.config, self.recipe = config, recipe
        # Every layer has the same shapes: one stands for all.
        stored = self.one_layer_model = jax.eval_shape(
            lambda p: store_params(p, recipe),
            abstract_params(dataclasses.replace(config, num_layers=1)))
        self._one_layer, self._norm = stored.layers[0], nbytes(stored.final_norm_D)
        self.row_bytes = ((nbytes(stored.embed_DV) + nbytes(stored.lm_head_DV))
                          / config.vocab_size)  # a token's embedding and LM head columns
        self._layer: dict[tuple[int, int], int] = {}

    def layer_bytes(self, layout: Layout) -> int:
        """One decoder layer's weights on one of its stage's tp chips."""
        key = (layout.tp, layout.ep)
        if key not in self._layer:
            shares = jax.eval_shape(lambda layer: split_layer(layer, self.config, layout),
                                    self._one_layer)
            self._layer[key] = nbytes(shares) // layout.tp
        return self._layer[key]

    def kv_bytes_per_layer(self, layout: Layout, sequences: int, context: int) -> int:
        """One layer's K and V caches on one chip, for `sequences` of `context` positions."""
        itemsize = jnp.dtype(self.recipe.kv_cache_dtype).itemsize
        return (2 * sequences * context * layout.kv_heads_per_chip(self.config)
                * self.config.head_dim * itemsize)

    def _stage_bytes(self, layout: Layout, sequences: int, context: int) -> list[tuple[int, int]]:
        """(weights, KV cache) of the first chip of each stage, real layers only."""
        cfg = self.config
        layer, kv = (self.layer_bytes(layout),
                     self.kv_bytes_per_layer(layout, sequences, context))
        rows = layout.vocab_shares(cfg.vocab_size)[::layout.tp]
        return [(len(stage) * layer + round(share * self.row_bytes) + self._norm,
                 len(stage) * kv)
                for stage, share in zip(layout.stage_layers(cfg.num_layers), rows)]

    def fullest(self, layout: Layout, sequences: int, context: int) -> ChipBytes:
        weights, kv = max(self._stage_bytes(layout, sequences, context), key=sum)
        return ChipBytes(weights, kv)

    def max_sequences(self, layout: Layout, context: int, room: float) -> int:
        """The most sequences whose KV caches fit beside the weights in `room` bytes per chip."""
        per_stage = zip(self._stage_bytes(layout, 0, context),
                        self._stage_bytes(layout, 1, context))
        return max(min(int(room - weights) // kv for (weights, _), (_, kv) in per_stage), 0)

    def balanced(self, layout: Layout, sequences: int, context: int) -> Layout:
        """`layout` with the vocabulary's rows assigned so the fullest chip holds the fewest
        bytes (weights and the KV caches of `sequences` at `context`)."""
        if layout.pp == 1:
            return dataclasses.replace(layout, vocab_rows=())
        cfg, tp = self.config, layout.tp
        per_layer = (self.layer_bytes(layout)
                     + self.kv_bytes_per_layer(layout, sequences, context))
        loads = [len(stage) * per_layer for stage in layout.stage_layers(cfg.num_layers)]

        def rows_at(level: float) -> list[int]:
            return [max(int((level - load) // self.row_bytes), 0) for load in loads]

        # Water-filling: the lowest level whose rows, every stage filled up to it, cover the
        # vocabulary (the fullest stages may get none).
        low, high = min(loads), max(loads) + -(-cfg.vocab_size // tp) * self.row_bytes
        while high - low > self.row_bytes / 2:
            middle = (low + high) / 2
            low, high = (low, middle) if sum(rows_at(middle)) * tp >= cfg.vocab_size else (
                middle, high)
        rows = rows_at(high)
        while (sum(rows) - 1) * tp >= cfg.vocab_size:  # at most a row per stage too many
            fullest = max(range(len(rows)), key=lambda s: (rows[s] > 0,
                                                            loads[s] + rows[s] * self.row_bytes))
            rows[fullest] -= 1
        return dataclasses.replace(layout, vocab_rows=tuple(rows))

    def fitting(self, layout: Layout, sequences: int, context: int,
                room: float) -> Layout | None:
        """`layout` balanced for the run when its fullest chip's weights and caches fit in `room`
        bytes, else None (also when the recipe's formats cannot split the layers so)."""
        try:
            layout = self.balanced(layout, sequences, context)
            held = self.fullest(layout, sequences, context)
        except UserError:  # e.g. a format's blocks of rows do not divide a chip's share
            return None
        return layout if held.weights + held.kv_cache <= room else None

    def chips_needed(self, capacity: float, sequences: int, context: int, activations: int,
                     most_chips: int | None = None, batch: int | None = None,
                     ep: int = 1) -> Layout | None:
        """The layout with the fewest chips (at most `most_chips`; pp dividing `batch` when one
        is given; `ep` expert groups) whose fullest chip fits `capacity` beside `activations`
        (fewer tp chips on a tie: they stay inside a node), or None."""
        return next(filter(None, (self.fitting(layout, sequences, context, capacity - activations)
                                  for layout in layouts_within(self.config, most_chips, batch,
                                                               ep))), None)
