"""Llama math for one chip's share of the model: pure functions over parameter pytrees.

No sharding logic lives here. Head counts are read off the parameter shapes, so the same functions
run a whole model or the slice of heads one emulated chip holds.

Letters in names and einsum strings: B batch, T new tokens, S cache positions, D model width,
N query heads, K KV heads, G query heads per KV head, H head width, F MLP width, V vocabulary.
Weights are stored [in, out] (`x @ W`), the transpose of Hugging Face's layout: XLA multiplies
that orientation without copying the weights also when chips are folded with vmap (the [out, in]
one makes it transpose every batched weight on every step).

Several chips enter only through axis names. `tp_axis` names the axis of one tensor-parallel
group (Megatron-style): attention heads and MLP columns are split, so the attention output and MLP
down projections give partial sums, reduced with psum. `vocab_axes` name the axes that split the
vocabulary: the embedding lookup is reduced with psum and the logits gathered with all_gather.
Without them the same code is the whole model on one chip.

Numerics come from a precision recipe (lpu_jax/numerics): weights may be stored in a low-bit
format (a QuantizedArray), each class of matmul has its accumulation policy, and the KV cache's
format is the dtype of its buffers. The default recipe is f32 throughout.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from lpu_jax.config import ModelConfig
from lpu_jax.numerics.formats import Stored, saturating_cast, take_columns
from lpu_jax.numerics.matmul import MatmulPolicy, PerChip, matmul, one_chip, sum_partials
from lpu_jax.numerics.portable import ordered_sum, softmax
from lpu_jax.numerics.recipe import Recipe

Array = jax.Array
REFERENCE = Recipe()
# The blocks of the per-chip program, each a jax.named_scope: the cycle model reports where time
# goes by them. A scope inside another (links inside attention/out) counts as the inner one.
BLOCKS = ("embedding", "norm", "attention/qkv", "attention/core", "attention/out", "mlp/up",
          "mlp/down", "moe/router", "moe/dispatch", "lm_head", "links", "sampling")
LAYER_SCOPE = "layer"  # around each decoder layer: the cycle model reports cycles per layer


@struct.dataclass
class LayerParams:
    """One decoder layer's tensors (lpu_jax/parameters.py declares each: names, class, axes)."""

    attn_norm_D: Array
    wq_DN: Stored  # columns: N*H, query heads stacked head-major
    wk_DK: Stored  # columns: K*H
    wv_DK: Stored
    wo_ND: Stored  # rows: N*H
    mlp_norm_D: Array
    # A dense MLP, or a mixture of experts (router and experts); the other is None.
    w_gate_DF: Stored | None = None
    w_up_DF: Stored | None = None
    w_down_FD: Stored | None = None
    router_DR: Array | None = None  # f32: routing is computed in f32, as transformers does
    # The experts: [E, D, F] whole; on a chip, a tuple of the ones it holds, each [D, F] (its
    # columns of them) in a buffer of its own (chips/split.py).
    w_gate_EDF: Stored | tuple | None = None
    w_up_EDF: Stored | tuple | None = None
    w_down_EFD: Stored | tuple | None = None
    # Which experts those are (chips.layout.ExpertGroups); None: all of them, whole.
    expert_groups: object = struct.field(pytree_node=False, default=None)
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
    embed_DV: Stored  # a column per token: the lookup takes columns, the tied LM head multiplies
    layers: tuple[LayerParams, ...]
    final_norm_D: Array
    lm_head_DV: Stored | None  # None when the embedding is tied


@struct.dataclass
class KVCache:
    """One key and one value buffer per layer, [B, S, K, H]; S is the static context length."""

    k: tuple[Array, ...]
    v: tuple[Array, ...]

    @classmethod
    def zeros(cls, cfg: ModelConfig, batch: int, length: int, dtype=jnp.float32,
              kv_heads: int | None = None, layers: int | None = None) -> "KVCache":
        """Empty buffers; kv_heads and layers are one chip's share (default: the whole model)."""
        shape = (batch, length, kv_heads or cfg.num_kv_heads, cfg.head_dim)
        layers = layers or cfg.num_layers
        return cls(k=tuple(jnp.zeros(shape, dtype) for _ in range(layers)),
                   v=tuple(jnp.zeros(shape, dtype) for _ in range(layers)))

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


@jax.named_scope("norm")
def rms_norm(x_BTD: Array, weight_D: Array, eps: float) -> Array:
    x = x_BTD.astype(jnp.float32)
    # A fixed summation order: the same bits in every chip layout (see numerics/portable.py).
    x = x * jax.lax.rsqrt(ordered_sum(x * x, -1, keepdims=True) / x.shape[-1] + eps)
    return weight_D * x.astype(x_BTD.dtype)


def apply_rope(x_BTNH: Array, positions_BT: Array, inv_freq_P: Array) -> Array:
    """Rotate feature pairs (i, i + H/2) -- Hugging Face's rotate_half layout."""
    angles_BTP = positions_BT[..., None].astype(jnp.float32) * inv_freq_P
    cos = jnp.cos(jnp.concatenate([angles_BTP, angles_BTP], -1))[:, :, None, :]
    sin = jnp.sin(jnp.concatenate([angles_BTP, angles_BTP], -1))[:, :, None, :]
    half = x_BTNH.shape[-1] // 2
    rotated = jnp.concatenate([-x_BTNH[..., half:], x_BTNH[..., :half]], -1)
    return (x_BTNH * cos + rotated * sin).astype(x_BTNH.dtype)


def _linear(x: Array, w_IO: Stored, b_O: Array | None, policy: MatmulPolicy,
            sum_axis: str | None = None, link: str = "f32") -> Array:
    """x @ w + b. With sum_axis (a row-parallel projection) the chips' partial sums are reduced
    first and the bias is added once, after the sum."""
    y = matmul(x, w_IO, policy, sum_axis, link)
    return y if b_O is None else y + b_O


def cache_rows(cache_BSKH: Array, start: Array, T: int) -> Array:
    """Cache entries start .. start+T-1; `start` is one position or one per batch row [B]."""
    if jnp.ndim(start) == 0:
        return jax.lax.dynamic_slice_in_dim(cache_BSKH, start, T, axis=1)
    return jax.vmap(lambda c, s: jax.lax.dynamic_slice_in_dim(c, s, T, axis=0))(cache_BSKH, start)


def write_cache_rows(cache_BSKH: Array, rows_BTKH: Array, start: Array) -> Array:
    """The cache with entries start .. start+T-1 replaced (one start, or one per batch row)."""
    rows_BTKH = saturating_cast(rows_BTKH, cache_BSKH.dtype)
    if jnp.ndim(start) == 0:
        return jax.lax.dynamic_update_slice_in_dim(cache_BSKH, rows_BTKH, start, axis=1)
    return jax.vmap(lambda c, r, s: jax.lax.dynamic_update_slice_in_dim(c, r, s, axis=0))(
        cache_BSKH, rows_BTKH, start)


def attention(layer: LayerParams, x_BTD: Array, positions_BT: Array, k_cache_BSKH: Array,
              v_cache_BSKH: Array, start: Array, inv_freq_P: Array, head_dim: int,
              tp_axis: str | None = None, write: bool | Array = True,
              precision: Recipe = REFERENCE):
    """Causal self-attention over the static cache; writes the new keys and values at `start`.

    Runs on this chip's heads; the output projection is summed over the tensor-parallel chips.
    With `write` false the cache keeps its old entries (a pipeline stage working on a bubble).
    """
    B, T, _ = x_BTD.shape
    policy = precision.attention
    with jax.named_scope("attention/qkv"):
        q = _linear(x_BTD, layer.wq_DN, layer.bq_N, policy).reshape(B, T, -1, head_dim)
        k = _linear(x_BTD, layer.wk_DK, layer.bk_K, policy).reshape(B, T, -1, head_dim)
        v = _linear(x_BTD, layer.wv_DK, layer.bv_K, policy).reshape(B, T, -1, head_dim)
        q, k = apply_rope(q, positions_BT, inv_freq_P), apply_rope(k, positions_BT, inv_freq_P)
    with jax.named_scope("attention/core"):
        out_BTN, k_cache_BSKH, v_cache_BSKH = _attend(q, k, v, positions_BT, k_cache_BSKH,
                                                      v_cache_BSKH, start, write, precision)
    with jax.named_scope("attention/out"):
        out = _linear(out_BTN.astype(x_BTD.dtype), layer.wo_ND, layer.bo_D, policy, tp_axis,
                      precision.links)
    return out, k_cache_BSKH, v_cache_BSKH


def _attend(q, k, v, positions_BT, k_cache_BSKH, v_cache_BSKH, start, write, precision):
    """The new keys and values written at `start` (unless `write` is false), then softmax(q.k)
    over the visible cache, times the values: [B, T, N*H] f32."""
    B, T, _, head_dim = q.shape
    if write is not True:
        k = jnp.where(write, k, cache_rows(k_cache_BSKH, start, T))
        v = jnp.where(write, v, cache_rows(v_cache_BSKH, start, T))
    k_cache_BSKH = write_cache_rows(k_cache_BSKH, k, start)
    v_cache_BSKH = write_cache_rows(v_cache_BSKH, v, start)

    K = k.shape[2]
    q_BTKGH = q.reshape(B, T, K, -1, head_dim)
    scores = jnp.einsum("btkgh,bskh->bkgts", q_BTKGH, k_cache_BSKH.astype(jnp.float32),
                        preferred_element_type=jnp.float32) / math.sqrt(head_dim)
    # The recipe's attention_logits format holds the scores and the softmax over them.
    scores = scores.astype(precision.attention_logits_dtype)
    key_positions_S = jnp.arange(k_cache_BSKH.shape[1])
    visible_BTS = key_positions_S[None, None, :] <= positions_BT[:, :, None]
    scores = jnp.where(visible_BTS[:, None, None, :, :], scores, -jnp.inf)
    probs = softmax(scores, axis=-1)
    out_BTKGH = jnp.einsum("bkgts,bskh->btkgh", probs.astype(jnp.float32),
                           v_cache_BSKH.astype(jnp.float32), preferred_element_type=jnp.float32)
    return out_BTKGH.reshape(B, T, -1), k_cache_BSKH, v_cache_BSKH


def mlp(layer: LayerParams, x_BTD: Array, tp_axis: str | None = None,
        precision: Recipe = REFERENCE) -> Array:
    policy = precision.mlp
    with jax.named_scope("mlp/up"):
        gate = _linear(x_BTD, layer.w_gate_DF, layer.b_gate_F, policy)
        up = _linear(x_BTD, layer.w_up_DF, layer.b_up_F, policy)
        hidden = jax.nn.silu(gate) * up
    with jax.named_scope("mlp/down"):
        return _linear(hidden, layer.w_down_FD, layer.b_down_D, policy, tp_axis,
                       precision.links)


def experts_apart(w, axis: int = 0) -> tuple:
    """A stacked expert weight [.., E, ..] (E at `axis` of every leaf) -> a tuple of E experts,
    as a chip holds them: each a buffer of its own (see numerics.matmul.grouped_dot)."""
    count = jax.tree.leaves(w)[0].shape[axis]
    return tuple(jax.tree.map(lambda a: jnp.take(a, e, axis=axis), w) for e in range(count))


def route(router_DR: Array, x_MD: Array, experts_per_token: int) -> tuple[Array, Array]:
    """Each token's chosen experts [M, k] and their weights [M, k], as transformers' Mixtral
    router: logits and softmax over every expert in f32, the top k, renormalised to sum to 1."""
    logits_ME = jnp.einsum("md,de->me", x_MD, router_DR, preferred_element_type=jnp.float32)
    top_MK, expert_MK = jax.lax.top_k(softmax(logits_ME, axis=-1), experts_per_token)
    return expert_MK, top_MK / ordered_sum(top_MK, -1, keepdims=True)


def moe(layer: LayerParams, x_BTD: Array, cfg: ModelConfig, tp_axis: str | None = None,
        precision: Recipe = REFERENCE) -> Array:
    """A mixture of experts in place of the MLP: each token's output is the weighted sum of its
    chosen experts' SwiGLUs.

    Every chip holds every token and the whole router, and routes them all; it runs only the
    experts it holds (layer.expert_groups, decided by chips/: E / ep of them, its tp / ep-th of
    their columns), on the (token, choice) pairs routed to them, grouped by expert with static
    shapes: the pairs are sorted by expert and each expert multiplies its run
    (numerics.matmul.grouped_dot), the pairs of experts held elsewhere falling past the runs. The partial outputs are added over
    the tp chips with the same psum as the dense MLP's down projection. No token is dropped and
    no shape depends on the routing, so one compiled step serves every routing.

    Under int32 accumulation a pair split over chips (tp / ep > 1) has its integer sums added
    over them exactly before they are scaled, and the first chip of its group adds it to the
    output: the result does not depend on the layout (for up to two choices per token, whose
    f32 sum does not depend on the order).
    """
    B, T, D = x_BTD.shape
    x_MD = x_BTD.reshape(B * T, D)
    k = cfg.experts_per_token
    with jax.named_scope("moe/router"):
        expert_MK, weight_MK = route(layer.router_DR, x_MD, k)
    with jax.named_scope("moe/dispatch"):
        if not isinstance(layer.w_gate_EDF, (tuple, PerChip)):  # the whole model, stacked
            layer = layer.replace(**{name: experts_apart(getattr(layer, name))
                                     for name in ("w_gate_EDF", "w_up_EDF", "w_down_EFD")})
        groups = layer.expert_groups
        experts_here = len(one_chip(layer.w_gate_EDF))  # this chip's experts
        split = groups is not None and groups.splits_columns
        local_R = expert_MK.reshape(-1) - (0 if groups is None else groups.first_expert())
        held_R = (local_R >= 0) & (local_R < experts_here)
        order_R = jnp.argsort(jnp.where(held_R, local_R, experts_here), stable=True)
        groups_E = jnp.sum(jnp.where(held_R[:, None], local_R[:, None], -1)
                           == jnp.arange(experts_here), axis=0, dtype=jnp.int32)
        token_R = order_R // k  # pair r = token * k + choice
        x_RD = jnp.take(x_MD, token_R, axis=0)
    policy = precision.experts
    with jax.named_scope("mlp/up"):
        gate = matmul(x_RD, layer.w_gate_EDF, policy, groups=groups_E)
        up = matmul(x_RD, layer.w_up_EDF, policy, groups=groups_E)
        hidden_RF = jax.nn.silu(gate) * up
    with jax.named_scope("mlp/down"):
        largest, sum_rows = None, None
        if split:  # a pair's hidden vector is split over the chips of its group

            def over_pairs(rows_RX, reduce):
                """Each of this chip's rows reduced with the same pair's rows on every chip."""
                pairs = jnp.zeros_like(rows_RX).at[order_R].set(rows_RX)
                with jax.named_scope("links"):
                    return jnp.take(reduce(pairs, tp_axis), order_R, axis=0)

            if policy.scales_per_token:  # one scale for the pair's whole vector
                largest = over_pairs(jnp.max(jnp.abs(hidden_RF), axis=-1, keepdims=True),
                                     jax.lax.pmax)
            if policy.accumulation == "int32":
                sum_rows = functools.partial(over_pairs, reduce=jax.lax.psum)
        y_RD = matmul(hidden_RF, layer.w_down_EFD, policy, groups=groups_E, largest=largest,
                      sum_rows=sum_rows)
        if sum_rows is not None:  # whole on every chip of the group: the first one adds it
            mine_R = ((jnp.arange(y_RD.shape[0]) < jnp.sum(groups_E))
                      & groups.adds_output())
            y_RD = jnp.where(mine_R[:, None], y_RD, 0.0)
        weight_R = jnp.take(weight_MK.reshape(-1), order_R)
        y_MD = jnp.zeros((B * T, D), jnp.float32).at[token_R].add(y_RD * weight_R[:, None])
        if tp_axis is not None:
            y_MD = sum_partials(y_MD, tp_axis, precision.links)
    return y_MD.reshape(B, T, D)


def _chip_index(axes: tuple[tuple[str, int], ...]) -> Array:
    """This chip's position along several named axes taken together, the first one major."""
    index = jnp.int32(0)
    for name, size in axes:
        index = index * size + jax.lax.axis_index(name)
    return index


@jax.named_scope("embedding")
def embed(embed_DV: Stored, tokens_BT: Array, vocab_axes: tuple[tuple[str, int], ...] = (),
          vocab_starts: np.ndarray | None = None) -> Array:
    """Embedding vectors. vocab_axes ((name, size), ...) split the vocabulary: each chip holds a
    block of consecutive tokens from vocab_starts[chip] (equal blocks when None; columns past a
    chip's share are zeros), looks up the tokens that fall in it, and the psum brings every
    vector to every chip."""
    lookup = lambda ids: jnp.moveaxis(take_columns(embed_DV, ids), 0, -1)  # noqa: E731
    if not vocab_axes:
        return lookup(tokens_BT)
    tokens_here = embed_DV.shape[1]
    chip = _chip_index(vocab_axes)
    first = chip * tokens_here if vocab_starts is None else jnp.asarray(vocab_starts)[chip]
    local_BT = tokens_BT - first
    mine_BT = (local_BT >= 0) & (local_BT < tokens_here)
    x = jnp.where(mine_BT[..., None], lookup(jnp.clip(local_BT, 0, tokens_here - 1)), 0.0)
    with jax.named_scope("links"):
        return jax.lax.psum(x, tuple(name for name, _ in vocab_axes))


@functools.partial(jax.jit, static_argnames=("cfg", "tp_axis", "precision", "always_write",
                                             "with_routing"))
def decoder_layer(layer: LayerParams, x_BTD: Array, positions_BT: Array, k_cache_BSKH: Array,
                  v_cache_BSKH: Array, start: Array, write: Array, *, cfg: ModelConfig,
                  tp_axis: str | None, precision: Recipe, always_write: bool,
                  with_routing: bool = False):
    """One decoder layer: attention and MLP, each added to the residual stream (with_routing:
    also the experts each token chose, [B*T, k]).

    Under jit so that tracing a step traces the layer once and reuses it for every layer of the
    same shapes (XLA inlines the calls: the compiled program is the same).
    """
    h, k_next, v_next = attention(layer, rms_norm(x_BTD, layer.attn_norm_D, cfg.rms_norm_eps),
                                  positions_BT, k_cache_BSKH, v_cache_BSKH, start,
                                  jnp.asarray(rope_inverse_frequencies(cfg)), cfg.head_dim,
                                  tp_axis, True if always_write else write, precision)
    x_BTD = x_BTD + h
    normed = rms_norm(x_BTD, layer.mlp_norm_D, cfg.rms_norm_eps)
    feed_forward = mlp if layer.router_DR is None else functools.partial(moe, cfg=cfg)
    x_BTD = x_BTD + feed_forward(layer, normed, tp_axis=tp_axis, precision=precision)
    if with_routing:
        experts = route(layer.router_DR, normed.reshape(-1, normed.shape[-1]),
                        cfg.experts_per_token)[0]
        return x_BTD, k_next, v_next, experts
    return x_BTD, k_next, v_next


def run_layers(layers: tuple[LayerParams, ...], cfg: ModelConfig, x_BTD: Array, start: Array,
               cache: KVCache, tp_axis: str | None = None, write: bool | Array = True,
               precision: Recipe = REFERENCE) -> tuple[Array, KVCache]:
    """The decoder layers one chip holds, on tokens at positions start .. start+T-1.

    `start` is one position or one per batch row [B]. `write` False keeps the cache unchanged (a
    pipeline stage working on a bubble). The layers are a Python loop, unrolled in the compiled
    program: under lax.scan each step would slice a stacked weight array, and those slices cost
    copies.
    """
    B, T, _ = x_BTD.shape
    positions_BT = jnp.broadcast_to(jnp.reshape(start, (-1, 1)) + jnp.arange(T), (B, T))
    always_write = write is True
    new_k, new_v = [], []
    for layer, k_cache, v_cache in zip(layers, cache.k, cache.v):
        with jax.named_scope(LAYER_SCOPE):
            x_BTD, k_next, v_next = decoder_layer(
                layer, x_BTD, positions_BT, k_cache, v_cache, start, jnp.asarray(write),
                cfg=cfg, tp_axis=tp_axis, precision=precision, always_write=always_write)
        new_k.append(k_next)
        new_v.append(v_next)
    return x_BTD, KVCache(k=tuple(new_k), v=tuple(new_v))


def forward_hidden(params: Params, cfg: ModelConfig, tokens_BT: Array, start: Array,
                   cache: KVCache, precision: Recipe = REFERENCE) -> tuple[Array, KVCache]:
    """The whole model on one chip: embedding, every layer, final norm."""
    x, cache = run_layers(params.layers, cfg, embed(params.embed_DV, tokens_BT), start, cache,
                          precision=precision)
    return rms_norm(x, params.final_norm_D, cfg.rms_norm_eps), cache


@jax.named_scope("lm_head")
def logits_from_hidden(params: Params, x_BTD: Array,
                       vocab_axes: tuple[tuple[str, int], ...] = (),
                       precision: Recipe = REFERENCE) -> Array:
    """Logits over the whole vocabulary, gathered from every chip's slice when it is split."""
    head_DV = params.embed_DV if params.lm_head_DV is None else params.lm_head_DV
    logits = matmul(x_BTD, head_DV, precision.lm_head)
    for name, _ in reversed(vocab_axes):  # minor axis first, so slices land in chip order
        with jax.named_scope("links"):
            logits = jax.lax.all_gather(logits, name, axis=2, tiled=True)
    return logits


@functools.partial(jax.jit, static_argnames=("cfg", "precision"))
def expert_choices(params: Params, cfg: ModelConfig, tokens_BT: Array,
                   precision: Recipe = REFERENCE) -> Array:
    """The experts each token of a whole sequence chooses in each layer of a mixture of
    experts, [layers, B*T, k], in order of routing weight (for analyses and checks)."""
    B, T = tokens_BT.shape
    cache = KVCache.zeros(cfg, B, T, precision.kv_cache_dtype)
    positions_BT = jnp.broadcast_to(jnp.arange(T), (B, T))
    x_BTD, chosen = embed(params.embed_DV, tokens_BT), []
    for layer, k_cache, v_cache in zip(params.layers, cache.k, cache.v):
        x_BTD, _, _, experts = decoder_layer(
            layer, x_BTD, positions_BT, k_cache, v_cache, jnp.int32(0), jnp.asarray(True),
            cfg=cfg, tp_axis=None, precision=precision, always_write=True, with_routing=True)
        chosen.append(experts)
    return jnp.stack(chosen)


@functools.partial(jax.jit, static_argnames=("cfg", "precision"))
def forward_logits(params: Params, cfg: ModelConfig, tokens_BT: Array,
                   precision: Recipe = REFERENCE) -> Array:
    """Logits at every position of a whole sequence, starting from an empty cache (for checks;
    one compiled program, where op-by-op dispatch would compile each operation)."""
    B, T = tokens_BT.shape
    cache = KVCache.zeros(cfg, B, T, precision.kv_cache_dtype)
    x, _ = forward_hidden(params, cfg, tokens_BT, jnp.int32(0), cache, precision)
    return logits_from_hidden(params, x, precision=precision)
