"""Deployments of several emulated chips give the single chip's answer, placed either way."""

import itertools

import jax
import numpy as np
import pytest

from lpu_jax.checkpoint import load_config, load_model
from lpu_jax.chips.layout import Layout, valid_tp
from lpu_jax.chips.split import chip_share, split_params
from lpu_jax.engine.generate import Engine
from lpu_jax.errors import UserError
from tests import tiny_models
from tests.cli_forks import run_each
from tests.test_cli import GENERATE

LOGIT_TOLERANCE = 1e-5  # relative to the largest |logit|


def run(model, prompt, new_tokens, **engine_args):
    engine = Engine(model, **engine_args)
    return engine, engine.generate(prompt, new_tokens, stop_token_ids=(), keep_logits=True)


def assert_same_answer(reference, other):
    assert other.tokens == reference.tokens
    scale = np.abs(reference.logits).max()
    assert np.abs(other.logits - reference.logits).max() / scale < LOGIT_TOLERANCE


# Each head layout once, placed one way or the other: the placement only moves the same
# per-chip program between devices, so both ways need not run for every model. MQA at tp 2 and 4
# replicates its one KV head 2x and 4x, both ways.
@pytest.mark.parametrize("variant, tp, fold", [("gqa", 3, False), ("mha", 4, True),
                                               ("biases", 2, False), ("mqa", 2, True),
                                               ("mqa", 2, False), ("mqa", 4, True),
                                               ("mqa", 4, False)])
def test_tensor_parallel_equals_one_chip(tiny_checkpoints, variant, tp, fold):
    model = load_model(tiny_checkpoints.get(variant))
    prompt = tiny_models.random_prompt(11, seed=9)
    _, single = run(model, prompt, 24)
    engine, split = run(model, prompt, 24, layout=Layout(tp=tp), fold=fold)
    assert engine.placement.folded == fold
    assert len(engine.placement.devices) == (1 if fold else tp)
    assert_same_answer(single, split)


def test_each_chip_holds_only_its_share(tiny_checkpoints):
    model = load_model(tiny_checkpoints.get("gqa"))  # 6 query heads, 3 KV heads, head_dim 16
    engine = Engine(model, layout=Layout(tp=3), fold=False)
    layer = engine.params.layers[0]  # leaves are [pp, tp, ...]
    assert layer.wq_DN.shape == (1, 3, 48, 2 * 16) and layer.wk_DK.shape == (1, 3, 48, 16)
    assert layer.wq_DN.sharding.shard_shape(layer.wq_DN.shape) == (1, 1, 48, 32)
    # chip 1 holds query heads 2-3, which share KV head 1
    full = model.params.layers[0]
    np.testing.assert_array_equal(layer.wq_DN[0, 1], np.asarray(full.wq_DN)[:, 32:64])
    np.testing.assert_array_equal(layer.wk_DK[0, 1], np.asarray(full.wk_DK)[:, 16:32])
    np.testing.assert_array_equal(layer.wo_ND[0, 1], np.asarray(full.wo_ND)[32:64])


def test_chips_beyond_the_kv_heads_hold_copies_of_the_head_they_read(tiny_checkpoints):
    model = load_model(tiny_checkpoints.get("gqa"))  # 6 query heads, 3 KV heads, head_dim 16
    assert valid_tp(model.config) == [1, 3, 6]
    layer = split_params(model.params, model.config, Layout(tp=6)).layers[0]
    assert layer.wq_DN.shape == (1, 6, 48, 16) and layer.wk_DK.shape == (1, 6, 48, 16)
    full = np.asarray(model.params.layers[0].wk_DK)
    for chip in range(6):  # query head `chip` reads KV head chip // 2
        kv_head = full[:, 16 * (chip // 2):16 * (chip // 2 + 1)]
        np.testing.assert_array_equal(layer.wk_DK[0, chip], kv_head)
    assert Layout(tp=6).kv_heads_per_chip(model.config) == 1


def test_vocabulary_is_padded_to_split_evenly(tiny_checkpoints):
    model = load_model(tiny_checkpoints.get("gqa"))
    assert Layout(tp=3).vocab_shares(256) == [86, 86, 86]  # 258 rows, the last two zeros
    shares = split_params(model.params, model.config, Layout(tp=3))
    assert shares.embed_DV.shape == (1, 3, 48, 86)
    np.testing.assert_array_equal(chip_share(shares, 0, 2).embed_DV[:, -2:], 0.0)
    # with stages too, the vocabulary is split over all pp * tp chips
    shares = split_params(model.params, model.config, Layout(tp=3, pp=2))
    assert shares.embed_DV.shape == (2, 3, 48, 43)


def test_stages_hold_unequal_rows_of_the_vocabulary(tiny_checkpoints):
    model = load_model(tiny_checkpoints.get("gqa"))  # 256 tokens
    layout = Layout(tp=3, pp=3, vocab_rows=(0, 40, 46))  # stage 0's chips hold none
    shares = split_params(model.params, model.config, layout)
    assert shares.embed_DV.shape == (3, 3, 48, 46)
    full = np.asarray(model.params.embed_DV)
    np.testing.assert_array_equal(shares.embed_DV[0], 0.0)
    np.testing.assert_array_equal(shares.embed_DV[1, 1, :, :40], full[:, 40:80])
    np.testing.assert_array_equal(shares.embed_DV[1, 1, :, 40:], 0.0)
    np.testing.assert_array_equal(shares.embed_DV[2, 1, :, :46], full[:, 166:212])
    np.testing.assert_array_equal(shares.embed_DV[2, 2, :, :44], full[:, 212:256])
    # token t's logit is found in the gathered blocks (46 columns per chip, chip-major)
    columns = layout.vocab_columns(256)
    assert list(columns[[0, 39, 40, 120, 255]]) == [3 * 46, 3 * 46 + 39, 4 * 46, 6 * 46,
                                                    8 * 46 + 43]
    with pytest.raises(ValueError, match="do not hold the 256-token vocabulary"):
        Layout(tp=3, pp=3, vocab_rows=(0, 40, 45)).check(model.config)


@pytest.mark.parametrize("variant, tp, pp, fold", [
    ("gqa", 1, 2, True), ("gqa", 3, 2, False), ("biases", 2, 2, True), ("mqa", 1, 3, False),
    ("tied", 2, 3, True)])
def test_pipeline_stages_equal_one_chip(tiny_checkpoints, variant, tp, pp, fold):
    model = load_model(tiny_checkpoints.get(variant))  # 3 layers: pp=2 leaves a short stage
    prompt = tiny_models.random_prompt(13, seed=10)
    _, single = run(model, prompt, 20)
    engine, split = run(model, prompt, 20, layout=Layout(tp=tp, pp=pp), fold=fold)
    assert len(engine.placement.devices) == (1 if fold else tp * pp)
    # The vocabulary where the layers leave room: a stage of fewer layers holds more of it.
    rows = engine.layout.vocab_rows
    layers = [len(stage) for stage in engine.layout.stage_layers(model.config.num_layers)]
    for short, long in itertools.permutations(range(pp), 2):
        if layers[short] < layers[long]:
            assert rows[short] > rows[long], (layers, rows)
    assert_same_answer(single, split)


def test_short_stages_are_padded_with_identity_layers():
    layout = Layout(pp=4)
    assert [len(s) for s in layout.stage_layers(30)] == [8, 8, 7, 7]
    assert layout.layer_slots(30) == 8


# SmolLM2 across layouts: its int8-exact logits are bit-identical at tp 1 and 3
# (test_smollm2.py), and the documented example runs it on tp 3 x pp 2 (test_public_api.py).
def test_tp_that_does_not_divide_the_heads_lists_the_values_that_work():
    config = load_config()  # SmolLM2: 9 query heads, 3 KV heads
    assert valid_tp(config) == [1, 3]
    with pytest.raises(UserError, match=r"--tp=2 does not divide the model .* valid: 1, 3"):
        Layout(tp=2).check(config)


def test_pp_larger_than_the_layer_count_is_refused():
    with pytest.raises(UserError, match="--pp=31 is larger than the model's 30 layers"):
        Layout(pp=31).check(load_config())


def test_576_chips_fold_onto_one_device(tiny_checkpoints):
    from lpu_jax.chips.placement import Placement

    assert len(jax.devices()) == 16
    placement = Placement.choose(Layout(tp=3, pp=192))
    assert placement.folded and len(placement.devices) == 1
    config = tiny_models.make_torch_model("gqa").config  # 3 layers: build a 192-layer twin
    config.num_hidden_layers = 192
    import torch
    import transformers
    torch.manual_seed(0)
    path = tiny_checkpoints.root / "deep"
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(path)
    model = load_model(path)
    prompt = tiny_models.random_prompt(5, seed=11)
    # The first token only: folded, the program holds every chip's own layer (576 layer
    # bodies), which XLA:CPU takes about a minute to compile per step.
    _, single = run(model, prompt, 1)
    engine, split = run(model, prompt, 1, layout=Layout(tp=3, pp=192))
    assert engine.layout.num_chips == 576 and engine.placement.folded
    assert_same_answer(single, split)


def test_folded_stages_each_run_once_per_token(tiny_checkpoints):
    """Folded, a decode step does one chip's work, not pp times it (XLA's flop count): each
    stage runs once where the per-chip conveyor would run every stage at each of pp ticks."""
    model = load_model(tiny_checkpoints.get("gqa"))  # 3 layers

    def decode_flops(engine):
        compiled, _ = engine._executable("decode", 1, 64)
        return compiled.cost_analysis()["flops"]

    one_chip = decode_flops(Engine(model))
    for tp, pp in [(1, 3), (3, 3), (3, 2)]:
        folded = Engine(model, layout=Layout(tp=tp, pp=pp), fold=True)
        assert folded.placement.folded
        assert decode_flops(folded) < 1.1 * one_chip, (tp, pp)


def test_folded_logits_equal_one_chip_per_device_bit_for_bit(tiny_checkpoints, tmp_path):
    """The folded grid runs the per-chip program's values: with --nocpu_fma (so fusions cannot
    contract differently) f32 logits are bit-identical to one chip per device, on a layout with
    stages of unequal length, several tp chips and the vocabulary split by memory."""
    path = tiny_checkpoints.get("tied")
    layouts = {"folded": ["--fold"], "devices": ["--nofold", "--cpu_devices", "6"]}
    cases = [["--model", str(path), "--prompt_ids", "5,9,14,3,77,120,6,31,8,250",
              "--max_new_tokens", "10", "--nocpu_fma", "--tp", "2", "--pp", "3",
              "--dump_logits", str(tmp_path / f"{name}.npy"), *placement]
             for name, placement in layouts.items()]
    for result in run_each(GENERATE, cases).values():
        assert result.returncode == 0, result.stderr
    folded, devices = (np.load(tmp_path / f"{name}.npy") for name in layouts)
    assert folded.shape == (10, tiny_models.VOCAB)
    np.testing.assert_array_equal(folded, devices)


@pytest.mark.parametrize("tp, pp, fold", [(1, 1, True), (1, 3, False), (3, 2, True)])
def test_ring_decode_of_a_batch_equals_single_streams(tiny_checkpoints, tp, pp, fold):
    model = load_model(tiny_checkpoints.get("gqa"))
    prompts = [tiny_models.random_prompt(4 + 3 * i, seed=20 + i) for i in range(6)]
    singles = [Engine(model).generate(p, 12, stop_token_ids=(), keep_logits=True)
               for p in prompts]
    batch = Engine(model, layout=Layout(tp=tp, pp=pp), fold=fold).generate_batch(
        prompts, 12, stop_token_ids=(), keep_logits=True)
    for single, ours in zip(singles, batch):
        assert_same_answer(single, ours)


def test_ring_sequences_stop_on_their_own_and_200_tokens_compile_nothing_new(tiny_checkpoints):
    model = load_model(tiny_checkpoints.get("mqa"))
    prompts = [tiny_models.random_prompt(6, seed=30 + i) for i in range(4)]
    free = [Engine(model).generate(p, 10, stop_token_ids=()).tokens for p in prompts]
    stop = free[1][4]  # ends sequence 1 early (and any other that produces it)
    # uneven stages (3 layers on 2), the vocabulary by memory, the one KV head on both tp chips
    engine = Engine(model, layout=Layout(tp=2, pp=2), fold=True)
    batch = engine.generate_batch(prompts, 10, stop_token_ids=(stop,))
    for expected, got in zip(free, batch):
        cut = expected.index(stop) + 1 if stop in expected else len(expected)
        assert got.tokens == expected[:cut]
    assert batch[1].finish_reason == "stop"
    compiled = engine.compile_count
    long = engine.generate_batch(prompts, 200, stop_token_ids=())
    assert [len(g.tokens) for g in long] == [200] * 4
    long_again = engine.generate_batch(prompts, 190, stop_token_ids=())
    assert engine.compile_count == compiled + 2  # one prefill and one ring tick for 256 slots
    assert long_again[0].wall.compile_s == 0.0
    one = engine.generate(prompts[0], 200, stop_token_ids=())
    assert one.tokens == long[0].tokens and engine.compile_count == compiled + 4
    assert engine.generate(prompts[1], 190, stop_token_ids=()).wall.compile_s == 0.0


def test_a_batch_that_does_not_fill_the_pipeline_is_refused(tiny_checkpoints):
    model = load_model(tiny_checkpoints.get("mqa"))
    with pytest.raises(UserError, match="a batch of 5 prompts does not fit 2 pipeline stages"):
        Engine(model, layout=Layout(pp=2)).generate_batch([[5, 6]] * 5, 4)


def test_two_runs_are_bit_identical_on_several_chips(tiny_checkpoints):
    model = load_model(tiny_checkpoints.get("gqa"))
    prompt = tiny_models.random_prompt(9, seed=40)
    runs = [run(model, prompt, 16, layout=Layout(tp=3, pp=2), fold=False)[1] for _ in range(2)]
    np.testing.assert_array_equal(runs[0].logits, runs[1].logits)
