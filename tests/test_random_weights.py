"""Models from a config alone: weights drawn from a seed in a recipe's stored formats."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from lpu_jax.checkpoint.random_weights import random_model
from lpu_jax.chips.layout import Layout
from lpu_jax.config import ModelConfig
from lpu_jax.engine.generate import Engine
from tests import tiny_models
from tests.cli_forks import run_each
from tests.test_cli import GENERATE


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory):
    return tiny_models.write_config("gqa", tmp_path_factory.mktemp("config") / "config.json")


def generate(model, new_tokens=12, **engine_args):
    engine = Engine(model, **engine_args)
    return engine, engine.generate([5, 9, 14, 3], new_tokens, stop_token_ids=(),
                                   keep_logits=True)


def test_a_seed_gives_one_model_on_every_layout_stored_low_bit(tiny_config):
    config = ModelConfig.from_json_file(tiny_config)
    model = random_model(config, seed=3, source="tiny")
    assert model.params is None  # nothing drawn until an engine places the weights
    engine, one_chip = generate(model, precision="int8-exact")
    wq = engine.stored_params.layers[0].wq_DN
    assert wq.values.dtype == jnp.int8 and wq.values.shape == (1, 1, 48, 96)
    assert engine.weight_report()["ratio_to_f32"] < 0.3
    for layout, fold in [(Layout(tp=3, pp=2), True), (Layout(tp=3), False)]:
        _, split = generate(model, precision="int8-exact", layout=layout, fold=fold)
        assert split.tokens == one_chip.tokens
        scale = np.abs(one_chip.logits).max()
        assert np.abs(split.logits - one_chip.logits).max() / scale < 1e-5
    _, again = generate(random_model(config, seed=3, source="tiny"), precision="int8-exact")
    np.testing.assert_array_equal(again.logits, one_chip.logits)
    _, other_seed = generate(random_model(config, seed=4, source="tiny"), precision="int8-exact")
    assert np.abs(other_seed.logits - one_chip.logits).max() > 0.01 * scale
    # the values a checkpoint of this shape would start from: unit norms, std 0.02
    stored = Engine(model).stored_params.layers[1]
    np.testing.assert_array_equal(stored.attn_norm_D, 1.0)
    assert 0.018 < float(np.std(np.asarray(stored.w_up_DF))) < 0.022


def test_lpu_generate_runs_a_config_with_random_weights(tiny_config):
    cases = [["--config", str(tiny_config), "--random_weights", "--prompt", "hi there",
              "--max_new_tokens", "6", "--json", *layout]
             for layout in ([], ["--tp", "3", "--pp", "2", "--fold"])]
    results = [json.loads(r.stdout) for r in run_each(GENERATE, cases).values()]
    assert results[0]["prompt_tokens"] == len(b"hi there")  # read as UTF-8 bytes
    assert len(results[0]["tokens"]) == 6
    assert results[0]["tokens"] == results[1]["tokens"]
    assert "random weights, seed 0" in results[0]["model"]
