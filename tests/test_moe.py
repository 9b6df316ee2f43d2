"""Mixtral-architecture mixtures of experts: against transformers, across chip layouts (tp, ep,
pp, both placements), from GGUF, and sized by the cycle model.

(Logits and greedy tokens against transformers for the two tiny Mixtral variants run in
test_parity_hf with every other variant.)
"""

import json
import shutil

import jax.numpy as jnp
import numpy as np
import pytest

from lpu_jax.checkpoint import load_model
from lpu_jax.chips.layout import Layout
from lpu_jax.chips.memory import MemoryPlan
from lpu_jax.config import ModelConfig
from lpu_jax.engine.generate import Engine
from lpu_jax.model import expert_choices, forward_logits
from lpu_jax.numerics.formats import QuantizedArray
from lpu_jax.numerics.recipe import load_recipe
from tests import tiny_models
from tests.cli_forks import run_each
from tests.gguf_files import gguf_from_hf
from tests.test_cli import GENERATE, assert_user_error
from tests.test_parity_hf import assert_logits_match

MOE = ("moe4_top1", "moe8_top2")


def transformers_choices(reference, ids: list[int]) -> np.ndarray:
    """The experts transformers' router picks for each token in each layer [L, T, k]."""
    import torch

    k = reference.config.num_experts_per_tok
    with torch.no_grad():
        out = reference(torch.tensor([ids]), output_router_logits=True)
    return np.stack([torch.topk(torch.softmax(logits.float(), -1), k).indices.numpy()
                     for logits in out.router_logits])


@pytest.mark.parametrize("variant", MOE)
def test_selected_experts_equal_transformers_in_every_layer(tiny_checkpoints, variant):
    path = tiny_checkpoints.get(variant)
    model = load_model(path)
    ids = tiny_models.random_prompt(64, seed=5)
    ours = np.asarray(expert_choices(model.params, model.config, jnp.asarray([ids])))
    theirs = transformers_choices(tiny_models.reference_model(path), ids)
    assert ours.shape == theirs.shape == (model.config.num_layers, 64,
                                          model.config.experts_per_token)
    np.testing.assert_array_equal(ours, theirs)
    assert len(np.unique(ours)) > 1  # the routing is not trivially one expert


def steered_checkpoint(tiny_checkpoints, tmp_path, route: str):
    """A copy of moe8_top2 whose router sends every token to experts 0 (then 1), or token t to
    expert t mod 8 (then the next): a strong direction in each embedding that the router reads."""
    import safetensors.numpy

    source = tiny_checkpoints.get("moe8_top2")
    path = tmp_path / route
    shutil.copytree(source, path)
    tensors = safetensors.numpy.load_file(source / "model.safetensors")
    config = json.loads((source / "config.json").read_text())
    embed = tensors["model.embed_tokens.weight"].copy()
    vocab, experts = embed.shape[0], config["num_local_experts"]
    hidden = embed.shape[1]
    for token in range(vocab):
        first = 0 if route == "one_expert" else token % experts
        embed[token, :experts] = 0.0
        embed[token, first] = 40.0
        embed[token, (first + 1) % experts] = 20.0
    tensors["model.embed_tokens.weight"] = embed
    for i in range(config["num_hidden_layers"]):
        router = np.zeros((experts, hidden), np.float32)
        router[np.arange(experts), np.arange(experts)] = 3.0
        tensors[f"model.layers.{i}.block_sparse_moe.gate.weight"] = router
    safetensors.numpy.save_file(tensors, path / "model.safetensors")
    return path


@pytest.mark.parametrize("route", ["one_expert", "spread"])
def test_prefill_is_exact_when_every_token_routes_alike_or_evenly(tiny_checkpoints, tmp_path,
                                                                  route):
    path = steered_checkpoint(tiny_checkpoints, tmp_path, route)
    reference = tiny_models.reference_model(path)
    model = load_model(path)
    ids = list(range(64))  # every token id mod 8 equally often
    theirs = transformers_choices(reference, ids)
    first_choice = theirs[0, :, 0]
    if route == "one_expert":
        assert (theirs[:, :, 0] == 0).all() and (theirs[:, :, 1] == 1).all()
    else:
        assert np.bincount(first_choice, minlength=8).tolist() == [8] * 8
    ours = np.asarray(expert_choices(model.params, model.config, jnp.asarray([ids])))
    np.testing.assert_array_equal(ours, theirs)
    reference_logits = tiny_models.reference_logits(reference, ids)
    assert_logits_match(np.asarray(forward_logits(model.params, model.config,
                                                  jnp.asarray([ids]))[0]), reference_logits)
    # The prefill of layouts (64 tokens x 2 choices: each chip's experts multiply every pair,
    # numerics.matmul.grouped_dot): its first token's logits are the last position's.
    for layout, fold in [(Layout(tp=4, ep=4), False), (Layout(tp=8, pp=2, ep=2), True)]:
        result = Engine(model, layout=layout, fold=fold).generate(ids, 1, keep_logits=True)
        assert_logits_match(result.logits[0], reference_logits[-1])


@pytest.mark.parametrize("rows", [3, 40])  # decode (each row picks its expert), prefill (masked)
def test_grouped_dot_equals_ragged_dot(rows):
    import jax

    from lpu_jax.numerics.matmul import grouped_dot

    rng = np.random.default_rng(rows)
    x = rng.normal(size=(rows, 16)).astype(np.float32)
    experts = rng.normal(size=(4, 16, 8)).astype(np.float32)
    groups = np.array([1, 0, rows // 2, 0], np.int32)  # empty runs; rows past the runs
    assert groups.sum() < rows
    ours = grouped_dot(jnp.asarray(x), tuple(jnp.asarray(experts)), jnp.asarray(groups))
    theirs = jax.lax.ragged_dot(x, experts, groups)
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-6)
    assert not np.asarray(ours)[groups.sum():].any()


def generate(model, prompt, **engine_args):
    return Engine(model, **engine_args).generate(prompt, 16, stop_token_ids=(),
                                                 keep_logits=True)


# tp with every expert split over the chips (ep 1), expert groups (1 < ep < tp), whole experts
# per chip (ep = tp), and tp 8 on 4 experts (each expert's columns over 2 chips); pipelines of
# 2 stages (one chip per device: the short stage's identity layer, zero experts included, adds
# nothing) and 3; one chip per device and folded.
LAYOUTS = {
    "moe4_top1": [(Layout(tp=2), False), (Layout(tp=8, ep=4), True),
                  (Layout(tp=4, pp=3, ep=2), False)],
    "moe8_top2": [(Layout(tp=8, ep=8), False), (Layout(tp=4, pp=2), False),
                  (Layout(tp=2, pp=3, ep=2), True)],
}


@pytest.mark.parametrize("variant", MOE)
def test_every_layout_gives_the_one_chip_answer(tiny_checkpoints, variant):
    model = load_model(tiny_checkpoints.get(variant))
    prompt = tiny_models.random_prompt(11, seed=6)
    single = generate(model, prompt)
    for layout, fold in LAYOUTS[variant]:
        other = generate(model, prompt, layout=layout, fold=fold)
        assert other.tokens == single.tokens, (layout, fold)
        scale = np.abs(single.logits).max()
        assert np.abs(other.logits - single.logits).max() / scale < 1e-5, (layout, fold)


def test_int8_exact_logits_do_not_depend_on_how_experts_are_split(tiny_checkpoints, tmp_path):
    """int32 sums cross chips exactly, also where an expert's columns are split over chips
    (tp / ep > 1): with --nocpu_fma the logits are bit-identical to one chip's."""
    layouts = {"one": [], "tp2": ["--tp", "2"], "tp4ep2": ["--tp", "4", "--ep", "2"],
               "tp4ep4_folded": ["--tp", "4", "--ep", "4", "--pp", "2", "--fold"],
               "tp4_folded": ["--tp", "4", "--fold"]}
    cases = [["--model", str(tiny_checkpoints.get("moe8_top2")), "--prompt_ids",
              "5,9,14,3,77,120", "--max_new_tokens", "6", "--precision", "int8-exact",
              "--nocpu_fma", "--dump_logits", str(tmp_path / f"{name}.npy"), *layout]
             for name, layout in layouts.items()]
    for result in run_each(GENERATE, cases).values():
        assert result.returncode == 0, result.stderr
    one = np.load(tmp_path / "one.npy")
    for name in layouts.keys() - {"one"}:
        np.testing.assert_array_equal(np.load(tmp_path / f"{name}.npy"), one, err_msg=name)


def test_200_decode_tokens_compile_nothing_new(tiny_checkpoints):
    engine = Engine(load_model(tiny_checkpoints.get("moe8_top2")), layout=Layout(tp=2, ep=2),
                    fold=True)
    result = engine.generate(tiny_models.random_prompt(9, seed=7), 200, stop_token_ids=())
    assert len(result.tokens) == 200 and engine.compile_count == 2  # one prefill, one decode


def test_a_gguf_of_the_checkpoint_gives_the_same_model(tiny_checkpoints, tmp_path):
    path = tiny_checkpoints.get("moe8_top2")
    from_hf = load_model(path)
    from_gguf = load_model(gguf_from_hf(path, tmp_path / "moe.gguf"))
    assert from_gguf.config == ModelConfig.from_hf_dict(
        {**json.loads((path / "config.json").read_text()), "bos_token_id": None,
         "eos_token_id": None})
    for ours, theirs in zip(from_gguf.params.layers[1].__dict__.values(),
                            from_hf.params.layers[1].__dict__.values()):
        if ours is not None:
            np.testing.assert_array_equal(ours, theirs)
    prompt = tiny_models.random_prompt(9, seed=8)
    assert (generate(from_gguf, prompt, layout=Layout(tp=4, ep=2)).tokens
            == generate(from_hf, prompt).tokens)


@pytest.mark.parametrize("used, message", [
    (None, "llama.expert_count=8 needs llama.expert_used_count"),
    (0, "llama.expert_count=8 needs llama.expert_used_count"),
    (9, "num_experts_per_tok=9 must be between 1 and num_local_experts=8")])
def test_a_gguf_without_a_valid_count_of_experts_per_token_is_refused(tiny_checkpoints, tmp_path,
                                                                      used, message):
    from lpu_jax.errors import UserError

    path = gguf_from_hf(tiny_checkpoints.get("moe8_top2"), tmp_path / "moe.gguf",
                        {"llama.expert_used_count": used})
    with pytest.raises(UserError, match=message):
        load_model(path)


def test_expert_weights_take_the_experts_class_of_a_recipe(tiny_checkpoints, tmp_path):
    model = load_model(tiny_checkpoints.get("moe4_top1"))
    # A shipped TruePoint recipe stores expert weights in block floating point (Groq's policy
    # for MoE weights), the rest as before; a recipe without [experts] follows [mlp].
    truepoint = Engine(model, precision="truepoint-int8").stored_params.layers[0]
    assert len(truepoint.w_gate_EDF) == 4  # the chip's experts, each in a buffer of its own
    assert all(expert.format.kind == "bfp" for expert in truepoint.w_gate_EDF)
    assert truepoint.wq_DN.format.kind == "int8"
    assert load_recipe("int8-exact").experts == load_recipe("int8-exact").mlp
    recipe = tmp_path / "experts-int4.toml"
    recipe.write_text('[experts]\nweights = "int4"\ngroup_size = 32\n')
    stored = Engine(model, precision=str(recipe)).stored_params.layers[0]
    down = stored.w_down_EFD[3]
    assert isinstance(down, QuantizedArray) and down.format.kind == "int4"
    assert stored.wq_DN.dtype == np.float32
    assert down.values.shape == (1, 1, 96 // 2, 64)  # [pp, tp, rows, columns], two per byte


def test_the_whole_stored_model_runs_as_the_engine_does(tiny_checkpoints, tmp_path):
    """lpu-sweep's path: the unsplit model in a recipe's formats (experts stacked [E, ...])."""
    from lpu_jax.numerics.store import store_params

    model = load_model(tiny_checkpoints.get("moe8_top2"))
    path = tmp_path / "bfp-experts.toml"  # f32 elsewhere: no bf16 cache to amplify an ulp
    path.write_text('[experts]\nweights = "bfp"\nblock = 16\nmantissa_bits = 8\n')
    recipe = load_recipe(str(path))
    prompt = tiny_models.random_prompt(12, seed=3)
    whole = forward_logits(store_params(model.params, recipe), model.config,
                           jnp.asarray([prompt]), precision=recipe)[0, -1]
    first = Engine(model, precision=recipe).generate(prompt, 1, keep_logits=True).logits[0]
    assert_logits_match(np.asarray(whole), first)


def test_memory_per_chip_counts_the_experts_each_chip_holds():
    """lpu-estimate's weights per chip for Mixtral-8x7B against an arithmetic count."""
    config = ModelConfig.shipped_or_file("Mixtral-8x7B-v0.1")
    d, f, experts = config.hidden_size, config.intermediate_size, config.num_experts
    plan = MemoryPlan(config, load_recipe("int8-exact"))
    for tp, ep in [(8, 1), (8, 8), (8, 2), (16, 8), (32, 4)]:
        # int8 values and one f32 scale per output channel of each chip's slice; beyond 8
        # chips each KV head is on several; norms and the router whole on every chip, in f32.
        experts_here, columns_here = experts // ep, f // (tp // ep)
        expert_bytes = experts_here * (2 * (d * columns_here + 4 * columns_here)
                                       + (columns_here * d + 4 * d))
        q_columns = config.num_heads * config.head_dim // tp
        kv_columns = max(config.num_kv_heads // tp, 1) * config.head_dim
        attention_bytes = ((d + 4) * (q_columns + 2 * kv_columns)  # q, k, v
                           + (q_columns + 4) * d)  # o
        router_and_norms = 4 * d * experts + 2 * 4 * d
        assert plan.layer_bytes(Layout(tp=tp, ep=ep)) == (expert_bytes + attention_bytes
                                                          + router_and_norms), (tp, ep)


def test_tp_splits_each_expert_only_over_the_chips_of_its_group():
    from lpu_jax.chips.layout import valid_tp
    from lpu_jax.errors import UserError

    config = ModelConfig.from_hf_dict(dict(
        model_type="mixtral", vocab_size=256, hidden_size=64, intermediate_size=100,
        num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=2, head_dim=16,
        num_local_experts=8, num_experts_per_tok=2, max_position_embeddings=64))
    assert valid_tp(config) == [1, 2, 4] and valid_tp(config, ep=8) == [8]
    assert valid_tp(config, ep=2) == [2, 4, 8]  # 100 columns over 1, 2 and 4 chips
    Layout(tp=8, ep=8).check(config)
    with pytest.raises(UserError, match="--tp=8 does not divide the model .*intermediate_size="
                                        "100 over tp / ep chips.*valid: 1, 2, 4"):
        Layout(tp=8).check(config)


@pytest.fixture(scope="module")
def bad_runs(tmp_path_factory, tiny_checkpoints):
    import safetensors.numpy

    good = tiny_checkpoints.get("moe8_top2")
    root = tmp_path_factory.mktemp("moe_bad")
    missing, too_many = root / "missing_expert", root / "too_many_chosen"
    shutil.copytree(good, missing)
    tensors = safetensors.numpy.load_file(good / "model.safetensors")
    del tensors["model.layers.2.block_sparse_moe.experts.5.w3.weight"]
    safetensors.numpy.save_file(tensors, missing / "model.safetensors")
    shutil.copytree(good, too_many)
    config = json.loads((good / "config.json").read_text())
    (too_many / "config.json").write_text(json.dumps({**config, "num_experts_per_tok": 9}))
    cases = {
        "missing": ["--model", str(missing), "--prompt_ids", "1,2"],
        "too_many": ["--model", str(too_many), "--prompt_ids", "1,2"],
        "ep_experts": ["--model", str(good), "--prompt_ids", "1,2", "--tp", "8", "--ep", "3"],
        "ep_tp": ["--model", str(good), "--prompt_ids", "1,2", "--tp", "2", "--ep", "4"],
        "ep_dense": ["--model", str(tiny_checkpoints.get("mha")), "--prompt_ids", "1,2",
                     "--tp", "2", "--ep", "2"],
    }
    runs = run_each(GENERATE, list(cases.values()))
    return {name: runs[tuple(args)] for name, args in cases.items()}


@pytest.mark.parametrize("case, message", [
    ("missing", "checkpoint lacks tensor 'model.layers.2.block_sparse_moe.experts.5.w3.weight'"),
    ("too_many", "num_experts_per_tok=9 must be between 1 and num_local_experts=8"),
    ("ep_experts", "--ep=3 does not divide the model's 8 experts"),
    ("ep_tp", "--ep=4 does not divide --tp=2"),
    ("ep_dense", "--ep=2 splits a mixture of experts' experts; this model has none"),
])
def test_bad_input_gets_one_line(bad_runs, case, message):
    assert_user_error(bad_runs[case], message)
