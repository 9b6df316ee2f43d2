"""A model of a config's shape with weights drawn at random, stored in a recipe's formats.

For emulation speed and memory on deployments whose checkpoints are not at hand (lpu-generate
--config NAME --random_weights). Each tensor is drawn in f32 on the default device, from a key
made of the seed and its place in the model, and stored in its class's format at once, one
layer at a time, when the split across chips reads it: neither the model's f32 values nor its
unsplit stored form ever exist whole, only one layer's (and the vocabulary tensors, drawn whole).
Tensors are drawn whole and split like a checkpoint's, so a seed gives the same model on every
layout. Values follow the usual initialisation of Llama models: normal with std 0.02, norms 1,
biases 0.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from lpu_jax.checkpoint import LoadedModel
from lpu_jax.checkpoint.assemble import abstract_params
from lpu_jax.config import ModelConfig
from lpu_jax.model import LayerParams, Params
from lpu_jax.numerics.recipe import Recipe
from lpu_jax.numerics.store import store_layer, store_params
from lpu_jax.parameters import LAYER_TENSORS, Tensor
from lpu_jax.tokenizer import ByteTokenizer

INIT_STD = 0.02  # transformers' LlamaConfig.initializer_range


@functools.partial(jax.jit, static_argnums=(1,))
def _normal(key, shape):
    return INIT_STD * jax.random.normal(key, shape, jnp.float32)


def _draw(spec: jax.ShapeDtypeStruct, tensor: Tensor, key) -> jax.Array:
    if tensor.is_norm:
        return jnp.ones(spec.shape, jnp.float32)
    if tensor.is_bias:
        return jnp.zeros(spec.shape, jnp.float32)
    return _normal(key, spec.shape)


def _layer(shapes: LayerParams, key) -> LayerParams:
    """One layer in f32; each field from its own key (numbered in field-name order)."""
    tensors = sorted((t for t in LAYER_TENSORS if getattr(shapes, t.field) is not None),
                     key=lambda t: t.field)
    return shapes.replace(**{t.field: _draw(getattr(shapes, t.field), t,
                                            jax.random.fold_in(key, index))
                             for index, t in enumerate(tensors)})


class _DrawnLayers(Sequence):
    """The layers, each drawn and stored when it is asked for: splitting them across chips one
    at a time, the unsplit model never exists whole."""

    def __init__(self, shapes: LayerParams, count: int, key, recipe: Recipe):
        self._shapes, self._count, self._key, self._recipe = shapes, count, key, recipe

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, index: int) -> LayerParams:
        if not 0 <= index < self._count:
            raise IndexError(index)
        drawn = _layer(self._shapes, jax.random.fold_in(self._key, index))
        return store_layer(drawn, self._recipe)


def random_params(config: ModelConfig, recipe: Recipe, seed: int) -> Params:
    """Every weight of the model drawn from `seed`, in the recipe's storage formats; the layers
    are drawn as they are read (a layer read twice is drawn twice, the same)."""
    shapes = abstract_params(config)
    vocab_key, layers_key = jax.random.split(jax.random.key(seed))
    embed = _normal(jax.random.fold_in(vocab_key, 0), shapes.embed_DV.shape)
    head = (None if shapes.lm_head_DV is None
            else _normal(jax.random.fold_in(vocab_key, 1), shapes.lm_head_DV.shape))
    # store_params checks that a tied vocabulary has one format.
    stored = store_params(Params(embed_DV=embed, layers=(), lm_head_DV=head,
                                 final_norm_D=jnp.ones(shapes.final_norm_D.shape, jnp.float32)),
                          recipe)
    return stored.replace(layers=_DrawnLayers(shapes.layers[0], config.num_layers, layers_key,
                                              recipe))


def random_model(config: ModelConfig, seed: int, source: str) -> LoadedModel:
    """A model whose weights are drawn from `seed` when an Engine places them, in its recipe's
    formats, with a byte-level tokenizer (there is no vocabulary to read; below 256 tokens,
    none: prompts are then token ids)."""
    tokenizer = ByteTokenizer() if config.vocab_size >= 256 else None
    return LoadedModel(config, None, tokenizer, config.eos_token_ids,
                       f"{source} (random weights, seed {seed})",
                       draw_stored=functools.partial(random_params, config, seed=seed))
