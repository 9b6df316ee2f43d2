"""The memory plan: real layers and vocabulary rows per chip, placed so the fullest chip holds
the fewest bytes (chips.memory); arithmetic on config shapes, no weights."""

import itertools

import pytest

from lpu_jax.chips.layout import Layout
from lpu_jax.chips.memory import MemoryPlan
from lpu_jax.config import ModelConfig
from lpu_jax.lpu.hardware import load_hardware
from lpu_jax.numerics.recipe import load_recipe

SRAM = load_hardware("lpu-v1")["sram"]


def config(layers, vocab, hidden=64, intermediate=128, tied=False) -> ModelConfig:
    return ModelConfig.from_hf_dict(dict(
        model_type="llama", vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate,
        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=512, rms_norm_eps=1e-5, tie_word_embeddings=tied))


def fullest_total(plan, layout, sequences, context):
    held = plan.fullest(layout, sequences, context)
    return held.weights + held.kv_cache


# Layers that do not split evenly, a vocabulary worth a few layers or many, tied or not, with
# and without KV caches: the balanced rows are as good as the best of every assignment.
@pytest.mark.parametrize("layers, vocab, tp, pp, sequences, tied", [
    (3, 200, 1, 2, 1, False), (5, 90, 2, 3, 2, True), (7, 400, 1, 3, 0, False),
    (4, 60, 2, 3, 4, False), (2, 30, 1, 2, 1, True)])
def test_balanced_vocabulary_leaves_the_fullest_chip_as_empty_as_possible(
        layers, vocab, tp, pp, sequences, tied):
    plan = MemoryPlan(config(layers, vocab, tied=tied), load_recipe("int8-exact"))
    balanced = plan.balanced(Layout(tp=tp, pp=pp), sequences, 64)
    assert sum(balanced.vocab_rows) * tp >= vocab > (sum(balanced.vocab_rows) - 1) * tp
    rows_per_chip = -(-vocab // tp)
    best = min(fullest_total(plan, Layout(tp=tp, pp=pp, vocab_rows=rows + (last,)), sequences, 64)
               for rows in itertools.product(range(rows_per_chip + 1), repeat=pp - 1)
               if (last := rows_per_chip - sum(rows)) >= 0)
    assert fullest_total(plan, balanced, sequences, 64) == best
    assert best <= fullest_total(plan, Layout(tp=tp, pp=pp), sequences, 64)


def test_memory_counts_real_layers_not_the_identity_pads():
    plan = MemoryPlan(config(3, 8), load_recipe("int8-exact"))  # a vocabulary of almost nothing
    two_stages = plan.balanced(Layout(pp=2), 1, 64)
    assert two_stages.vocab_rows == (0, 8)  # the short stage takes it
    one_layer, kv = plan.layer_bytes(Layout()), plan.kv_bytes_per_layer(two_stages, 1, 64)
    held = plan.fullest(two_stages, 1, 64)
    assert held.weights == 2 * one_layer + 64 * 4  # two layers and the final norm, no rows
    assert held.kv_cache == 2 * kv
    most = plan.max_sequences(two_stages, 64, SRAM)
    assert plan.fullest(two_stages, most, 64).kv_cache <= SRAM - held.weights
    assert plan.fullest(two_stages, most + 1, 64).kv_cache > SRAM - held.weights


# Groq's 576-chip Llama-2-70B: 80 layers on 72 stages leave eight stages two layers; the
# vocabulary goes to the other 64, and each chip's share fits beside one stream's 4,096 positions.
@pytest.mark.parametrize("tp, pp", [(8, 72), (16, 36)])
def test_llama_2_70b_on_576_chips_fits_one_stream(tp, pp):
    plan = MemoryPlan(ModelConfig.shipped_or_file("Llama-2-70b-hf"), load_recipe("int8-exact"))
    layout = plan.balanced(Layout(tp=tp, pp=pp), 1, 4096)
    assert fullest_total(plan, layout, 1, 4096) < SRAM
    if pp == 72:
        assert layout.vocab_rows[:8] == (0,) * 8 and min(layout.vocab_rows[8:]) > 0
