"""Lowering a jaxpr onto the chip: every operation becomes a node with a unit, a cost and the
nodes it waits for.

Nested jaxprs are handled, not skipped: calls (jit, custom_jvp/vjp, remat, shard_map bodies) are
inlined; a scan, and a while loop whose trip count is known before it runs, become a loop node
whose body is lowered as a graph of its own and runs `trips` times; a cond becomes a node holding
every branch, of which a static schedule must assume the longest. vmap leaves no body behind: its
batched operations are costed at their batched shapes.

Weights stay in SRAM in their storage format. Operations whose inputs are all weights or
compile-time constants (widening a stored int8 weight, multiplying by its scale, unpacking int4)
are what the LPU compiler folds into the weight install: they cost nothing here, and the value
remembers its narrowest storage dtype, from which the MXM picks its int8 or fp16 mode.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from jax.extend import core

from lpu_jax.errors import UserError
from lpu_jax.lpu.costs import FREE, Cost
from lpu_jax.lpu.topology import COLLECTIVES, Network

# Primitives that only rename or re-view data: no unit works for them.
_VIEWS = {"reshape", "squeeze", "expand_dims", "broadcast_in_dim", "axis_index", "pvary",
          "pbroadcast", "stop_gradient", "copy", "copy_p", "bitcast_convert_type",
          "optimization_barrier", "sharding_constraint", "random_wrap", "random_unwrap",
          "mesh_cast", "reshard"}
_SXM = {"transpose", "gather", "concatenate", "pad", "rev", "sort", "roll"}
# Moves or widens values without changing them: the result keeps its inputs' storage format.
_PRESERVING = {"convert_element_type", "transpose", "concatenate", "pad", "slice",
               "dynamic_slice", "gather", "rev"}
_MEM_READS = {"slice", "dynamic_slice"}
_MEM_WRITES = {"dynamic_update_slice": 1, "scatter": 2, "scatter-add": 2, "scatter_add": 2}
_CALLS = {"jit": "jaxpr", "pjit": "jaxpr", "closed_call": "call_jaxpr",
          "core_call": "call_jaxpr", "custom_jvp_call": "call_jaxpr",
          "custom_vjp_call": "call_jaxpr", "custom_vjp_call_jaxpr": "fun_jaxpr",
          "remat": "jaxpr", "checkpoint": "jaxpr", "shard_map": "jaxpr"}
_NOT_MODELLED = {"conv_general_dilated", "pallas_call", "custom_call", "pure_callback",
                 "io_callback", "debug_callback"}


class ScheduleError(UserError):
    """A program the static schedule cannot take (e.g. a loop of unknown length)."""


@dataclasses.dataclass
class Node:
    name: str
    cost: Cost
    deps: tuple[int, ...]
    bodies: tuple["Graph", ...] = ()  # a loop's body, or a cond's branches
    trips: int = 1


@dataclasses.dataclass
class Graph:
    nodes: list[Node]
    peak_activation_bytes: int  # the most intermediate bytes alive at once


@dataclasses.dataclass(frozen=True)
class _Value:
    producer: int | None  # the node that makes it; None: ready at the start
    storage: np.dtype  # the narrowest format its values were stored in
    constant: bool  # a weight or a compile-time constant
    fresh: bool = True  # takes SRAM of its own (not an in-place update or a view of a slice)


def _itemsize(dtype) -> int:
    # A PRNG key's extended dtype has no numpy equivalent: two uint32 words.
    return getattr(dtype, "itemsize", 8)


def _nbytes(aval) -> int:
    shape = getattr(aval, "shape", ())
    return math.prod(shape) * _itemsize(aval.dtype) if hasattr(aval, "dtype") else 0


def _size(aval) -> int:
    return math.prod(getattr(aval, "shape", ()))


def _narrowest(dtypes) -> np.dtype:
    return min(dtypes, key=_itemsize)


def _kept_storage(eqn, ins: list[_Value]):
    """The narrowest format among the results and the (non-scalar) inputs: a value moved, viewed
    or widened keeps the format it was stored in (a widened int8 is int8)."""
    return _narrowest([v.aval.dtype for v in eqn.outvars] + [
        v.storage for v, var in zip(ins, eqn.invars) if _size(var.aval) > 1])


def _sub_jaxpr(eqn, param):
    sub = eqn.params[param]
    if isinstance(sub, core.ClosedJaxpr):
        return sub.jaxpr, list(sub.consts)
    return sub, []


def _while_trips(eqn) -> int | None:
    """The trip count of `while i < n: ...; i += 1` with i starting at a literal and n a literal."""
    cond = eqn.params["cond_jaxpr"].jaxpr
    body = eqn.params["body_jaxpr"].jaxpr
    nc, nb = eqn.params["cond_nconsts"], eqn.params["body_nconsts"]
    if len(cond.eqns) != 1 or cond.eqns[0].primitive.name != "lt":
        return None
    i, n = cond.eqns[0].invars
    carry = cond.invars[nc:]
    if i not in carry or not isinstance(n, core.Literal):
        return None
    j = carry.index(i)
    start = eqn.invars[nc + nb + j]
    step = next((e for e in body.eqns if body.outvars[j] in e.outvars), None)
    counts_up = (step is not None and step.primitive.name == "add"
                 and step.invars[0] is body.invars[nb + j]
                 and isinstance(step.invars[1], core.Literal) and int(step.invars[1].val) == 1)
    if not isinstance(start, core.Literal) or not counts_up:
        return None
    return max(int(n.val) - int(start.val), 0)


def _allocates(eqn, ins: list[_Value], outs: list[_Value]) -> list[bool]:
    """Which outputs take SRAM of their own. Not: cache updates and a loop's carries (updated in
    place), reads of a slice (read where it lies), widened values (read narrow, converted as they
    stream); a view of data is fresh when the data is."""
    name = eqn.primitive.name
    if name in _MEM_WRITES or name in _MEM_READS:
        return [False] * len(outs)
    if name in _VIEWS:
        return [any(v.fresh for v in ins if not v.constant)] * len(outs)
    if name == "convert_element_type":
        return [_itemsize(outs[0].storage) >= _itemsize(eqn.outvars[0].aval.dtype)]
    if name == "scan":
        carries = eqn.params["num_carry"]
        return [index >= carries for index in range(len(outs))]
    if name == "while":
        return [False] * len(outs)
    return [True] * len(outs)


class Lowering:
    """Lowers jaxprs with one hardware's costs over one deployment's network."""

    def __init__(self, costs, network: Network):
        self.costs = costs
        self.network = network
        # Calls lowered once per body and input kinds (a model's identical layers), spliced in.
        self._templates: dict[tuple, tuple[list[Node], list[_Value], int]] = {}

    def lower(self, jaxpr: core.Jaxpr, consts, constant_inputs: list[bool]) -> Graph:
        """constant_inputs marks the inputs that are weights (stored in SRAM before it runs)."""
        return self._graph(jaxpr, consts, [_Value(None, v.aval.dtype, c, fresh=False)
                                           for v, c in zip(jaxpr.invars, constant_inputs)])

    def _graph(self, jaxpr, consts, inputs: list[_Value]) -> Graph:
        nodes: list[Node] = []
        _, peak = self._lower_into(jaxpr, consts, inputs, nodes)
        return Graph(nodes, peak)

    def _body(self, jaxpr, consts, inputs: list[_Value]) -> Graph:
        """A nested body as its own graph: its inputs are ready when it starts."""
        return self._graph(jaxpr, consts, [_Value(None, v.storage, v.constant, fresh=False)
                                           for v in inputs])

    def _lower_into(self, jaxpr, consts, inputs, nodes) -> tuple[list[_Value], int]:
        env: dict = {}
        for var, value in zip(jaxpr.constvars, consts):
            env[var] = _Value(None, np.asarray(value).dtype, True)
        for var, value in zip(jaxpr.invars, inputs):
            env[var] = value

        def read(v) -> _Value:
            if isinstance(v, core.Literal):
                return _Value(None, np.asarray(v.val).dtype, True)
            return env[v]

        # Where each value is last read: from then on its bytes are free (the activation peak).
        last_use = {}
        for index, eqn in enumerate(jaxpr.eqns):
            for v in eqn.invars:
                if not isinstance(v, core.Literal):
                    last_use[v] = index
        for v in jaxpr.outvars:
            if not isinstance(v, core.Literal):
                last_use[v] = len(jaxpr.eqns)
        live, peak, freeing = 0, 0, {}

        for index, eqn in enumerate(jaxpr.eqns):
            ins = [read(v) for v in eqn.invars]
            outs, transient = self._lower_eqn(eqn, ins, nodes)
            if eqn.primitive.name not in _CALLS:  # a call's outputs are its body's own values
                outs = [dataclasses.replace(v, fresh=f)
                        for v, f in zip(outs, _allocates(eqn, ins, outs))]
            for var, value in zip(eqn.outvars, outs):
                env[var] = value
                if not value.constant and value.fresh and var in last_use:
                    size = _nbytes(var.aval)
                    live += size
                    freeing.setdefault(last_use[var], []).append(size)
            peak = max(peak, live + transient)
            live -= sum(freeing.pop(index, []))
        return [read(v) for v in jaxpr.outvars], peak

    def _add(self, nodes, name, cost, ins, outvars, bodies=(), trips=1) -> list[_Value]:
        deps = tuple(sorted({v.producer for v in ins if v.producer is not None}))
        nodes.append(Node(name, cost, deps, bodies, trips))
        return [_Value(len(nodes) - 1, v.aval.dtype, False) for v in outvars]

    def _lower_eqn(self, eqn, ins: list[_Value], nodes) -> tuple[list[_Value], int]:
        """The eqn's output values, and the extra bytes it holds while it runs."""
        name = eqn.primitive.name
        outvars = eqn.outvars
        if name in _CALLS:
            return self._inline(eqn, ins, nodes)
        if name in ("scan", "while", "cond"):
            return self._control(eqn, ins, nodes)
        if name in _NOT_MODELLED:
            raise ScheduleError(f"the cycle model has no cost for {name!r}; schedule the plain "
                                "JAX reference of this operation instead")
        if name not in COLLECTIVES and all(v.constant for v in ins):
            # Weights and constants: folded by the compiler (into the weight install).
            return [_Value(None, _kept_storage(eqn, ins), True) for _ in outvars], 0
        storage = _kept_storage(eqn, ins) if name in _VIEWS or name in _PRESERVING else None
        if name in _VIEWS:
            producers = {v.producer for v in ins if v.producer is not None}
            if len(producers) <= 1:  # nothing to wait for but its one input
                producer = producers.pop() if producers else None
                return [_Value(producer, storage, False) for _ in outvars], 0
            cost = FREE
        else:
            cost = self._cost(eqn, ins)
        outs = self._add(nodes, name, cost, ins, outvars)
        if storage is not None:
            outs = [dataclasses.replace(v, storage=storage) for v in outs]
        return outs, 0

    def _cost(self, eqn, ins: list[_Value]) -> Cost:
        name, avals = eqn.primitive.name, [v.aval for v in eqn.invars]
        out_bytes = sum(_nbytes(v.aval) for v in eqn.outvars)
        if name == "dot_general":
            return self.costs.dot(avals[0].shape, avals[1].shape,
                                  eqn.params["dimension_numbers"], ins[0].storage, ins[1].storage)
        if name in COLLECTIVES:
            axes = eqn.params.get("axes", eqn.params.get("axis_name"))
            axes = axes if isinstance(axes, tuple) else (axes,)
            named = tuple(a for a in axes if isinstance(a, str))
            if not named:  # over positional axes (vmap's batched form): a local reduction
                return self.costs.vector(max(_size(a) for a in avals))
            return self.costs.collective(self.network, name, named, sum(map(_nbytes, avals)),
                                         eqn.params.get("perm", ()))
        if name in _SXM:
            return self.costs.shuffle(out_bytes)
        if name in _MEM_READS:
            return self.costs.memory(out_bytes)
        if name in _MEM_WRITES:
            return self.costs.memory(_nbytes(avals[_MEM_WRITES[name]]))
        sizes = [_size(a) for a in avals] + [_size(v.aval) for v in eqn.outvars]
        return self.costs.vector(max(sizes))

    def _inline(self, eqn, ins, nodes) -> tuple[list[_Value], int]:
        jaxpr, consts = _sub_jaxpr(eqn, _CALLS[eqn.primitive.name])
        if len(jaxpr.invars) != len(ins):
            raise ScheduleError(f"cannot follow the body of {eqn.primitive.name!r}")
        if eqn.primitive.name != "shard_map":
            return self._splice(jaxpr, consts, ins, nodes)
        # The body runs on each device of the mesh: those are the chips its collectives span.
        mesh = eqn.params["mesh"]
        outer, self.network = self.network, Network(self.network.hw, tuple(mesh.shape.items()))
        try:
            return self._lower_into(jaxpr, consts, ins, nodes)
        finally:
            self.network = outer

    def _splice(self, jaxpr, consts, ins: list[_Value], nodes) -> tuple[list[_Value], int]:
        """Inline a call body. It is lowered once with placeholder producers (input k's is
        -k - 1), and each call splices a copy with the placeholders replaced."""
        key = (id(jaxpr), tuple((v.storage, v.constant, v.fresh, v.producer is None)
                                for v in ins))
        if key not in self._templates:
            template: list[Node] = []
            placeholders = [v if v.producer is None else dataclasses.replace(v, producer=-k - 1)
                            for k, v in enumerate(ins)]
            outs, peak = self._lower_into(jaxpr, consts, placeholders, template)
            self._templates[key] = (template, outs, peak)
        template, outs, peak = self._templates[key]
        offset = len(nodes)

        def producer(p):
            if p is None or p >= 0:
                return None if p is None else p + offset
            return ins[-p - 1].producer

        for node in template:
            deps = tuple(sorted({producer(d) for d in node.deps} - {None}))
            nodes.append(dataclasses.replace(node, deps=deps))
        return [dataclasses.replace(v, producer=producer(v.producer)) for v in outs], peak

    def _control(self, eqn, ins, nodes) -> tuple[list[_Value], int]:
        name, p = eqn.primitive.name, eqn.params
        if name == "scan":
            body = self._body(*_sub_jaxpr(eqn, "jaxpr"), ins)
            bodies, trips = (body,), int(p["length"])
        elif name == "while":
            trips = _while_trips(eqn)
            if trips is None:
                raise ScheduleError("a while loop whose trip count is not known before it runs "
                                    "has no static schedule; use lax.scan or fori_loop with "
                                    "static bounds")
            nc, nb = p["cond_nconsts"], p["body_nconsts"]
            body = self._body(*_sub_jaxpr(eqn, "body_jaxpr"), ins[nc:nc + nb] + ins[nc + nb:])
            bodies = (body,)
        else:  # cond: the index picks a branch; a static schedule must allow the longest
            bodies = tuple(self._body(b.jaxpr, b.consts, ins[1:]) for b in p["branches"])
            trips = 1
        outs = self._add(nodes, name, FREE, ins, eqn.outvars, bodies, trips)
        return outs, max(b.peak_activation_bytes for b in bodies)
