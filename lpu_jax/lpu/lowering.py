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
from lpu_jax.lpu.costs import FREE, Cost, Product, itemsize, stream_width
from lpu_jax.lpu.topology import COLLECTIVES, Network

# Every primitive the lowering meets is classified here; one it does not know is an error that
# names it, so nothing is silently costed as free.
# Only renames or re-views data: no unit works for them.
_VIEWS = {"reshape", "squeeze", "expand_dims", "broadcast_in_dim", "axis_index", "pvary",
          "pbroadcast", "stop_gradient", "copy", "copy_p", "bitcast_convert_type",
          "optimization_barrier", "sharding_constraint", "random_wrap", "random_unwrap",
          "mesh_cast", "reshard", "device_put"}
# One VXM instruction per element.
_ELEMENTWISE = {"abs", "add", "sub", "mul", "neg", "max", "min", "and", "or", "not", "xor",
                "eq", "ne", "lt", "le", "gt", "ge", "select_n", "convert_element_type",
                "floor", "ceil", "round", "sign", "clamp", "integer_pow", "square", "rsqrt",
                "exp2", "is_finite", "nextafter", "rem", "shift_left", "shift_right_arithmetic",
                "shift_right_logical", "population_count", "clz", "iota", "copysign",
                "reduce_precision", "real", "imag", "conj", "add_any"}
# Functions that are a chain of VXM instructions: the figure vxm_ops_<kind> gives its length.
_CHAINS = {"logistic": "logistic", "tanh": "tanh", "exp": "exp", "expm1": "exp",
           "div": "div", "sqrt": "div", "cbrt": "polynomial", "log": "polynomial",
           "log1p": "polynomial", "sin": "polynomial", "cos": "polynomial", "tan": "polynomial",
           "asin": "polynomial", "acos": "polynomial", "atan": "polynomial",
           "atan2": "polynomial", "sinh": "polynomial", "cosh": "polynomial",
           "asinh": "polynomial", "acosh": "polynomial", "atanh": "polynomial",
           "erf": "polynomial", "erfc": "polynomial", "erf_inv": "polynomial",
           "lgamma": "polynomial", "digamma": "polynomial", "pow": "polynomial",
           "random_bits": "polynomial", "random_seed": "polynomial",
           "random_fold_in": "polynomial", "random_split": "polynomial",
           "threefry2x32": "polynomial", "rng_bit_generator": "polynomial"}
_REDUCTIONS = {"reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "reduce_and",
               "reduce_or", "reduce_xor", "argmax", "argmin", "cumsum", "cummax", "cummin",
               "cumprod", "cumlogsumexp"}
_SXM = {"transpose", "gather", "concatenate", "pad", "rev", "roll", "stack"}
_SORTS = {"sort", "top_k"}  # a bitonic network of SXM passes
# Moves or widens values without changing them: the result keeps its inputs' storage format.
_PRESERVING = {"convert_element_type", "transpose", "concatenate", "pad", "slice",
               "dynamic_slice", "gather", "rev", "stack", "split"}
_MEM_READS = {"slice", "dynamic_slice", "split"}
_MEM_WRITES = {"dynamic_update_slice": 1, "scatter": 2, "scatter-add": 2, "scatter_add": 2}
_CALLS = {"jit": "jaxpr", "pjit": "jaxpr", "closed_call": "call_jaxpr",
          "core_call": "call_jaxpr", "custom_jvp_call": "call_jaxpr",
          "custom_vjp_call": "call_jaxpr", "custom_vjp_call_jaxpr": "fun_jaxpr",
          "remat": "jaxpr", "checkpoint": "jaxpr", "shard_map": "jaxpr"}
_CONTROL = {"scan", "while", "cond"}
# Calls that exist for XLA's sake (XLA:CPU's bit-identity, numerics/portable.py; its speed,
# numerics.matmul.grouped_dot): the LPU runs the plain operation instead, so they are costed
# as it.
_LPU_EQUIVALENTS = {"ordered_sum": "reduce_sum", "portable_exp": "exp",
                    "grouped_dot": "ragged_dot_general"}
_NOT_MODELLED = {"conv_general_dilated", "pallas_call", "custom_call", "pure_callback",
                 "io_callback", "debug_callback"}
CLASSIFIED = (_VIEWS | _ELEMENTWISE | set(_CHAINS) | _REDUCTIONS | _SXM | _SORTS
              | _MEM_READS | set(_MEM_WRITES) | set(_CALLS) | _CONTROL | set(COLLECTIVES)
              | {"dot_general", "ragged_dot_general"})


class ScheduleError(UserError):
    """A program the static schedule cannot take (e.g. a loop of unknown length)."""


@dataclasses.dataclass
class Node:
    name: str
    cost: Cost | Product  # a Product is costed when the scheduler knows the free planes
    deps: tuple[int, ...]
    bodies: tuple["Graph", ...] = ()  # a loop's body, or a cond's branches
    trips: int = 1
    chained: tuple[int, ...] = ()  # deps whose results it may take off the streams
    scope: str = ""  # the jax.named_scope it was traced in


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


def _nbytes(aval) -> int:
    shape = getattr(aval, "shape", ())
    return math.prod(shape) * itemsize(aval.dtype) if hasattr(aval, "dtype") else 0


def _size(aval) -> int:
    return math.prod(getattr(aval, "shape", ()))


def _vectors(aval, lanes: int) -> int:
    """Vectors an array fills. Its last axis runs along the lanes, a row of at least a vector
    in whole vectors; narrower rows are packed side by side."""
    shape = tuple(getattr(aval, "shape", ()))
    if not shape or shape[-1] < lanes:
        return max(1, math.ceil(math.prod(shape) / lanes))
    return math.prod(shape[:-1]) * math.ceil(shape[-1] / lanes)


def _narrowest(dtypes) -> np.dtype:
    return min(dtypes, key=itemsize)


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
        return [itemsize(outs[0].storage) >= itemsize(eqn.outvars[0].aval.dtype)]
    if name == "scan":
        carries = eqn.params["num_carry"]
        return [index >= carries for index in range(len(outs))]
    if name == "while":
        return [False] * len(outs)
    return [True] * len(outs)


def _streams(avals) -> int:
    """Streams per vector in flight for these arrays (scalars ride along as immediates)."""
    return sum(stream_width(a.dtype) for a in avals if _size(a) > 1)


def _reduced_lanes(eqn, in_aval, out_aval) -> int:
    """How many lanes a reduction folds together: the input's last axis when the reduction
    runs along it; 1 when the lanes survive (a sum down the rows)."""
    shape, out = tuple(in_aval.shape), tuple(out_aval.shape)
    axes = eqn.params.get("axes", eqn.params.get("axis"))
    if axes is not None and eqn.primitive.name in _REDUCTIONS:
        axes = axes if isinstance(axes, (tuple, list)) else (axes,)
        return shape[-1] if shape and len(shape) - 1 in [a % len(shape) for a in axes] else 1
    # A named call (ordered_sum) has no axes parameter: read it off the shapes.
    if not shape or shape[-1] == 1:
        return 1
    if out == shape[:-1] or out == shape[:-1] + (1,):
        return shape[-1]
    if out[-1:] == shape[-1:]:
        return 1
    return shape[-1]


def _counts_as_read(eqns) -> dict:
    """How many dot_general eqns read each variable: the MXM planes that stream it at once."""
    readers: dict = {}
    for e in eqns:
        if e.primitive.name == "dot_general":
            for v in e.invars:
                if not isinstance(v, core.Literal):
                    readers[v] = readers.get(v, 0) + 1
    return readers


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
                                           for v, c in zip(jaxpr.invars, constant_inputs)], "")

    def _graph(self, jaxpr, consts, inputs: list[_Value], scope: str) -> Graph:
        nodes: list[Node] = []
        _, peak = self._lower_into(jaxpr, consts, inputs, nodes, scope)
        return Graph(nodes, peak)

    def _body(self, jaxpr, consts, inputs: list[_Value], scope: str) -> Graph:
        """A nested body as its own graph: its inputs are ready when it starts."""
        return self._graph(jaxpr, consts, [_Value(None, v.storage, v.constant, fresh=False)
                                           for v in inputs], scope)

    def _lower_into(self, jaxpr, consts, inputs, nodes, scope) -> tuple[list[_Value], int]:
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
        context = _Context(_counts_as_read(jaxpr.eqns), {})

        for index, eqn in enumerate(jaxpr.eqns):
            ins = [read(v) for v in eqn.invars]
            stack = str(eqn.source_info.name_stack)
            inner = "/".join(p for p in (scope, stack) if p)
            outs, transient = self._lower_eqn(eqn, ins, nodes, inner, context)
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

    def _add(self, nodes, name, cost, ins, outvars, scope, bodies=(), trips=1,
             chain=False) -> list[_Value]:
        deps = tuple(sorted({v.producer for v in ins if v.producer is not None}))
        nodes.append(Node(name, cost, deps, bodies, trips, deps if chain else (), scope))
        return [_Value(len(nodes) - 1, v.aval.dtype, False) for v in outvars]

    def _lower_eqn(self, eqn, ins: list[_Value], nodes, scope,
                   context) -> tuple[list[_Value], int]:
        """The eqn's output values, and the extra bytes it holds while it runs."""
        name = eqn.primitive.name
        outvars = eqn.outvars
        if name in _CALLS:
            equivalent = _LPU_EQUIVALENTS.get(str(eqn.params.get("name", "")))
            if equivalent == "ragged_dot_general":
                return self._grouped_product(eqn, ins, nodes, scope), 0
            if equivalent is not None:
                return self._lower_as(equivalent, eqn, ins, nodes, scope), 0
            return self._inline(eqn, ins, nodes, scope)
        if name in _CONTROL:
            return self._control(eqn, ins, nodes, scope)
        if name in _NOT_MODELLED:
            raise ScheduleError(f"the cycle model has no cost for {name!r}; schedule the plain "
                                "JAX reference of this operation instead")
        if name not in CLASSIFIED:
            raise ScheduleError(f"the cycle model does not know the primitive {name!r}: "
                                "classify it in lpu/lowering.py")
        if name not in COLLECTIVES and all(v.constant for v in ins):
            # Weights and constants: folded by the compiler (into the weight install).
            return [_Value(None, _kept_storage(eqn, ins), True) for _ in outvars], 0
        storage = _kept_storage(eqn, ins) if name in _VIEWS or name in _PRESERVING else None
        if name in _VIEWS:
            producers = {v.producer for v in ins if v.producer is not None}
            if len(producers) <= 1:  # nothing to wait for but its one input
                producer = producers.pop() if producers else None
                return [_Value(producer, storage, False) for _ in outvars], 0
            outs = self._add(nodes, name, FREE, ins, outvars, scope)
        elif name == "dot_general":
            outs = self._product(eqn, ins, nodes, scope, context)
        elif name == "ragged_dot_general":
            outs = self._grouped_product(eqn, ins, nodes, scope)
        else:
            outs = self._lower_as(name, eqn, ins, nodes, scope)
        if storage is not None:
            outs = [dataclasses.replace(v, storage=storage) for v in outs]
        return outs, 0

    def _lower_as(self, name, eqn, ins: list[_Value], nodes, scope) -> list[_Value]:
        """Nodes for one operation named `name` over the eqn's operands and results."""
        avals, outs = [v.aval for v in eqn.invars], [v.aval for v in eqn.outvars]
        out_bytes = sum(_nbytes(a) for a in outs)
        costs = self.costs
        if name in COLLECTIVES:
            axes = eqn.params.get("axes", eqn.params.get("axis_name"))
            axes = axes if isinstance(axes, tuple) else (axes,)
            named = tuple(a for a in axes if isinstance(a, str))
            if named:
                cost = costs.collective(self.network, name, named, sum(map(_nbytes, avals)),
                                        eqn.params.get("perm", ()))
                return self._add(nodes, name, cost, ins, eqn.outvars, scope)
            # Over positional axes (vmap's batched form): the chips' values added locally.
            cost = costs.vector(self._vectors(avals), max(map(_size, avals)), 1,
                                _streams(avals) + _streams(outs))
            return self._add(nodes, name, cost, ins, eqn.outvars, scope, chain=True)
        if name in _SXM:
            return self._add(nodes, name, costs.shuffle(out_bytes), ins, eqn.outvars, scope)
        if name in _SORTS:
            length = max(avals[0].shape[-1], 2)
            passes = math.ceil(math.log2(length)) * (math.ceil(math.log2(length)) + 1) // 2
            cost = costs.shuffle(_nbytes(avals[0]) * passes)
            return self._add(nodes, name, cost, ins, eqn.outvars, scope)
        if name in _MEM_READS:
            return self._add(nodes, name, costs.memory(out_bytes), ins, eqn.outvars, scope)
        if name in _MEM_WRITES:
            cost = costs.memory(_nbytes(avals[_MEM_WRITES[name]]))
            return self._add(nodes, name, cost, ins, eqn.outvars, scope)
        elements = max(map(_size, avals + outs))
        streams = _streams(avals) + _streams(outs)
        if name in _REDUCTIONS:
            lanes = _reduced_lanes(eqn, avals[0], outs[0])
            # Vectors folded elementwise (taking its input off the streams), then the lanes.
            # Its result exists only once the last vector is in: it feeds the next operation
            # from MEM (but for its own lane tree).
            fold = costs.vector(self._vectors(avals[:1]), _size(avals[0]), 1, streams,
                                chainable=lanes > 1)
            folded = self._add(nodes, name, fold, ins, eqn.outvars, scope, chain=True)
            if lanes == 1:
                return folded
            tree = costs.lane_reduction(self._vectors(outs), lanes, streams)
            return self._add(nodes, f"{name} lanes", tree, folded[:1], eqn.outvars, scope,
                             chain=True)
        alu_ops = costs.alu_ops.get(_CHAINS[name], 1) if name in _CHAINS else 1
        cost = costs.vector(self._vectors(avals + outs), elements, alu_ops, streams)
        return self._add(nodes, name, cost, ins, eqn.outvars, scope, chain=True)

    def _vectors(self, avals) -> int:
        return max((_vectors(a, getattr(self.costs, "lanes", 1)) for a in avals), default=1)

    def _product(self, eqn, ins: list[_Value], nodes, scope, context) -> list[_Value]:
        """A matrix product on the MXM. A weight is installed; the streamed operand, when several
        planes stream it at once, is first copied next to each of them."""
        avals = [v.aval for v in eqn.invars]
        work, installed = self.costs.dot(
            avals[0].shape, avals[1].shape, eqn.params["dimension_numbers"], ins[0].storage,
            ins[1].storage, installable=(ins[0].constant, ins[1].constant))
        if isinstance(work, Product):
            streamed = 0 if installed == "rhs" else 1
            var = eqn.invars[streamed]
            planes = min(self.costs.planes, work.passes * context.readers.get(var, 1))
            if planes > 1 and not ins[streamed].constant:
                if var not in context.copies:
                    copy = self.costs.copies(self._vectors(avals[streamed:streamed + 1]),
                                             _nbytes(avals[streamed]), planes)
                    context.copies[var] = self._add(nodes, "copy", copy, [ins[streamed]],
                                                    [var], scope)[0]
                ins = list(ins)
                ins[streamed] = dataclasses.replace(ins[streamed],
                                                    producer=context.copies[var].producer)
        return self._add(nodes, "dot_general", work, ins, eqn.outvars, scope)

    def _grouped_product(self, eqn, ins: list[_Value], nodes, scope) -> list[_Value]:
        """Rows [R, I] grouped over the experts a chip holds: lax.ragged_dot's rows by [E, I, O],
        or numerics.matmul.grouped_dot's by E matrices [I, O] (model.moe). Which experts the
        rows pick is known only when the step runs, so the static schedule takes the worst
        case: min(R, E) experts' weights installed (each row a different expert, at most every
        expert held), and the R rows streamed through them, evenly (an estimate: a skewed
        routing streams the same rows through fewer installs)."""
        shapes = [v.aval.shape for v in eqn.invars]
        rows, inner = shapes[0]
        if eqn.primitive.name == "ragged_dot_general":
            dims = eqn.params["ragged_dot_dimension_numbers"].dot_dimension_numbers
            if dims != (((1,), (1,)), ((), ())):
                raise ScheduleError(f"the cycle model takes ragged dots of rows [R, I] by "
                                    f"[E, I, O] only, not dimension numbers {dims}")
            experts, weights = shapes[1][0], ins[1:2]
        else:  # x, the experts' matrices, the group sizes
            experts, weights = len(shapes) - 2, ins[1:-1]
        outer = shapes[1][-1]
        installed = max(1, min(rows, experts))
        work, _ = self.costs.dot((installed, math.ceil(rows / installed), inner),
                                 (installed, inner, outer), (((2,), (1,)), ((0,), (0,))),
                                 ins[0].storage, weights[0].storage,
                                 installable=(False, all(v.constant for v in weights)))
        return self._add(nodes, "grouped product", work, ins, eqn.outvars, scope)

    def _inline(self, eqn, ins, nodes, scope) -> tuple[list[_Value], int]:
        jaxpr, consts = _sub_jaxpr(eqn, _CALLS[eqn.primitive.name])
        if len(jaxpr.invars) != len(ins):
            raise ScheduleError(f"cannot follow the body of {eqn.primitive.name!r}")
        if eqn.primitive.name != "shard_map":
            return self._splice(jaxpr, consts, ins, nodes, scope)
        # The body runs on each device of the mesh: those are the chips its collectives span.
        mesh = eqn.params["mesh"]
        outer, self.network = self.network, Network(self.network.hw, tuple(mesh.shape.items()))
        try:
            return self._lower_into(jaxpr, consts, ins, nodes, scope)
        finally:
            self.network = outer

    def _splice(self, jaxpr, consts, ins: list[_Value], nodes,
                scope) -> tuple[list[_Value], int]:
        """Inline a call body. It is lowered once with placeholder producers (input k's is
        -k - 1), and each call splices a copy with the placeholders replaced."""
        key = (id(jaxpr), scope, tuple((v.storage, v.constant, v.fresh, v.producer is None)
                                       for v in ins))
        if key not in self._templates:
            template: list[Node] = []
            placeholders = [v if v.producer is None else dataclasses.replace(v, producer=-k - 1)
                            for k, v in enumerate(ins)]
            outs, peak = self._lower_into(jaxpr, consts, placeholders, template, scope)
            self._templates[key] = (template, outs, peak)
        template, outs, peak = self._templates[key]
        offset = len(nodes)
        placeholders = [v.producer for v in ins]

        def producer(p):
            if p is None or p >= 0:
                return None if p is None else p + offset
            return placeholders[-p - 1]

        def mapped(deps):
            if not deps:
                return deps
            ids = {d + offset if d >= 0 else placeholders[-d - 1] for d in deps}
            ids.discard(None)
            return tuple(sorted(ids))

        for node in template:
            nodes.append(dataclasses.replace(node, deps=mapped(node.deps),
                                             chained=mapped(node.chained)))
        return [dataclasses.replace(v, producer=producer(v.producer)) for v in outs], peak

    def _control(self, eqn, ins, nodes, scope) -> tuple[list[_Value], int]:
        name, p = eqn.primitive.name, eqn.params
        if name == "scan":
            body = self._body(*_sub_jaxpr(eqn, "jaxpr"), ins, scope)
            bodies, trips = (body,), int(p["length"])
        elif name == "while":
            trips = _while_trips(eqn)
            if trips is None:
                raise ScheduleError("a while loop whose trip count is not known before it runs "
                                    "has no static schedule; use lax.scan or fori_loop with "
                                    "static bounds")
            nc, nb = p["cond_nconsts"], p["body_nconsts"]
            body = self._body(*_sub_jaxpr(eqn, "body_jaxpr"), ins[nc:nc + nb] + ins[nc + nb:],
                              scope)
            bodies = (body,)
        else:  # cond: the index picks a branch; a static schedule must allow the longest
            bodies = tuple(self._body(b.jaxpr, b.consts, ins[1:], scope) for b in p["branches"])
            trips = 1
        outs = self._add(nodes, name, FREE, ins, eqn.outvars, scope, bodies, trips)
        return outs, max(b.peak_activation_bytes for b in bodies)


@dataclasses.dataclass
class _Context:
    """Per-jaxpr bookkeeping: how many products read each variable, and its MXM copies."""

    readers: dict
    copies: dict
