"""Wall time per decode token of a folded multi-chip deployment against one chip, same model.

    python scripts/bench_chips.py [--pp 8] [--tp 1] [--new_tokens 48]

A deployment of pp * tp chips folded onto one device decodes a batch of pp prompts in ring mode
(every stage busy at every tick); one chip decodes the same prompts one at a time (single-stream)
and as one batch. Prints one JSON object with seconds per generated token for each.
"""

import argparse
import json

from lpu_jax.checkpoint import load_model
from lpu_jax.chips.layout import Layout
from lpu_jax.engine.generate import Engine

PROMPTS = ["Tell me about the moon.", "What is a prime number?", "Describe a cat.",
           "Why do leaves change colour?", "Explain gravity simply.", "What is jazz?",
           "How do bees make honey?", "What is a volcano?", "Name a famous painter.",
           "What is rain?", "Describe the ocean.", "What is a star?"]


def per_token(generations) -> float:
    wall = generations[0].wall
    return wall.decode_s / wall.decode_tokens


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--pp", type=int, default=8)
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--new_tokens", type=int, default=48)
    args = parser.parse_args()
    model = load_model()
    prompts = [model.tokenizer.apply_chat_template([{"role": "user", "content": p}])
               for p in (PROMPTS * args.pp)[:args.pp]]

    def timed(engine, batch):
        engine.generate_batch(prompts, args.new_tokens, stop_token_ids=())  # compile, warm up
        if batch:
            return per_token(engine.generate_batch(prompts, args.new_tokens, stop_token_ids=()))
        runs = [engine.generate(p, args.new_tokens, stop_token_ids=()) for p in prompts]
        return sum(r.wall.decode_s for r in runs) / sum(r.wall.decode_tokens for r in runs)

    one_chip = Engine(model)
    many = Engine(model, layout=Layout(tp=args.tp, pp=args.pp), fold=True)
    result = {
        "model": model.source, "chips": many.layout.num_chips, "layout": many.placement.describe(),
        "batch": len(prompts), "new_tokens": args.new_tokens,
        "one_chip_single_stream_s_per_token": timed(one_chip, batch=False),
        "one_chip_batch_s_per_token": timed(one_chip, batch=True),
        "folded_ring_s_per_token": timed(many, batch=True),
    }
    result["ratio_vs_single_stream"] = (result["folded_ring_s_per_token"]
                                        / result["one_chip_single_stream_s_per_token"])
    result["ratio_vs_one_chip_batch"] = (result["folded_ring_s_per_token"]
                                         / result["one_chip_batch_s_per_token"])
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
