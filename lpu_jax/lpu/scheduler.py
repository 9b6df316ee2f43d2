"""The static schedule: list scheduling of a lowered program onto the chip's units and streams.

Ready operations are taken by the tick their inputs arrive (program order on a tie). Each issues
when the values it reads are there and enough
slots of its unit and enough stream registers are free, and holds them while it issues; there
is no backfilling, so the schedule is deterministic. Its results reach MEM after its latency
along the streams (lpu/costs.py). A VXM operation may take an input straight off the streams from
the VXM operation that makes it (ALU chaining): it then starts while its producer still runs,
needs its ALUs free at that moment (else it reads the value back from MEM), and cannot end
before its producer's last vector has passed through it. A loop runs its body's own schedule
`trips` times and holds every unit meanwhile; a cond holds them for its longest branch.

`schedule(fn, *args, hardware=...)` is the public entry point: trace, lower, schedule.
"""

from __future__ import annotations

import bisect
import dataclasses
import gc
import heapq
import math
from typing import Callable, Iterator

import jax
import jax.extend

from lpu_jax.lpu.costs import Product, costs_for
from lpu_jax.lpu.hardware import HardwareSpec, load_hardware
from lpu_jax.lpu.lowering import Graph, Lowering
from lpu_jax.lpu.topology import Network

STREAMS = "streams"


@dataclasses.dataclass(frozen=True)
class Event:
    """One operation's place in the schedule, in ticks of the hardware's clock."""

    name: str
    unit: str | None  # None: free (a re-view of data); "loop" for a loop or a cond
    slot: int
    start: int  # it issues: its unit's slots and streams are held from here ...
    end: int  # ... to here
    detail: str = ""
    body: "Schedule | None" = None  # a loop's (or the longest branch's) own schedule
    trips: int = 1
    scope: str = ""  # the jax.named_scope it was traced in
    done: int = 0  # its results are in MEM


@dataclasses.dataclass
class Schedule:
    """A static schedule of one chip's program; every chip of the deployment runs the same one."""

    ticks: int  # from the first operation's start to the last result in MEM
    tick_s: float  # seconds per tick: one clock cycle on an LPU, a nanosecond on a GPU
    events: list[Event]
    busy: dict[str, int]  # ticks each unit's slots were busy, summed (loops counted in full)
    units: dict[str, int]  # slots per unit (and the stream registers)
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
        """The unit busy for the largest share of the span (the streams are not a unit)."""
        used = {unit: share for unit, share in self.utilization().items() if unit != STREAMS}
        return max(sorted(used), key=lambda unit: used[unit])

    def flat(self, offset: int = 0) -> Iterator[Event]:
        """Every operation with a unit, loop bodies unrolled trip by trip, at absolute ticks."""
        for event in self.events:
            if event.body is None:
                yield dataclasses.replace(event, start=offset + event.start,
                                          end=offset + event.end, done=offset + event.done)
                continue
            for trip in range(event.trips):
                yield from event.body.flat(offset + event.start + trip * event.body.ticks)

    def operations(self) -> int:
        """Operations scheduled, loop bodies counted once per trip."""
        return sum(1 + (e.body.operations() * e.trips if e.body else 0) for e in self.events)

    def cycles_by_scope(self, group: Callable[[str], str] = str) -> dict[str, int]:
        """For each named scope (or each group of scopes), the cycles during which one of its
        operations was in flight, from its issue to its results in MEM; loop bodies count once
        per trip. Scopes run side by side, so the figures add up to more than the span."""
        spans: dict[str, list[tuple[int, int]]] = {}
        totals: dict[str, int] = {}
        for e in self.events:
            if e.body is not None:
                for scope, cycles in e.body.cycles_by_scope(group).items():
                    totals[scope] = totals.get(scope, 0) + cycles * e.trips
            elif e.unit is not None:
                spans.setdefault(group(e.scope), []).append((e.start, max(e.done, e.end)))
        for scope, intervals in spans.items():
            covered, reach = 0, None
            for start, end in sorted(intervals):
                if reach is None or start > reach:
                    covered += end - start
                    reach = end
                elif end > reach:
                    covered += end - reach
                    reach = end
            totals[scope] = totals.get(scope, 0) + covered
        return totals


class _Slots:
    """Each unit's slots and the stream registers, each free from some tick on: per unit a
    sorted list of (free from, slot number)."""

    def __init__(self, units: dict[str, int]):
        self.free_at = {unit: [(0, slot) for slot in range(slots)]
                        for unit, slots in units.items()}

    def free(self, unit: str, at: int) -> int:
        return bisect.bisect_right(self.free_at.get(unit, ()), (at, math.inf))

    def earliest(self, needs: list[tuple[str, int]], after: int) -> int:
        """The first tick from `after` on when every (unit, count) need is free."""
        start = after
        for unit, count in needs:
            slots = self.free_at[unit]
            start = max(start, slots[min(count, len(slots)) - 1][0])
        return start

    def take(self, needs: list[tuple[str, int]], start: int, end: int) -> int:
        """Hold the earliest-free slots of each need until `end`; the first unit's first slot."""
        first = 0
        for position, (unit, count) in enumerate(needs):
            slots = self.free_at[unit]
            chosen = slots[:count]
            del slots[:count]
            for _, slot in chosen:
                bisect.insort(slots, (end, slot))
            if position == 0:
                first = chosen[0][1]
        return first

    def latest(self) -> int:
        return max(slots[-1][0] for slots in self.free_at.values())

    def hold_all(self, end: int) -> None:
        for unit, slots in self.free_at.items():
            self.free_at[unit] = sorted((max(end, t), slot) for t, slot in slots)


def list_schedule(graph: Graph, costs, tick_s: float, chips: int, hardware: str) -> Schedule:
    units = dict(costs.units)
    if costs.streams:
        units[STREAMS] = costs.streams
    slots = _Slots(units)
    nodes = graph.nodes
    count = len(nodes)
    first, last, done, chainable = [0] * count, [0] * count, [0] * count, [False] * count
    events, busy, energy = [], dict.fromkeys(units, 0), 0.0
    # Ready operations are taken by the tick their inputs are there (program order on a tie).
    waiting = [len(node.deps) for node in nodes]
    users: list[list[int]] = [[] for _ in nodes]
    for index, node in enumerate(nodes):
        for d in node.deps:
            users[d].append(index)
    ready = [(0, index) for index in range(count) if not waiting[index]]
    heapq.heapify(ready)
    while ready:
        _, index = heapq.heappop(ready)
        node = nodes[index]
        in_mem = max((done[d] for d in node.deps), default=0)
        if node.bodies:
            runs = [list_schedule(b, costs, tick_s, chips, hardware) for b in node.bodies]
            body = max(runs, key=lambda s: s.ticks)  # a loop has one body; a cond, its longest
            start = max(in_mem, slots.latest())
            end = start + body.ticks * node.trips
            slots.hold_all(end)
            for unit, ticks in body.busy.items():
                busy[unit] += ticks * node.trips
            energy += body.energy_pj * node.trips
            events.append(Event(node.name, "loop", 0, start, end,
                                f"{node.trips} x {body.ticks} ticks", body, node.trips,
                                node.scope, end))
            first[index] = last[index] = done[index] = end
        else:
            energy += _place(node, index, in_mem, costs, slots, first, last, done, chainable,
                             busy, events)
        for user in users[index]:
            waiting[user] -= 1
            if not waiting[user]:
                heapq.heappush(ready, (_data_ready(nodes[user], done, first, chainable, costs),
                                       user))
    return Schedule(max(done, default=0), tick_s, events, busy, units, energy, chips,
                    graph.peak_activation_bytes, hardware)


def _data_ready(node, done, first, chainable, costs) -> int:
    """The earliest tick its inputs could reach it (off the streams where it may chain)."""
    start, _ = _chain_start(node, done, first, chainable, costs)
    return start


def _chain_start(node, done, first, chainable, costs) -> tuple[int, list[int]]:
    """When it could start, and the producers it would take off the streams. It starts when
    the latest stream it can chain reaches it; every other input must be in MEM by then (read
    as usual). When one is neither (its stream gone, its result not yet written), everything
    is read from MEM."""
    candidates = [d for d in node.chained if chainable[d]]
    in_mem = max((done[d] for d in node.deps), default=0)
    if not candidates:
        return in_mem, []
    read = costs.read_path("VXM")
    start = max([done[d] for d in node.deps if d not in candidates]
                + [first[d] - read for d in candidates])
    chained = [d for d in candidates if first[d] - read == start]
    if any(done[d] > start for d in candidates if d not in chained):
        return in_mem, []
    return start, chained


def _product_cost(product: Product, in_mem: int, costs, slots: _Slots):
    """A product on the planes free when it can start, with the streams free then, unless
    waiting for more streams ends it sooner."""
    at = slots.earliest([("MXM", 1)], in_mem)
    planes = slots.free("MXM", at)
    now = costs.product_cost(product, planes, slots.free(STREAMS, at))
    now_at = slots.earliest([("MXM", now.width), (STREAMS, now.streams)], at)
    ideal = costs.product_cost(product, planes, costs.streams)
    later = slots.earliest([("MXM", ideal.width), (STREAMS, ideal.streams)], at)
    return ideal if later + ideal.ticks < now_at + now.ticks else now


def _place(node, index, in_mem, costs, slots, first, last, done, chainable, busy,
           events) -> float:
    """Schedule one operation; returns its energy."""
    cost = node.cost
    if isinstance(cost, Product):
        cost = _product_cost(cost, in_mem, costs, slots)
    if cost.unit is None:
        first[index] = last[index] = done[index] = in_mem
        return 0.0
    needs = [(cost.unit, cost.width), *cost.helpers]
    if cost.streams:
        needs.append((STREAMS, cost.streams))
    on_streams, chained = _chain_start(node, done, first, chainable, costs)
    start = None
    if chained:
        own = cost.lead - costs.read_path("VXM")  # its own delay once a vector reaches it
        if slots.earliest(needs, on_streams) <= on_streams:
            start = on_streams
            first[index] = max([start + cost.lead] + [first[d] + own for d in chained])
            last[index] = max([start + cost.ticks - 1 + cost.lead]
                              + [last[d] + own for d in chained])
    if start is None:  # its inputs come from MEM
        start = slots.earliest(needs, in_mem)
        first[index] = start + cost.lead
        last[index] = start + cost.ticks - 1 + cost.lead
    hold = max(cost.ticks, last[index] - cost.lead + 1 - start)
    slot = slots.take(needs, start, start + hold)
    for unit, width in needs:
        busy[unit] += hold * width
    done[index] = last[index] + 1 + cost.write
    chainable[index] = cost.chainable
    events.append(Event(node.name, cost.unit, slot, start, start + hold, cost.detail,
                        scope=node.scope, done=done[index]))
    return cost.energy_pj


@dataclasses.dataclass(frozen=True)
class Traced:
    """A function traced once, to be scheduled on any hardware."""

    closed: jax.extend.core.ClosedJaxpr
    constant: tuple[bool, ...]  # which inputs are weights
    axes: tuple[tuple[str, int], ...]


def trace(fn: Callable, *args, axes: tuple[tuple[str, int], ...] = (),
          weights: tuple[int, ...] = (), **kwargs) -> Traced:
    """fn(*args, **kwargs) as a jaxpr (args may be jax.ShapeDtypeStruct pytrees)."""
    closed = jax.make_jaxpr(lambda *a: fn(*a, **kwargs), axis_env=list(axes))(*args)
    constant = []
    for position, arg in enumerate(args):
        constant += [position in weights] * len(jax.tree.leaves(arg))
    return Traced(closed, tuple(constant), tuple(axes))


def schedule_traced(traced: Traced, hardware: HardwareSpec) -> Schedule:
    costs = costs_for(hardware)
    network = Network(hardware, traced.axes)
    # Lowering and scheduling make many small objects and no reference cycles; a cyclic
    # collection meanwhile would rescan JAX's whole heap each time, for nothing.
    collecting = gc.isenabled()
    gc.disable()
    try:
        graph = Lowering(costs, network).lower(traced.closed.jaxpr, traced.closed.consts,
                                               list(traced.constant))
        return list_schedule(graph, costs, costs.tick_s, network.num_chips, hardware.name)
    finally:
        if collecting:
            gc.enable()


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
    return schedule_traced(trace(fn, *args, axes=axes, weights=weights, **kwargs), spec)
