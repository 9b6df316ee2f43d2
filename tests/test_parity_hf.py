"""lpu_jax against Hugging Face transformers (torch, CPU, float32) on tiny random checkpoints."""

import jax.numpy as jnp
import numpy as np
import pytest

from lpu_jax.checkpoint import load_model
from lpu_jax.engine.generate import Engine
from lpu_jax.model import forward_logits
from tests import tiny_models

LOGIT_TOLERANCE = 1e-4  # relative to the largest |logit|


def assert_logits_match(ours, reference):
    scale = np.abs(reference).max()
    error = np.abs(ours - reference).max() / scale
    assert error < LOGIT_TOLERANCE, f"max error {error:.2e} of the largest logit"


@pytest.mark.parametrize("variant", sorted(tiny_models.VARIANTS))
def test_logits_and_greedy_tokens_match_transformers(tiny_checkpoints, variant):
    path = tiny_checkpoints.get(variant)
    reference = tiny_models.reference_model(path)
    model = load_model(path)

    ids = tiny_models.random_prompt(64, seed=1)
    ours = np.asarray(forward_logits(model.params, model.config, jnp.asarray([ids]))[0])
    assert_logits_match(ours, tiny_models.reference_logits(reference, ids))

    if variant in DECODED:
        prompt = ids[:10]
        expected = tiny_models.reference_greedy(reference, prompt, 32)
        generated = Engine(model).generate(prompt, 32, stop_token_ids=()).tokens
        assert generated == expected


# Greedy decoding through the engine's cache, for the variants whose features the cached path
# treats apart from a whole forward pass: grouped KV heads, rope scaling at later positions,
# tied embeddings, and biases on cached keys and values. (test_engine checks the engine against
# a whole forward pass; test_chips, every head layout across chips.)
DECODED = {"gqa", "llama3_rope", "tied", "biases", "moe4_top1", "moe8_top2"}


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_checkpoints_load_exactly(tiny_checkpoints, dtype):
    path = tiny_checkpoints.get("gqa", dtype=dtype)
    reference = tiny_models.reference_model(path)  # upcast to float32 by transformers
    model = load_model(path)
    for ours, theirs in zip([model.params.embed_DV, model.params.layers[1].wk_DK],
                            [reference.model.embed_tokens.weight,
                             reference.model.layers[1].self_attn.k_proj.weight]):
        np.testing.assert_array_equal(np.asarray(ours), theirs.detach().numpy().T)
    ids = tiny_models.random_prompt(64, seed=2)
    ours = np.asarray(forward_logits(model.params, model.config, jnp.asarray([ids]))[0])
    assert_logits_match(ours, tiny_models.reference_logits(reference, ids))


def test_sharded_checkpoint_equals_single_file(tiny_checkpoints):
    sharded = tiny_checkpoints.get("mha", max_shard_size="100KB")
    assert (sharded / "model.safetensors.index.json").exists()
    assert len(list(sharded.glob("*.safetensors"))) > 2
    single = load_model(tiny_checkpoints.get("mha"))
    many = load_model(sharded)
    import jax
    for a, b in zip(jax.tree.leaves(single.params), jax.tree.leaves(many.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
