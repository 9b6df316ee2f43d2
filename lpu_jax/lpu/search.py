"""The layouts a chip count allows, ranked: what `lpu-estimate --chips N` answers.

Every (tp, pp) with tp x pp <= N is a candidate; those whose weights and KV caches alone
overflow a chip are dropped by arithmetic (chips.memory), the rest are scheduled by the cycle
model and kept when they fit with their activations.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from lpu_jax.chips.layout import Layout, layouts_within
from lpu_jax.chips.memory import MemoryPlan
from lpu_jax.config import ModelConfig
from lpu_jax.lpu.deployment import CycleModel, Deployment, Steady, capacity, most_chips
from lpu_jax.lpu.hardware import HardwareSpec
from lpu_jax.numerics.recipe import Recipe

# What each objective ranks by (smaller is better): the single-stream time per token, or the
# inverse of tokens/s with as many sequences in flight as fit.
OBJECTIVES: dict[str, Callable[[CycleModel, Steady], float]] = {
    "latency": lambda model, steady: steady.latency_s,
    "throughput": lambda model, steady: -model.at_most_sequences(steady)[1],
}


@dataclasses.dataclass(frozen=True)
class Candidate:
    """A layout that fits, its cycle model (schedules cached) and its rank."""

    model: CycleModel
    rank: float

    @property
    def layout(self) -> Layout:
        return self.model.deployment.layout


def search(config: ModelConfig, recipe: Recipe, hardware: HardwareSpec, chips: int,
           objective: str, positions: list[int], batch: int | None,
           context: int, ep: int = 1) -> list[Candidate]:
    """Every layout of at most `chips` chips that fits, the best first (ties: fewer chips,
    then fewer tp chips). Only what fitting and the rank need is scheduled; a candidate's
    model.report gives the rest."""
    plan, room = MemoryPlan(config, recipe), capacity(hardware)
    sequences, chips = batch or 1, min(chips, most_chips(hardware) or chips)
    ranked = []
    for layout in layouts_within(config, chips, batch, ep):
        layout = plan.fitting(layout, sequences, context, room)
        if layout is None:
            continue
        model = CycleModel(Deployment(config, layout, recipe, hardware), plan)
        steady = model.steady(positions, sequences, context)
        if steady.memory["fits"]:
            ranked.append(Candidate(model, OBJECTIVES[objective](model, steady)))
    return sorted(ranked, key=lambda c: (c.rank, c.layout.num_chips, c.layout.tp))


def fewest_chips(config: ModelConfig, recipe: Recipe, hardware: HardwareSpec,
                 positions: list[int], batch: int | None, context: int,
                 ep: int = 1) -> Layout | None:
    """The layout with the fewest chips that fits, activations included (fewer tp chips on a
    tie), or None: the layouts in that order, by arithmetic first, then scheduled."""
    plan, room = MemoryPlan(config, recipe), capacity(hardware)
    sequences = batch or 1
    for layout in layouts_within(config, most_chips(hardware), batch, ep):
        layout = plan.fitting(layout, sequences, context, room)
        if layout is None:
            continue
        model = CycleModel(Deployment(config, layout, recipe, hardware), plan)
        if model.steady(positions, sequences, context).memory["fits"]:
            return layout
    return None
