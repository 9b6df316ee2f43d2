"""exp, softmax and sums whose bits do not depend on array sizes or on how XLA fuses them.

A chip layout changes the arrays a chip holds (a third of the heads at tp=3) and the fusions
XLA:CPU builds around its collectives. Two things then move results by an ulp, which int8
quantization downstream can turn into another token:
  - exp is a vectorized approximation for full vectors and a scalar one for the elements left
    over, so a value's exp depends on where it lies in its array. This exp uses additions,
    multiplications, floor and ldexp only, which round exactly (Cody-Waite range reduction and
    the Cephes expf polynomial; within 1e-7 relative).
  - a reduce sums in an order that depends on its fusion. ordered_sum spells the order out: a
    pairwise tree of elementwise additions (halves added; zero-padded when odd).
With these, and with FMA contraction off (lpu-generate --nocpu_fma), int8-exact gives logits
bit-identical across tp.

Both are named calls (jit, which XLA inlines): the cycle model recognises `portable_exp` and
`ordered_sum` and costs the LPU's own exp and reduction instead of these CPU workarounds.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

_LOG2E = 1.4426950408889634
_LN2_HIGH, _LN2_LOW = 0.693359375, -2.12194440e-4  # ln 2 = high + low; high has few bits
_POLYNOMIAL = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2,
               1.6666665459e-1, 5.0000001201e-1)
_LOWEST, _HIGHEST = -87.0, 88.0  # below, e^x is 0 here (also for -inf); above, clipped


@jax.jit
def portable_exp(x: jax.Array) -> jax.Array:
    """e^x in f32 from exactly rounded operations."""
    x = x.astype(jnp.float32)
    clipped = jnp.clip(x, _LOWEST, _HIGHEST)
    n = jnp.floor(clipped * _LOG2E + 0.5)
    r = clipped - n * _LN2_HIGH - n * _LN2_LOW  # |r| <= ln(2) / 2
    y = jnp.float32(_POLYNOMIAL[0])
    for c in _POLYNOMIAL[1:]:
        y = y * r + c
    y = y * (r * r) + r + 1.0
    return jnp.where(x < _LOWEST, 0.0, jnp.ldexp(y, n.astype(jnp.int32)))


exp = portable_exp


def softmax(x: jax.Array, axis: int = -1) -> jax.Array:
    """softmax over `axis` in x's dtype (f32, or bf16: exponentials rounded to it, then summed)."""
    e = exp(x - jnp.max(x, axis=axis, keepdims=True)).astype(x.dtype)
    return e / ordered_sum(e, axis, keepdims=True)


@functools.partial(jax.jit, static_argnames=("axis", "keepdims"))
def ordered_sum(x: jax.Array, axis: int, keepdims: bool = False) -> jax.Array:
    """x summed over `axis` by a fixed pairwise tree of elementwise additions."""
    axis = axis % x.ndim
    while x.shape[axis] > 1:
        if x.shape[axis] % 2:
            pad = [(0, 0)] * x.ndim
            pad[axis] = (0, 1)
            x = jnp.pad(x, pad)
        half = x.shape[axis] // 2
        x = (jax.lax.slice_in_dim(x, 0, half, axis=axis)
             + jax.lax.slice_in_dim(x, half, 2 * half, axis=axis))
    return x if keepdims else jnp.squeeze(x, axis)
