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
                                      nbytes, quantize)
from lpu_jax.numerics.matmul import PerChip
from lpu_jax.numerics.recipe import Recipe
from lpu_jax.parameters import STORED_LAYER_TENSORS


def _check_tied(params: Params, recipe: Recipe):
    if params.lm_head_DV is None and recipe.lm_head.weights != recipe.embedding:
        raise UserError(
            f"recipe {recipe.name} stores the embedding as {recipe.embedding.describe()} and the "
            f"LM head as {recipe.lm_head.weights.describe()}, but this model ties them into one "
            f"tensor: give [embedding] and [lm_head] the same weights format")


def store_params(params: Params, recipe: Recipe) -> Params:
    """Every weight matrix in its class's storage format; norms and biases stay f32."""
    _check_tied(params, recipe)
    lm_head = (None if params.lm_head_DV is None
               else quantize(params.lm_head_DV, recipe.lm_head.weights))
    return params.replace(embed_DV=quantize(params.embed_DV, recipe.embedding),
                          layers=tuple(store_layer(p, recipe) for p in params.layers),
                          lm_head_DV=lm_head)


def _matrices(p: LayerParams):
    """(field, tensor class, value) of a layer's matrices, those stored in a recipe's formats."""
    return [(t.field, t.tensor_class, getattr(p, t.field)) for t in STORED_LAYER_TENSORS
            if getattr(p, t.field) is not None]


def store_layer(p: LayerParams, recipe: Recipe) -> LayerParams:
    """One layer's matrices in their classes' storage formats."""
    return p.replace(**{field: quantize(w, recipe.weights(tensor_class))
                        for field, tensor_class, w in _matrices(p)})


_widen_values = jax.jit(lambda w: w.replace(values=w.values.astype(jnp.float32)))
_dequantize = jax.jit(dequantize)


def _executable(w: Stored | PerChip) -> Stored | PerChip:
    """What a matmul reads for w, widened to f32 ahead of time (see widened_with_scale): the
    stored values with their per-channel scale kept apart, or the dequantized weight. An f32
    weight is read as it is: no copy."""
    if isinstance(w, PerChip):
        return PerChip(tuple(_executable(block) for block in w.blocks))
    if isinstance(w, tuple):  # a chip's experts
        return tuple(map(_executable, w))
    if isinstance(w, QuantizedArray) and has_channel_scales(w.format):
        return _widen_values(w)
    if not isinstance(w, QuantizedArray) and w.dtype == jnp.float32:
        return w
    return _dequantize(w)


def execution_copy(stored: Params) -> Params:
    """The parameters as the steps read them on a backend where widening inside every matmul is
    slow (XLA:CPU): the matmul weights widened once, ahead of time, one by one. Logits are
    bit-identical to widening inside the step (tests/test_numerics.py).

    The embedding stays in its stored format: a step looks up only a few of its columns, and an
    f32 copy read by the lookup would not be bit-identical for int4 and bfp (XLA:CPU fuses the
    widening of the looked-up columns with the first norm, which then sums in another order). A
    tied embedding also serves as the LM head: the copy gets its own widened head.
    """
    def layer(p: LayerParams) -> LayerParams:
        return p.replace(**{field: _executable(w) for field, _, w in _matrices(p)})

    head = stored.embed_DV if stored.lm_head_DV is None else stored.lm_head_DV
    return stored.replace(layers=tuple(layer(p) for p in stored.layers),
                          lm_head_DV=_executable(head))


def execution_copy_bytes(stored: Params) -> int:
    """What execution_copy adds to `stored` (arrays, or only their shapes): the arrays of the
    copy that are not the stored ones."""
    def added(stored):
        held = {id(leaf) for leaf in jax.tree.leaves(stored)}
        return [leaf for leaf in jax.tree.leaves(execution_copy(stored)) if id(leaf) not in held]
    return nbytes(jax.eval_shape(added, stored))
