"""The static schedule: list scheduling of a lowered program onto the chip's units.

Operations are taken in program order. Each starts when the operations it reads have ended and
enough slots of its unit are free (a unit has several slots where the chip runs several such
operations at once: 16 ALUs per VXM lane, two SXMs), and holds them for its cost; there is no
backfilling, so the schedule is deterministic. A loop runs its body's own schedule `trips` times
and holds every unit meanwhile; a cond holds them for its longest branch.

`schedule(fn, *args, hardware=...)` is the public entry point: trace, lower, schedule.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax

from lpu_jax.lpu.costs import costs_for
from lpu_jax.lpu.hardware import HardwareSpec, load_hardware
from lpu_jax.lpu.lowering import Graph, Lowering
from lpu_jax.lpu.topology import Network


@dataclasses.dataclass(frozen=True)
class Event:
    """One operation's place in the schedule, in ticks of the hardware's clock."""

    name: str
    unit: str | None  # None: free (a re-view of data); "loop" for a loop or a cond
    slot: int
    start: int
    end: int
    detail: str = ""
    body: "Schedule | None" = None  # a loop's (or the longest branch's) own schedule
    trips: int = 1


@dataclasses.dataclass
class Schedule:
    """A static schedule of one chip's program; every chip of the deployment runs the same one."""

    ticks: int  # from the first operation's start to the last one's end
    tick_s: float  # seconds per tick: one clock cycle on an LPU, a nanosecond on a GPU
    events: list[Event]
    busy: dict[str, int]  # ticks each unit's slots were busy, summed (loops counted in full)
    units: dict[str, int]  # slots per unit
    energy_pj: float  # dynamic energy of every operation
    chips: int
    peak_activation_bytes: int
    hardware: str

    @property
    def seconds(self) -> float:
        return self.ticks * self.tick_s

    def utilization(self) -> dict[str, float]:
        """The share of the span each unit's slots were busy."""
        span = max(self.ticks, 1)
        return {unit: self.busy.get(unit, 0) / (slots * span) for unit, slots in self.units.items()}

    def bottleneck(self) -> str:
        """The unit busy for the largest share of the span."""
        used = self.utilization()
        return max(sorted(used), key=lambda unit: used[unit])

    def operations(self) -> int:
        """Operations scheduled, loop bodies counted once per trip."""
        return sum(1 + (e.body.operations() * e.trips if e.body else 0) for e in self.events)


def list_schedule(graph: Graph, units: dict[str, int], tick_s: float, chips: int,
                  hardware: str) -> Schedule:
    free_at = {unit: [0] * slots for unit, slots in units.items()}
    ends = [0] * len(graph.nodes)
    events, busy, energy = [], dict.fromkeys(units, 0), 0.0
    for index, node in enumerate(graph.nodes):
        ready = max((ends[d] for d in node.deps), default=0)
        if node.bodies:
            runs = [list_schedule(b, units, tick_s, chips, hardware) for b in node.bodies]
            body = max(runs, key=lambda s: s.ticks)  # a loop has one body; a cond, its longest
            start = max([ready] + [t for slots in free_at.values() for t in slots])
            end = start + body.ticks * node.trips
            for slots in free_at.values():
                slots[:] = [end] * len(slots)
            for unit, ticks in body.busy.items():
                busy[unit] += ticks * node.trips
            energy += body.energy_pj * node.trips
            events.append(Event(node.name, "loop", 0, start, end,
                                f"{node.trips} x {body.ticks} ticks", body, node.trips))
        elif node.cost.unit is None:
            start = end = ready
        else:
            slots = free_at[node.cost.unit]
            chosen = sorted(range(len(slots)), key=lambda s: slots[s])[:node.cost.width]
            start = max([ready] + [slots[s] for s in chosen])
            end = start + node.cost.ticks
            for s in chosen:
                slots[s] = end
            slot = chosen[0]
            busy[node.cost.unit] += node.cost.ticks * len(chosen)
            energy += node.cost.energy_pj
            events.append(Event(node.name, node.cost.unit, slot, start, end, node.cost.detail))
        ends[index] = end
    return Schedule(max(ends, default=0), tick_s, events, busy, dict(units), energy, chips,
                    graph.peak_activation_bytes, hardware)


def schedule(fn: Callable, *args, hardware: HardwareSpec | str = "lpu-v1",
             axes: tuple[tuple[str, int], ...] = (), weights: tuple[int, ...] = (),
             **kwargs) -> Schedule:
    """Trace fn(*args, **kwargs) to a jaxpr and schedule it on one chip of `hardware`.

    args may be arrays or jax.ShapeDtypeStruct pytrees (nothing is computed). `axes` names the
    chip axes fn's collectives run over, major first, e.g. (("pp", 2), ("tp", 4)); a shard_map
    inside fn brings its own mesh. `weights` are the positions of the arguments held in SRAM
    before the step runs: conversions of them fold into the MXM's weight install.
    """
    spec = load_hardware(hardware) if isinstance(hardware, str) else hardware
    closed = jax.make_jaxpr(lambda *a: fn(*a, **kwargs), axis_env=list(axes))(*args)
    constant = []
    for position, arg in enumerate(args):
        constant += [position in weights] * len(jax.tree.leaves(arg))
    costs = costs_for(spec)
    network = Network(spec, tuple(axes))
    graph = Lowering(costs, network).lower(closed.jaxpr, closed.consts, constant)
    return list_schedule(graph, costs.units, costs.tick_s, network.num_chips, spec.name)
