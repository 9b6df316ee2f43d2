"""The Pallas quantized matmul (interpret mode on CPU) against its plain-JAX reference twin."""

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from lpu_jax.kernels.quantized_matmul import quantized_matmul, quantized_matmul_reference
from lpu_jax.numerics.formats import Format, quantize


INT8, INT4_G32 = Format("int8"), Format("int4", group_size=32)
INT4_G64 = Format("int4", group_size=64)


# Each format on two of the shapes (one row; a ragged n; rows and k over several tiles), in
# both input dtypes between them.
@pytest.mark.parametrize("fmt, m, k, n, dtype", [
    (INT8, 1, 256, 128, jnp.float32), (INT8, 33, 576, 64, jnp.bfloat16),
    (INT4_G32, 5, 192, 200, jnp.float32), (INT4_G32, 1, 256, 128, jnp.bfloat16),
    (INT4_G64, 33, 576, 64, jnp.float32), (INT4_G64, 5, 192, 200, jnp.bfloat16)])
def test_kernel_equals_reference(fmt, m, k, n, dtype):
    rng = np.random.default_rng(m + k + n)
    x = jnp.asarray(rng.normal(size=(m, k)), dtype)
    w = quantize(rng.normal(0, 0.05, (k, n)).astype(np.float32), fmt)
    got = quantized_matmul(x, w, interpret=True)
    want = quantized_matmul_reference(x, w)
    assert got.shape == (m, n) and got.dtype == jnp.float32
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5 * float(jnp.abs(want).max()))


def test_kernel_refuses_other_formats():
    w = quantize(np.ones((32, 8), np.float32), Format("bfp", block=16, mantissa_bits=8))
    with pytest.raises(ValueError, match="int8 or int4"):
        quantized_matmul(jnp.ones((1, 32)), w, interpret=True)


def test_engine_with_the_kernel_equals_xla_widening(tiny_checkpoints):
    recipe = "int4-g32"  # int8 takes the kernel's simpler path; the unit tests cover both
    from lpu_jax.checkpoint import load_model
    from lpu_jax.chips.layout import Layout
    from lpu_jax.engine.generate import Engine
    from tests import tiny_models

    model = load_model(tiny_checkpoints.get("mha"))
    prompt = tiny_models.random_prompt(7, seed=8)
    runs = [Engine(model, precision=recipe, execution=execution, layout=Layout(pp=2), fold=True)
            .generate(prompt, 4, stop_token_ids=(), keep_logits=True)
            for execution in ("widen", "pallas")]
    assert runs[0].tokens == runs[1].tokens
    scale = np.abs(runs[0].logits).max()
    np.testing.assert_allclose(runs[1].logits, runs[0].logits, rtol=0, atol=1e-5 * scale)


# Lowered here for the accelerators, without one: a GPU program carries the kernel as a Triton
# custom call, a TPU program as a Mosaic one. int4 does not lower for TPUs: Mosaic tiles a
# block's last axis by 128, and the int4 kernel's x blocks are one group's 16 byte-rows wide.
@pytest.mark.parametrize("fmt, platform, custom_call", [
    (INT8, "cuda", "xla.gpu.triton"), (INT8, "tpu", "tpu_custom_call"),
    (INT4_G32, "cuda", "xla.gpu.triton")])
def test_kernel_lowers_for_accelerators(fmt, platform, custom_call):
    x = jnp.ones((1, 256), jnp.float32)
    w = quantize(np.ones((256, 256), np.float32), fmt)
    unchecked = [jax.export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")]
    exported = jax.export.export(jax.jit(quantized_matmul), platforms=[platform],
                                 disabled_checks=unchecked)(x, w)
    assert custom_call in exported.mlir_module()
