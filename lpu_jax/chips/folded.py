"""The per-chip program for chips folded onto one device: each stage once per step.

A pipeline's stages work one at a time in single-stream mode. The per-chip conveyor
(chips/program.py) has every stage compute at each of its pp ticks and keep only its own tick's
work: free when each chip has a device, pp times the work when all of them share one. Folded, a
step runs over the whole chip grid instead: the stages in order, each once, the hand-off between
them a plain value. A stage's tp chips run the per-chip layers under jax.vmap (the same code and
collectives), each multiplying its own weight buffers (numerics.matmul.PerChip); the embedding
and the LM head read each chip's block of the vocabulary. Every value is the per-chip program's
(bit for bit with --nocpu_fma, tests/test_chips.py). The ring, where every stage works at every
tick, runs the same way: within a tick, one stage after another on the state of the last tick.

Parameters come from chips.split.split_folded; the state from initial_state here.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from lpu_jax.chips import program
from lpu_jax.chips.layout import TP_AXIS, Layout
from lpu_jax.config import ModelConfig
from lpu_jax.model import KVCache, Params, rms_norm, run_layers
from lpu_jax.numerics.formats import take_columns
from lpu_jax.numerics.matmul import PerChip, matmul
from lpu_jax.numerics.recipe import Recipe


def _is_per_chip(leaf) -> bool:
    return isinstance(leaf, PerChip)


def _stage(params: Params, cache: KVCache, config: ModelConfig, layout: Layout, stage: int):
    """One stage's layers and their caches."""
    layers = layout.stage_layers(config.num_layers)[stage]
    return (params.layers[layers.start:layers.stop],
            KVCache(k=cache.k[layers.start:layers.stop], v=cache.v[layers.start:layers.stop]))


def _run_stage(layers, cache: KVCache, x, start, config: ModelConfig, layout: Layout,
               precision: Recipe, write=True):
    """A stage's layers on its tp chips (vmapped, their weights PerChip): [tp, ...] outputs."""
    def on_chip(layers, x, cache):
        return run_layers(layers, config, x, start, cache, layout.tp_axis, write=write,
                          precision=precision)
    # Norms and biases are stacked on the chips' axis; PerChip weights go in whole.
    layer_axes = jax.tree.map(lambda leaf: None if _is_per_chip(leaf) else 0, layers,
                              is_leaf=_is_per_chip)
    # Every chip of the stage starts from the same vectors, mapped over the chips like the rest:
    # a PerChip product sees its chips only where its input is mapped.
    x_TBSD = jnp.broadcast_to(x, (layout.tp, *x.shape))
    return jax.vmap(on_chip, in_axes=(layer_axes, 0, 0), axis_name=TP_AXIS)(layers, x_TBSD, cache)


def _hand_off(y_TBSD, layout: Layout, precision: Recipe):
    """What the next stage receives: the vectors (every tp chip holds the same ones, a psum ends
    each layer), in the link format when they cross to another stage."""
    return y_TBSD[0] if layout.pp == 1 else program.to_link(y_TBSD[0], precision)


def _embed(params: Params, config: ModelConfig, layout: Layout, tokens_BT):
    """Each token's vector from the chip whose block holds its row (the per-chip lookup's psum
    adds zeros from every other chip)."""
    vocab = config.vocab_size
    shares, starts = layout.vocab_shares(vocab), layout.vocab_starts(vocab)
    owner_BT = jnp.asarray(np.repeat(np.arange(len(shares)), shares)[:vocab])[tokens_BT]
    x = None
    with jax.named_scope("embedding"):
        for chip, block in enumerate(params.embed_DV.blocks):
            rows = block.shape[-1]  # the chip's real rows (split_folded)
            if rows == 0:
                continue
            rows_BT = jnp.clip(tokens_BT - starts[chip], 0, rows - 1)
            vectors = jnp.moveaxis(take_columns(block, rows_BT), 0, -1)
            x = vectors if x is None else jnp.where((owner_BT == chip)[..., None], vectors, x)
    return x


class Grid:
    """How prefill and decode reach the stages and the logits on a folded chip grid."""

    @staticmethod
    def conveyor(params, config, layout, tokens_BT, start, cache, precision):
        x = _embed(params, config, layout, tokens_BT)
        k, v = [], []
        for stage in range(layout.pp):
            layers, stage_cache = _stage(params, cache, config, layout, stage)
            y, stage_cache = _run_stage(layers, stage_cache, x, start, config, layout,
                                        precision)
            x = _hand_off(y, layout, precision)
            k += stage_cache.k
            v += stage_cache.v
        return (rms_norm(x, params.final_norm_D, config.rms_norm_eps),
                KVCache(k=tuple(k), v=tuple(v)))

    @staticmethod
    def logits(params, config, layout, precision, x_BTD):
        """Each chip's block of the logits, side by side in chip order: the blocks hold their
        chips' rows and nothing else (split_folded), so the columns are the tokens in order."""
        head = params.embed_DV if params.lm_head_DV is None else params.lm_head_DV
        with jax.named_scope("lm_head"):
            blocks = [matmul(x_BTD, block, precision.lm_head) for block in head.blocks
                      if block.shape[-1]]
        return jnp.concatenate(blocks, -1)


def ring_tick(params: Params, state: program.RingState, tokens_M, tick, positions_B, seed, *,
              config, layout, sampling, precision):
    """program.ring_tick on the grid: at tick t stage s works on micro-batch (t - s) mod pp
    with what the stage before it handed over at tick t - 1 (stage 0: the entering tokens)."""
    M = tokens_M.shape[0]
    entering = _embed(params, config, layout, tokens_M[:, None])
    k, v, outs = [], [], []
    for stage in range(layout.pp):
        first_row = ((tick - stage) % layout.pp) * M
        rows = lambda a, axis: jax.lax.dynamic_slice_in_dim(a, first_row, M, axis)  # noqa: E731
        layers, stage_cache = _stage(params, state.cache, config, layout, stage)
        micro_cache = jax.tree.map(lambda c: rows(c, 1), stage_cache)
        y, micro_cache = _run_stage(
            layers, micro_cache, entering if stage == 0 else state.held[stage],
            rows(positions_B, 0), config, layout, precision,
            write=True if layout.pp == 1 else tick >= stage)
        stage_cache = jax.tree.map(
            lambda c, m: jax.lax.dynamic_update_slice_in_dim(c, m, first_row, axis=1),
            stage_cache, micro_cache)
        outs.append(_hand_off(y, layout, precision))
        k += stage_cache.k
        v += stage_cache.v
    # Stage s holds what stage s - 1 sent; stage 0, what the last one sent (it takes tokens).
    held = jnp.stack(outs[-1:] + outs[:-1]) if layout.pp > 1 else state.held
    x = rms_norm(outs[-1], params.final_norm_D, config.rms_norm_eps)
    token, logits = program.next_token(Grid, params, config, layout, sampling, precision, x,
                                       seed, tick)
    return token, logits, program.RingState(KVCache(k=tuple(k), v=tuple(v)), held)


def step(kind: str, **static):
    """The step of `kind` over a folded grid: (params, state, *arguments, seed) -> (token,
    logits, state), like program.step's on one chip."""
    if program.step_kind(kind).ring:
        return functools.partial(ring_tick, **static)
    return functools.partial(program.step(kind), chips=Grid, **static)


def initial_state(kind: str, config: ModelConfig, layout: Layout, batch: int, length: int,
                  kv_cache_dtype) -> KVCache | program.RingState:
    """The folded grid's state before a step of `kind` (zeros): the KV cache of every layer,
    [tp, ...] for the stage's chips; for the ring, what each stage holds [pp, M, 1, D]."""
    ring = program.step_kind(kind).ring
    one_chip = KVCache.zeros(config, batch, length, kv_cache_dtype,
                             kv_heads=layout.kv_heads_per_chip(config), layers=config.num_layers)
    cache = jax.tree.map(lambda a: jnp.zeros((layout.tp, *a.shape), a.dtype), one_chip)
    if not ring:
        return cache
    return program.RingState(cache, jnp.zeros((layout.pp, batch // layout.pp, 1,
                                               config.hidden_size), jnp.float32))
