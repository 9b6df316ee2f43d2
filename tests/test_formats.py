"""Storage formats: each quantize / dequantize pair keeps the error bound its docstring states."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lpu_jax.errors import UserError
from lpu_jax.numerics import formats
from lpu_jax.numerics.formats import Format, QuantizedArray, dequantize, quantize, take_columns

F32_SLACK = 1e-6  # f32 arithmetic inside the quantizers, relative


def random_weights(seed: int, rows: int = 96, cols: int = 40) -> np.ndarray:
    """Normal values with heavy outliers, a tiny column and an all-zero column."""
    rng = np.random.default_rng(seed)
    w = rng.normal(0, 0.02, (rows, cols)).astype(np.float32)
    w[rng.integers(0, rows, 10), rng.integers(0, cols, 10)] *= 50
    w[:, 3] *= 1e-6
    w[:, 5] = 0
    return w


def bound(fmt: Format, w: np.ndarray) -> np.ndarray:
    """The per-value error bound documented in lpu_jax/numerics/formats.py."""
    absw = np.abs(w)
    channel_max = absw.max(axis=0, keepdims=True)
    if fmt.kind == "f32":
        return np.zeros_like(w)
    if fmt.kind == "bf16":
        return 2.0 ** -8 * absw
    if fmt.kind == "f16":
        return 2.0 ** -11 * absw + 2.0 ** -25
    if fmt.kind == "fp8-e4m3":
        return 2.0 ** -4 * absw + 2.0 ** -10 * channel_max / 448
    if fmt.kind == "fp8-e5m2":
        return 2.0 ** -3 * absw + 2.0 ** -17 * channel_max / 57344
    if fmt.kind == "int8":
        return np.broadcast_to(channel_max / 127 / 2, w.shape)
    rows_per = fmt.group_size if fmt.kind == "int4" else fmt.block
    group_max = absw.reshape(-1, rows_per, w.shape[1]).max(axis=1)
    per_row = np.repeat(group_max, rows_per, axis=0)
    if fmt.kind == "int4":
        return per_row / 14 + channel_max / (7 * 255) / 2
    return per_row / (2.0 ** (fmt.mantissa_bits - 1) - 1)


FORMATS = [Format("f32"), Format("bf16"), Format("f16"), Format("fp8-e4m3"),
           Format("fp8-e5m2"), Format("int8"), Format("int4", group_size=32),
           Format("int4", group_size=16), Format("bfp", block=16, mantissa_bits=8),
           Format("bfp", block=32, mantissa_bits=8), Format("bfp", block=16, mantissa_bits=4),
           Format("bfp", block=32, mantissa_bits=4)]


@pytest.mark.parametrize("fmt", FORMATS, ids=Format.describe)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_error_within_documented_bound(fmt, seed):
    w = random_weights(seed)
    restored = np.asarray(dequantize(quantize(w, fmt)))
    error = np.abs(restored - w)
    allowed = bound(fmt, w) * (1 + F32_SLACK) + F32_SLACK * np.abs(w)
    assert (error <= allowed).all(), float((error - allowed).max())
    assert np.all(restored[:, 5] == 0)  # zeros stay zeros, never NaN


def test_bounds_are_tight_enough_to_mean_something():
    """The same check with the wrong format's values must fail: the bound is not vacuous."""
    w = random_weights(0)
    coarse = np.asarray(dequantize(quantize(w, Format("int4", group_size=32))))
    assert (np.abs(coarse - w) > bound(Format("int8"), w) * 1.01).any()


@pytest.mark.parametrize("fmt, dtype, rows, scale_rows", [
    (Format("int8"), jnp.int8, 96, 1), (Format("fp8-e4m3"), jnp.float8_e4m3fn, 96, 1),
    (Format("int4", group_size=32), jnp.uint8, 48, 3),
    (Format("bfp", block=16, mantissa_bits=8), jnp.int8, 96, 6),
    (Format("bfp", block=32, mantissa_bits=4), jnp.uint8, 48, 3)])
def test_storage_is_low_bit(fmt, dtype, rows, scale_rows):
    q = quantize(random_weights(0), fmt)
    assert q.values.dtype == dtype and q.values.shape == (rows, 40)
    assert q.scales.shape == (scale_rows, 40)
    assert q.shape == (96, 40)


def test_int4_packs_two_values_per_byte_both_signs():
    q = np.arange(-7, 9, dtype=np.int8)[:, None] % 16 - 8  # every nibble value, -8 .. 7
    q = np.concatenate([q, q[::-1]], axis=1)
    packed = formats._pack_nibbles(jnp.asarray(q))
    assert packed.shape == (8, 2) and packed.dtype == jnp.uint8
    np.testing.assert_array_equal(np.asarray(formats._unpack_nibbles(packed)), q)


def test_take_columns_equals_dequantized_columns():
    w = random_weights(1)
    ids = jnp.array([[3, 0, 39], [7, 7, 12]])
    for fmt in FORMATS:
        stored = quantize(w, fmt)
        picked = take_columns(stored, ids)
        assert picked.shape == (96, 2, 3)
        np.testing.assert_array_equal(picked, np.asarray(dequantize(stored))[:, np.asarray(ids)])


def test_leading_axes_are_kept():
    w = np.stack([random_weights(0), random_weights(1)])
    q = quantize(w, Format("int4", group_size=32))
    assert isinstance(q, QuantizedArray) and q.shape == (2, 96, 40)
    np.testing.assert_array_equal(dequantize(q)[1],
                                  dequantize(quantize(w[1], Format("int4", group_size=32))))


@pytest.mark.parametrize("kwargs, message", [
    (dict(kind="int3"), "unknown weight format"),
    (dict(kind="int4", group_size=7), "even group_size"),
    (dict(kind="bfp", block=8, mantissa_bits=8), "block = 16 or 32"),
    (dict(kind="int8", group_size=32), "does not apply"),
])
def test_bad_formats_are_refused(kwargs, message):
    with pytest.raises(UserError, match=message):
        Format(**kwargs)


def test_groups_must_divide_the_rows():
    with pytest.raises(UserError, match="does not divide"):
        quantize(np.ones((48, 4), np.float32), Format("int4", group_size=32))


def test_fp8_saturates_instead_of_nan():
    x = jnp.array([1e6, -1e6, 3.0])
    assert np.isfinite(np.asarray(formats.saturating_cast(x, jnp.float8_e4m3fn),
                                  np.float32)).all()
    jax.block_until_ready(x)
