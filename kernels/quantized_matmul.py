"""A Pallas matmul that reads int8 or int4 weights and widens them inside the kernel.

x [M, K] (f32 or bf16) @ w [K, N] -> f32 [M, N], accumulated in f32. The weight stays low-bit in
memory; each grid step loads one tile of stored integers and widens it in registers:
  int8  one f32 scale per output column, applied once after the K loop.
  int4  two values per byte (rows 2j and 2j+1 of the weight in the low and high nibble of byte
        j), one scale per group of g rows. A K step covers exactly one group, so its scale
        multiplies that step's partial sum; the even and odd columns of x meet the low and high
        nibbles, which avoids interleaving rows inside the kernel.

`quantized_matmul_reference` is the plain-JAX twin: dequantize, then one f32 dot. The two agree
to f32 rounding (they sum in different orders); tests/test_kernels.py runs the kernel in
interpret mode on CPU and lowers it for GPUs (through Triton: Mosaic GPU has no lowering of this
dot) and TPUs (through Mosaic).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pl_triton

from lpu_jax.numerics.formats import QuantizedArray, dequantize

BLOCK_M = 16  # rows of x per tile: a decode step's one row is padded up to it
BLOCK_N = 128
BLOCK_K = 128  # int8 only; int4 takes one group per step


def quantized_matmul_reference(x: jax.Array, w: QuantizedArray) -> jax.Array:
    return jnp.einsum("mk,kn->mn", x.astype(jnp.float32), dequantize(w),
                      preferred_element_type=jnp.float32)


def _int8_kernel(x_ref, q_ref, scale_ref, out_ref):
    k = pl.program_id(2)

    @pl.when(k == 0)
    def _():
        out_ref[...] = jnp.zeros_like(out_ref)

    out_ref[...] += jnp.dot(x_ref[...].astype(jnp.float32), q_ref[...].astype(jnp.float32),
                            preferred_element_type=jnp.float32)

    @pl.when(k == pl.num_programs(2) - 1)
    def _():
        out_ref[...] *= scale_ref[...]


def _signed_nibbles(packed):
    low, high = (packed & 0xF).astype(jnp.int32), (packed >> 4).astype(jnp.int32)
    return (jnp.where(low >= 8, low - 16, low).astype(jnp.float32),
            jnp.where(high >= 8, high - 16, high).astype(jnp.float32))


def _int4_kernel(x_even_ref, x_odd_ref, packed_ref, units_ref, step_ref, out_ref):
    k = pl.program_id(2)

    @pl.when(k == 0)
    def _():
        out_ref[...] = jnp.zeros_like(out_ref)

    low, high = _signed_nibbles(packed_ref[...])
    partial = (jnp.dot(x_even_ref[...].astype(jnp.float32), low,
                       preferred_element_type=jnp.float32)
               + jnp.dot(x_odd_ref[...].astype(jnp.float32), high,
                         preferred_element_type=jnp.float32))
    out_ref[...] += partial * (units_ref[...].astype(jnp.float32) * step_ref[...])


def _pad_to(a: jax.Array, axis: int, multiple: int) -> jax.Array:
    pad = -a.shape[axis] % multiple
    if not pad:
        return a
    widths = [(0, 0)] * a.ndim
    widths[axis] = (0, pad)
    return jnp.pad(a, widths)


def _pallas(kernel, interpret: bool, **call):
    """pallas_call per platform: interpreted where asked (CPU), through Triton on GPUs, through
    Mosaic elsewhere (TPUs); a program lowered for several platforms carries each its own."""
    if interpret:
        return pl.pallas_call(kernel, interpret=True, **call)
    triton = pl.pallas_call(kernel, compiler_params=pl_triton.CompilerParams(), **call)
    mosaic = pl.pallas_call(kernel, **call)
    return lambda *args: jax.lax.platform_dependent(*args, cuda=triton, rocm=triton,
                                                    default=mosaic)


@functools.partial(jax.jit, static_argnames=("interpret",))
def quantized_matmul(x: jax.Array, w: QuantizedArray, interpret: bool = False) -> jax.Array:
    """x [M, K] @ w [K, N] for int8 (per-channel) or int4 (grouped) weights; f32 [M, N]."""
    kind = w.format.kind
    if kind not in ("int8", "int4"):
        raise ValueError(f"the quantized-matmul kernel takes int8 or int4 weights, not {kind}")
    M, N = x.shape[0], w.shape[-1]
    x = _pad_to(x, 0, BLOCK_M)
    pad_n = functools.partial(_pad_to, axis=1, multiple=BLOCK_N)
    grid_mn = (x.shape[0] // BLOCK_M, -(-N // BLOCK_N))
    out_spec = pl.BlockSpec((BLOCK_M, BLOCK_N), lambda i, j, k: (i, j))
    out_shape = jax.ShapeDtypeStruct((x.shape[0], grid_mn[1] * BLOCK_N), jnp.float32)
    if kind == "int8":
        x = _pad_to(x, 1, BLOCK_K)
        q = pad_n(_pad_to(w.values, 0, BLOCK_K))
        out = _pallas(
            _int8_kernel, interpret, out_shape=out_shape, grid=(*grid_mn, x.shape[1] // BLOCK_K),
            in_specs=[pl.BlockSpec((BLOCK_M, BLOCK_K), lambda i, j, k: (i, k)),
                      pl.BlockSpec((BLOCK_K, BLOCK_N), lambda i, j, k: (k, j)),
                      pl.BlockSpec((1, BLOCK_N), lambda i, j, k: (0, j))],
            out_specs=out_spec)(x, q, pad_n(w.scales))
    else:
        half_group = w.format.group_size // 2
        row_spec = pl.BlockSpec((BLOCK_M, half_group), lambda i, j, k: (i, k))
        out = _pallas(
            _int4_kernel, interpret, out_shape=out_shape, grid=(*grid_mn, w.scales.shape[0]),
            in_specs=[row_spec, row_spec,
                      pl.BlockSpec((half_group, BLOCK_N), lambda i, j, k: (k, j)),
                      pl.BlockSpec((1, BLOCK_N), lambda i, j, k: (k, j)),
                      pl.BlockSpec((1, BLOCK_N), lambda i, j, k: (0, j))],
            out_specs=out_spec,
        )(x[:, 0::2], x[:, 1::2], pad_n(w.values), pad_n(w.scales), pad_n(w.channel_step))
    return out[:M, :N]
