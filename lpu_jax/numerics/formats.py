"""Storage formats for weight matrices, and their quantize / dequantize pairs.

A weight is a matrix [I, O] (inputs, outputs; leading axes such as the chip axes are allowed) and
every format keeps the output axis whole and last in every array it stores, so columns can be
taken (an embedding lookup) or split across chips without widening anything. Scales that cover
several rows ("groups", "blocks") run along the input axis I, the axis a matmul sums over.

Rounding is to nearest, ties to even, everywhere. Error bounds, per value w and its dequantized
value w' (tests/test_formats.py checks each on random data):

  f32       exact.
  bf16      |w - w'| <= 2^-8 |w|  (8 significant bits; values below 2^-126 lose more).
  f16       |w - w'| <= 2^-11 |w| + 2^-25  (2^-25: half of f16's smallest subnormal).
  fp8-e4m3  scaled per output channel so the channel's largest |w| maps to 448:
            |w - w'| <= 2^-4 |w| + 2^-10 s,  s = max|w| / 448.
  fp8-e5m2  the same with 57344: |w - w'| <= 2^-3 |w| + 2^-17 s,  s = max|w| / 57344.
  int8      symmetric, one f32 scale per output channel, s = max|w| / 127, q in [-127, 127]:
            |w - w'| <= s / 2.
  int4      symmetric, q in [-7, 7], two per byte (rows 2j and 2j+1 share byte j, 2j in the low
            nibble). One scale per group of `group_size` rows and output channel, stored in 8 bits
            as a multiple of a per-channel f32 step c = max|w| / (7 * 255):
            s_g = c * ceil(g_max / (7 c)), so no value is clipped, and
            |w - w'| <= s_g / 2 <= g_max / 14 + c / 2,   g_max = the group's max |w|.
  bfp       block floating point: a block of `block` rows in one output channel shares one
            power-of-two exponent e (int8); mantissas are signed integers of `mantissa_bits`
            bits (8: [-127, 127], one byte; 4: [-7, 7], two per byte), q_max = 2^(bits-1) - 1.
            e is the smallest integer with b_max <= q_max 2^e, so |w - w'| <= 2^e / 2 < b_max / q_max.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from lpu_jax.errors import UserError

Array = jax.Array

FLOAT_DTYPES = {"f32": jnp.float32, "bf16": jnp.bfloat16, "f16": jnp.float16,
                "fp8-e4m3": jnp.float8_e4m3fn, "fp8-e5m2": jnp.float8_e5m2}
FP8_FORMATS = ("fp8-e4m3", "fp8-e5m2")
KINDS = ("f32", "bf16", "f16", "fp8-e4m3", "fp8-e5m2", "int8", "int4", "bfp")


@dataclasses.dataclass(frozen=True)
class Format:
    """A storage format. group_size is int4's rows per scale; block and mantissa_bits are bfp's."""

    kind: str = "f32"
    group_size: int = 0
    block: int = 0
    mantissa_bits: int = 0

    def __post_init__(self):
        if self.kind not in KINDS:
            raise UserError(f"unknown weight format {self.kind!r}; known: {', '.join(KINDS)}")
        if self.kind == "int4" and (self.group_size < 2 or self.group_size % 2):
            raise UserError(f"int4 needs an even group_size >= 2, got {self.group_size}")
        if self.kind == "bfp" and (self.block not in (16, 32) or self.mantissa_bits not in (4, 8)):
            raise UserError(f"bfp needs block = 16 or 32 and mantissa_bits = 4 or 8, got block "
                            f"{self.block} and mantissa_bits {self.mantissa_bits}")
        for name in ("group_size", "block", "mantissa_bits"):
            if getattr(self, name) and name not in _OPTIONS[self.kind]:
                raise UserError(f"{name} does not apply to the {self.kind} format")

    @property
    def rows_per_unit(self) -> int:
        """Rows that must stay together (a scale group, a block, a packed byte) when a weight's
        input axis is split across chips."""
        if self.kind == "int4":
            return self.group_size
        if self.kind == "bfp":
            return self.block
        return 1

    def describe(self) -> str:
        if self.kind == "int4":
            return f"int4-g{self.group_size}"
        if self.kind == "bfp":
            return f"bfp{self.mantissa_bits}-b{self.block}"
        return self.kind


_OPTIONS = {"int4": ("group_size",), "bfp": ("block", "mantissa_bits")}
_OPTIONS.update({kind: () for kind in KINDS if kind not in _OPTIONS})
F32 = Format()


@struct.dataclass
class QuantizedArray:
    """A weight stored in an integer or scaled format; every array keeps the output axis last.

    values: int8 [..., I, O] (int8, 8-bit bfp), uint8 [..., I/2, O] (int4, 4-bit bfp: two per
    byte) or float8 [..., I, O]. scales: f32 [..., 1, O] (int8, fp8), uint8 [..., I/g, O] (int4)
    or int8 exponents [..., I/block, O] (bfp). channel_step: int4's f32 [..., 1, O] step.
    """

    values: Array
    scales: Array
    channel_step: Array | None = None
    format: Format = struct.field(pytree_node=False, default=F32)

    @property
    def shape(self) -> tuple[int, ...]:
        rows = self.values.shape[-2] * (2 if self.values.dtype == jnp.uint8 else 1)
        return (*self.values.shape[:-2], rows, self.values.shape[-1])


Stored = Array | QuantizedArray  # a plain array is a float format: f32, bf16 or f16


def _max_abs(w: Array, axis: int = -2) -> Array:
    return jnp.max(jnp.abs(w), axis=axis, keepdims=True)


def _safe_divide(w: Array, scale: Array) -> Array:
    return jnp.where(scale > 0, w / jnp.where(scale > 0, scale, 1.0), 0.0)


def _pack_nibbles(q: Array) -> Array:
    """Signed 4-bit integers [..., I, O] -> uint8 [..., I/2, O]: row 2j low, row 2j+1 high."""
    u = (q.astype(jnp.int32) & 0xF).astype(jnp.uint8)
    pairs = u.reshape(*u.shape[:-2], u.shape[-2] // 2, 2, u.shape[-1])
    return pairs[..., 0, :] | (pairs[..., 1, :] << 4)


def _unpack_nibbles(packed: Array) -> Array:
    """uint8 [..., I/2, O] -> signed integers [..., I, O] as int8."""
    nibbles = jnp.stack([packed & 0xF, packed >> 4], axis=-2).astype(jnp.int8)
    signed = jnp.where(nibbles >= 8, nibbles - 16, nibbles).astype(jnp.int8)
    return signed.reshape(*packed.shape[:-2], packed.shape[-2] * 2, packed.shape[-1])


def _per_row_group(scale: Array, rows: int) -> Array:
    """Scales [..., I/g, O] repeated to [..., I, O]."""
    return jnp.repeat(scale, rows // scale.shape[-2], axis=-2)


def _check_rows(w: Array, fmt: Format):
    if w.shape[-2] % fmt.rows_per_unit:
        raise UserError(f"the {fmt.describe()} format groups {fmt.rows_per_unit} rows, which "
                        f"does not divide a weight with {w.shape[-2]} input rows")


def quantize(w: Array, fmt: Format) -> Stored:
    """A float weight [..., I, O] in format `fmt`."""
    w = jnp.asarray(w, jnp.float32)
    kind = fmt.kind
    if kind in ("f32", "bf16", "f16"):
        return w.astype(FLOAT_DTYPES[kind])
    _check_rows(w, fmt)
    if kind in FP8_FORMATS:
        scale = _max_abs(w) / _fp8_max(kind)
        return QuantizedArray(saturating_cast(_safe_divide(w, scale), FLOAT_DTYPES[kind]), scale,
                              format=fmt)
    if kind == "int8":
        scale = _max_abs(w) / 127.0
        q = jnp.clip(jnp.round(_safe_divide(w, scale)), -127, 127).astype(jnp.int8)
        return QuantizedArray(q, scale, format=fmt)
    if kind == "int4":
        g = fmt.group_size
        groups = w.reshape(*w.shape[:-2], w.shape[-2] // g, g, w.shape[-1])
        group_max = jnp.max(jnp.abs(groups), axis=-2)  # [..., I/g, O]
        step = _max_abs(group_max) / (7.0 * 255.0)
        units = jnp.clip(jnp.ceil(_safe_divide(group_max, 7.0 * step)), 0, 255)
        scale = _per_row_group(step * units, w.shape[-2])
        q = jnp.clip(jnp.round(_safe_divide(w, scale)), -7, 7)
        return QuantizedArray(_pack_nibbles(q), units.astype(jnp.uint8), step, format=fmt)
    # bfp
    q_max = 2.0 ** (fmt.mantissa_bits - 1) - 1
    blocks = w.reshape(*w.shape[:-2], w.shape[-2] // fmt.block, fmt.block, w.shape[-1])
    block_max = jnp.max(jnp.abs(blocks), axis=-2)
    mantissa, exponent = jnp.frexp(block_max / q_max)
    exponent = jnp.where(mantissa == 0.5, exponent - 1, exponent)  # exact powers of two
    exponent = jnp.where(block_max > q_max * jnp.ldexp(1.0, exponent), exponent + 1, exponent)
    exponent = jnp.clip(exponent, -127, 127)
    q = jnp.clip(jnp.round(jnp.ldexp(w, -_per_row_group(exponent, w.shape[-2]))), -q_max, q_max)
    values = _pack_nibbles(q) if fmt.mantissa_bits == 4 else q.astype(jnp.int8)
    return QuantizedArray(values, exponent.astype(jnp.int8), format=fmt)


def integer_values(q: QuantizedArray) -> Array:
    """The stored integers (int4 and 4-bit bfp unpacked), as int8 [..., I, O]."""
    return _unpack_nibbles(q.values) if q.values.dtype == jnp.uint8 else q.values


def dequantize(w: Stored) -> Array:
    """The f32 values a stored weight represents."""
    if not isinstance(w, QuantizedArray):
        return w.astype(jnp.float32)
    if w.values.dtype in (jnp.int8, jnp.uint8):
        stored = integer_values(w)
    else:  # fp8, or an execution copy whose integers were widened to f32 ahead of time
        stored = w.values
    return stored.astype(jnp.float32) * _rows_scale(w, w.shape[-2])


def _rows_scale(w: QuantizedArray, rows: int) -> Array:
    """The multiplier of each stored integer: [..., 1, O] or [..., I, O]."""
    kind = w.format.kind
    if kind == "int4":
        return _per_row_group(w.channel_step * w.scales.astype(jnp.float32), rows)
    if kind == "bfp":
        return jnp.ldexp(jnp.float32(1.0), _per_row_group(w.scales.astype(jnp.int32), rows))
    return w.scales


def has_channel_scales(fmt: Format) -> bool:
    """One scale per output channel: a matmul can apply it after summing (int8, fp8)."""
    return fmt.kind == "int8" or fmt.kind in FP8_FORMATS


def widened_with_scale(w: Stored) -> tuple[Array, Array | None]:
    """(values [..., I, O] in f32, per-channel scale [..., O] or None) with w = values * scale.

    Formats with one scale per output channel keep it apart, so the matmul sums the stored
    values and scales the sums (as an int8 MXM would); the others are dequantized whole.
    """
    if isinstance(w, QuantizedArray) and has_channel_scales(w.format):
        return w.values.astype(jnp.float32), w.scales[..., 0, :]
    return dequantize(w), None


def take_columns(w: Stored, ids: Array) -> Array:
    """Columns `ids` (any shape) of a weight [I, O], dequantized: [I, *ids.shape]."""
    if not isinstance(w, QuantizedArray):
        return jnp.take(w, ids, axis=-1).astype(jnp.float32)
    picked = jax.tree.map(lambda a: jnp.take(a, ids.reshape(-1), axis=-1), w)
    return dequantize(picked).reshape(picked.shape[-2], *ids.shape)


def _fp8_max(kind: str) -> float:
    return float(jnp.finfo(FLOAT_DTYPES[kind]).max)


def saturating_cast(x: Array, dtype) -> Array:
    """x in a float dtype; fp8 values beyond the format's range saturate (e4m3fn has no
    infinity: an out-of-range convert would give NaN)."""
    dtype = jnp.dtype(dtype)
    if dtype.itemsize == 1:
        limit = float(jnp.finfo(dtype).max)
        x = jnp.clip(x, -limit, limit)
    return x.astype(dtype)


def nbytes(tree) -> int:
    """Bytes held by every array of a pytree, or that its shapes (jax.ShapeDtypeStruct) would
    hold (None leaves hold nothing)."""
    return sum(int(leaf.size) * leaf.dtype.itemsize for leaf in jax.tree.leaves(tree))


def num_values(tree) -> int:
    """The number of logical values a pytree of stored weights represents."""
    count = 0
    for node in jax.tree.leaves(tree, is_leaf=lambda x: isinstance(x, QuantizedArray)):
        count += math.prod(node.shape)
    return count

