"""Every parameter of the model declared once: its names in checkpoints, the recipe class that
stores it, and its logical axes. Loading, storing, splitting across chips and the abstract shapes
are derived from these declarations (checkpoint/assemble.py, numerics/store.py, chips/split.py),
so a new tensor is one more declaration.

Logical axes name what a dimension counts, in the model's layout ([in, out] for matrices):
  D model width; N query-head features (heads x head_dim); K KV-head features; F MLP width (an
  expert's, in a mixture of experts); V vocabulary; E experts; R router scores (one per expert,
  which every chip needs whole: the router is not split).
CHIP_AXES says which chips split each axis (see chips/split.py).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from lpu_jax.config import ModelConfig

# Logical axis -> the chips that split it: "tp" (the tensor-parallel chips of a stage), "vocab"
# (every chip, chips/layout.py's vocabulary shares) or None (each chip holds all of it). An
# expert tensor has two "tp" axes: E is split over the layout's ep expert groups (major) and F
# over the tp / ep chips of a group.
CHIP_AXES = {"D": None, "R": None, "N": "tp", "K": "tp", "F": "tp", "E": "tp", "V": "vocab"}


def axis_size(axis: str, cfg: ModelConfig) -> int:
    return {"D": cfg.hidden_size, "N": cfg.num_heads * cfg.head_dim,
            "K": cfg.num_kv_heads * cfg.head_dim, "F": cfg.intermediate_size,
            "V": cfg.vocab_size, "E": cfg.num_experts, "R": cfg.num_experts}[axis]


def _always(cfg: ModelConfig) -> bool:
    return True


@dataclasses.dataclass(frozen=True)
class Tensor:
    """One parameter. `hf` is its Hugging Face name (under model.layers.{i}. for a layer's; "{e}"
    marks a tensor per expert, stacked on a leading E axis), `gguf` llama.cpp's (under blk.{i}.;
    its experts are one tensor). `tensor_class` is the recipe class storing it (numerics/recipe.py),
    None for the vectors and the router, kept in f32."""

    field: str
    hf: str
    gguf: str
    axes: tuple[str, ...]
    tensor_class: str | None = None
    present: Callable[[ModelConfig], bool] = _always

    @property
    def is_bias(self) -> bool:
        return self.hf.endswith(".bias")

    @property
    def is_norm(self) -> bool:
        return len(self.axes) == 1 and not self.is_bias

    def shape(self, cfg: ModelConfig) -> tuple[int, ...]:
        """The model's shape: [in, out] for a matrix, experts first."""
        return tuple(axis_size(a, cfg) for a in self.axes)

    def checkpoint_shape(self, cfg: ModelConfig, naming: str) -> tuple[int, ...]:
        """The shape of one checkpoint tensor under a naming ("hf" or "gguf"): [out, in], one
        expert's alone where Hugging Face holds a tensor per expert (GGUF's merged one is
        [E, out, in])."""
        shape = self.shape(cfg)
        if len(shape) >= 2:
            shape = (*shape[:-2], shape[-1], shape[-2])
        return shape[1:] if naming == "hf" and "{e}" in self.hf else shape


def _dense(cfg: ModelConfig) -> bool:
    return not cfg.num_experts


def _moe(cfg: ModelConfig) -> bool:
    return bool(cfg.num_experts)


def _attention_bias(cfg: ModelConfig) -> bool:
    return cfg.attention_bias


def _mlp_bias(cfg: ModelConfig) -> bool:
    return cfg.mlp_bias and not cfg.num_experts


_EXPERT = "block_sparse_moe.experts.{e}"
LAYER_TENSORS = (
    Tensor("attn_norm_D", "input_layernorm.weight", "attn_norm.weight", ("D",)),
    Tensor("wq_DN", "self_attn.q_proj.weight", "attn_q.weight", ("D", "N"), "attention"),
    Tensor("wk_DK", "self_attn.k_proj.weight", "attn_k.weight", ("D", "K"), "attention"),
    Tensor("wv_DK", "self_attn.v_proj.weight", "attn_v.weight", ("D", "K"), "attention"),
    Tensor("wo_ND", "self_attn.o_proj.weight", "attn_output.weight", ("N", "D"), "attention"),
    Tensor("mlp_norm_D", "post_attention_layernorm.weight", "ffn_norm.weight", ("D",)),
    Tensor("w_gate_DF", "mlp.gate_proj.weight", "ffn_gate.weight", ("D", "F"), "mlp", _dense),
    Tensor("w_up_DF", "mlp.up_proj.weight", "ffn_up.weight", ("D", "F"), "mlp", _dense),
    Tensor("w_down_FD", "mlp.down_proj.weight", "ffn_down.weight", ("F", "D"), "mlp", _dense),
    Tensor("router_DR", "block_sparse_moe.gate.weight", "ffn_gate_inp.weight", ("D", "R"),
           None, _moe),
    Tensor("w_gate_EDF", f"{_EXPERT}.w1.weight", "ffn_gate_exps.weight", ("E", "D", "F"),
           "experts", _moe),
    Tensor("w_up_EDF", f"{_EXPERT}.w3.weight", "ffn_up_exps.weight", ("E", "D", "F"),
           "experts", _moe),
    Tensor("w_down_EFD", f"{_EXPERT}.w2.weight", "ffn_down_exps.weight", ("E", "F", "D"),
           "experts", _moe),
    Tensor("bq_N", "self_attn.q_proj.bias", "attn_q.bias", ("N",), None, _attention_bias),
    Tensor("bk_K", "self_attn.k_proj.bias", "attn_k.bias", ("K",), None, _attention_bias),
    Tensor("bv_K", "self_attn.v_proj.bias", "attn_v.bias", ("K",), None, _attention_bias),
    Tensor("bo_D", "self_attn.o_proj.bias", "attn_output.bias", ("D",), None, _attention_bias),
    Tensor("b_gate_F", "mlp.gate_proj.bias", "ffn_gate.bias", ("F",), None, _mlp_bias),
    Tensor("b_up_F", "mlp.up_proj.bias", "ffn_up.bias", ("F",), None, _mlp_bias),
    Tensor("b_down_D", "mlp.down_proj.bias", "ffn_down.bias", ("D",), None, _mlp_bias),
)
EMBED = Tensor("embed_DV", "model.embed_tokens.weight", "token_embd.weight", ("D", "V"),
               "embedding")
FINAL_NORM = Tensor("final_norm_D", "model.norm.weight", "output_norm.weight", ("D",))
LM_HEAD = Tensor("lm_head_DV", "lm_head.weight", "output.weight", ("D", "V"), "lm_head",
                 lambda cfg: not cfg.tie_word_embeddings)
MODEL_TENSORS = (EMBED, FINAL_NORM, LM_HEAD)
STORED_LAYER_TENSORS = tuple(t for t in LAYER_TENSORS if t.tensor_class is not None)


def layer_tensors(cfg: ModelConfig) -> tuple[Tensor, ...]:
    """The tensors of every layer of this model."""
    return tuple(t for t in LAYER_TENSORS if t.present(cfg))


def checkpoint_names(tensor: Tensor, layer: int | None, cfg: ModelConfig,
                     naming: str) -> list[str]:
    """The checkpoint tensors holding `tensor` (of `layer`, None for the model's own) under a
    naming ("hf" or "gguf"): one name, or one per expert to be stacked."""
    if naming == "gguf":
        return [tensor.gguf if layer is None else f"blk.{layer}.{tensor.gguf}"]
    name = tensor.hf if layer is None else f"model.layers.{layer}.{tensor.hf}"
    if "{e}" not in name:
        return [name]
    return [name.format(e=e) for e in range(cfg.num_experts)]


def tp_splits(tensor_axes: tuple[str, ...], shape: tuple[int, ...], tp: int,
              ep: int = 1) -> list[int] | None:
    """Into how many parts each axis is cut to give tp chips equal shares, in order, major
    first: E into the ep expert groups, the other tp-split axis into what is left (1 for the
    axes not split). None for a tensor with no tp-split axis: every chip holds all of it."""
    if not any(CHIP_AXES[axis] == "tp" for axis in tensor_axes):
        return None
    left, ways = tp, []
    for axis, size in zip(tensor_axes, shape):
        way = (ep if axis == "E" else left) if CHIP_AXES[axis] == "tp" else 1
        if size % way or left % way:
            raise ValueError(f"axis {axis} of {size} cannot be split {way} ways ({tensor_axes} "
                             f"over tp={tp}, ep={ep})")
        ways.append(way)
        left //= way
    if left != 1:
        raise ValueError(f"axes {tensor_axes} of shape {shape} cannot be split over {tp} chips")
    return ways
