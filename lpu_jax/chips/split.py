"""Each chip's share of the parameters: stacked along leading chip axes [pp, tp] for one chip
per device (split_params), or in a buffer per chip for chips folded onto one (split_folded)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from lpu_jax.chips.layout import TP_AXIS, Layout
from lpu_jax.config import ModelConfig
from lpu_jax.errors import UserError
from lpu_jax.model import LayerParams, Params
from lpu_jax.numerics.formats import QuantizedArray
from lpu_jax.numerics.matmul import PerChip
from lpu_jax.numerics.store import ATTENTION_WEIGHTS, MLP_WEIGHTS


def _rows(w, tp):
    """Split the first axis into tp equal slices: [tp, rows / tp, ...].

    A stored weight splits its values and its group or block scales with the rows; a scale per
    output channel ([1, O]) belongs to every slice.
    """
    if w is None:
        return None
    if isinstance(w, QuantizedArray):
        unit = w.format.rows_per_unit
        if (w.shape[0] // tp) % unit:
            raise UserError(f"the {w.format.describe()} format keeps {unit} rows together, "
                            f"which does not divide this model's {w.shape[0]} // {tp} = "
                            f"{w.shape[0] // tp} rows per chip at tp={tp}: choose another tp "
                            f"or recipe")
        return jax.tree.map(lambda a: _copies(a, tp) if a.shape[0] == 1 else _rows(a, tp), w)
    return w.reshape(tp, w.shape[0] // tp, *w.shape[1:])


def _columns(w, tp):
    """Split the last axis into tp equal slices: [tp, ..., cols / tp]."""
    if isinstance(w, QuantizedArray):
        return jax.tree.map(lambda a: _columns(a, tp), w)
    return jnp.moveaxis(w.reshape(*w.shape[:-1], tp, w.shape[-1] // tp), -2, 0)


def _repeat_heads(w, heads, copies):
    """[..., heads * head_dim] -> [..., heads * copies * head_dim]: each head's block repeated
    in place, so equal slices give `copies` chips in a row the same head."""
    if w is None or copies == 1:
        return w
    if isinstance(w, QuantizedArray):  # values and per-column scales repeat alike
        return jax.tree.map(lambda a: _repeat_heads(a, heads, copies), w)
    blocks = w.reshape(*w.shape[:-1], heads, w.shape[-1] // heads)
    return jnp.repeat(blocks, copies, axis=-2).reshape(*w.shape[:-1], -1)


def _copies(w, n):
    return None if w is None else jnp.broadcast_to(w, (n, *w.shape))


def split_layer(layer: LayerParams, tp: int, kv_heads: int) -> LayerParams:
    """One layer -> tp shares, each leaf with a leading [tp] axis.

    Column-parallel projections (q, k, v, gate, up) split their outputs; row-parallel ones (o,
    down) split their inputs and give partial sums. With more chips than the `kv_heads` KV
    heads, each KV head's projections are replicated on the tp // kv_heads chips that read it.
    """
    # Query columns are head-major and query heads are grouped by the KV head they share, so
    # equal column slices of wq, wk and wv keep every query head with its KV head.
    copies = max(tp // kv_heads, 1)

    def kv(w):
        return _repeat_heads(w, kv_heads, copies)

    return LayerParams(
        attn_norm_D=_copies(layer.attn_norm_D, tp),
        wq_DN=_columns(layer.wq_DN, tp), wk_DK=_columns(kv(layer.wk_DK), tp),
        wv_DK=_columns(kv(layer.wv_DK), tp),
        wo_ND=_rows(layer.wo_ND, tp),
        mlp_norm_D=_copies(layer.mlp_norm_D, tp),
        w_gate_DF=_columns(layer.w_gate_DF, tp), w_up_DF=_columns(layer.w_up_DF, tp),
        w_down_FD=_rows(layer.w_down_FD, tp),
        bq_N=_rows(layer.bq_N, tp), bk_K=_rows(kv(layer.bk_K), tp),
        bv_K=_rows(kv(layer.bv_K), tp),
        # Added once after the partial sums are reduced, so every chip holds all of it.
        bo_D=_copies(layer.bo_D, tp),
        b_gate_F=_rows(layer.b_gate_F, tp), b_up_F=_rows(layer.b_up_F, tp),
        b_down_D=_copies(layer.b_down_D, tp),
    )


def _identity_layer(like: LayerParams) -> LayerParams:
    """All-zero weights: attention and MLP add exactly 0 to the residual, so x passes unchanged."""
    return jax.tree.map(jnp.zeros_like, like)


def split_params(params: Params, config: ModelConfig, layout: Layout) -> Params:
    """The whole model -> per-chip shares, every leaf with leading [pp, tp] axes.

    Stage s holds its layers in slots 0..n_s-1 of the per-chip program and identity layers after.
    """
    pp, tp = layout.pp, layout.tp
    stages = layout.stage_layers(config.num_layers)
    identity = None  # made once, from the first short stage's need
    slots = []
    for slot in range(layout.layer_slots(config.num_layers)):
        if identity is None and any(slot >= len(stage) for stage in stages):
            identity = _identity_layer(params.layers[0])
        per_stage = [params.layers[stage[slot]] if slot < len(stage) else identity
                     for stage in stages]
        shares = [split_layer(layer, tp, config.num_kv_heads) for layer in per_stage]
        slots.append(jax.tree.map(lambda *leaves: jnp.stack(leaves), *shares))

    return Params(
        embed_DV=split_vocab(params.embed_DV, config, layout),
        layers=tuple(slots),
        final_norm_D=_copies(_copies(params.final_norm_D, tp), pp),
        lm_head_DV=split_vocab(params.lm_head_DV, config, layout),
    )


def split_folded(params: Params, config: ModelConfig, layout: Layout) -> Params:
    """The whole model -> the shares of chips folded onto one device, in one buffer per chip.

    The layers stay in order, without the identity layers that pad short stages (the folded
    program runs each stage's own layers); each layer's matrices are PerChip, one block per tp
    chip, and its norms and biases are stacked [tp, ...] for vmap. The vocabulary is PerChip over
    every chip, in chip order; the final norm is one copy.
    """
    def layer(w: LayerParams) -> LayerParams:
        shares = split_layer(w, layout.tp, config.num_kv_heads)
        return shares.replace(**{name: _blocks(getattr(shares, name), layout.tp)
                                 for name in ATTENTION_WEIGHTS + MLP_WEIGHTS})

    # Each chip's block holds its real rows only: the per-chip program pads every block to
    # the largest (one shape for all chips), which would cost the folded LM head work.
    vocab_size = config.vocab_size
    rows = [max(0, min(share, vocab_size - start)) for share, start
            in zip(layout.vocab_shares(vocab_size), layout.vocab_starts(vocab_size))]

    def vocab(w):
        if w is None:
            return None
        chips = jax.tree.map(lambda a: a.reshape(-1, *a.shape[2:]),
                             split_vocab(w, config, layout))
        return PerChip(tuple(jax.tree.map(lambda a: a[chip][..., :rows[chip]], chips)
                             for chip in range(layout.num_chips)))

    return Params(embed_DV=vocab(params.embed_DV), layers=tuple(map(layer, params.layers)),
                  final_norm_D=params.final_norm_D, lm_head_DV=vocab(params.lm_head_DV))


def _blocks(stacked, chips: int) -> PerChip:
    """A weight stacked on the tp chips' axis [tp, ...] -> one buffer per chip."""
    return PerChip(tuple(jax.tree.map(lambda a: a[chip], stacked) for chip in range(chips)),
                   axis=TP_AXIS)


def split_vocab(w, config: ModelConfig, layout: Layout):
    """A vocabulary tensor [D, V] -> each chip's rows [pp, tp, D, block], zero-padded to the
    largest share (layout.vocab_shares)."""
    if w is None:
        return None
    pp, tp, vocab = layout.pp, layout.tp, config.vocab_size
    rows = layout.vocab_shares(vocab)
    block = max(rows)
    # Column k of chip c's block is token starts[c] + k, or a zero column past its share.
    tokens = layout.vocab_starts(vocab)[:, None] + np.arange(block)
    picks = np.where((np.arange(block) < np.array(rows)[:, None]) & (tokens < vocab),
                     tokens, vocab)

    def blocks(a):  # every leaf keeps the vocabulary last: [rows, V]
        padded = jnp.pad(a, ((0, 0), (0, 1)))
        chips = jnp.take(padded, picks.reshape(-1), axis=1).reshape(a.shape[0], pp, tp, block)
        return jnp.moveaxis(chips, 0, 2)

    return jax.tree.map(blocks, w)


def abstract_chip_params(stored: Params, config: ModelConfig, layout: Layout) -> Params:
    """One chip's parameter shapes from a stored model's first layer and vocabulary (every
    layer has the same shapes): what split_params gives each chip, without splitting them all."""
    def one_chip(tree, axes):
        return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[axes:], a.dtype), tree)

    layer = one_chip(jax.eval_shape(lambda w: split_layer(w, layout.tp, config.num_kv_heads),
                                    stored.layers[0]), 1)
    vocab = one_chip(jax.eval_shape(lambda e, h: (split_vocab(e, config, layout),
                                                  split_vocab(h, config, layout)),
                                    stored.embed_DV, stored.lm_head_DV), 2)
    return Params(embed_DV=vocab[0], layers=(layer,) * layout.layer_slots(config.num_layers),
                  final_norm_D=one_chip(stored.final_norm_D, 0), lm_head_DV=vocab[1])


def chip_share(stacked, stage: int, chip: int):
    """One chip's slice of a stacked pytree (for inspection and tests)."""
    return jax.tree.map(lambda a: a[stage, chip], stacked)
