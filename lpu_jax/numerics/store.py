"""A model's parameters in a recipe's storage formats, and the copy a step executes with.

Weights are quantized once, whole, before they are split across chips, so every layout holds the
same stored values (a per-channel scale is the channel's, not one chip's slice of it).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lpu_jax.errors import UserError
from lpu_jax.model import LayerParams, Params
from lpu_jax.numerics.formats import (QuantizedArray, Stored, dequantize, has_channel_scales,
                                      quantize)
from lpu_jax.numerics.recipe import Recipe

ATTENTION_WEIGHTS = ("wq_DN", "wk_DK", "wv_DK", "wo_ND")
MLP_WEIGHTS = ("w_gate_DF", "w_up_DF", "w_down_FD")


def _check_tied(params: Params, recipe: Recipe):
    if params.lm_head_DV is None and recipe.lm_head.weights != recipe.embedding:
        raise UserError(
            f"recipe {recipe.name} stores the embedding as {recipe.embedding.describe()} and the "
            f"LM head as {recipe.lm_head.weights.describe()}, but this model ties them into one "
            f"tensor: give [embedding] and [lm_head] the same weights format")


def store_params(params: Params, recipe: Recipe) -> Params:
    """Every weight matrix in its class's storage format; norms and biases stay f32."""
    _check_tied(params, recipe)

    def layer(p: LayerParams) -> LayerParams:
        stored = {name: quantize(getattr(p, name), recipe.attention.weights)
                  for name in ATTENTION_WEIGHTS}
        stored.update({name: quantize(getattr(p, name), recipe.mlp.weights)
                       for name in MLP_WEIGHTS})
        return p.replace(**stored)

    lm_head = (None if params.lm_head_DV is None
               else quantize(params.lm_head_DV, recipe.lm_head.weights))
    return params.replace(embed_DV=quantize(params.embed_DV, recipe.embedding),
                          layers=tuple(layer(p) for p in params.layers), lm_head_DV=lm_head)


def _executable(w: Stored) -> Stored:
    """What a matmul reads for w, widened to f32 ahead of time (see widened_with_scale): the
    stored values with their per-channel scale kept apart, or the dequantized weight."""
    if isinstance(w, QuantizedArray) and has_channel_scales(w.format):
        return w.replace(values=w.values.astype(jnp.float32))
    return dequantize(w)


def execution_copy(stored: Params) -> Params:
    """The parameters as the steps read them on a backend where widening inside every matmul is
    slow (XLA:CPU): the matmul weights widened once, ahead of time. Logits are bit-identical to
    widening inside the step (tests/test_numerics.py).

    The embedding stays in its stored format: a step looks up only a few of its columns, and an
    f32 copy read by the lookup would not be bit-identical for int4 and bfp (XLA:CPU fuses the
    widening of the looked-up columns with the first norm, which then sums in another order). A
    tied embedding also serves as the LM head: the copy gets its own widened head.
    """
    def layer(p: LayerParams) -> LayerParams:
        return p.replace(**{name: _executable(getattr(p, name))
                            for name in ATTENTION_WEIGHTS + MLP_WEIGHTS})

    @jax.jit
    def widen(params: Params) -> Params:
        head = params.embed_DV if params.lm_head_DV is None else params.lm_head_DV
        return params.replace(layers=tuple(layer(p) for p in params.layers),
                              lm_head_DV=_executable(head))
    return widen(stored)
