"""Each chip's share of the parameters: stacked along leading chip axes [pp, tp] for one chip
per device (split_params), or in a buffer per chip for chips folded onto one (split_folded)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from lpu_jax.chips.layout import TP_AXIS, Layout
from lpu_jax.config import ModelConfig
from lpu_jax.errors import UserError
from lpu_jax.model import LayerParams, Params, experts_apart
from lpu_jax.numerics.formats import QuantizedArray
from lpu_jax.numerics.matmul import PerChip
from lpu_jax.parameters import LAYER_TENSORS, STORED_LAYER_TENSORS, Tensor, tp_splits


def _copies(w, n):
    return None if w is None else jnp.broadcast_to(w, (n, *w.shape))


def _repeat_heads(a, axis: int, heads: int, copies: int):
    """[.., heads * head_dim, ..] -> [.., heads * copies * head_dim, ..] along `axis`: each
    head's block repeated in place, so equal slices give `copies` chips in a row the same head."""
    shape = a.shape
    blocks = a.reshape(*shape[:axis], heads, shape[axis] // heads, *shape[axis + 1:])
    return jnp.repeat(blocks, copies, axis=axis).reshape(*shape[:axis], -1, *shape[axis + 1:])


def split_tensor(w, tensor: Tensor, config: ModelConfig, layout: Layout):
    """One layer tensor -> tp shares, each leaf with a leading [tp] axis, as CHIP_AXES says.

    Column-parallel matrices (q, k, v, gate, up) split their outputs; row-parallel ones (o,
    down) split their inputs and give partial sums; an expert tensor splits its experts over
    the layout's ep expert groups, then their columns over the chips of a group. With more
    chips than KV heads, each KV head's features are repeated on the tp // kv_heads chips that
    read it. A stored weight splits its values and its group or block scales with its rows; a
    scale shared along a split axis (one per output channel, size 1 there) belongs to every
    share.
    """
    if w is None:
        return None
    tp, shape = layout.tp, tensor.shape(config)
    if "K" in tensor.axes and tp > config.num_kv_heads:
        copies = tp // config.num_kv_heads
        k_axis = tensor.axes.index("K")
        w = jax.tree.map(lambda a: _repeat_heads(a, k_axis, config.num_kv_heads, copies), w)
        shape = (*shape[:k_axis], shape[k_axis] * copies, *shape[k_axis + 1:])
    ways = tp_splits(tensor.axes, shape, tp, layout.ep)
    if ways is None:
        return jax.tree.map(lambda a: _copies(a, tp), w)
    if isinstance(w, QuantizedArray):
        unit = w.format.rows_per_unit
        rows, way = shape[-2], ways[-2]
        if way > 1 and (rows // way) % unit:
            raise UserError(f"the {w.format.describe()} format keeps {unit} rows together, "
                            f"which does not divide this model's {rows} // {way} = "
                            f"{rows // way} rows of {tensor.field} per chip at "
                            f"{layout.describe()}: choose another layout or recipe")

    def shares(a):
        for axis, way in enumerate(ways):  # a size-1 axis (a shared scale) is every chip's
            if way > 1 and a.shape[axis] == 1:
                a = jnp.repeat(a, way, axis=axis)
        # Each split axis n -> (ways, n / ways); the ways axes go first, in order, as one.
        parts = a.reshape(*[d for n, way in zip(a.shape, ways) for d in (way, n // way)])
        chips_first = [2 * i for i in range(len(ways))] + [2 * i + 1 for i in range(len(ways))]
        return parts.transpose(chips_first).reshape(tp, *[n // way for n, way
                                                          in zip(a.shape, ways)])

    return jax.tree.map(shares, w)


def split_layer(layer: LayerParams, config: ModelConfig, layout: Layout) -> LayerParams:
    """One layer -> its stage's tp shares, each leaf with a leading [tp] axis; an expert tensor
    becomes a tuple of the experts each chip holds.

    Query columns are head-major and query heads are grouped by the KV head they share, so
    equal column slices of wq, wk and wv keep every query head with its KV head.
    """
    def share(t: Tensor):
        shares = split_tensor(getattr(layer, t.field), t, config, layout)
        return (experts_apart(shares, axis=1) if "E" in t.axes and shares is not None
                else shares)

    return LayerParams(**{t.field: share(t) for t in LAYER_TENSORS},
                       expert_groups=layout.expert_groups(config))


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
        shares = [split_layer(layer, config, layout) for layer in per_stage]
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
        shares = split_layer(w, config, layout)
        return shares.replace(**{t.field: _blocks(getattr(shares, t.field), layout.tp)
                                 for t in STORED_LAYER_TENSORS
                                 if getattr(shares, t.field) is not None})

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
    def without_chip_axes(tree, axes):
        return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[axes:], a.dtype), tree)

    layer = without_chip_axes(jax.eval_shape(lambda w: split_layer(w, config, layout),
                                    stored.layers[0]), 1)
    vocab = without_chip_axes(jax.eval_shape(lambda e, h: (split_vocab(e, config, layout),
                                                  split_vocab(h, config, layout)),
                                    stored.embed_DV, stored.lm_head_DV), 2)
    return Params(embed_DV=vocab[0], layers=(layer,) * layout.layer_slots(config.num_layers),
                  final_norm_D=without_chip_axes(stored.final_norm_D, 0), lm_head_DV=vocab[1])


def chip_share(stacked, stage: int, chip: int):
    """One chip's slice of a stacked pytree (for inspection and tests)."""
    return jax.tree.map(lambda a: a[stage, chip], stacked)
