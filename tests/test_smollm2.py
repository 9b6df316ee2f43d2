"""The embedded SmolLM2-135M-Instruct against transformers loading the same GGUF file."""

import dataclasses
import functools

import numpy as np
import pytest

from lpu_jax.checkpoint import load_model
from lpu_jax.checkpoint.default import default_model_path
from lpu_jax.engine.generate import Engine

PROMPTS = [
    "What is the capital of France?",
    "Write a short poem about the sea.",
    "Explain in two sentences why the sky is blue.",
]
NEW_TOKENS = 64


@functools.cache
def reference():
    """transformers' tokenizer and model of the same GGUF (torch imported only where needed)."""
    import torch
    import transformers

    path = default_model_path()
    tokenizer = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    return tokenizer, model


@pytest.fixture(scope="module")
def smollm2():
    return load_model()


def test_config_from_gguf_metadata(smollm2):
    from lpu_jax.checkpoint import load_config

    c = smollm2.config
    assert load_config() == c  # from the header alone
    assert (c.num_layers, c.num_heads, c.num_kv_heads, c.hidden_size) == (30, 9, 3, 576)
    assert (c.vocab_size, c.head_dim, c.rope_theta, c.tie_word_embeddings) == (49152, 64, 1e5, True)
    assert smollm2.stop_token_ids == (2,)


def test_weights_match_transformers_dequantization(smollm2):
    _, model = reference()
    layer = model.model.layers[3].self_attn
    for ours, theirs in [(smollm2.params.layers[3].wq_DN, layer.q_proj.weight),
                         (smollm2.params.layers[3].wk_DK, layer.k_proj.weight),
                         (smollm2.params.embed_DV, model.model.embed_tokens.weight)]:
        np.testing.assert_allclose(np.asarray(ours), theirs.detach().numpy().T, atol=1e-6)


@pytest.mark.parametrize("text", [
    "Hello world", "  leading spaces and 12345 digits 3.14159", "naïve café — emoji 🎉 and 中文",
    "<|im_start|>user\nhi<|im_end|>\n", "code:\n\tdef f(x):\n\t\treturn x**2  # ok"])
def test_tokenizer_matches_transformers(smollm2, text):
    tokenizer, _ = reference()
    assert smollm2.tokenizer.encode(text) == tokenizer.encode(text)
    ids = tokenizer.encode(text)
    assert smollm2.tokenizer.decode(ids) == tokenizer.decode(ids, skip_special_tokens=True)


def test_chat_template_matches_transformers(smollm2):
    tokenizer, _ = reference()
    messages = [{"role": "user", "content": PROMPTS[0]}]
    expected = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                             return_dict=False)
    assert smollm2.tokenizer.apply_chat_template(messages) == list(expected)


@pytest.mark.parametrize("prompt", PROMPTS[:1])  # tiny models sweep the rest (test_parity_hf)
def test_greedy_tokens_match_transformers(smollm2, prompt):
    import torch

    tokenizer, model = reference()
    ids = smollm2.tokenizer.apply_chat_template([{"role": "user", "content": prompt}])
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=NEW_TOKENS, do_sample=False,
                             eos_token_id=list(smollm2.stop_token_ids), pad_token_id=2)
    expected = out[0, len(ids):].tolist()
    ours = Engine(smollm2).generate(ids, NEW_TOKENS).tokens
    assert ours == expected, (smollm2.tokenizer.decode(ours), tokenizer.decode(expected))


def test_hf_directory_tokenizer_matches_transformers(tmp_path):
    """The tokenizer.json / tokenizer_config.json path, on the same vocabulary saved as files."""
    from lpu_jax.tokenizer import Tokenizer

    tokenizer, _ = reference()
    tokenizer.save_pretrained(tmp_path)
    ours = Tokenizer.from_hf_dir(tmp_path)
    for text in ["Hello world", "naïve café 🎉 12345", "<|im_start|>user\nhi<|im_end|>"]:
        assert ours.encode(text) == tokenizer.encode(text)
    messages = [{"role": "user", "content": PROMPTS[1]}]
    expected = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                             return_dict=False)
    assert ours.apply_chat_template(messages) == list(expected)
    assert ours.eos_token_id == tokenizer.eos_token_id == 2


def test_shipped_model_config_matches_the_gguf_metadata(smollm2):
    from pathlib import Path

    from lpu_jax.config import ModelConfig

    path = Path(__file__).parent.parent / "configs" / "models" / "SmolLM2-135M-Instruct.json"
    shipped = ModelConfig.from_json_file(path)
    # The GGUF stores eps as float32, so compare it loosely and everything else exactly.
    assert abs(shipped.rms_norm_eps - smollm2.config.rms_norm_eps) < 1e-9
    assert shipped == dataclasses.replace(smollm2.config, rms_norm_eps=shipped.rms_norm_eps)


@pytest.mark.parametrize("recipe, most", [("truepoint-int8", 0.27), ("int4-g32", 0.14)])
def test_low_bit_weight_bytes(smollm2, recipe, most):
    """Bytes the stored SmolLM2 weights hold, against f32 for the same values."""
    from lpu_jax.numerics.formats import nbytes, num_values
    from lpu_jax.numerics.recipe import load_recipe
    from lpu_jax.numerics.store import store_params

    stored = store_params(smollm2.params, load_recipe(recipe))
    assert nbytes(stored) <= most * 4 * num_values(stored)


def test_int8_exact_logits_are_bit_identical_across_tp(tmp_path):
    """On the real model too (9 heads: 3 per chip at tp=3), where XLA's own exp and reduce
    orders would differ between the layouts (see lpu_jax/numerics/portable.py)."""
    from tests.cli_forks import run_each
    from tests.test_cli import GENERATE

    cases = [["--chat", "--prompt", "What is the capital of France?", "--tp", tp,
              "--cpu_devices", "3", "--nofold", "--precision", "int8-exact", "--nocpu_fma",
              "--max_new_tokens", "3", "--dump_logits", str(tmp_path / f"tp{tp}.npy")]
             for tp in ("1", "3")]
    for result in run_each(GENERATE, cases).values():
        assert result.returncode == 0, result.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "tp1.npy"), np.load(tmp_path / "tp3.npy"))
