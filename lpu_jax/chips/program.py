"""The per-chip program: one step of one emulated chip, collectives explicit.

One step, `forward`, takes tokens [B, T] from a start position: prefill is T = the prompt's
bucket from position 0, decode T = 1 at the newest token's position, and a verify step T = K + 1
drafted tokens with the logits of every position. The token ring runs the same layers over
micro-batches (`ring_tick`). STEPS is the one table of step kinds: the engine compiles from it
and the cycle model schedules from it.

Pipeline stages form a conveyor: the embedded tokens enter stage 0, and after each tick every
stage hands its activations to the next with ppermute. In single-stream mode one token (or one
prompt) crosses all pp stages in pp ticks, so at each tick one stage works and the others run on
a bubble: they compute but keep their KV cache unchanged. In ring mode a batch is cut into pp
micro-batches that circulate: at every tick each stage works on a different micro-batch, so the
pipeline is full, and the micro-batch leaving the last stage gets its next token and re-enters
stage 0 on the next tick. Every chip ends a step with the full logits and draws the same tokens
from the same key.

This is the program each chip runs when it has a device (shard_map), and the one the cycle model
schedules. Chips folded onto one device run the same steps stage by stage (chips/folded.py).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from flax import struct

from lpu_jax.chips.layout import PP_AXIS, Layout
from lpu_jax.config import ModelConfig
from lpu_jax.engine.sampling import SamplingConfig, sample
from lpu_jax.model import (REFERENCE, KVCache, Params, embed, logits_from_hidden, rms_norm,
                           run_layers)
from lpu_jax.numerics.matmul import round_activations
from lpu_jax.numerics.recipe import Recipe


@struct.dataclass
class RingState:
    """What a chip carries from one ring tick to the next."""

    cache: KVCache  # the KV cache of every sequence in the batch, for this chip's layers
    # The activations of the micro-batch this stage works on next: [M, 1, D] on a chip, [pp, M,
    # 1, D] for the stages of a folded grid.
    held: jax.Array


def _ring(layout: Layout) -> list[tuple[int, int]]:
    # Stage s feeds stage s+1 and the last feeds stage 0 (in single-stream mode stage 0 is idle
    # by then: one permutation serves both modes).
    return [(s, (s + 1) % layout.pp) for s in range(layout.pp)]


@jax.named_scope("links")
def to_link(y, precision: Recipe):
    """Activations as they cross from one stage's chips to another's: in the link format."""
    return round_activations(y, precision.links)


@jax.named_scope("links")
def _to_next_stage(layout: Layout, y, precision: Recipe):
    """Each stage's activations, sent to the next in the recipe's link format."""
    return jax.lax.ppermute(to_link(y, precision), PP_AXIS, _ring(layout))


@jax.named_scope("links")
def _from_last_stage(layout: Layout, stage, y, precision: Recipe):
    """The last stage's activations, handed to every stage (in the link format)."""
    sent = jnp.where(stage == layout.pp - 1, to_link(y, precision), 0.0)
    return jax.lax.psum(sent, PP_AXIS)


def _embed(params: Params, config: ModelConfig, layout: Layout, tokens_BT):
    starts = layout.vocab_starts(config.vocab_size) if layout.vocab_rows else None
    return embed(params.embed_DV, tokens_BT, layout.vocab_axes, starts)


def conveyor(params: Params, config: ModelConfig, layout: Layout, tokens_BT: jax.Array,
             start: jax.Array, cache: KVCache,
             precision: Recipe = REFERENCE) -> tuple[jax.Array, KVCache]:
    """Tokens through every stage; returns the final-norm hidden states on every chip."""
    x = _embed(params, config, layout, tokens_BT)
    if layout.pp == 1:
        x, cache = run_layers(params.layers, config, x, start, cache, layout.tp_axis,
                              precision=precision)
    else:
        stage = jax.lax.axis_index(PP_AXIS)

        def tick(t, carry):
            x, _, cache = carry
            y, cache = run_layers(params.layers, config, x, start, cache, layout.tp_axis,
                                  write=stage == t, precision=precision)
            return _to_next_stage(layout, y, precision), y, cache

        # A loop, not unrolled: the program stays one stage long whatever pp is.
        _, y, cache = jax.lax.fori_loop(0, layout.pp, tick, (x, jnp.zeros_like(x), cache))
        x = _from_last_stage(layout, stage, y, precision)
    return rms_norm(x, params.final_norm_D, config.rms_norm_eps), cache


def _in_token_order(logits_BTV, config: ModelConfig, layout: Layout):
    """The chips' gathered vocabulary blocks -> one column per token, in token order."""
    if layout.vocab_rows:  # the chips' blocks are unequal: pick each token's column
        return jnp.take(logits_BTV, layout.vocab_columns(config.vocab_size), axis=-1)
    return logits_BTV[..., :config.vocab_size]


class OneChip:
    """How prefill and decode reach the stages and the logits on one chip (under shard_map):
    the conveyor's ppermute ticks, the LM head's all_gather. chips.folded runs the same steps
    over a folded chip grid."""

    @staticmethod
    def conveyor(params, config, layout, tokens_BT, start, cache, precision):
        return conveyor(params, config, layout, tokens_BT, start, cache, precision)

    @staticmethod
    def logits(params, config, layout, precision, x_BTD):
        logits_BTV = logits_from_hidden(params, x_BTD, layout.vocab_axes, precision)
        return _in_token_order(logits_BTV, config, layout)


def _key(seed, step):
    """The sampling key of a step (the position of the token sampled from): every chip and
    every process draws the same token with no key to ship around."""
    return jax.random.fold_in(jax.random.key(seed), step)


def next_token(chips, params, config, layout, sampling, precision, x_B1D, seed, step):
    """Logits [B, V] and the token sampled from them with the step's key."""
    logits_BV = chips.logits(params, config, layout, precision, x_B1D)[:, 0]
    with jax.named_scope("sampling"):
        return sample(logits_BV, _key(seed, step), sampling), logits_BV


def forward(params: Params, cache: KVCache, tokens_BT, start, lengths_B, seed, *,
            config: ModelConfig, layout: Layout, sampling: SamplingConfig,
            precision: Recipe = REFERENCE, chips=OneChip, every_position: bool = False):
    """Tokens [B, T] written to the cache from position `start`, row b's first lengths_B[b]
    real (the rest padding). Returns the token after each row's last real entry with the logits
    it was sampled from, [B] and [B, V]; with every_position, the token after each position
    and its logits, [B, T] and [B, T, V] (each sampled with its position's key, as a decode
    step there would be), as verifying drafted tokens needs. And the new cache."""
    x, cache = chips.conveyor(params, config, layout, tokens_BT, start, cache, precision)
    T = tokens_BT.shape[1]
    if every_position:
        logits_BTV = chips.logits(params, config, layout, precision, x)
        with jax.named_scope("sampling"):
            keys = jax.vmap(lambda t: _key(seed, start + t))(jnp.arange(T))
            tokens_BT = jax.vmap(lambda logits, key: sample(logits, key, sampling),
                                 in_axes=(1, 0), out_axes=1)(logits_BTV, keys)
        return tokens_BT, logits_BTV, cache
    if T == 1:  # decode: one real entry per row
        last_B1D, step = x, start
    else:
        last_B1D = jnp.take_along_axis(x, (lengths_B - 1)[:, None, None], axis=1)
        step = start + jnp.max(lengths_B) - 1
    token, logits = next_token(chips, params, config, layout, sampling, precision, last_B1D,
                                seed, step)
    return token, logits, cache


def ring_tick(params: Params, state: RingState, tokens_M, tick, positions_B, seed, *,
              config: ModelConfig, layout: Layout, sampling: SamplingConfig,
              precision: Recipe = REFERENCE):
    """One tick of the token ring over a batch of B = pp * M sequences.

    At tick t stage s works on micro-batch (t - s) mod pp (once t >= s: before that it holds a
    bubble). tokens_M are the newest tokens of micro-batch t mod pp, entering stage 0;
    positions_B is where each sequence's newest token goes. Returns the next tokens of
    micro-batch (t + 1) mod pp, which leaves the last stage now (meaningful once t >= pp - 1).
    """
    M = tokens_M.shape[0]
    x = _embed(params, config, layout, tokens_M[:, None])
    if layout.pp == 1:
        stage, working = 0, True
    else:
        stage = jax.lax.axis_index(PP_AXIS)
        working = tick >= stage
        x = jnp.where(stage == 0, x, state.held)
    first_row = ((tick - stage) % layout.pp) * M
    rows = lambda a: jax.lax.dynamic_slice_in_dim(a, first_row, M, axis=0)  # noqa: E731
    y, micro_cache = run_layers(params.layers, config, x, rows(positions_B),
                                jax.tree.map(rows, state.cache), layout.tp_axis, write=working,
                                precision=precision)
    cache = jax.tree.map(lambda c, m: jax.lax.dynamic_update_slice_in_dim(c, m, first_row, axis=0),
                         state.cache, micro_cache)
    held = state.held
    if layout.pp > 1:
        held = _to_next_stage(layout, y, precision)
        y = _from_last_stage(layout, stage, y, precision)
    token, logits = next_token(OneChip, params, config, layout, sampling, precision,
                                rms_norm(y, params.final_norm_D, config.rms_norm_eps), seed, tick)
    return token, logits, RingState(cache, held)


def _i32(*shape: int) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(shape, jnp.int32)


@dataclasses.dataclass(frozen=True)
class StepKind:
    """A step the engine compiles and the cycle model schedules: its per-chip function (taking
    params, state, *arguments, seed) and the shapes of its arguments for (batch, pp, tokens),
    tokens being a row's T (prefill: the prompt's bucket; verify: K + 1)."""

    function: Callable
    arguments: Callable[[int, int, int], tuple[jax.ShapeDtypeStruct, ...]]
    ring: bool = False  # its state carries the activations each stage holds


STEPS = {
    # tokens [B, T], the start position, each row's real entries
    "prefill": StepKind(forward, lambda batch, pp, tokens: (_i32(batch, tokens), _i32(),
                                                            _i32(batch))),
    "decode": StepKind(forward, lambda batch, pp, tokens: (_i32(batch, 1), _i32(), _i32(batch))),
    "verify": StepKind(functools.partial(forward, every_position=True),
                       lambda batch, pp, tokens: (_i32(batch, tokens), _i32(), _i32(batch))),
    # the entering micro-batch's tokens, the tick, every row's position
    "ring": StepKind(ring_tick, lambda batch, pp, tokens: (_i32(batch // pp), _i32(),
                                                           _i32(batch)), ring=True),
}


def step_kind(kind: str) -> StepKind:
    """The table's entry; an unknown kind is an error, never a fallback."""
    if kind not in STEPS:
        raise ValueError(f"unknown step kind {kind!r}; the steps are {', '.join(STEPS)}")
    return STEPS[kind]


def step(kind: str):
    """The per-chip step function of a kind."""
    return step_kind(kind).function


def initial_state(kind: str, config: ModelConfig, layout: Layout, batch: int, length: int,
                  kv_cache_dtype) -> KVCache | RingState:
    """One chip's state before a step of `kind`: its KV cache of `length` positions for `batch`
    sequences (zeros), and for the token ring the activations each stage holds (zeros). The
    engine places it on the chips; the cycle model takes its shapes (jax.eval_shape)."""
    cache = KVCache.zeros(config, batch, length, kv_cache_dtype,
                          kv_heads=layout.kv_heads_per_chip(config),
                          layers=layout.layer_slots(config.num_layers))
    if not step_kind(kind).ring:
        return cache
    return RingState(cache, jnp.zeros((batch // layout.pp, 1, config.hidden_size), jnp.float32))


def step_arguments(kind: str, batch: int, pp: int,
                   tokens: int = 0) -> tuple[jax.ShapeDtypeStruct, ...]:
    """The shapes of a step's arguments between the state and the seed (STEPS' entry)."""
    return step_kind(kind).arguments(batch, pp, tokens)
