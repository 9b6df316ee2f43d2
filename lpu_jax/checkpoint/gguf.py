"""GGUF files (llama.cpp): configuration, tensors and tokenizer from one file.

Tensors are dequantized to float32 with the `gguf` package, one at a time. llama.cpp's converter
permutes the rows of the q and k projections (its RoPE pairs neighbouring features, Hugging Face's
pairs the two halves of a head); that permutation is undone here so the model sees Hugging Face's
layout.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lpu_jax.checkpoint.assemble import build_params
from lpu_jax.checkpoint.gguf_file import GGUFFile
from lpu_jax.config import LIMITS, ModelConfig
from lpu_jax.errors import UserError
from lpu_jax.model import Params
from lpu_jax.parameters import EMBED, LM_HEAD, Tensor
from lpu_jax.schema import REQUIRED, Fields

# The q and k projections whose rows llama.cpp's converter permutes, and whose head count
# undoes it.
_ROPE_PERMUTED = {"wq_DN": "num_heads", "bq_N": "num_heads", "wk_DK": "num_kv_heads",
                  "bk_K": "num_kv_heads"}


class GGUFCheckpoint:
    """A GGUF model: its config, tokenizer metadata and tensors (under llama.cpp's names)."""

    def __init__(self, path: Path):
        self.path = path
        self._file = GGUFFile(path)
        self.metadata = self._file.metadata
        self._tensors = self._file.tensors

    def config(self) -> ModelConfig:
        meta = self.metadata
        arch = meta.get("general.architecture")
        if arch != "llama":
            raise UserError(f"{self.path}: unsupported GGUF architecture {arch!r}: lpu_jax runs "
                            "'llama' (Llama, Mistral, SmolLM2) models")
        if "rope_freqs.weight" in self._file.tensors:
            raise UserError(f"{self.path}: per-frequency RoPE factors (rope_freqs, Llama 3.1 "
                            "scaling) in GGUF are not handled; use the Hugging Face checkpoint")
        # GGUF keys and the config.json fields they fill; each is checked under its GGUF name.
        fields = Fields(meta, f"{self.path}: GGUF metadata")
        scaling = fields.text("llama.rope.scaling.type", "none")
        if scaling != "none":
            raise UserError(f"{self.path}: unsupported RoPE scaling type {scaling!r} in GGUF")
        if fields.integer("llama.attention.sliding_window", 0, low=0):
            raise UserError(f"{self.path}: sliding-window attention is not implemented")
        sizes = {"vocab_size": "llama.vocab_size", "hidden_size": "llama.embedding_length",
                 "intermediate_size": "llama.feed_forward_length",
                 "num_hidden_layers": "llama.block_count",
                 "num_attention_heads": "llama.attention.head_count",
                 "num_key_value_heads": "llama.attention.head_count_kv",
                 "head_dim": "llama.attention.key_length",
                 "max_position_embeddings": "llama.context_length",
                 "num_local_experts": "llama.expert_count",
                 "num_experts_per_tok": "llama.expert_used_count"}
        optional = {"vocab_size", "num_key_value_heads", "head_dim", "num_local_experts",
                    "num_experts_per_tok"}
        zero_means_none = {"num_local_experts", "num_experts_per_tok"}  # dense models may say 0
        raw = {hf: fields.integer(key, None if hf in optional else REQUIRED,
                                  low=0 if hf in zero_means_none else 1, high=LIMITS.get(hf))
               for hf, key in sizes.items()}
        if raw["vocab_size"] is None:
            tokens = meta.get("tokenizer.ggml.tokens")
            raw["vocab_size"] = len(tokens) if isinstance(tokens, list) and tokens else (
                self._tensor_rows(EMBED.gguf))
        eos = fields.integer("tokenizer.ggml.eos_token_id", None, low=0)
        raw = {k: v for k, v in raw.items() if not (k in zero_means_none and v == 0)}
        if raw.get("num_local_experts") and not raw.get("num_experts_per_tok"):
            raise UserError(f"{self.path}: GGUF metadata llama.expert_count="
                            f"{raw['num_local_experts']} needs llama.expert_used_count, the "
                            "experts each token uses (>= 1)")
        raw.update(
            # llama.cpp keeps Mixtral under the llama architecture, with experts.
            model_type="mixtral" if raw.get("num_local_experts") else "llama",
            rms_norm_eps=fields.number("llama.attention.layer_norm_rms_epsilon", 1e-5),
            rope_theta=fields.number("llama.rope.freq_base", 10000.0),
            tie_word_embeddings=LM_HEAD.gguf not in self._tensors,
            attention_bias="blk.0.attn_q.bias" in self._tensors,
            mlp_bias="blk.0.ffn_gate.bias" in self._tensors,
            bos_token_id=fields.integer("tokenizer.ggml.bos_token_id", None, low=0),
            eos_token_id=eos)
        return ModelConfig.from_hf_dict({k: v for k, v in raw.items() if v is not None},
                                        f"{self.path} (from its GGUF metadata)")

    def _tensor_rows(self, name: str) -> int:
        if name not in self._tensors:
            raise UserError(f"{self.path}: GGUF file lacks tensor {name!r}")
        return int(self._tensors[name].shape[0])

    def read(self, name: str, tensor: Tensor, config: ModelConfig) -> np.ndarray:
        from gguf.quants import dequantize  # imported here: only GGUF users pay for it

        info = self._tensors[name]
        raw = self._file.read_raw(info.name)
        array = np.asarray(dequantize(raw, info.ggml_type), dtype=np.float32).reshape(info.shape)
        if tensor.field in _ROPE_PERMUTED:
            array = _unpermute_rope_rows(array, getattr(config, _ROPE_PERMUTED[tensor.field]))
        return array

    def params(self, config: ModelConfig) -> Params:
        return build_params(config, self._tensors,
                            lambda name, tensor: self.read(name, tensor, config),
                            str(self.path), naming="gguf")


def _unpermute_rope_rows(w: np.ndarray, num_heads: int) -> np.ndarray:
    """Inverse of llama.cpp's convert-time permute: per head, rows (2, H/2) -> (H/2, 2) undone."""
    rows = w.shape[0]
    if rows % (2 * num_heads):
        raise UserError(f"a q/k projection has {rows} rows, which {num_heads} heads of even "
                        "width cannot hold; the GGUF's shapes and head counts disagree")
    return (w.reshape(num_heads, rows // num_heads // 2, 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))
