"""Turn named tensors (Hugging Face names) into the Params pytree, one tensor at a time.

Both the safetensors and the GGUF loaders speak Hugging Face names here, so the mapping, the shape
checks and the streaming onto the device are written once. Shapes are checked in Hugging Face's
[out, in] layout; matrices are then transposed to the model's [in, out].
"""

from __future__ import annotations

from typing import Callable, Iterable

import jax
import numpy as np

from lpu_jax.config import ModelConfig
from lpu_jax.errors import UserError
from lpu_jax.model import LayerParams, Params

# LayerParams field -> (Hugging Face suffix under model.layers.{i}., shape from the config)
_LAYER_WEIGHTS = {
    "attn_norm_D": ("input_layernorm.weight", lambda c: (c.hidden_size,)),
    "wq_DN": ("self_attn.q_proj.weight", lambda c: (c.num_heads * c.head_dim, c.hidden_size)),
    "wk_DK": ("self_attn.k_proj.weight", lambda c: (c.num_kv_heads * c.head_dim, c.hidden_size)),
    "wv_DK": ("self_attn.v_proj.weight", lambda c: (c.num_kv_heads * c.head_dim, c.hidden_size)),
    "wo_ND": ("self_attn.o_proj.weight", lambda c: (c.hidden_size, c.num_heads * c.head_dim)),
    "mlp_norm_D": ("post_attention_layernorm.weight", lambda c: (c.hidden_size,)),
    "w_gate_DF": ("mlp.gate_proj.weight", lambda c: (c.intermediate_size, c.hidden_size)),
    "w_up_DF": ("mlp.up_proj.weight", lambda c: (c.intermediate_size, c.hidden_size)),
    "w_down_FD": ("mlp.down_proj.weight", lambda c: (c.hidden_size, c.intermediate_size)),
}
_ATTENTION_BIASES = {
    "bq_N": ("self_attn.q_proj.bias", lambda c: (c.num_heads * c.head_dim,)),
    "bk_K": ("self_attn.k_proj.bias", lambda c: (c.num_kv_heads * c.head_dim,)),
    "bv_K": ("self_attn.v_proj.bias", lambda c: (c.num_kv_heads * c.head_dim,)),
    "bo_D": ("self_attn.o_proj.bias", lambda c: (c.hidden_size,)),
}
_MLP_BIASES = {
    "b_gate_F": ("mlp.gate_proj.bias", lambda c: (c.intermediate_size,)),
    "b_up_F": ("mlp.up_proj.bias", lambda c: (c.intermediate_size,)),
    "b_down_D": ("mlp.down_proj.bias", lambda c: (c.hidden_size,)),
}
EMBED = "model.embed_tokens.weight"
FINAL_NORM = "model.norm.weight"
LM_HEAD = "lm_head.weight"


def layer_fields(cfg: ModelConfig) -> dict[str, tuple[str, Callable]]:
    fields = dict(_LAYER_WEIGHTS)
    if cfg.attention_bias:
        fields.update(_ATTENTION_BIASES)
    if cfg.mlp_bias:
        fields.update(_MLP_BIASES)
    return fields


def required_tensors(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every Hugging Face tensor name the model needs, with its shape."""
    needed = {EMBED: (cfg.vocab_size, cfg.hidden_size), FINAL_NORM: (cfg.hidden_size,)}
    if not cfg.tie_word_embeddings:
        needed[LM_HEAD] = (cfg.vocab_size, cfg.hidden_size)
    for i in range(cfg.num_layers):
        for suffix, shape in layer_fields(cfg).values():
            needed[f"model.layers.{i}.{suffix}"] = shape(cfg)
    return needed


def build_params(cfg: ModelConfig, available: Iterable[str], read: Callable[[str], np.ndarray],
                 source: str, dtype=np.float32, device: jax.Device | None = None) -> Params:
    """Read each needed tensor, check its shape, convert it and put it on the device, one by one.

    Only one tensor is held on the host at a time, so loading peaks near the size of the result.
    """
    needed = required_tensors(cfg)
    missing = [name for name in needed if name not in set(available)]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise UserError(f"{source}: checkpoint lacks tensor {missing[0]!r}{more}; "
                        "is it complete and a Llama-architecture model?")
    device = device or jax.local_devices()[0]  # this process's own, also under jax.distributed

    def load(name: str) -> jax.Array:
        array = read(name)
        if tuple(array.shape) != needed[name]:
            raise UserError(f"{source}: tensor {name!r} has shape {tuple(array.shape)}, the config "
                            f"needs {needed[name]}; config.json and weights do not match")
        array = np.asarray(array, dtype=dtype)
        if array.ndim == 2:
            array = np.ascontiguousarray(array.T)
        return jax.device_put(array, device)

    layers = []
    for i in range(cfg.num_layers):
        layers.append(LayerParams(**{field: load(f"model.layers.{i}.{suffix}")
                                     for field, (suffix, _) in layer_fields(cfg).items()}))
    return Params(
        embed_DV=load(EMBED),
        layers=tuple(layers),
        final_norm_D=load(FINAL_NORM),
        lm_head_DV=None if cfg.tie_word_embeddings else load(LM_HEAD),
    )


def abstract_params(cfg: ModelConfig) -> Params:
    """The parameters' shapes and dtypes (f32, [in, out]) with no values: for estimates of models
    too big to load."""
    def spec(shape):
        return jax.ShapeDtypeStruct(tuple(reversed(shape)) if len(shape) == 2 else shape,
                                    np.float32)

    layer = LayerParams(**{field: spec(shape(cfg)) for field, (_, shape)
                           in layer_fields(cfg).items()})
    embed = spec((cfg.vocab_size, cfg.hidden_size))
    return Params(embed_DV=embed, layers=(layer,) * cfg.num_layers,
                  final_norm_D=spec((cfg.hidden_size,)),
                  lm_head_DV=None if cfg.tie_word_embeddings else embed)
