"""Accumulation policies, precision recipes, and the low-bit weights a deployment runs with."""

import ml_dtypes
import numpy as np
import pytest

import jax
import jax.numpy as jnp

from lpu_jax.checkpoint import load_model
from lpu_jax.chips.layout import Layout
from lpu_jax.engine.generate import Engine
from lpu_jax.errors import UserError
from lpu_jax.numerics import matmul as mm
from lpu_jax.numerics import portable
from lpu_jax.numerics.formats import Format, quantize
from lpu_jax.numerics.recipe import available, load_recipe, parse
from tests import tiny_models
from tests.cli_forks import run_each
from tests.test_cli import GENERATE

SHIPPED = ["f32", "bf16", "truepoint-int8", "truepoint-fp8", "int4-g32", "bfp16",
           "naive-int8-bf16acc", "int8-exact"]


def int8_values(seed, shape):
    return np.random.default_rng(seed).integers(-127, 128, shape).astype(np.float32)


def test_exact_integer_dot_equals_an_int32_dot():
    x, w = int8_values(0, (3, 2500)), int8_values(1, (2500, 17))  # several exact f32 chunks
    exact = x.astype(np.int64) @ w.astype(np.int64)
    np.testing.assert_array_equal(mm.exact_integer_dot(jnp.asarray(x), jnp.asarray(w)), exact)
    native = jnp.einsum("bi,io->bo", x.astype(np.int8), w.astype(np.int8),
                        preferred_element_type=jnp.int32)
    np.testing.assert_array_equal(native, exact)


def test_int32_accumulation_does_not_depend_on_the_split():
    """Sum over three chips (vmap psum) == one chip, bit for bit."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 5, 96)).astype(np.float32)
    w = quantize(rng.normal(size=(96, 24)).astype(np.float32), Format("int8"))
    policy = mm.MatmulPolicy(Format("int8"), inputs="int8", accumulation="int32")
    whole = mm.matmul(jnp.asarray(x), w, policy)
    x_parts = jnp.asarray(x.reshape(2, 5, 3, 32).transpose(2, 0, 1, 3))
    w_parts = jax.tree.map(lambda a: a.reshape(3, 32, 24) if a.shape[0] == 96
                           else jnp.broadcast_to(a, (3, *a.shape)), w)
    split = jax.vmap(lambda xp, wp: mm.matmul(xp, wp, policy, sum_axis="tp"),
                     axis_name="tp")(x_parts, w_parts)
    for chip in range(3):
        np.testing.assert_array_equal(split[chip], whole)


def narrow_reference(x, w, chunk):
    """The narrow policy's definition, in numpy: f32 chunk sums, running sum rounded to bf16."""
    total = np.zeros((x.shape[0], w.shape[1]), ml_dtypes.bfloat16)
    for start in range(0, x.shape[1], chunk):
        part = x[:, start:start + chunk] @ w[start:start + chunk]
        total = (total.astype(np.float32) + part).astype(ml_dtypes.bfloat16)
    return total.astype(np.float32)


def test_narrow_accumulation_matches_its_definition():
    # Small integers: every chunk's f32 sum is exact, so the only roundings are the bf16 ones.
    x = np.random.default_rng(3).integers(-8, 9, (4, 200)).astype(np.float32)
    w = np.random.default_rng(4).integers(-8, 9, (200, 8)).astype(np.float32)
    policy = mm.MatmulPolicy(accumulation="bf16", chunk=16)
    got = mm.matmul(jnp.asarray(x), jnp.asarray(w), policy)
    np.testing.assert_array_equal(got, narrow_reference(x, w, 16))
    assert np.abs(got - x @ w).max() > 0  # it did round: f32 accumulation is exact here


@pytest.mark.parametrize("fmt", ["bf16", "f16", "fp8-e4m3", "fp8-e5m2", "int8"])
def test_activation_rounding_keeps_per_token_scale(fmt):
    x = np.random.default_rng(5).normal(size=(3, 64)).astype(np.float32)
    x[1] *= 1000  # one token's scale must not affect another's
    rounded = np.asarray(mm.round_activations(jnp.asarray(x), fmt))
    relative = np.abs(rounded - x).max(axis=1) / np.abs(x).max(axis=1)
    assert relative.max() < {"bf16": 2 ** -8, "f16": 2 ** -11, "fp8-e4m3": 2 ** -4,
                             "fp8-e5m2": 2 ** -3, "int8": 1 / 254 + 1e-6}[fmt]
    assert relative.max() > 0


def test_shipped_recipes():
    assert set(SHIPPED) <= set(available())
    recipe = load_recipe("truepoint-int8")
    assert recipe.mlp.weights == Format("int8") and recipe.mlp.accumulation == "f32"
    assert recipe.attention_logits == "f32"
    assert load_recipe("int4-g32").lm_head.weights == Format("int4", group_size=32)
    assert load_recipe("naive-int8-bf16acc").mlp.accumulation == "bf16"


@pytest.mark.parametrize("raw, message", [
    ({"mlp": {"weights": "int8", "acumulation": "f32"}}, "unknown key 'acumulation'"),
    ({"mlps": {"weights": "int8"}}, "unknown tensor class [mlps]"),
    ({"mlp": {"weights": "int5"}}, "unknown weight format 'int5'"),
    ({"mlp": {"weights": "int8", "accumulation": "int32"}}, "int32 accumulation goes with"),
    ({"mlp": {"weights": "int4", "group_size": "32"}}, "group_size must be an integer"),
    ({"kv_cache": {"format": "int8"}}, "format must be one of"),
    ({"links": "bf16"}, "must be a table"),
])
def test_bad_recipes_are_refused(raw, message):
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse(raw, "bad", "bad.toml")


def test_unknown_recipe_name_lists_the_shipped_ones():
    with pytest.raises(UserError, match="truepoint-int8"):
        load_recipe("truepoint-int9")


def test_tied_model_needs_one_format(tiny_checkpoints, tmp_path):
    path = tmp_path / "mixed.toml"
    path.write_text('[embedding]\nweights = "int8"\n[lm_head]\nweights = "int4"\ngroup_size = 32\n')
    with pytest.raises(UserError, match="ties them"):
        Engine(load_model(tiny_checkpoints.get("tied")), precision=str(path))


def logits_of(engine, prompt, new_tokens=6):
    return engine.generate(prompt, new_tokens, stop_token_ids=(), keep_logits=True)


# Each kind of low-bit stored weight that widens by more than a cast once: block floating
# point, int8 summed exactly, int4 groups on a tied embedding. (Floats, fp8 to bf16, widen by
# a cast alone.)
@pytest.mark.parametrize("variant, recipe", [
    ("mha", "bfp16"), ("mha", "int8-exact"), ("tied", "int4-g32")])
def test_f32_copy_is_bit_identical_to_widening_in_the_matmul(tiny_checkpoints, variant, recipe):
    model = load_model(tiny_checkpoints.get(variant))
    prompt = tiny_models.random_prompt(9, seed=4)
    widened = Engine(model, precision=recipe, execution="widen")
    copied = Engine(model, precision=recipe, execution="f32-copy")
    assert widened.params is widened.stored_params
    assert jax.tree.leaves(copied.params.layers[0].w_up_DF)[0].dtype == jnp.float32
    a, b = logits_of(widened, prompt), logits_of(copied, prompt)
    assert a.tokens == b.tokens
    np.testing.assert_array_equal(a.logits, b.logits)


def test_int8_exact_logits_are_bit_identical_across_tp(tiny_checkpoints, tmp_path):
    """Every matmul sum is exact (int32), so tp=3 gives one chip's logits bit for bit, placed
    either way, once XLA:CPU may not contract multiplies and adds into FMAs (--nocpu_fma):
    where it does depends on how each layout's program is fused."""
    path = tiny_checkpoints.get("gqa")
    layouts = {"one": [], "three": ["--tp", "3", "--nofold"],
               "three_folded": ["--tp", "3", "--fold"]}
    cases = [["--model", str(path), "--prompt_ids", "5,9,14,3,77,120,6,31,8,250",
              "--max_new_tokens", "12", "--precision", "int8-exact", "--nocpu_fma",
              "--cpu_devices", "3", "--dump_logits", str(tmp_path / f"{name}.npy"), *layout]
             for name, layout in layouts.items()]
    for result in run_each(GENERATE, cases).values():
        assert result.returncode == 0, result.stderr
    logits = {name: np.load(tmp_path / f"{name}.npy") for name in layouts}
    assert logits["one"].shape == (12, tiny_models.VOCAB)
    np.testing.assert_array_equal(logits["three"], logits["one"])
    np.testing.assert_array_equal(logits["three_folded"], logits["one"])


def test_low_bit_recipes_change_the_logits_by_their_precision(tiny_checkpoints):
    """Each recipe runs end to end; coarser formats move the logits further from f32."""
    model = load_model(tiny_checkpoints.get("mha"))
    prompt = tiny_models.random_prompt(16, seed=6)
    reference = logits_of(Engine(model), prompt).logits
    distance = {}
    for recipe in ("bf16", "truepoint-int8", "int4-g32"):
        logits = logits_of(Engine(model, precision=recipe), prompt).logits
        distance[recipe] = np.abs(logits[0] - reference[0]).max()
    assert 0 < distance["bf16"] < distance["truepoint-int8"] < distance["int4-g32"]


def test_stored_weights_are_low_bit_on_the_device(tiny_checkpoints):
    model = load_model(tiny_checkpoints.get("mha"))
    engine = Engine(model, precision="int4-g32", layout=Layout(pp=2), fold=False)
    wq = engine.stored_params.layers[0].wq_DN
    assert wq.values.dtype == jnp.uint8 and len(wq.values.sharding.device_set) == 2
    report = engine.weight_report()
    assert report["weight_bytes"] < 0.16 * report["f32_bytes"]
    assert report["execution"] == "f32-copy"


def test_groups_that_do_not_fit_a_chip_are_refused(tiny_checkpoints):
    model = load_model(tiny_checkpoints.get("gqa"))  # hidden 48: 32-row groups do not divide it
    with pytest.raises(UserError, match="does not divide"):
        Engine(model, precision="int4-g32")


def test_portable_exp_and_sums_do_not_depend_on_array_size():
    x = np.random.default_rng(7).normal(size=4099).astype(np.float32) * 10
    x[:3] = (-np.inf, -100.0, 0.0)
    exp, total = jax.jit(portable.exp), jax.jit(lambda a: portable.ordered_sum(a, 0))
    full = np.asarray(exp(x))
    np.testing.assert_allclose(full[3:], np.exp(x[3:].astype(np.float64)), rtol=2e-7)
    assert full[0] == 0 and full[1] == 0 and full[2] == 1
    for n in (1, 5, 17, 100, 1023):
        np.testing.assert_array_equal(exp(x[:n]), full[:n])
    rows = np.abs(x[3:3 + 96 * 40]).reshape(96, 40)
    by_rows = np.asarray(jax.jit(lambda a: portable.ordered_sum(a, 1))(rows))
    for r in (0, 50, 95):
        assert total(rows[r]) == by_rows[r]
    np.testing.assert_allclose(by_rows, rows.astype(np.float64).sum(axis=1), rtol=1e-6)


def test_per_chip_weights_give_each_chip_its_own_block_under_vmap():
    """Folded chips read PerChip weights: each chip multiplies by its own block, also where
    every chip holds the same input (not mapped over the chips)."""
    blocks = mm.PerChip((jnp.eye(2), 2 * jnp.eye(2)), axis="tp")
    x = jnp.ones((1, 2))
    policy = mm.MatmulPolicy()
    same_input = jax.vmap(lambda _: mm.matmul(x, blocks, policy), axis_name="tp")(jnp.arange(2))
    np.testing.assert_array_equal(same_input[:, 0], [[1, 1], [2, 2]])
    own_inputs = jax.vmap(lambda x: mm.matmul(x, blocks, policy), axis_name="tp")(
        jnp.stack([x, 3 * x]))
    np.testing.assert_array_equal(own_inputs[:, 0], [[1, 1], [6, 6]])
