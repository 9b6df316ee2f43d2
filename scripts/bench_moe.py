"""Emulation speed of a mixture of experts against a dense model with as many active weights.

    python scripts/bench_moe.py [--new_tokens 48] [--layouts 1x1,4x1]

A Mixtral-shaped model (8 experts of width 3584, 2 per token, hidden 1024, 8 layers) and a
Llama of the same shape whose MLP is as wide as the two chosen experts together (7168), both
with random weights, f32: `lpu-generate --config ... --random_weights --json` for each on each
layout (tp x pp, folded). Prints a row per run: decode tokens/s, prefill and compile seconds.
A decode step multiplies only the chosen experts, so the two should decode at about one speed;
a prefill multiplies every expert on every (token, choice) pair (numerics.matmul.grouped_dot).
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

SHAPE = dict(vocab_size=32000, hidden_size=1024, num_hidden_layers=8, num_attention_heads=16,
             num_key_value_heads=4, max_position_embeddings=4096, rms_norm_eps=1e-5,
             rope_theta=1e6, tie_word_embeddings=False)
MODELS = {
    "mixtral-shaped (8 experts x 3584, top 2)": dict(
        SHAPE, model_type="mixtral", intermediate_size=3584, num_local_experts=8,
        num_experts_per_tok=2),
    "dense twin (MLP 7168)": dict(SHAPE, model_type="llama", intermediate_size=7168),
}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--new_tokens", default="48")
    parser.add_argument("--layouts", default="1x1,4x1", help="tp x pp, comma-separated")
    args = parser.parse_args()
    generate = str(Path(sys.executable).parent / "lpu-generate")
    print("model | tp x pp | decode tokens/s | prefill s | compile s")
    with tempfile.TemporaryDirectory() as directory:
        for name, config in MODELS.items():
            path = Path(directory) / f"{config['model_type']}.json"
            path.write_text(json.dumps(config))
            for layout in args.layouts.split(","):
                tp, pp = layout.split("x")
                run = subprocess.run(
                    [generate, "--config", str(path), "--random_weights", "--tp", tp, "--pp", pp,
                     "--fold=true", "--prompt", "The emulator runs a mixture of experts",
                     "--max_new_tokens", args.new_tokens, "--json"],
                    capture_output=True, text=True)
                if run.returncode != 0:
                    sys.exit(run.stderr)
                wall = json.loads(run.stdout)["wall"]
                print(f"{name} | {tp} x {pp} | {wall['decode_tokens_per_s']:.1f} | "
                      f"{wall['prefill_s']:.3f} | {wall['compile_s']:.1f}")


if __name__ == "__main__":
    main()
