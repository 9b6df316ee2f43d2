"""The per-chip program: one prefill or decode step of one emulated chip, collectives explicit.

Pipeline stages form a conveyor: the embedded tokens enter stage 0, and after each tick every
stage hands its activations to the next with ppermute. In single-stream mode one token (or one
prompt) crosses all pp stages in pp ticks, so at each tick one stage works and the others run on
a bubble: they compute but keep their KV cache unchanged. Every chip ends the step with the full
logits and draws the same token from the same key.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lpu_jax.chips.layout import PP_AXIS, Layout
from lpu_jax.config import ModelConfig
from lpu_jax.engine.sampling import SamplingConfig, sample
from lpu_jax.model import KVCache, Params, embed, logits_from_hidden, rms_norm, run_layers


def conveyor(params: Params, config: ModelConfig, layout: Layout, tokens_BT: jax.Array,
             start: jax.Array, cache: KVCache) -> tuple[jax.Array, KVCache]:
    """Tokens through every stage; returns the final-norm hidden states on every chip."""
    x = embed(params.embed_VD, tokens_BT, layout.vocab_axes)
    if layout.pp == 1:
        x, cache = run_layers(params.layers, config, x, start, cache, layout.tp_axis)
    else:
        stage = jax.lax.axis_index(PP_AXIS)
        # A ring (the last stage feeds stage 0, which is idle by then): vmap's ppermute, used when
        # chips are folded, takes only full permutations.
        to_next_stage = [(s, (s + 1) % layout.pp) for s in range(layout.pp)]

        def tick(t, carry):
            x, _, cache = carry
            y, cache = run_layers(params.layers, config, x, start, cache, layout.tp_axis,
                                  write=stage == t)
            return jax.lax.ppermute(y, PP_AXIS, to_next_stage), y, cache

        # A loop, not unrolled: the program stays one stage long whatever pp is.
        _, y, cache = jax.lax.fori_loop(0, layout.pp, tick, (x, jnp.zeros_like(x), cache))
        # The last stage holds the result; the psum hands it to every stage.
        x = jax.lax.psum(jnp.where(stage == layout.pp - 1, y, 0.0), PP_AXIS)
    return rms_norm(x, params.final_norm_D, config.rms_norm_eps), cache


def _next_token(params, config, layout, sampling, x_B1D, key, position):
    logits_BV = logits_from_hidden(params, x_B1D, layout.vocab_axes)[:, 0, :config.vocab_size]
    return sample(logits_BV, jax.random.fold_in(key, position), sampling), logits_BV


def prefill(params: Params, cache: KVCache, tokens_BT, length, key, *, config: ModelConfig,
            layout: Layout, sampling: SamplingConfig):
    """The padded prompt from position 0; the token after its `length`-th entry."""
    x, cache = conveyor(params, config, layout, tokens_BT, jnp.int32(0), cache)
    last_B1D = jax.lax.dynamic_slice_in_dim(x, length - 1, 1, axis=1)
    token, logits = _next_token(params, config, layout, sampling, last_B1D, key, length - 1)
    return token, logits, cache


def decode(params: Params, cache: KVCache, token_B, position, key, *, config: ModelConfig,
           layout: Layout, sampling: SamplingConfig):
    """One token at `position`; the token after it."""
    x, cache = conveyor(params, config, layout, token_B[:, None], position, cache)
    token, logits = _next_token(params, config, layout, sampling, x, key, position)
    return token, logits, cache
