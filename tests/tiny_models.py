"""Tiny random Llama-family checkpoints written with transformers, and their torch references.

torch and transformers are imported by the functions that use them, so the tests that need
neither (the cycle model, formats, bad input, fuzz) run on an install without them.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import tokenizers

VOCAB = 256
BASE = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
            max_position_embeddings=512, rms_norm_eps=1e-5, initializer_range=0.2,
            bos_token_id=1, eos_token_id=2)

# name -> (transformers config class, overrides). Heads: MHA 4/4, GQA 6/3 (3 query heads per KV
# head, so a layout mix-up cannot hide behind a factor of two), MQA 4/1.
VARIANTS = {
    "mha": ("LlamaConfig", dict(num_attention_heads=4, num_key_value_heads=4)),
    "gqa": ("LlamaConfig", dict(num_attention_heads=6, num_key_value_heads=3,
                                           hidden_size=48, head_dim=16)),
    "mqa": ("LlamaConfig", dict(num_attention_heads=4, num_key_value_heads=1)),
    "llama3_rope": ("LlamaConfig", dict(
        num_attention_heads=4, num_key_value_heads=2, rope_theta=500000.0,
        rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                          high_freq_factor=4.0, original_max_position_embeddings=32))),
    "tied": ("LlamaConfig", dict(num_attention_heads=4, num_key_value_heads=2,
                                            tie_word_embeddings=True)),
    "biases": ("LlamaConfig", dict(num_attention_heads=4, num_key_value_heads=2,
                                              attention_bias=True, mlp_bias=True)),
    "head_dim": ("LlamaConfig", dict(num_attention_heads=4, num_key_value_heads=2,
                                                head_dim=24)),
    "mistral": ("MistralConfig", dict(num_attention_heads=4, num_key_value_heads=2,
                                                 sliding_window=None)),
    # Mixtral: 4 experts top-1 (MHA, 8 heads: tp 8 splits each expert's columns over 2 chips),
    # 8 experts top-2 (GQA 8/2, tied).
    "moe4_top1": ("MixtralConfig", dict(num_attention_heads=8, num_key_value_heads=8,
                                        head_dim=8, num_local_experts=4, num_experts_per_tok=1,
                                        sliding_window=None)),
    "moe8_top2": ("MixtralConfig", dict(num_attention_heads=8, num_key_value_heads=2,
                                        head_dim=16, num_local_experts=8,
                                        num_experts_per_tok=2, tie_word_embeddings=True,
                                        sliding_window=None)),
}


def write_config(name: str, path: Path) -> Path:
    """A variant's config.json alone (a model's shape, for --config), written without torch."""
    import json

    class_name, overrides = VARIANTS[name]
    model_type = class_name.removesuffix("Config").lower()
    config = {**BASE, **overrides, "model_type": model_type,
              "architectures": [f"{class_name.removesuffix('Config')}ForCausalLM"]}
    path.write_text(json.dumps(config))
    return path


def make_torch_model(name: str, seed: int = 0) -> "transformers.PreTrainedModel":
    import torch
    import transformers

    config_cls, overrides = VARIANTS[name]
    config = getattr(transformers, config_cls)(**{**BASE, **overrides})
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config).float().eval()
    if name == "biases":  # biases start at zero; make them matter
        with torch.no_grad():
            for param_name, param in model.named_parameters():
                if param_name.endswith("bias"):
                    param.normal_(0, 0.2)
    return model


class CheckpointFactory:
    def __init__(self, root: Path):
        self.root = root
        self._made: dict[tuple, Path] = {}

    def get(self, name: str, dtype: str = "float32", max_shard_size: str | None = None) -> Path:
        key = (name, dtype, max_shard_size)
        if key not in self._made:
            import torch

            path = self.root / "-".join(filter(None, key))
            model = make_torch_model(name).to(getattr(torch, dtype))
            kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
            model.save_pretrained(path, **kwargs)
            self._made[key] = path
        return self._made[key]


def reference_model(path: Path) -> "transformers.PreTrainedModel":
    import torch
    import transformers

    return transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def reference_logits(model, ids: list[int]) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()


def reference_greedy(model, ids: list[int], new_tokens: int) -> list[int]:
    """transformers' greedy generate with no stop token, so exactly new_tokens come back."""
    import torch

    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=new_tokens, do_sample=False,
                             min_new_tokens=new_tokens)
    return out[0, len(ids):].tolist()


def random_prompt(length: int, seed: int = 0) -> list[int]:
    return np.random.default_rng(seed).integers(3, VOCAB, size=length).tolist()


def with_byte_tokenizer(checkpoint: Path, directory: Path) -> Path:
    """A copy of a tiny checkpoint with a byte-level tokenizer: one token per byte, 256 in all,
    exactly the tiny vocabulary."""
    shutil.copytree(checkpoint, directory)
    alphabet = tokenizers.pre_tokenizers.ByteLevel.alphabet()
    vocab = {symbol: index for index, symbol in enumerate(sorted(alphabet))}
    assert len(vocab) == VOCAB
    tokenizer = tokenizers.Tokenizer(tokenizers.models.BPE(vocab, merges=[]))
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = tokenizers.decoders.ByteLevel()
    tokenizer.save(str(directory / "tokenizer.json"))
    return directory
