"""How long the cycle model takes to schedule a decode step, and that it is cached per shape.

    python scripts/bench_schedule.py [--config SmolLM2-135M-Instruct] [--precision int8-exact]

Traces the per-chip decode step of the config (SmolLM2: 30 layers) with abstract weights,
lowers it onto the chip and list-schedules it; then asks for the same shape again (cached)
and for a longer context (a new shape). The goal: at most 2 s for a 30-layer decode step.
"""

import argparse
import time

from lpu_jax.chips.layout import Layout
from lpu_jax.config import ModelConfig
from lpu_jax.lpu.deployment import CycleModel, Deployment
from lpu_jax.lpu.hardware import load_hardware
from lpu_jax.numerics.recipe import load_recipe


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="SmolLM2-135M-Instruct")
    parser.add_argument("--precision", default="int8-exact")
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--pp", type=int, default=1)
    args = parser.parse_args()
    config = ModelConfig.shipped_or_file(args.config)
    model = CycleModel(Deployment(config, Layout(args.tp, args.pp), load_recipe(args.precision),
                                  load_hardware("lpu-v1")))
    for label, context in (("first schedule", 100), ("same shape again", 200),
                           ("a new shape (context 1000)", 1000)):
        start = time.perf_counter()
        result = model.step("decode", 1, context)
        seconds = time.perf_counter() - start
        print(f"{label:28s} {seconds:6.3f} s   {result.ticks:,} cycles, "
              f"{result.operations():,} operations, {config.num_layers} layers")


if __name__ == "__main__":
    main()
