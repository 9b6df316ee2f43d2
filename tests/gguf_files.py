"""Small GGUF files for the tests, written with the gguf package's writer."""

from pathlib import Path

import gguf
import numpy as np


def write_gguf(path: Path, fields: dict, tensors: dict[str, np.ndarray]) -> Path:
    """A llama GGUF with these metadata fields, each stored in the type its Python value has
    (integers as int64, clamped; lists of integers as int32 arrays), and these tensors."""
    writer = gguf.GGUFWriter(str(path), "llama")
    for key, value in fields.items():
        if isinstance(value, bool):
            writer.add_bool(key, value)
        elif isinstance(value, str):
            writer.add_string(key, value)
        elif isinstance(value, float):
            writer.add_float64(key, value)
        elif isinstance(value, int):
            writer.add_int64(key, max(min(value, 2**63 - 1), -2**63))
        elif isinstance(value, list) and all(isinstance(v, int) for v in value):
            writer.add_array(key, [max(min(v, 2**31 - 1), -2**31) for v in value])
    for name, array in tensors.items():
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _permute_rope_rows(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's convert-time permute of q / k rows (its RoPE pairs neighbouring features)."""
    return (w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def gguf_from_hf(checkpoint: Path, path: Path, metadata: dict | None = None) -> Path:
    """A Hugging Face Llama or Mixtral checkpoint written as llama.cpp's converter writes it:
    its names, q and k rows permuted, a Mixtral's experts merged into one tensor per
    projection [E, out, in] under the llama architecture with expert counts; `metadata`
    replaces fields (None: leaves one out)."""
    import json

    from safetensors.numpy import load_file

    config = json.loads((checkpoint / "config.json").read_text())
    hf = load_file(checkpoint / "model.safetensors")
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    layers, experts = config["num_hidden_layers"], config.get("num_local_experts", 0)
    fields = {"llama.block_count": layers, "llama.embedding_length": config["hidden_size"],
              "llama.feed_forward_length": config["intermediate_size"],
              "llama.attention.head_count": heads, "llama.attention.head_count_kv": kv_heads,
              "llama.context_length": config["max_position_embeddings"],
              "llama.attention.layer_norm_rms_epsilon": float(config["rms_norm_eps"]),
              "llama.rope.freq_base": float(config.get("rope_parameters", {}).get(
                  "rope_theta", config.get("rope_theta", 10000.0))),
              "llama.vocab_size": config["vocab_size"]}
    if config.get("head_dim"):
        fields["llama.attention.key_length"] = config["head_dim"]
    if experts:
        fields.update({"llama.expert_count": experts,
                       "llama.expert_used_count": config["num_experts_per_tok"]})
    fields = {key: value for key, value in {**fields, **(metadata or {})}.items()
              if value is not None}
    tensors = {"token_embd.weight": hf["model.embed_tokens.weight"],
               "output_norm.weight": hf["model.norm.weight"]}
    if "lm_head.weight" in hf and not config.get("tie_word_embeddings"):
        tensors["output.weight"] = hf["lm_head.weight"]
    names = {"input_layernorm.weight": "attn_norm.weight",
             "post_attention_layernorm.weight": "ffn_norm.weight",
             "self_attn.q_proj.weight": "attn_q.weight", "self_attn.k_proj.weight": "attn_k.weight",
             "self_attn.v_proj.weight": "attn_v.weight",
             "self_attn.o_proj.weight": "attn_output.weight",
             "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
             "mlp.down_proj.weight": "ffn_down.weight",
             "block_sparse_moe.gate.weight": "ffn_gate_inp.weight"}
    for i in range(layers):
        for hf_name, gguf_name in names.items():
            if f"model.layers.{i}.{hf_name}" in hf:
                w = hf[f"model.layers.{i}.{hf_name}"]
                if gguf_name == "attn_q.weight":
                    w = _permute_rope_rows(w, heads)
                elif gguf_name == "attn_k.weight":
                    w = _permute_rope_rows(w, kv_heads)
                tensors[f"blk.{i}.{gguf_name}"] = w
        for hf_name, gguf_name in {"w1": "ffn_gate_exps", "w3": "ffn_up_exps",
                                   "w2": "ffn_down_exps"}.items():
            if experts:
                tensors[f"blk.{i}.{gguf_name}.weight"] = np.stack([
                    hf[f"model.layers.{i}.block_sparse_moe.experts.{e}.{hf_name}.weight"]
                    for e in range(experts)])
    return write_gguf(path, fields, tensors)
