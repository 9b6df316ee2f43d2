"""Llama math for one chip's share of the model: pure functions over parameter pytrees.

No sharding logic lives here. Head counts are read off the parameter shapes, so the same functions
run a whole model or the slice of heads one emulated chip holds.

Letters in names and einsum strings: B batch, T new tokens, S cache positions, D model width,
N query heads, K KV heads, G query heads per KV head, H head width, F MLP width, V vocabulary.
Weights keep Hugging Face's [out, in] orientation, so a checkpoint maps onto them without a transpose.

Tensor parallelism (Megatron-style) enters only through `tp_axis`, the name of the axis the chips
of one tensor-parallel group share: attention heads and MLP columns are split, so the attention
output and MLP down projections give partial sums (reduced with psum), and the vocabulary is split,
so the embedding lookup is reduced with psum and the logits gathered with all_gather. With
tp_axis=None the same code is the whole model on one chip.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from lpu_jax.config import ModelConfig

Array = jax.Array


@struct.dataclass
class LayerParams:
    attn_norm_D: Array
    wq_ND: Array  # rows: N*H, query heads stacked
    wk_KD: Array  # rows: K*H
    wv_KD: Array
    wo_DN: Array  # columns: N*H
    mlp_norm_D: Array
    w_gate_FD: Array
    w_up_FD: Array
    w_down_DF: Array
    # Present only when the config asks for biases (attention_bias / mlp_bias); None otherwise.
    bq_N: Array | None = None
    bk_K: Array | None = None
    bv_K: Array | None = None
    bo_D: Array | None = None
    b_gate_F: Array | None = None
    b_up_F: Array | None = None
    b_down_D: Array | None = None


@struct.dataclass
class Params:
    embed_VD: Array
    layers: tuple[LayerParams, ...]
    final_norm_D: Array
    lm_head_VD: Array | None  # None when the embedding is tied


@struct.dataclass
class KVCache:
    """One key and one value buffer per layer, [B, S, K, H]; S is the static context length."""

    k: tuple[Array, ...]
    v: tuple[Array, ...]

    @classmethod
    def zeros(cls, cfg: ModelConfig, batch: int, length: int, dtype=jnp.float32,
              kv_heads: int | None = None) -> "KVCache":
        """Empty buffers; kv_heads is this chip's share of the KV heads (default: all)."""
        shape = (batch, length, kv_heads or cfg.num_kv_heads, cfg.head_dim)
        return cls(k=tuple(jnp.zeros(shape, dtype) for _ in range(cfg.num_layers)),
                   v=tuple(jnp.zeros(shape, dtype) for _ in range(cfg.num_layers)))

    @property
    def length(self) -> int:
        return self.k[0].shape[1]


def rope_inverse_frequencies(cfg: ModelConfig) -> np.ndarray:
    """Per-pair rotation rates, [H/2] float32, with Llama 3.1 scaling when the config has it."""
    dim = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    inv_freq = inv_freq.astype(np.float32).astype(np.float64)  # the reference computes this in f32
    s = cfg.rope_scaling
    if s is not None:
        low_freq_wavelen = s.original_max_position_embeddings / s.low_freq_factor
        high_freq_wavelen = s.original_max_position_embeddings / s.high_freq_factor
        wavelen = 2 * math.pi / inv_freq
        scaled = np.where(wavelen > low_freq_wavelen, inv_freq / s.factor, inv_freq)
        smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) / (
            s.high_freq_factor - s.low_freq_factor)
        smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled
        is_medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
        inv_freq = np.where(is_medium, smoothed, scaled)
    return inv_freq.astype(np.float32)


def rms_norm(x_BTD: Array, weight_D: Array, eps: float) -> Array:
    x = x_BTD.astype(jnp.float32)
    x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + eps)
    return weight_D * x.astype(x_BTD.dtype)


def apply_rope(x_BTNH: Array, positions_BT: Array, inv_freq_P: Array) -> Array:
    """Rotate feature pairs (i, i + H/2) -- Hugging Face's rotate_half layout."""
    angles_BTP = positions_BT[..., None].astype(jnp.float32) * inv_freq_P
    cos = jnp.cos(jnp.concatenate([angles_BTP, angles_BTP], -1))[:, :, None, :]
    sin = jnp.sin(jnp.concatenate([angles_BTP, angles_BTP], -1))[:, :, None, :]
    half = x_BTNH.shape[-1] // 2
    rotated = jnp.concatenate([-x_BTNH[..., half:], x_BTNH[..., :half]], -1)
    return (x_BTNH * cos + rotated * sin).astype(x_BTNH.dtype)


def _linear(x: Array, w_OI: Array, b_O: Array | None) -> Array:
    y = jnp.einsum("bti,oi->bto", x, w_OI, preferred_element_type=jnp.float32)
    return y if b_O is None else y + b_O


def _sum_over_chips(partial: Array, bias: Array | None, tp_axis: str | None) -> Array:
    """Reduce a row-parallel projection's partial sums; its bias is added once, after the sum."""
    total = partial if tp_axis is None else jax.lax.psum(partial, tp_axis)
    return total if bias is None else total + bias


def attention(layer: LayerParams, x_BTD: Array, positions_BT: Array, k_cache_BSKH: Array,
              v_cache_BSKH: Array, start: Array, inv_freq_P: Array, head_dim: int,
              tp_axis: str | None = None):
    """Causal self-attention over the static cache; writes the new keys and values at `start`.

    Runs on this chip's heads; the output projection is summed over the tensor-parallel chips.
    """
    B, T, _ = x_BTD.shape
    q = _linear(x_BTD, layer.wq_ND, layer.bq_N).reshape(B, T, -1, head_dim)
    k = _linear(x_BTD, layer.wk_KD, layer.bk_K).reshape(B, T, -1, head_dim)
    v = _linear(x_BTD, layer.wv_KD, layer.bv_K).reshape(B, T, -1, head_dim)
    q, k = apply_rope(q, positions_BT, inv_freq_P), apply_rope(k, positions_BT, inv_freq_P)

    at = (0, start, 0, 0)
    k_cache_BSKH = jax.lax.dynamic_update_slice(k_cache_BSKH, k.astype(k_cache_BSKH.dtype), at)
    v_cache_BSKH = jax.lax.dynamic_update_slice(v_cache_BSKH, v.astype(v_cache_BSKH.dtype), at)

    K = k.shape[2]
    q_BTKGH = q.reshape(B, T, K, -1, head_dim)
    scores = jnp.einsum("btkgh,bskh->bkgts", q_BTKGH, k_cache_BSKH,
                        preferred_element_type=jnp.float32) / math.sqrt(head_dim)
    key_positions_S = jnp.arange(k_cache_BSKH.shape[1])
    visible_BTS = key_positions_S[None, None, :] <= positions_BT[:, :, None]
    scores = jnp.where(visible_BTS[:, None, None, :, :], scores, -jnp.inf)
    probs = jax.nn.softmax(scores, axis=-1)
    out_BTKGH = jnp.einsum("bkgts,bskh->btkgh", probs, v_cache_BSKH.astype(jnp.float32),
                           preferred_element_type=jnp.float32)
    out_BTN = out_BTKGH.reshape(B, T, -1).astype(x_BTD.dtype)
    out = _sum_over_chips(_linear(out_BTN, layer.wo_DN, None), layer.bo_D, tp_axis)
    return out, k_cache_BSKH, v_cache_BSKH


def mlp(layer: LayerParams, x_BTD: Array, tp_axis: str | None = None) -> Array:
    gate = _linear(x_BTD, layer.w_gate_FD, layer.b_gate_F)
    up = _linear(x_BTD, layer.w_up_FD, layer.b_up_F)
    return _sum_over_chips(_linear(jax.nn.silu(gate) * up, layer.w_down_DF, None),
                           layer.b_down_D, tp_axis)


def embed(embed_VD: Array, tokens_BT: Array, tp_axis: str | None = None) -> Array:
    """Rows of the embedding; with tp each chip holds a slice of the vocabulary, zeros elsewhere."""
    if tp_axis is None:
        return embed_VD[tokens_BT]
    rows = embed_VD.shape[0]
    local_BT = tokens_BT - jax.lax.axis_index(tp_axis) * rows
    mine_BT = (local_BT >= 0) & (local_BT < rows)
    x = jnp.where(mine_BT[..., None], embed_VD[jnp.clip(local_BT, 0, rows - 1)], 0.0)
    return jax.lax.psum(x, tp_axis)


def forward_hidden(params: Params, cfg: ModelConfig, tokens_BT: Array, start: Array,
                   cache: KVCache, tp_axis: str | None = None) -> tuple[Array, KVCache]:
    """Run the decoder on tokens placed at positions start.. start+T-1; returns final hidden states.

    Layers are a Python loop (unrolled in the compiled program): under lax.scan each step would
    slice a stacked weight array, and those slices cost copies.
    """
    T = tokens_BT.shape[1]
    positions_BT = jnp.broadcast_to(start + jnp.arange(T), tokens_BT.shape)
    inv_freq_P = jnp.asarray(rope_inverse_frequencies(cfg))
    x = embed(params.embed_VD, tokens_BT, tp_axis)
    new_k, new_v = [], []
    for layer, k_cache, v_cache in zip(params.layers, cache.k, cache.v):
        h, k_cache, v_cache = attention(layer, rms_norm(x, layer.attn_norm_D, cfg.rms_norm_eps),
                                        positions_BT, k_cache, v_cache, start, inv_freq_P,
                                        cfg.head_dim, tp_axis)
        x = x + h
        x = x + mlp(layer, rms_norm(x, layer.mlp_norm_D, cfg.rms_norm_eps), tp_axis)
        new_k.append(k_cache)
        new_v.append(v_cache)
    x = rms_norm(x, params.final_norm_D, cfg.rms_norm_eps)
    return x, KVCache(k=tuple(new_k), v=tuple(new_v))


def logits_from_hidden(params: Params, x_BTD: Array, tp_axis: str | None = None) -> Array:
    """Logits over the whole vocabulary (gathered from every chip's slice when tp is used)."""
    head_VD = params.embed_VD if params.lm_head_VD is None else params.lm_head_VD
    logits = jnp.einsum("btd,vd->btv", x_BTD, head_VD, preferred_element_type=jnp.float32)
    return logits if tp_axis is None else jax.lax.all_gather(logits, tp_axis, axis=2, tiled=True)


def forward_logits(params: Params, cfg: ModelConfig, tokens_BT: Array) -> Array:
    """Logits at every position of a whole sequence, starting from an empty cache (for checks)."""
    B, T = tokens_BT.shape
    cache = KVCache.zeros(cfg, B, T, params.embed_VD.dtype)
    x, _ = forward_hidden(params, cfg, tokens_BT, jnp.int32(0), cache)
    return logits_from_hidden(params, x)
