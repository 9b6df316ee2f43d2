"""What one operation costs on one chip: which unit runs it, for how many clock ticks, and the
energy it takes. Every figure comes from the hardware config.

LPU (one tick = one clock cycle):
- MXM, matrix products. The mode follows the operands' storage dtypes: int8 when both are 8-bit
  (or narrower) integers, else fp16 (v1 has no other mode: wider floats are taken as fp16 passes,
  narrower formats are converted first). One operand is installed into the planes as weights,
  in tiles of [320 x 320] int8 or [160 x 320] fp16 values (P22's sub-operations); the other
  streams through, one vector per plane per cycle: 4 int8 or 2 fp16 sub-operations a cycle.
  Installing the next tile overlaps the current one's stream (an estimate), so a product takes
  max(install, stream) plus the pipeline latency. The compiler installs whichever operand makes
  that shorter.
- VXM, elementwise ops, reductions, conversions, transcendentals: one 320-element vector per
  cycle per ALU, with 16 ALUs per lane; an op of v vectors holds min(16, v) of them for
  ceil(v / min(16, v)) cycles plus the VXM latency (the stream registers feeding them are not
  modelled as a limit).
- SXM, transposes, gathers, concatenation, padding: one 320-byte vector per cycle on either SXM.
- MEM, explicit reads and writes (slices, cache updates): the bytes over every slice's banks.
- C2C, collectives: see lpu/topology.py.
The instruction stagger (superlane i starts one cycle after superlane i-1) is not added per
operation: dependent operations pipeline across the superlanes, so it delays a chain once, by
under 20 cycles.

GPU (one tick = one nanosecond): a roofline. A matrix product takes the longer of its HBM bytes
(operands in their storage dtypes, result) at the HBM bandwidth and its FLOPs at the bf16 matrix
rate; reads and writes move their bytes; elementwise work is taken as fused into its neighbours
(free). One GPU only: collectives are not modelled.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from lpu_jax.errors import UserError
from lpu_jax.lpu.hardware import HardwareSpec
from lpu_jax.lpu.topology import Network


@dataclasses.dataclass(frozen=True)
class Cost:
    unit: str | None  # None: free (no unit is busy)
    ticks: int
    energy_pj: float = 0.0
    detail: str = ""  # what the figure came from, for the trace
    width: int = 1  # slots of the unit it holds at once


FREE = Cost(None, 0)


def int8_mode(*storage_dtypes) -> bool:
    return all(np.issubdtype(d, np.integer) and np.dtype(d).itemsize == 1
               for d in storage_dtypes)


def _product_dims(lhs_shape, rhs_shape, dimension_numbers):
    """(batch, lhs free, contracted, rhs free) sizes of a dot_general."""
    (lc, rc), (lb, _) = dimension_numbers
    batch = math.prod(lhs_shape[i] for i in lb)
    k = math.prod(lhs_shape[i] for i in lc)
    m = math.prod(s for i, s in enumerate(lhs_shape) if i not in lc and i not in lb)
    n = math.prod(rhs_shape) // max(batch * k, 1)
    return batch, m, k, n


class LpuCosts:
    """Per-operation costs on one LPU chip."""

    def __init__(self, hardware: HardwareSpec):
        self.hw = hardware
        self.tick_s = 1.0 / hardware["clock"]
        lanes = hardware["lanes"]
        self.units = {"MXM": 1, "VXM": int(hardware["vxm_alus"] // lanes),
                      "SXM": int(hardware["sxm_units"]), "MEM": 1, "C2C": 1}

    def dot(self, lhs_shape, rhs_shape, dimension_numbers, lhs_storage, rhs_storage) -> Cost:
        hw = self.hw
        batch, m, k, n = _product_dims(lhs_shape, rhs_shape, dimension_numbers)
        if int8_mode(lhs_storage, rhs_storage):
            mode, macs_per_cycle, value_bytes = "int8", hw["mxm_int8_macs"], 1
            tile_k, mac_pj = hw["mxm_tile"], hw["energy_int8_mac"]
        else:
            # P22: fp16 sub-operations are [1 x 160] . [160 x 320]: half the rows of a plane.
            mode, macs_per_cycle, value_bytes = "fp16", hw["mxm_fp16_macs"], 2
            tile_k, mac_pj = hw["mxm_tile"] / 2, hw["energy_fp16_mac"]
        tile_n = hw["mxm_tile"]
        sub_ops_per_cycle = macs_per_cycle / (tile_k * tile_n)

        def cycles(streamed, installed):  # rows streamed, free columns installed
            tiles = math.ceil(k / tile_k) * math.ceil(installed / tile_n)
            install_bytes = batch * k * math.ceil(installed / tile_n) * tile_n * value_bytes
            install = install_bytes / hw["mxm_weight_install"]
            stream = batch * tiles * streamed / sub_ops_per_cycle
            return math.ceil(max(install, stream)) + int(hw["mxm_latency"]), install_bytes

        (ticks, installed_bytes), which = min((cycles(m, n), "rhs"), (cycles(n, m), "lhs"))
        macs = batch * m * k * n
        energy = macs * mac_pj + installed_bytes * hw["energy_sram_byte"]
        return Cost("MXM", ticks, energy, f"{mode} {batch}x[{m}x{k}].[{k}x{n}], {which} installed")

    def vector(self, elements: int) -> Cost:
        # A long op is spread over several of each lane's ALUs, one vector per ALU per cycle.
        vectors = math.ceil(elements / self.hw["lanes"])
        width = max(1, min(self.units["VXM"], vectors))
        return Cost("VXM", math.ceil(vectors / width) + int(self.hw["vxm_latency"]),
                    elements * self.hw["energy_vxm_op"], f"{elements} elements", width)

    def shuffle(self, nbytes: int) -> Cost:
        vectors = math.ceil(nbytes / self.hw["lanes"])
        return Cost("SXM", vectors + int(self.hw["sxm_latency"]),
                    nbytes * self.hw["energy_sram_byte"], f"{nbytes} B")

    def memory(self, nbytes: int) -> Cost:
        hw = self.hw
        per_cycle = hw["lanes"] * hw["mem_slices"] * hw["mem_banks_per_slice"]
        return Cost("MEM", math.ceil(nbytes / per_cycle) + int(hw["mem_latency"]),
                    nbytes * hw["energy_sram_byte"], f"{nbytes} B")

    def collective(self, network: Network, kind: str, axis_names, nbytes: int, perm=()) -> Cost:
        ticks, sent, hops = network.collective(kind, tuple(axis_names), nbytes, tuple(perm))
        if ticks == 0:
            return FREE
        return Cost("C2C", ticks, sent * self.hw["energy_c2c_byte"],
                    f"{nbytes} B over {hops} hop(s)")


class GpuCosts:
    """Per-operation costs on one GPU: a roofline of HBM bandwidth and matrix rate."""

    def __init__(self, hardware: HardwareSpec):
        self.hw = hardware
        self.tick_s = 1e-9
        self.units = {"GPU": 1}

    def _seconds_to_cost(self, seconds: float, detail: str) -> Cost:
        return Cost("GPU", math.ceil(seconds / self.tick_s),
                    seconds * self.hw["power_typical"] * 1e12, detail)

    def dot(self, lhs_shape, rhs_shape, dimension_numbers, lhs_storage, rhs_storage) -> Cost:
        batch, m, k, n = _product_dims(lhs_shape, rhs_shape, dimension_numbers)
        moved = (math.prod(lhs_shape) * np.dtype(lhs_storage).itemsize
                 + math.prod(rhs_shape) * np.dtype(rhs_storage).itemsize + batch * m * n * 4)
        flops = 2 * batch * m * k * n
        seconds = max(moved / self.hw["hbm_bandwidth"], flops / self.hw["bf16_flops"])
        return self._seconds_to_cost(seconds, f"{moved} B, {flops} FLOP")

    def vector(self, elements: int) -> Cost:
        return FREE

    def shuffle(self, nbytes: int) -> Cost:
        return self.memory(nbytes)

    def memory(self, nbytes: int) -> Cost:
        return self._seconds_to_cost(nbytes / self.hw["hbm_bandwidth"], f"{nbytes} B")

    def collective(self, network: Network, kind: str, axis_names, nbytes: int, perm=()) -> Cost:
        if network.group_size(tuple(axis_names)) == 1:
            return FREE
        raise UserError(f"the {self.hw.name} config models one GPU; use --tp 1 --pp 1")


def costs_for(hardware: HardwareSpec):
    return LpuCosts(hardware) if hardware.kind == "lpu" else GpuCosts(hardware)
