"""The layouts a chip count allows, ranked: what `lpu-estimate --chips N` answers.

Every (tp, pp) with tp x pp <= N is a candidate; those whose weights and KV caches alone
overflow a chip are dropped by arithmetic (chips.memory), the rest are scheduled by the cycle
model and kept when they fit with their activations.
"""

from __future__ import annotations

from typing import Callable

from lpu_jax.chips.layout import Layout, valid_tp
from lpu_jax.chips.memory import MemoryPlan
from lpu_jax.config import ModelConfig
from lpu_jax.lpu.deployment import CycleModel, Deployment, most_chips
from lpu_jax.lpu.hardware import HardwareSpec
from lpu_jax.numerics.recipe import Recipe

# What each objective ranks by (larger is worse): the single-stream time per token, or the
# inverse of tokens/s with as many sequences in flight as fit.
OBJECTIVES: dict[str, Callable[[dict], float]] = {
    "latency": lambda row: row["decode"]["latency_per_token_s"],
    "throughput": lambda row: -row["at_most_sequences"]["tokens_per_s"],
}


def candidates(config: ModelConfig, chips: int, batch: int | None) -> list[Layout]:
    """Every layout of at most `chips` chips that splits the model (and the batch into equal
    micro-batches, when one is given)."""
    return [Layout(tp=tp, pp=pp) for tp in valid_tp(config)
            for pp in range(1, min(config.num_layers, chips // tp) + 1)
            if batch is None or batch % pp == 0]


def capacity(hardware: HardwareSpec) -> float:
    return hardware["sram" if hardware.kind == "lpu" else "hbm"]


def search(config: ModelConfig, recipe: Recipe, hardware: HardwareSpec, chips: int,
           objective: str, prompt_len: int, positions: list[int], batch: int | None,
           context: int) -> list[dict]:
    """The reports of every layout that fits in `chips` chips, the best first (ties: fewer
    chips, then fewer tp chips)."""
    plan, room = MemoryPlan(config, recipe), capacity(hardware)
    sequences, chips = batch or 1, min(chips, most_chips(hardware) or chips)
    rows = []
    for layout in candidates(config, chips, batch):
        layout = plan.balanced(layout, sequences, context)
        held = plan.fullest(layout, sequences, context)
        if held.weights + held.kv_cache > room:
            continue
        row = CycleModel(Deployment(config, layout, recipe, hardware), plan).report(
            prompt_len, positions, sequences, context)
        if row["memory_per_chip"]["fits"]:
            rows.append(row)
    rank = OBJECTIVES[objective]
    return sorted(rows, key=lambda row: (rank(row), row["chips"], row["tp"]))


def fewest_chips(config: ModelConfig, recipe: Recipe, hardware: HardwareSpec, prompt_len: int,
                 positions: list[int], sequences: int, context: int) -> Layout | None:
    """The layout with the fewest chips that fits, activations included (found by arithmetic,
    then checked with its schedules' activations until they agree), or None."""
    plan, activations = MemoryPlan(config, recipe), 0
    for _ in range(4):
        layout = plan.chips_needed(capacity(hardware), sequences, context, activations,
                                   most_chips(hardware))
        if layout is None:
            return None
        row = CycleModel(Deployment(config, layout, recipe, hardware), plan).report(
            prompt_len, positions, sequences, context)
        if row["memory_per_chip"]["fits"]:
            return layout
        activations = row["memory_per_chip"]["activations_bytes"]
    return None
