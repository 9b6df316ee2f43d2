"""The generate loop: static shapes, stop tokens, the context limit, sampling, determinism."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lpu_jax.checkpoint import load_model
from lpu_jax.engine.generate import Engine, bucket
from lpu_jax.engine.sampling import SamplingConfig, sample
from lpu_jax.errors import UserError
from lpu_jax.model import forward_logits
from tests import tiny_models


@pytest.fixture(scope="module")
def tiny(tiny_checkpoints):
    return load_model(tiny_checkpoints.get("gqa"))


def test_bucket_is_a_power_of_two_within_the_cap():
    assert [bucket(n, 512) for n in (1, 16, 17, 100, 256, 257, 600)] == [16, 16, 32, 128, 256,
                                                                          512, 512]


def test_200_tokens_and_new_prompts_in_the_same_bucket_compile_nothing_new(tiny):
    engine = Engine(tiny)
    first = engine.generate(tiny_models.random_prompt(20), 200, stop_token_ids=())
    assert len(first.tokens) == 200 and engine.compile_count == 2  # one prefill, one decode
    engine.generate(tiny_models.random_prompt(30, seed=3), 190, stop_token_ids=())
    assert engine.compile_count == 2
    again = engine.generate(tiny_models.random_prompt(20), 200, stop_token_ids=())
    assert again.wall.compile_s == 0.0


def test_generated_logits_equal_a_full_forward_pass(tiny):
    prompt = tiny_models.random_prompt(12, seed=4)
    result = Engine(tiny).generate(prompt, 20, stop_token_ids=(), keep_logits=True)
    sequence = prompt + result.tokens[:-1]
    full = np.asarray(forward_logits(tiny.params, tiny.config, jnp.asarray([sequence]))[0])
    expected = full[len(prompt) - 1:]
    np.testing.assert_allclose(result.logits, expected, rtol=0,
                               atol=1e-5 * np.abs(expected).max())


def test_two_runs_give_bit_identical_logits(tiny):
    prompt = tiny_models.random_prompt(9, seed=5)
    sampling = SamplingConfig(temperature=0.8, top_k=40, top_p=0.9, seed=7)
    runs = [Engine(tiny, sampling).generate(prompt, 16, stop_token_ids=(), keep_logits=True)
            for _ in range(2)]
    assert runs[0].tokens == runs[1].tokens
    np.testing.assert_array_equal(runs[0].logits, runs[1].logits)


def test_stop_token_ends_generation_and_is_kept(tiny):
    prompt = tiny_models.random_prompt(8, seed=6)
    free = Engine(tiny).generate(prompt, 12, stop_token_ids=()).tokens
    stop = free[5]
    first = free.index(stop)
    stopped = Engine(tiny).generate(prompt, 12, stop_token_ids=(stop,))
    assert stopped.tokens == free[:first + 1] and stopped.finish_reason == "stop"


def test_generation_stops_when_the_context_is_full(tiny):
    prompt = tiny_models.random_prompt(500, seed=7)  # context 512
    result = Engine(tiny).generate(prompt, 50, stop_token_ids=())
    assert len(result.tokens) == 12 and result.finish_reason == "context"
    with pytest.raises(UserError, match="the prompt has 512 tokens"):
        Engine(tiny).generate(tiny_models.random_prompt(512), 1)


def test_seeds_change_samples_and_greedy_ignores_them(tiny):
    prompt = tiny_models.random_prompt(8, seed=8)
    sampled = {tuple(Engine(tiny, SamplingConfig(temperature=1.5, seed=s))
                     .generate(prompt, 12, stop_token_ids=()).tokens) for s in range(4)}
    assert len(sampled) > 1
    greedy = {tuple(Engine(tiny, SamplingConfig(seed=s)).generate(prompt, 12, stop_token_ids=())
                    .tokens) for s in range(2)}
    assert len(greedy) == 1


LOGITS = jnp.log(jnp.array([[0.05, 0.4, 0.3, 0.15, 0.1]]))
KEYS = jax.random.split(jax.random.key(0), 2000)


def draw(config):
    return np.asarray(jax.vmap(lambda k: sample(LOGITS, k, config))(KEYS))[:, 0]


def test_top_k_keeps_only_the_k_most_likely():
    assert set(draw(SamplingConfig(temperature=1.0, top_k=2))) == {1, 2}
    assert set(draw(SamplingConfig(temperature=1.0, top_k=1))) == {1}


def test_top_p_keeps_the_smallest_set_reaching_p():
    assert set(draw(SamplingConfig(temperature=1.0, top_p=0.69))) == {1, 2}  # 0.4 + 0.3 reaches it
    assert set(draw(SamplingConfig(temperature=1.0, top_p=0.71))) == {1, 2, 3}
    assert set(draw(SamplingConfig(temperature=1.0, top_p=0.1))) == {1}


def test_temperature_one_samples_the_softmax():
    counts = np.bincount(draw(SamplingConfig(temperature=1.0)), minlength=5) / len(KEYS)
    np.testing.assert_allclose(counts, [0.05, 0.4, 0.3, 0.15, 0.1], atol=0.04)


@pytest.mark.parametrize("kwargs", [dict(temperature=-0.1), dict(top_k=-1), dict(top_p=0.0),
                                    dict(top_p=1.5), dict(temperature=float("nan"))])
def test_invalid_sampling_settings_are_refused(kwargs):
    with pytest.raises(UserError):
        SamplingConfig(**kwargs)


def test_an_unknown_step_kind_is_an_error_not_a_fallback():
    from lpu_jax.checkpoint import load_config
    from lpu_jax.chips import program
    from lpu_jax.chips.layout import Layout

    config = load_config()
    for use in (lambda: program.step("tick"), lambda: program.step_arguments("tick", 2, 2),
                lambda: program.initial_state("tick", config, Layout(), 1, 8, "float32")):
        with pytest.raises(ValueError, match="unknown step kind 'tick'; the steps are prefill, "
                                             "decode, verify, ring"):
            use()


@pytest.mark.parametrize("layout, fold", [(None, None), ((3, 2), True), ((3, 2), False)])
def test_a_verify_step_gives_every_position_what_decode_steps_give(tiny, layout, fold):
    """The step over K + 1 tokens (speculative decoding's verify) from a prefilled cache: at
    each position the logits and the token that decode steps there give, one step, one shape."""
    from lpu_jax.chips.layout import Layout
    from lpu_jax.engine.generate import WallTimes

    engine = Engine(tiny, layout=Layout(*layout) if layout else Layout(), fold=fold)
    prompt = tiny_models.random_prompt(9, seed=21)
    decoded = engine.generate(prompt, 7, stop_token_ids=(), keep_logits=True)
    (seq,), cache_len, prompt_len = engine._plan([prompt], 7, ())
    first, cache = engine._prefill([prompt], [seq], cache_len, prompt_len, WallTimes(), False)
    assert int(first[0]) == decoded.tokens[0]
    verify, _ = engine._executable("verify", 1, cache_len, 6)
    drafted = np.asarray([decoded.tokens[:6]], np.int32)  # K = 5 drafted after the first
    tokens, logits, _ = verify(engine.params, cache, drafted, np.int32(len(prompt)),
                               np.full(1, 6, np.int32), engine._seed)
    assert np.asarray(tokens)[0].tolist() == decoded.tokens[1:]
    scale = np.abs(decoded.logits).max()
    np.testing.assert_allclose(np.asarray(logits)[0], decoded.logits[1:], rtol=0,
                               atol=1e-5 * scale)
