"""Hardware descriptions from configs/hardware/*.toml: every figure with its unit and source.

A config is read strictly: each figure the kind needs must be there, in the unit the model
computes with, with a source; a figure it does not know is an error, so a typo cannot silently
leave a default in place.
"""

from __future__ import annotations

import dataclasses
import math
from types import MappingProxyType
from typing import Mapping

from lpu_jax.errors import UserError
from lpu_jax.textfiles import read_toml, shipped, shipped_or_path

# The figures each kind of hardware must give, and their units.
UNITS = {
    "lpu": {
        "clock": "Hz", "lanes": "lanes", "superlanes": "superlanes", "stagger": "cycles/superlane",
        "sram": "B", "mem_slices": "slices", "mem_banks_per_slice": "banks",
        "streams_per_direction": "streams", "mxm_planes": "planes", "mxm_tile": "elements",
        "mxm_int8_macs": "MAC/cycle", "mxm_fp16_macs": "MAC/cycle",
        "mxm_weight_install": "B/cycle", "mxm_latency": "cycles", "vxm_alus": "ALUs",
        "vxm_latency": "cycles", "sxm_units": "units", "sxm_latency": "cycles",
        "mem_latency": "cycles", "c2c_links": "links", "c2c_global_links": "links",
        "c2c_link_bandwidth": "B/s", "c2c_vector": "B", "c2c_hop_latency": "cycles",
        "c2c_framing_overhead": "fraction", "chips_per_node": "chips", "nodes_per_rack": "nodes", "rack_hops": "hops",
        "max_hops": "hops", "host_link_bandwidth": "B/s", "host_link_latency": "s",
        "power_typical": "W", "power_static": "W", "energy_int8_mac": "pJ/MAC",
        "energy_fp16_mac": "pJ/MAC", "energy_vxm_op": "pJ/op", "energy_sram_byte": "pJ/B",
        "energy_c2c_byte": "pJ/B",
        "stream_hop_latency": "cycles/hop", "stream_hops_mem_vxm": "hops",
        "stream_hops_mem_mxm": "hops", "stream_hops_mem_sxm": "hops",
        "stream_hops_vxm_sxm": "hops", "mxm_install_streams": "streams/plane",
        "mxm_pass_overhead": "cycles/pass", "vxm_ops_logistic": "ops", "vxm_ops_tanh": "ops",
        "vxm_ops_exp": "ops", "vxm_ops_div": "ops", "vxm_ops_polynomial": "ops",
    },
    "gpu": {"hbm": "B", "hbm_bandwidth": "B/s", "bf16_flops": "FLOP/s", "power_typical": "W",
            "gpus_per_node": "chips", "nvlink_bandwidth": "B/s", "nvlink_latency": "s"},
}


# What a value may be, by unit: rates and sizes must be positive (the model divides by them),
# counts whole numbers, and a fraction below one; latencies, energies and powers may be zero.
_POSITIVE = {"Hz", "B", "B/s", "MAC/cycle", "B/cycle", "FLOP/s"}
_COUNTS = {"lanes", "superlanes", "slices", "banks", "streams", "planes", "elements", "ALUs",
           "units", "links", "chips", "nodes", "streams/plane", "ops"}
_WHOLE = {"hops"}  # whole numbers, zero allowed


def value_problem(unit: str, value) -> str | None:
    """Why `value` cannot be a figure in `unit`, or None when it can."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return f"must be a finite number, got {value!r}"
    if abs(value) > 1e30 or (unit in _COUNTS | _WHOLE and value > 1e9):
        return f"is beyond any hardware's ({value:g} {unit})"
    if unit in _POSITIVE and 0 < value < 1e-30:
        return f"is too small to be a figure of any hardware ({value:g} {unit})"
    if unit in _COUNTS and (value < 1 or value != int(value)):
        return f"counts {unit}: a whole number >= 1, got {value:g}"
    if unit in _WHOLE and (value < 0 or value != int(value)):
        return f"counts {unit}: a whole number >= 0, got {value:g}"
    if unit in _POSITIVE and value <= 0:
        return f"must be > 0 {unit}, got {value:g}"
    if unit == "fraction" and not 0 <= value < 1:
        return f"is a fraction: 0 <= value < 1, got {value:g}"
    if value < 0:
        return f"must be >= 0 {unit}, got {value:g}"
    return None


@dataclasses.dataclass(frozen=True)
class Figure:
    value: float
    unit: str
    source: str
    estimate: bool = False


@dataclasses.dataclass(frozen=True)
class HardwareSpec:
    name: str
    kind: str  # "lpu" or "gpu"
    description: str
    figures: Mapping[str, Figure]
    changed: tuple[str, ...] = ()  # figures replaced after loading (what-if), in order

    def __getitem__(self, key: str) -> float:
        return self.figures[key].value

    def estimates(self) -> list[str]:
        """The figures that are estimates, not published numbers."""
        return [key for key, figure in self.figures.items() if figure.estimate]

    def with_values(self, values: Mapping[str, float], source: str) -> "HardwareSpec":
        """The same hardware with some figures replaced (each keeps its unit; `source` says
        where the new values come from)."""
        figures = dict(self.figures)
        for key, value in values.items():
            if key not in figures:
                raise UserError(f"{self.name} has no figure {key!r}; known: "
                                f"{', '.join(sorted(figures))}")
            problem = value_problem(figures[key].unit, value)
            if problem:
                raise UserError(f"{self.name} figure {key} {problem}")
            figures[key] = dataclasses.replace(figures[key], value=float(value), source=source)
        changed = self.changed + tuple(k for k in values if k not in self.changed)
        return dataclasses.replace(self, figures=MappingProxyType(figures), changed=changed)

    def what_if(self, settings: list[str]) -> "HardwareSpec":
        """The hardware with figures replaced from NAME=VALUE strings (--set), each in the
        figure's own unit."""
        values: dict[str, float] = {}
        for setting in settings:
            name, equals, text = (part.strip() for part in setting.partition("="))
            if not equals or not name or not text:
                raise UserError(f"--set takes NAME=VALUE (e.g. clock=1.25e9), got {setting!r}")
            if name in values:
                raise UserError(f"--set {name} is given twice")
            try:
                values[name] = float(text)
            except ValueError:
                raise UserError(f"--set {name}: {text!r} is not a number") from None
        return self.with_values(values, "what-if, set on the command line") if values else self


def available() -> list[str]:
    """Names of the shipped hardware configs."""
    return shipped("hardware")


def load_hardware(name_or_path: str) -> HardwareSpec:
    """A shipped config by name (e.g. "lpu-v1"), or any .toml file by path."""
    path = shipped_or_path("hardware", name_or_path, "hardware")
    return parse(read_toml(path), path.stem, str(path))


def parse(raw: dict, name: str, source: str) -> HardwareSpec:
    kind = raw.pop("kind", None)
    if kind not in UNITS:
        raise UserError(f"{source}: 'kind' must be one of {', '.join(UNITS)}, got {kind!r}")
    description = str(raw.pop("description", name))
    units = UNITS[kind]
    unknown = sorted(set(raw) - set(units))
    if unknown:
        raise UserError(f"{source}: unknown figure {unknown[0]!r} for {kind} hardware")
    missing = sorted(set(units) - set(raw))
    if missing:
        raise UserError(f"{source}: lacks {missing[0]!r} ({units[missing[0]]})")
    figures = {}
    for key, entry in raw.items():
        if not isinstance(entry, dict) or set(entry) - {"value", "unit", "source", "estimate"}:
            raise UserError(f"{source}: [{key}] takes value, unit, source and estimate only")
        value, unit, cited = entry.get("value"), entry.get("unit"), entry.get("source")
        if unit != units[key]:
            raise UserError(f"{source}: [{key}] must be in {units[key]!r}, got {unit!r}")
        problem = value_problem(unit, value)
        if problem:
            raise UserError(f"{source}: [{key}] value {problem}")
        if not isinstance(cited, str) or not cited.strip():
            raise UserError(f"{source}: [{key}] has no source")
        estimate = entry.get("estimate", False)
        if not isinstance(estimate, bool):
            raise UserError(f"{source}: [{key}] estimate must be true or false, got {estimate!r}")
        figures[key] = Figure(float(value), unit, cited, estimate)
    return HardwareSpec(name, kind, description, MappingProxyType(figures))

