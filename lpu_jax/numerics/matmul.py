"""Matrix products with an accumulation policy, and the rounding of activations.

Three policies for every matmul:
  f32    products summed in f32 (TruePoint: wide accumulation).
  bf16   narrow accumulation, to show what it costs: the input axis is cut into chunks of
         `chunk` values; each chunk's products are summed in f32 and the running sum is rounded to
         bf16 after each chunk.
  int32  int8 weights times int8 activations (quantized per token, symmetric), summed exactly in
         int32, then scaled. The result does not depend on how the sum is split, across chips or
         within one.

Activations can be rounded before a matmul (`inputs`) and where they cross chips (`link`):
f32 (unchanged), bf16, f16, or fp8 / int8 with one scale per token (the largest |x| of the
token's vector maps to the format's largest value).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from flax import struct

from lpu_jax.errors import UserError
from lpu_jax.kernels.quantized_matmul import quantized_matmul
from lpu_jax.numerics.formats import (F32, FLOAT_DTYPES, Format, QuantizedArray, Stored,
                                      saturating_cast, widened_with_scale)

Array = jax.Array

ACCUMULATIONS = ("f32", "bf16", "int32")
KERNELS = ("xla", "pallas", "pallas-interpret")
ACTIVATION_FORMATS = ("f32", "bf16", "f16", "fp8-e4m3", "fp8-e5m2", "int8")
# An f32 sum of int8 x int8 products is exact while it stays below 2^24: 1024 products of at most
# 127 * 127 keep it there, whatever the order of the additions.
EXACT_F32_CHUNK = 1024


@dataclasses.dataclass(frozen=True)
class MatmulPolicy:
    """How one class of matmuls stores its weights, rounds its inputs and accumulates."""

    weights: Format = F32
    inputs: str = "f32"
    accumulation: str = "f32"
    chunk: int = 64  # input values per narrow-accumulation chunk
    # Who multiplies int8 / int4 weights under f32 accumulation: XLA (widening in a fusion) or
    # the Pallas kernel in kernels/ ("pallas-interpret": its interpreter, for CPU). Chosen by
    # the engine's execution mode, not by recipe files.
    kernel: str = "xla"

    def __post_init__(self):
        if self.accumulation not in ACCUMULATIONS:
            raise UserError(f"unknown accumulation {self.accumulation!r}; known: "
                            f"{', '.join(ACCUMULATIONS)}")
        if self.inputs not in ACTIVATION_FORMATS:
            raise UserError(f"unknown activation format {self.inputs!r}; known: "
                            f"{', '.join(ACTIVATION_FORMATS)}")
        integer = (self.weights.kind == "int8", self.inputs == "int8")
        if (self.accumulation == "int32") != all(integer) or (self.inputs == "int8") != all(integer):
            raise UserError("int32 accumulation goes with int8 weights and int8 inputs, and "
                            "int8 inputs need int8 weights and int32 accumulation")
        if self.chunk < 1:
            raise UserError(f"chunk must be >= 1, got {self.chunk}")
        if self.kernel not in KERNELS:
            raise UserError(f"kernel must be one of {', '.join(KERNELS)}, got {self.kernel!r}")

    @property
    def scales_per_token(self) -> bool:
        """Whether the inputs are quantized with one scale per token (int8, fp8)."""
        return self.inputs in ("int8", "fp8-e4m3", "fp8-e5m2")

    def uses_kernel(self, w: Stored) -> bool:
        return (self.kernel != "xla" and self.accumulation == "f32"
                and isinstance(w, QuantizedArray) and w.format.kind in ("int8", "int4"))


def _token_scale(x: Array, limit: float, axis_name: str | None,
                 largest: Array | None = None) -> Array:
    """One scale per token [..., 1]: its largest |x| (over all chips holding a slice) -> limit.
    `largest` gives each token's largest |x| where the caller has reduced it itself."""
    if largest is None:
        largest = jnp.max(jnp.abs(x), axis=-1, keepdims=True)
        if axis_name is not None:
            largest = jax.lax.pmax(largest, axis_name)
    return largest / limit


def _int8_per_token(x: Array, axis_name: str | None,
                    largest: Array | None = None) -> tuple[Array, Array]:
    """x = q * scale with q int8 in [-127, 127] and one scale per token."""
    scale = _token_scale(x, 127.0, axis_name, largest)
    q = jnp.clip(jnp.round(jnp.where(scale > 0, x / jnp.where(scale > 0, scale, 1.0), 0.0)),
                 -127, 127)
    return q.astype(jnp.int8), scale


def round_activations(x: Array, fmt: str, axis_name: str | None = None,
                      largest: Array | None = None) -> Array:
    """x as the format would carry it, back in f32. axis_name: chips holding slices of the same
    vectors, which share one per-token scale (or `largest`, each token's largest |x|)."""
    if fmt == "f32":
        return x
    if fmt in ("bf16", "f16"):
        return x.astype(FLOAT_DTYPES[fmt]).astype(jnp.float32)
    if fmt == "int8":
        q, scale = _int8_per_token(x, axis_name, largest)
        return q.astype(jnp.float32) * scale
    scale = _token_scale(x, float(jnp.finfo(FLOAT_DTYPES[fmt]).max), axis_name, largest)
    safe = jnp.where(scale > 0, scale, 1.0)
    return saturating_cast(x / safe, FLOAT_DTYPES[fmt]).astype(jnp.float32) * safe


def _group_of_row(groups: Array, rows: int) -> Array:
    """Each row's group when rows come in runs of groups[e]; len(groups) past the runs."""
    return jnp.sum(jnp.arange(rows)[:, None] >= jnp.cumsum(groups)[None, :], axis=1)


@functools.partial(jax.jit, static_argnames=("accumulator",))
def grouped_dot(x: Array, experts: tuple[Array, ...], groups: Array,
                accumulator=jnp.float32) -> Array:
    """x's rows [R, I] in runs of groups[e] rows, each run times its expert's matrix
    experts[e] [I, O]; rows past the runs give zeros.

    Written for XLA's speed, not the LPU's: lax.ragged_dot lowers to every expert on every row,
    and a slice of a stacked expert axis is a copy on XLA:CPU, so each expert's matrix is a
    buffer of its own; with no more rows than experts (decode) each row takes its expert's
    (lax.switch), else each expert multiplies every row and keeps its own. The cycle model
    costs this call as the grouped product it is (lpu/lowering.py).
    """
    rows, count = x.shape[0], len(experts)
    group_of_row = _group_of_row(groups, rows)

    def dot(w, x):
        return jnp.einsum("ri,io->ro", x, w, preferred_element_type=accumulator)

    if rows <= count:
        nothing = jnp.zeros((1, experts[0].shape[-1]), accumulator)
        branches = [functools.partial(dot, w) for w in experts] + [lambda _: nothing]
        return jnp.concatenate([jax.lax.switch(group_of_row[r], branches, x[r:r + 1])
                                for r in range(rows)])
    total = None
    for e, w in enumerate(experts):
        part = jnp.where((group_of_row == e)[:, None], dot(w, x), jnp.zeros((), accumulator))
        total = part if total is None else total + part
    return total


def _dot(x: Array, w, groups: Array | None, accumulator=jnp.float32) -> Array:
    """x [..., I] @ w [I, O]; with `groups`, w is a tuple of experts' matrices and x's rows
    [R, I] come in runs of groups[e] rows, each run times its expert's (grouped_dot)."""
    if groups is None:
        return jnp.einsum("...i,io->...o", x, w, preferred_element_type=accumulator)
    return grouped_dot(x, tuple(w), groups, accumulator)


def _per_row(scale: Array, groups: Array | None, rows: int) -> Array:
    """A per-output-channel scale ([O], or [E, O] for grouped weights) as the rows of a product
    take it: one for all rows, or with `groups` each row its own group's [R, O]."""
    if groups is None:
        return scale
    return jnp.take(scale, jnp.minimum(_group_of_row(groups, rows), scale.shape[0] - 1), axis=0)


def _each_matrix(function, w):
    """function over a weight, or over each expert's matrix of a tuple of them."""
    return tuple(map(function, w)) if isinstance(w, tuple) else function(w)


def _widened(w) -> tuple:
    """widened_with_scale for a weight or a tuple of experts' ([E, O] scales, stacked)."""
    if not isinstance(w, tuple):
        return widened_with_scale(w)
    pairs = [widened_with_scale(matrix) for matrix in w]
    scales = None if pairs[0][1] is None else jnp.stack([scale for _, scale in pairs])
    return tuple(values for values, _ in pairs), scales


def exact_integer_dot(q_x: Array, q_w, groups: Array | None = None) -> Array:
    """sum_i x[..., i] w[i, o] for int8 x and w in [-127, 127], exactly, as int32 (with
    `groups`, grouped as _dot takes them).

    XLA:CPU runs int8 dots 10-30x slower than f32 ones, so there the sum is taken in f32 over
    chunks that cannot round (see EXACT_F32_CHUNK) and the chunks are added in int32; elsewhere
    an int8 dot with an int32 accumulator. Both give the same integers.
    """
    if jax.default_backend() != "cpu":
        return _dot(q_x, q_w, groups, jnp.int32)
    total = None
    for start in range(0, q_x.shape[-1], EXACT_F32_CHUNK):
        chunk = slice(start, start + EXACT_F32_CHUNK)
        part = _dot(q_x[..., chunk].astype(jnp.float32),
                    _each_matrix(lambda w: w[chunk].astype(jnp.float32), q_w),
                    groups).astype(jnp.int32)
        total = part if total is None else total + part
    return total


def _narrow_dot(x: Array, w, chunk: int, groups: Array | None = None) -> Array:
    """f32 products per chunk of the input axis, the running sum rounded to bf16 per chunk."""
    rows = x.shape[-1]
    pad = -rows % chunk
    x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, pad)])
    chunks = (rows + pad) // chunk
    x_chunks = jnp.moveaxis(x.reshape(*x.shape[:-1], chunks, chunk), -2, 0)
    w_chunks = _each_matrix(lambda w: jnp.pad(w, ((0, pad), (0, 0))).reshape(
        chunks, chunk, w.shape[-1]), w)

    def add_chunk(total, xw):
        part = _dot(*xw, groups)
        return (total.astype(jnp.float32) + part).astype(jnp.bfloat16), None

    columns = (w[0] if isinstance(w, tuple) else w).shape[-1]
    total0 = jnp.zeros((*x.shape[:-1], columns), jnp.bfloat16)
    total, _ = jax.lax.scan(add_chunk, total0, (x_chunks, w_chunks))
    return total.astype(jnp.float32)


@struct.dataclass
class PerChip:
    """One weight of each chip of a tensor-parallel group, every block in its own buffer.

    Chips folded onto one device run their per-chip code under jax.vmap, where a weight stacked
    [tp, ...] makes XLA:CPU multiply a row of activations by it in one batched dot, several times
    slower than the chips' separate dots, and a slice of a stacked weight costs a copy at every
    step. With a PerChip weight every chip's product is its own two-dimensional dot on its own
    block, as when each chip has a device: the same shapes, the same values.
    """

    blocks: tuple
    axis: str = struct.field(pytree_node=False, default="tp")  # the vmapped axis of its chips


def _on_each_chip(product, x, w) -> Array:
    """product(x, w) with this chip's weight; for a PerChip weight, under vmap over its chips,
    each chip's x (a pytree) with its own block (jax.custom_batching), the results stacked like
    vmap's."""
    if not isinstance(w, PerChip):
        return product(x, w)

    @jax.custom_batching.custom_vmap
    def each(x, blocks, chip):
        # One chip's product: what a chip computes, and the shape JAX traces this function for.
        return product(x, blocks[0])

    @each.def_vmap
    def rule(axis_size, in_batched, x, blocks, chip):
        x_batched, blocks_batched, _ = in_batched
        if axis_size != len(blocks) or any(jax.tree.leaves(blocks_batched)):
            raise ValueError(f"{len(blocks)} chips' weights read under vmap over {axis_size}")
        outs = [product(jax.tree.map(lambda a, mapped: a[chip] if mapped else a, x, x_batched),
                        block) for chip, block in enumerate(blocks)]
        return jnp.stack(outs), True

    # The chip's index is mapped over the chips' axis: the rule runs even where x is the same on
    # every chip (not mapped), which would otherwise give every chip the first block's product.
    return each(x, w.blocks, jax.lax.axis_index(w.axis))


def one_chip(w):
    """One chip's weight (for its shape): a PerChip weight's first block, or w."""
    return w.blocks[0] if isinstance(w, PerChip) else w


def _first_matrix(w):
    """A weight's matrix, or the first expert's of a tuple of them."""
    w = one_chip(w)
    return w[0] if isinstance(w, tuple) else w


def sum_partials(y: Array, sum_axis: str, link: str) -> Array:
    """The chips' partial sums added (psum), crossing chips in the `link` format."""
    with jax.named_scope("links"):
        return jax.lax.psum(round_activations(y, link), sum_axis)


def matmul(x: Array, w: Stored | PerChip, policy: MatmulPolicy, sum_axis: str | None = None,
           link: str = "f32", groups: Array | None = None, largest: Array | None = None,
           sum_rows=None) -> Array:
    """x [..., I] @ w [I, O] -> f32 [..., O] under `policy`.

    sum_axis names the chips that each hold a slice of the input axis (a row-parallel
    projection): their partial sums are added with psum, crossing chips in the `link` format
    (int32 sums cross exactly, as integers).

    With `groups` [E], x is rows [R, I] in runs of groups[e] rows and w a tuple of one matrix
    [I, O] per run (the experts a chip holds, see model.moe); rows past the runs give zeros.
    Where chips hold slices of a row's inputs, the caller gives `largest` [R, 1], each row's
    largest |x| over them, for per-token activation formats, and `sum_rows`, which adds a
    row's int32 partial sums over them exactly, for int32 accumulation.
    """
    if policy.accumulation == "int32":
        first = _first_matrix(w)
        if not isinstance(first, QuantizedArray) or first.format.kind != "int8":
            raise ValueError("int32 accumulation needs the weight stored as int8")
        q_x, x_scale = _int8_per_token(x, sum_axis, largest)
        total = _on_each_chip(
            lambda qg, w: exact_integer_dot(qg[0], _each_matrix(lambda m: m.values, w), qg[1]),
            (q_x, groups), w)
        if sum_axis is not None:
            with jax.named_scope("links"):
                total = jax.lax.psum(total, sum_axis)
        if sum_rows is not None:
            total = sum_rows(total)
        channel_scale = _on_each_chip(lambda g, w: _per_row(_widened(w)[1], g, x.shape[0]),
                                      groups, w)
        return total.astype(jnp.float32) * x_scale * channel_scale

    def product(x_and_groups, w):
        x, groups = x_and_groups
        values, channel_scale = _widened(w)
        if policy.uses_kernel(w):
            flat = quantized_matmul(x.reshape(-1, x.shape[-1]), w,
                                    interpret=policy.kernel == "pallas-interpret")
            y, channel_scale = flat.reshape(*x.shape[:-1], flat.shape[-1]), None
        elif policy.accumulation == "bf16":
            y = _narrow_dot(x, values, policy.chunk, groups)
        else:
            y = _dot(x, values, groups)
        return y if channel_scale is None else y * _per_row(channel_scale, groups, x.shape[0])

    x = round_activations(x.astype(jnp.float32), policy.inputs, sum_axis, largest)
    y = _on_each_chip(product, (x, groups), w)
    return y if sum_axis is None else sum_partials(y, sum_axis, link)
