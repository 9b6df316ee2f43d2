"""ModelConfig: the architecture lpu_jax runs, read strictly from a Hugging Face config.json.

Strict means: every setting that changes the math is either handled or refused with a message that
names it. A config that silently runs as something else would give a wrong answer with no warning.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from lpu_jax.errors import UserError
from lpu_jax.schema import REQUIRED, Fields
from lpu_jax.textfiles import read_json, shipped_or_path

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "mixtral")
SUPPORTED_ROPE_TYPES = ("default", "llama3")
# Beyond these a config is a mistake, not a model (the largest Llama-family models stay far
# below): refused at once rather than planned for hours.
LIMITS = {"num_hidden_layers": 2048, "hidden_size": 1 << 18, "intermediate_size": 1 << 20,
          "num_attention_heads": 4096, "num_key_value_heads": 4096, "head_dim": 4096,
          "vocab_size": 1 << 24, "max_position_embeddings": 1 << 24, "num_local_experts": 1024}


@dataclasses.dataclass(frozen=True)
class Llama3RopeScaling:
    """Llama 3.1's frequency-dependent RoPE stretch (rope_type "llama3")."""

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """A Llama-family decoder: the shapes and constants of the whole model (not one chip's share)."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    rope_scaling: Llama3RopeScaling | None = None
    attention_bias: bool = False
    mlp_bias: bool = False
    model_type: str = "llama"
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    # A mixture of experts (Mixtral) when num_experts > 0: each layer's MLP is num_experts SwiGLU
    # experts of width intermediate_size, experts_per_token of them chosen per token.
    num_experts: int = 0
    experts_per_token: int = 0

    def __post_init__(self):
        positive = ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                    "num_kv_heads", "head_dim", "max_position_embeddings")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise UserError(f"model config: {name} must be a positive integer, got {value!r}")
        if self.num_heads % self.num_kv_heads:
            raise UserError(f"model config: num_attention_heads={self.num_heads} is not a multiple of "
                            f"num_key_value_heads={self.num_kv_heads}")
        if self.head_dim % 2:
            raise UserError(f"model config: head_dim={self.head_dim} must be even for RoPE")
        if self.num_experts and not 1 <= self.experts_per_token <= self.num_experts:
            raise UserError(f"model config: num_experts_per_tok={self.experts_per_token} must be "
                            f"between 1 and num_local_experts={self.num_experts}")

    @property
    def q_per_kv(self) -> int:
        """Query heads that share one KV head (1: MHA, num_heads: MQA, between: GQA)."""
        return self.num_heads // self.num_kv_heads

    def num_parameters(self) -> int:
        d, f, h = self.hidden_size, self.intermediate_size, self.head_dim
        attn = d * h * (2 * self.num_heads + 2 * self.num_kv_heads)
        if self.attention_bias:
            attn += h * (self.num_heads + 2 * self.num_kv_heads) + d
        if self.num_experts:
            mlp = self.num_experts * (3 * d * f + d)  # the experts and the router's column each
        else:
            mlp = 3 * d * f + ((2 * f + d) if self.mlp_bias else 0)
        per_layer = attn + mlp + 2 * d
        head = 0 if self.tie_word_embeddings else self.vocab_size * d
        return self.vocab_size * d + self.num_layers * per_layer + d + head

    @classmethod
    def from_hf_dict(cls, raw: dict[str, Any], source: str = "model config") -> "ModelConfig":
        """Build from a config.json dict (transformers 4.x or 5.x spelling), refusing the unhandled
        and any field of the wrong type or beyond the sizes lpu_jax handles (LIMITS)."""
        fields = Fields(raw, source)
        model_type = raw.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise UserError(f"unsupported model_type {model_type!r}: lpu_jax runs "
                            f"{', '.join(SUPPORTED_MODEL_TYPES)} (Llama-architecture) checkpoints")

        def size(key: str, default=REQUIRED) -> int:
            return fields.integer(key, default, high=LIMITS.get(key))

        act = fields.text("hidden_act", "silu")
        if act != "silu":
            raise UserError(f"unsupported hidden_act {act!r}: only 'silu' (SwiGLU) is handled")
        if fields.number("partial_rotary_factor", 1.0) != 1.0:
            raise UserError(f"unsupported partial_rotary_factor {raw['partial_rotary_factor']}: "
                            "only full-width RoPE is handled")

        max_positions = size("max_position_embeddings")
        window = fields.integer("sliding_window", None, low=0)
        if (window is not None and fields.flag("use_sliding_window", True)
                and window < max_positions):
            raise UserError(f"unsupported sliding_window={window} (< max_position_embeddings="
                            f"{max_positions}): sliding-window attention is not implemented")

        experts = fields.integer("num_local_experts", 0, low=0, high=LIMITS["num_local_experts"])
        if (model_type == "mixtral") != bool(experts):
            raise UserError(f"{source}: model_type {model_type!r} with num_local_experts="
                            f"{experts}: a mixture of experts is model_type 'mixtral' with "
                            "num_local_experts > 0")
        if experts and fields.number("router_jitter_noise", 0.0, positive=False):
            raise UserError(f"{source}: router_jitter_noise is a training-time perturbation; "
                            "an inference config has it 0")

        rope_theta, rope_scaling = _read_rope(fields)
        num_heads = size("num_attention_heads")
        hidden = size("hidden_size")
        vocab = size("vocab_size")
        return cls(
            vocab_size=vocab,
            hidden_size=hidden,
            intermediate_size=size("intermediate_size"),
            num_layers=size("num_hidden_layers"),
            num_heads=num_heads,
            num_kv_heads=size("num_key_value_heads", num_heads),
            head_dim=size("head_dim", hidden // num_heads or 1),
            rms_norm_eps=fields.number("rms_norm_eps", 1e-6),
            rope_theta=rope_theta,
            max_position_embeddings=max_positions,
            tie_word_embeddings=fields.flag("tie_word_embeddings", False),
            rope_scaling=rope_scaling,
            attention_bias=fields.flag("attention_bias", False),
            mlp_bias=fields.flag("mlp_bias", False),
            model_type=model_type,
            bos_token_id=fields.integer("bos_token_id", None, low=0),
            eos_token_ids=fields.integers("eos_token_id"),
            num_experts=experts,
            experts_per_token=(fields.integer("num_experts_per_tok", REQUIRED, low=1)
                               if experts else 0),
        )

    @classmethod
    def shipped_or_file(cls, name_or_path: str) -> "ModelConfig":
        """A config.json from configs/models by name (e.g. "Llama-2-7b-hf"), or any .json file."""
        return cls.from_json_file(shipped_or_path("models", name_or_path, "model config",
                                                  ".json"))

    @classmethod
    def from_json_file(cls, path: str | Path) -> "ModelConfig":
        raw = read_json(Path(path))
        if not isinstance(raw, dict):
            raise UserError(f"{path}: expected a JSON object")
        return cls.from_hf_dict(raw, str(path))


def _read_rope(fields: Fields) -> tuple[float, Llama3RopeScaling | None]:
    """RoPE base and scaling; transformers 5 nests both in rope_parameters, 4.x keeps them apart."""
    params = fields.table("rope_parameters") or fields.table("rope_scaling") or Fields({}, "")
    theta = params.number("rope_theta", fields.number("rope_theta", 10000.0))
    if theta <= 1:  # the wavelengths base**(2i/d) would not grow: no position could be told
        raise UserError(f"{fields.source}: rope_theta must be > 1, got {theta}")
    rope_type = params.text("rope_type", params.text("type", "default"))
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise UserError(f"unsupported RoPE scaling type {rope_type!r}: lpu_jax handles "
                        f"{', '.join(SUPPORTED_ROPE_TYPES)}")
    if rope_type == "default":
        return theta, None
    scaling = Llama3RopeScaling(
        factor=params.number("factor"),
        low_freq_factor=params.number("low_freq_factor"),
        high_freq_factor=params.number("high_freq_factor"),
        original_max_position_embeddings=params.integer(
            "original_max_position_embeddings", high=LIMITS["max_position_embeddings"]),
    )
    return theta, scaling
