"""Wall time of folded deployments against one chip, single stream, in the same run.

    python scripts/bench_fold.py [--layouts 8,30,3x5] [--new_tokens 48] [--prefill 128]
        [--precision f32] [--repeats 5]

Each layout (pp, or tp x pp) is folded onto one device and decodes the same chat prompt as one
chip does; a prompt of --prefill tokens is prefilled by each. Every figure is the best of
--repeats runs after a warm-up run (which compiles), so a busy machine disturbs it less. Prints
one JSON object: seconds per decode token and per prefill, and each layout's ratio to one chip.
"""

import argparse
import json

from lpu_jax.checkpoint import load_model
from lpu_jax.chips.layout import Layout
from lpu_jax.engine.generate import Engine

PROMPT = "Tell me about the moon and the tides it raises on Earth."


def parse_layout(text: str) -> Layout:
    tp, _, pp = text.rpartition("x")
    return Layout(tp=int(tp or 1), pp=int(pp))


def best_times(engines: dict, chat_prompt, long_prompt, new_tokens: int, repeats: int) -> dict:
    """Each engine's best seconds per decode token and per prefill of the long prompt. The
    engines take turns, round after round, so a machine that slows down or speeds up during the
    run touches them alike."""
    for engine in engines.values():  # compile and warm up
        engine.generate(chat_prompt, new_tokens, stop_token_ids=())
        engine.generate(long_prompt, 1, stop_token_ids=())
    best = {name: {"decode_s_per_token": float("inf"), "prefill_s": float("inf")}
            for name in engines}
    for _ in range(repeats):
        for name, engine in engines.items():
            wall = engine.generate(chat_prompt, new_tokens, stop_token_ids=()).wall
            prefill = engine.generate(long_prompt, 1, stop_token_ids=()).wall.prefill_s
            figures = best[name]
            figures["decode_s_per_token"] = min(figures["decode_s_per_token"],
                                                wall.decode_s / wall.decode_tokens)
            figures["prefill_s"] = min(figures["prefill_s"], prefill)
    return best


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--layouts", default="8,30,3x5")
    parser.add_argument("--new_tokens", type=int, default=48)
    parser.add_argument("--prefill", type=int, default=128, help="prompt tokens to prefill")
    parser.add_argument("--precision", default="f32")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    model = load_model()
    chat_prompt = model.tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}])
    long_prompt = (model.tokenizer.encode(PROMPT * args.prefill))[:args.prefill]

    engines = {"one_chip": Engine(model, precision=args.precision)}
    for text in args.layouts.split(","):
        engines[text] = Engine(model, layout=parse_layout(text), fold=True,
                               precision=args.precision)
    best = best_times(engines, chat_prompt, long_prompt, args.new_tokens, args.repeats)
    one_chip = best.pop("one_chip")
    result = {"model": model.source, "precision": args.precision, "new_tokens": args.new_tokens,
              "prefill_tokens": len(long_prompt), "one_chip": one_chip, "folded": best}
    for text, figures in best.items():
        figures["decode_ratio"] = figures["decode_s_per_token"] / one_chip["decode_s_per_token"]
        figures["prefill_ratio"] = figures["prefill_s"] / one_chip["prefill_s"]
        print(f"{text}: decode {figures['decode_ratio']:.3f}x one chip, prefill "
              f"{figures['prefill_ratio']:.3f}x", flush=True)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
