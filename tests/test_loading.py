"""Loading: host memory while streaming, and the checks that refuse a bad checkpoint."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lpu_jax.checkpoint import load_model
from lpu_jax.config import ModelConfig
from lpu_jax.errors import UserError

REPO = Path(__file__).resolve().parent.parent


def test_peak_host_memory_while_loading_is_at_most_1_5x_the_checkpoint(tmp_path):
    import torch
    import transformers

    config = transformers.LlamaConfig(vocab_size=8192, hidden_size=512, intermediate_size=1376,
                                      num_hidden_layers=6, num_attention_heads=8,
                                      num_key_value_heads=4)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(tmp_path)  # float32, ~100 MB
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "measure_load_memory.py"),
                          str(tmp_path)], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout)
    assert result["checkpoint_bytes"] > 90e6
    assert result["peak_increase_bytes"] <= 1.5 * result["checkpoint_bytes"], result


@pytest.mark.parametrize("change, message", [
    (dict(model_type="gpt2"), "unsupported model_type 'gpt2'"),
    (dict(rope_parameters=dict(rope_type="dynamic", factor=2.0, rope_theta=1e4)),
     "unsupported RoPE scaling type 'dynamic'"),
    (dict(model_type="mistral", sliding_window=64), "unsupported sliding_window=64"),
    (dict(hidden_act="gelu"), "unsupported hidden_act 'gelu'"),
    (dict(num_key_value_heads=3), "not a multiple of num_key_value_heads=3"),
    (dict(hidden_size=None), "lacks 'hidden_size'"),
])
def test_config_refuses_what_it_does_not_handle(change, message):
    raw = dict(model_type="llama", vocab_size=32, hidden_size=64, intermediate_size=96,
               num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
               max_position_embeddings=128, sliding_window=None)
    raw.update(change)
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        ModelConfig.from_hf_dict(raw)


def test_legacy_rope_scaling_spelling_is_read():
    config = ModelConfig.from_hf_dict(dict(
        model_type="llama", vocab_size=32, hidden_size=64, intermediate_size=96,
        num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=128, rope_theta=5e5,
        rope_scaling=dict(type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                          original_max_position_embeddings=64)))
    assert config.rope_theta == 5e5 and config.rope_scaling.factor == 8.0
    assert config.num_kv_heads == 4 and config.head_dim == 16


def test_mistral_window_wider_than_the_context_is_no_window():
    """A window that covers every position the model takes is full attention, so it loads; one
    position less would need the sliding window, which is refused."""
    def mistral(**window):
        return ModelConfig.from_hf_dict(dict(
            model_type="mistral", vocab_size=32, hidden_size=64, intermediate_size=96,
            num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=128, **window))

    for covering in (dict(sliding_window=4096), dict(sliding_window=128),
                     dict(sliding_window=8, use_sliding_window=False)):
        assert mistral(**covering).max_position_embeddings == 128
    with pytest.raises(UserError, match="unsupported sliding_window=127"):
        mistral(sliding_window=127)


def test_shard_missing_from_an_index_is_named(tiny_checkpoints, tmp_path):
    import shutil
    sharded = tiny_checkpoints.get("mha", max_shard_size="100KB")
    copy = tmp_path / "copy"
    shutil.copytree(sharded, copy)
    victim = sorted(copy.glob("model-*.safetensors"))[1]
    victim.unlink()
    with pytest.raises(UserError, match=f"{victim.name}: no such file"):
        load_model(copy)


def test_stop_tokens_come_from_generation_config_lists(tiny_checkpoints, tmp_path):
    import shutil
    copy = tmp_path / "copy"
    shutil.copytree(tiny_checkpoints.get("mqa"), copy)
    (copy / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 7, 9]}))
    assert load_model(copy).stop_token_ids == (2, 7, 9)


def test_config_alone_equals_the_loaded_models(tiny_checkpoints, tmp_path):
    from lpu_jax.checkpoint import load_config

    path = tiny_checkpoints.get("gqa")
    assert load_config(path) == load_model(path).config
    pickled = tmp_path / "model.bin"
    pickled.write_bytes(b"never read")
    with pytest.raises(UserError, match="pickle checkpoints are refused"):
        load_config(pickled)
