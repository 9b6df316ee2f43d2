"""What one operation costs on one chip: which unit runs it, how long it holds that unit and the
stream registers, how long its results take to arrive, and the energy it takes. Every figure
comes from the hardware config.

LPU (one tick = one clock cycle). P20's issue timing, T = N + d_func + delta(j, i), per operation:
- N, the issue: the cycles an operation holds its unit's slots and its stream registers.
- The path: a value read from MEM pays the MEM latency, the stream distance to the unit and the
  instruction's stagger across the 20 superlanes; the unit adds its own delay (d_func); the
  result travels back to MEM and is written. An elementwise VXM operation can instead take its
  input straight off the streams from the VXM operation before it (ALU chaining, as the LSTM
  notebook's components do): then it pays only its own delay (see scheduler.py).
- Streams are the budget: 32 eastward and 32 westward, one byte per lane each, so an int8
  vector takes one stream, a bf16 vector two, an f32 or int32 vector four. Each operation holds
  the streams its operands and results need per vector in flight.

Units:
- MXM, matrix products (`Product`): the mode follows the operands' storage dtypes, int8 when both
  are 8-bit (or narrower) integers, else fp16 (v1 has no other mode). One operand is installed as
  weights, in tiles of [320 x 320] int8 or [160 x 320] fp16 values (P22's sub-operations; an
  fp16 sub-operation takes a pair of planes); the other streams through, one row vector per
  cycle per plane. A product's tiles are spread over the planes free when it starts; each plane
  runs its share as passes: install a tile row-vector by row-vector over its install streams
  (as many as the stream budget leaves, at most `mxm_install_streams`, and all planes together
  at most `mxm_weight_install`), stream the rows through it, turn around. A plane keeps a tile
  while rows stream through it, so more tiles than planes means re-installing.
- VXM, elementwise work, conversions, reductions and transcendentals: an instruction streams its
  vectors through its ALU, one vector per cycle (as each path of the LSTM notebook does);
  independent instructions run on other ALUs at once, as many as the 16 ALUs per lane and the
  streams feeding them allow. A function with no VXM instruction is a chain of several ALU
  operations (`vxm_ops_*`). Reductions across the 320 lanes (the last axis) add a tree of
  SXM shifts and VXM adds that crosses the superlanes.
- SXM, transposes, gathers, concatenation, padding: one 320-byte vector per cycle on either SXM.
- MEM, explicit reads and writes (slices, cache updates) over every slice's banks, and copies of
  an operand that several MXM planes stream at once (a MEM slice serves one read a cycle).
- C2C, collectives: see lpu/topology.py.

GPU (one tick = one nanosecond): a roofline. A matrix product takes the longer of its HBM bytes
(operands in their storage dtypes, result) at the HBM bandwidth and its FLOPs at the bf16 matrix
rate; reads and writes move their bytes; elementwise work is taken as fused into its neighbours
(free). A node's GPUs meet over NVLink: each collective costs a latency plus its bytes at one
GPU's NVLink bandwidth (no overlap with compute, as in a plain decode step).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from lpu_jax.lpu.hardware import HardwareSpec
from lpu_jax.lpu.topology import ALL_REDUCE, GATHERING, SCATTERING, Network

ACCUMULATOR_BYTES = 4  # int32 or f32 results of the MXM


@dataclasses.dataclass(frozen=True)
class Cost:
    unit: str | None  # None: free (no unit is busy)
    ticks: int  # issue cycles: the unit's slots and the streams are held this long
    energy_pj: float = 0.0
    detail: str = ""  # what the figure came from, for the trace
    width: int = 1  # slots of the unit it holds at once
    streams: int = 0  # stream registers it holds while it issues
    lead: int = 0  # cycles from its start to its first result on a stream
    write: int = 0  # cycles from its last result on a stream until it is in MEM
    chainable: bool = False  # its results may feed the next VXM operation on the streams
    helpers: tuple[tuple[str, int], ...] = ()  # other units it holds too: (unit, slots)


FREE = Cost(None, 0)


def int8_mode(*storage_dtypes) -> bool:
    return all(np.issubdtype(d, np.integer) and np.dtype(d).itemsize == 1
               for d in storage_dtypes)


def itemsize(dtype) -> int:
    # A PRNG key's extended dtype has no numpy equivalent: two uint32 words.
    return getattr(dtype, "itemsize", 8)


def stream_width(dtype) -> int:
    """Streams one vector of this dtype takes (one byte per lane per stream)."""
    return max(1, itemsize(dtype))


def _product_dims(lhs_shape, rhs_shape, dimension_numbers):
    """(batch, lhs free, contracted, rhs free) sizes of a dot_general."""
    (lc, rc), (lb, _) = dimension_numbers
    batch = math.prod(lhs_shape[i] for i in lb)
    k = math.prod(lhs_shape[i] for i in lc)
    m = math.prod(s for i, s in enumerate(lhs_shape) if i not in lc and i not in lb)
    n = math.prod(rhs_shape) // max(batch * k, 1)
    return batch, m, k, n


@dataclasses.dataclass(frozen=True)
class Product:
    """A matrix product's work, costed when the scheduler knows the planes and streams free."""

    mode: str  # "int8" or "fp16"
    passes: int  # installed tiles: batch x K tiles x N tiles
    rows: int  # row vectors streamed through each tile
    install_vectors: int  # row vectors installed over all passes
    value_streams: int  # streams per streamed or installed vector (1 int8, 2 fp16)
    macs: int
    installed_bytes: int
    detail: str


class LpuCosts:
    """Per-operation costs on one LPU chip."""

    def __init__(self, hardware: HardwareSpec):
        # The figures as plain numbers: a large program asks for them many thousands of times.
        self.hw = hw = {name: figure.value for name, figure in hardware.figures.items()}
        self.tick_s = 1.0 / hw["clock"]
        self.lanes = int(hw["lanes"])
        self.streams = 2 * int(hw["streams_per_direction"])
        self.planes = int(hw["mxm_planes"])
        self.alus = int(hw["vxm_alus"] // hw["lanes"])
        self.units = {"MXM": self.planes, "VXM": self.alus, "SXM": int(hw["sxm_units"]),
                      "MEM": 1, "C2C": 1}
        hop = hw["stream_hop_latency"]
        self.stagger = int(hw["superlanes"] * hw["stagger"])
        self.hops = {unit: int(hw[f"stream_hops_mem_{unit.lower()}"] * hop)
                     for unit in ("VXM", "MXM", "SXM")}
        self.vxm_sxm = int(hw["stream_hops_vxm_sxm"] * hop)
        self.alu_ops = {"logistic": int(hw["vxm_ops_logistic"]), "tanh": int(hw["vxm_ops_tanh"]),
                        "exp": int(hw["vxm_ops_exp"]), "div": int(hw["vxm_ops_div"]),
                        "polynomial": int(hw["vxm_ops_polynomial"])}

    def vectors(self, elements: int) -> int:
        return math.ceil(elements / self.lanes)

    def read_path(self, unit: str) -> int:
        """From an instruction's start to its first operand vector at the unit: the MEM read,
        the stream distance, and the stagger up the superlanes."""
        return int(self.hw["mem_latency"]) + self.hops[unit] + self.stagger

    def write_path(self, unit: str) -> int:
        return self.hops[unit] + int(self.hw["mem_latency"])

    # -- MXM --------------------------------------------------------------------------------
    def dot(self, lhs_shape, rhs_shape, dimension_numbers, lhs_storage, rhs_storage,
            installable: tuple[bool, bool] = (True, True)) -> tuple[Product, str]:
        """The product's work, and which operand ("lhs" or "rhs") is installed: a weight when
        there is one (installable), else whichever makes the product shorter."""
        hw = self.hw
        batch, m, k, n = _product_dims(lhs_shape, rhs_shape, dimension_numbers)
        if int8_mode(lhs_storage, rhs_storage):
            mode, value_streams, tile_k, mac_pj = "int8", 1, self.lanes, hw["energy_int8_mac"]
        else:  # P22: fp16 sub-operations are [1 x 160] . [160 x 320]
            mode, value_streams, tile_k, mac_pj = "fp16", 2, self.lanes // 2, hw["energy_fp16_mac"]

        def work(streamed, installed, which):
            n_tiles = math.ceil(installed / self.lanes)
            passes = batch * math.ceil(k / tile_k) * n_tiles
            vectors = batch * k * n_tiles
            macs = batch * m * k * n
            installed_bytes = vectors * self.lanes * value_streams
            return Product(mode, passes, streamed, vectors, value_streams, macs, installed_bytes,
                           f"{mode} {batch}x[{m}x{k}].[{k}x{n}], {which} installed")

        options = []
        if installable[1]:
            options.append((work(m, n, "rhs"), "rhs"))
        if installable[0]:
            options.append((work(n, m, "lhs"), "lhs"))
        if not options:
            options = [(work(m, n, "rhs"), "rhs"), (work(n, m, "lhs"), "lhs")]
        key = lambda o: self.product_cost(o[0], self.planes, self.streams).ticks  # noqa: E731
        product, which = min(options, key=key)
        return product, which

    def product_cost(self, p: Product, planes_free: int, streams_free: int) -> Cost:
        """A product on the planes and streams free when it starts (fp16 takes plane pairs)."""
        hw = self.hw
        per_plane = 2 if p.mode == "fp16" else 1
        planes = max(1, min(planes_free // per_plane, p.passes)) if planes_free >= per_plane else 1
        # Each working plane streams its rows in and its accumulated results out.
        io_streams = planes * (p.value_streams + ACCUMULATOR_BYTES)
        total_install = int(hw["mxm_weight_install"] // self.lanes)
        install = max(1, min(int(hw["mxm_install_streams"]) * planes, total_install,
                             streams_free - io_streams))
        install_streams_per_plane = install / planes
        passes_per_plane = math.ceil(p.passes / planes)
        install_cycles = math.ceil(p.install_vectors * p.value_streams / planes
                                   / install_streams_per_plane)
        ticks = (install_cycles + passes_per_plane * (p.rows + int(hw["mxm_pass_overhead"])))
        energy = p.macs * (hw["energy_int8_mac"] if p.mode == "int8" else hw["energy_fp16_mac"])
        energy += p.installed_bytes * hw["energy_sram_byte"]
        lead = self.read_path("MXM") + int(hw["mxm_latency"])
        return Cost("MXM", ticks, energy, f"{p.detail} on {planes} plane(s)",
                    width=planes * per_plane, streams=min(io_streams + install, self.streams),
                    lead=lead, write=self.write_path("MXM"))

    # -- VXM --------------------------------------------------------------------------------
    def vector(self, vectors: int, elements: int, alu_ops: int = 1,
               streams_per_vector: int = 8, chainable: bool = True) -> Cost:
        """An elementwise operation over `vectors` vectors (`elements` values), each taking
        alu_ops chained ALU operations and streams_per_vector streams (operands and result)."""
        hw = self.hw
        alu_ops = max(1, min(alu_ops, self.alus))
        return Cost("VXM", vectors, elements * alu_ops * hw["energy_vxm_op"],
                    f"{elements} elements x {alu_ops} ALU op(s)",
                    width=alu_ops, streams=min(streams_per_vector, self.streams),
                    lead=self.read_path("VXM") + alu_ops * int(hw["vxm_latency"]),
                    write=self.write_path("VXM"), chainable=chainable)

    def lane_reduction(self, out_vectors: int, lanes_reduced: int, width: int) -> Cost:
        """The tree that folds a vector's lanes together: log2(lanes) steps of an SXM shift and a
        VXM add, each a trip between the VXM and the SXM across the superlanes."""
        hw = self.hw
        steps = max(1, math.ceil(math.log2(max(min(lanes_reduced, self.lanes), 2))))
        step = 2 * self.vxm_sxm + int(hw["sxm_latency"]) + int(hw["vxm_latency"])
        vectors = out_vectors
        return Cost("SXM", steps * vectors, steps * self.lanes * vectors * hw["energy_vxm_op"],
                    f"{steps} shift-add steps over {min(lanes_reduced, self.lanes)} lanes",
                    streams=min(width, self.streams), lead=self.read_path("VXM") + steps * step,
                    write=self.write_path("VXM"), helpers=(("VXM", 1),))

    # -- SXM, MEM ---------------------------------------------------------------------------
    def shuffle(self, nbytes: int) -> Cost:
        vectors = self.vectors(nbytes)
        return Cost("SXM", vectors, nbytes * self.hw["energy_sram_byte"], f"{nbytes} B",
                    streams=1, lead=self.read_path("SXM") + int(self.hw["sxm_latency"]),
                    write=self.write_path("SXM"))

    def memory(self, nbytes: int) -> Cost:
        hw = self.hw
        per_cycle = self.lanes * hw["mem_slices"] * hw["mem_banks_per_slice"]
        return Cost("MEM", math.ceil(nbytes / per_cycle), nbytes * hw["energy_sram_byte"],
                    f"{nbytes} B", lead=int(hw["mem_latency"]), write=int(hw["mem_latency"]))

    def copies(self, vectors: int, nbytes: int, planes: int) -> Cost:
        """Copies of an operand next to each of `planes` MXM planes that stream it at once: a
        slice serves one read a cycle, and one read feeds the planes of one hemisphere."""
        hw = self.hw
        reads = math.ceil(planes / (self.planes // 2))
        return Cost("MEM", reads * vectors, reads * nbytes * 2 * hw["energy_sram_byte"],
                    f"{nbytes} B copied for {planes} planes in {reads} read(s)", streams=1,
                    lead=int(hw["mem_latency"]) + self.hops["MXM"],
                    write=int(hw["mem_latency"]))

    def collective(self, network: Network, kind: str, axis_names, nbytes: int, perm=()) -> Cost:
        ticks, sent, hops = network.collective(kind, tuple(axis_names), nbytes, tuple(perm))
        if ticks == 0:
            return FREE
        return Cost("C2C", ticks, sent * self.hw["energy_c2c_byte"],
                    f"{nbytes} B over {hops} hop(s)", streams=1)


class GpuCosts:
    """Per-operation costs on one GPU: a roofline of HBM bandwidth and matrix rate."""

    def __init__(self, hardware: HardwareSpec):
        self.hw = hardware
        self.tick_s = 1e-9
        self.units = {"GPU": 1}
        self.streams = 0
        self.alu_ops = {}

    def _seconds_to_cost(self, seconds: float, detail: str) -> Cost:
        return Cost("GPU", math.ceil(seconds / self.tick_s),
                    seconds * self.hw["power_typical"] * 1e12, detail)

    def dot(self, lhs_shape, rhs_shape, dimension_numbers, lhs_storage, rhs_storage,
            installable=(True, True)) -> tuple[Cost, str]:
        batch, m, k, n = _product_dims(lhs_shape, rhs_shape, dimension_numbers)
        moved = (math.prod(lhs_shape) * np.dtype(lhs_storage).itemsize
                 + math.prod(rhs_shape) * np.dtype(rhs_storage).itemsize + batch * m * n * 4)
        flops = 2 * batch * m * k * n
        seconds = max(moved / self.hw["hbm_bandwidth"], flops / self.hw["bf16_flops"])
        return self._seconds_to_cost(seconds, f"{moved} B, {flops} FLOP"), "rhs"

    def vector(self, vectors: int, elements: int, alu_ops: int = 1,
               streams_per_vector: int = 8, chainable: bool = True) -> Cost:
        return FREE

    def lane_reduction(self, out_vectors: int, lanes_reduced: int, width: int) -> Cost:
        return FREE

    def shuffle(self, nbytes: int) -> Cost:
        return self.memory(nbytes)

    def memory(self, nbytes: int) -> Cost:
        return self._seconds_to_cost(nbytes / self.hw["hbm_bandwidth"], f"{nbytes} B")

    def copies(self, vectors: int, nbytes: int, planes: int) -> Cost:
        return FREE

    def collective(self, network: Network, kind: str, axis_names, nbytes: int, perm=()) -> Cost:
        """NCCL-style over NVSwitch: all-reduce as reduce-scatter then all-gather (2(g-1)/g of
        the operand over each GPU's links), all_gather receives the g-1 other operands,
        reduce-scatter and all_to_all (g-1)/g of it, ppermute the operand; plus one latency."""
        g = network.group_size(tuple(axis_names))
        if g == 1 or nbytes == 0 or (kind == "ppermute" and not perm):
            return FREE
        share = {"ppermute": 1.0}.get(kind) or (
            2 * (g - 1) / g if kind in ALL_REDUCE else
            g - 1 if kind in GATHERING else (g - 1) / g if kind in SCATTERING else None)
        if share is None:
            raise ValueError(f"no cost for collective {kind!r}")
        moved = share * nbytes
        return self._seconds_to_cost(self.hw["nvlink_latency"]
                                     + moved / self.hw["nvlink_bandwidth"],
                                     f"{moved:.0f} B over NVLink")


def costs_for(hardware: HardwareSpec):
    return LpuCosts(hardware) if hardware.kind == "lpu" else GpuCosts(hardware)
