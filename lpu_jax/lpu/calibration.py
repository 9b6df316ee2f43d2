"""Calibration of the cycle model against published cycle counts (configs/calibration/*.toml).

A calibration file names a workload (a JAX program written the way the publication mapped it
onto the chip), the cases it was measured at, their published cycles and the source. Its role
is "fit" (the estimated figures may be fitted to it) or "check" (never fitted to: it tests
whether the fitted model generalises), with the relative tolerance the model must meet.

Fitting changes only figures marked `estimate` in the hardware config: least squares over the
relative errors of every case of the fitting files, by coordinate search over whole cycles.
One set of figures serves every case; nothing is switched per case.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp

from lpu_jax.errors import UserError
from lpu_jax.lpu.hardware import HardwareSpec, value_problem
from lpu_jax.lpu.scheduler import Traced, schedule_traced, trace
from lpu_jax.textfiles import read_toml, shipped, shipped_or_path

ROLES = ("fit", "check")


def lstm_step(weights, xh_BK, c_BH):
    """One LSTM step as Groq's GroqAPI LSTM notebook maps it: x and h concatenated to int8
    [B, I + H]; per gate one int8 product with int32 sums against [I + H, H] int8 weights
    ([W; U]), dequantized by a scale and biased in f32; sigmoid and tanh; the c/h update."""
    w_4KH, scale_4H, bias_4H = weights
    gates = [jnp.dot(xh_BK, w_4KH[g], preferred_element_type=jnp.int32).astype(jnp.float32)
             * scale_4H[g] + bias_4H[g] for g in range(4)]
    i, f, o = (jax.nn.sigmoid(gates[g]) for g in (0, 1, 3))
    c_BH = f * c_BH + i * jnp.tanh(gates[2])
    return o * jnp.tanh(c_BH), c_BH


def _lstm(input_size: int, hidden_size: int, batch: int) -> Traced:
    S = jax.ShapeDtypeStruct
    weights = (S((4, input_size + hidden_size, hidden_size), jnp.int8),
               S((4, hidden_size), jnp.float32), S((4, hidden_size), jnp.float32))
    return trace(lstm_step, weights, S((batch, input_size + hidden_size), jnp.int8),
                 S((batch, hidden_size), jnp.float32), weights=(0,))


# Workloads by name, with the integer parameters each case must give.
WORKLOADS: dict[str, tuple[Callable[..., Traced], tuple[str, ...]]] = {
    "lstm": (_lstm, ("input_size", "hidden_size", "batch")),
}


@dataclasses.dataclass(frozen=True)
class Case:
    workload: str
    params: tuple[tuple[str, int], ...]
    cycles: int  # published

    @property
    def label(self) -> str:
        return f"{self.workload} " + " ".join(f"{k}={v}" for k, v in self.params)


@dataclasses.dataclass(frozen=True)
class CalibrationSet:
    name: str
    path: Path
    description: str
    source: str
    role: str
    tolerance: float
    cases: tuple[Case, ...]


def available() -> list[str]:
    return shipped("calibration")


def load(name_or_path: str) -> CalibrationSet:
    path = shipped_or_path("calibration", name_or_path, "calibration set")
    raw = dict(read_toml(path))
    where = str(path)
    known = {"description", "source", "role", "tolerance", "workload", "case"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise UserError(f"{where}: unknown key {unknown[0]!r}; known: {', '.join(sorted(known))}")
    for key in ("source", "workload"):
        if not isinstance(raw.get(key), str) or not raw[key].strip():
            raise UserError(f"{where}: {key!r} must be a non-empty string")
    if raw.get("role") not in ROLES:
        raise UserError(f"{where}: 'role' must be one of {', '.join(ROLES)}")
    tolerance = raw.get("tolerance")
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) \
            or not 0 < tolerance < 1:
        raise UserError(f"{where}: 'tolerance' must be a fraction between 0 and 1")
    if raw["workload"] not in WORKLOADS:
        raise UserError(f"{where}: unknown workload {raw['workload']!r}; known: "
                        f"{', '.join(WORKLOADS)}")
    _, names = WORKLOADS[raw["workload"]]
    cases = raw.get("case")
    if not isinstance(cases, list) or not cases:
        raise UserError(f"{where}: needs at least one [[case]]")
    parsed = []
    for number, case in enumerate(cases, 1):
        if not isinstance(case, dict) or set(case) != set(names) | {"cycles"}:
            raise UserError(f"{where}: case {number} must give exactly "
                            f"{', '.join(names)} and cycles")
        if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in case.values()):
            raise UserError(f"{where}: case {number}: every value must be an integer >= 1")
        parsed.append(Case(raw["workload"], tuple((n, case[n]) for n in names), case["cycles"]))
    return CalibrationSet(path.stem, path, str(raw.get("description", path.stem)),
                          raw["source"], raw["role"], float(tolerance), tuple(parsed))


class Calibrator:
    """Schedules calibration cases on hardware; each case is traced once."""

    def __init__(self, sets: list[CalibrationSet]):
        self.sets = sets
        self._traced: dict[Case, Traced] = {}

    def cycles(self, case: Case, hardware: HardwareSpec) -> int:
        if case not in self._traced:
            build, _ = WORKLOADS[case.workload]
            self._traced[case] = build(**dict(case.params))
        return schedule_traced(self._traced[case], hardware).ticks

    def table(self, hardware: HardwareSpec) -> list[dict]:
        """Every case: published, emulated, relative error, and whether it is within tolerance."""
        rows = []
        for s in self.sets:
            for case in s.cases:
                emulated = self.cycles(case, hardware)
                error = emulated / case.cycles - 1
                rows.append({"set": s.name, "role": s.role, "case": case.label,
                             "published": case.cycles, "emulated": emulated, "error": error,
                             "within": abs(error) <= s.tolerance, "tolerance": s.tolerance})
        return rows

    def residual(self, hardware: HardwareSpec, role: str = "fit") -> float:
        """Root mean square of the relative errors over the cases of this role."""
        errors = [r["error"] for r in self.table(hardware) if r["role"] == role]
        return math.sqrt(sum(e * e for e in errors) / max(len(errors), 1))

    def fit(self, hardware: HardwareSpec, names: list[str], source: str,
            rounds: int = 4) -> tuple[HardwareSpec, float]:
        """The estimated figures `names` fitted by least squares to the fitting cases: a
        coordinate search over whole numbers, each figure kept within [0, 4 x its value]."""
        not_estimates = [n for n in names if n not in hardware.estimates()]
        if not_estimates:
            raise UserError(f"only estimated figures may be fitted; {not_estimates[0]!r} is "
                            "published")
        if not any(s.role == "fit" for s in self.sets):
            raise UserError("no calibration set with role = \"fit\" to fit to")
        values = {n: hardware[n] for n in names}
        best = self.residual(hardware)
        for _ in range(rounds):
            improved = False
            for name in names:
                limit = max(4 * hardware.figures[name].value, 8)
                unit = hardware.figures[name].unit
                step = max(1.0, round(values[name] / 2))
                while step >= 1:
                    for candidate in (values[name] - step, values[name] + step):
                        if candidate > limit or value_problem(unit, candidate):
                            continue
                        trial = hardware.with_values({**values, name: candidate}, source)
                        error = self.residual(trial)
                        if error < best - 1e-12:
                            best, values[name], improved = error, candidate, True
                            break
                    else:
                        step = math.floor(step / 2)
            if not improved:
                break
        return hardware.with_values(values, source), best


def write_figures(path: Path, values: dict[str, float], source: str) -> None:
    """Rewrite the value and source of each named figure's table in a hardware TOML file, in
    place, keeping everything else (comments included) as it was."""
    text = Path(path).read_text()
    for name, value in values.items():
        table = re.search(rf"^\[{re.escape(name)}\]\n(?:(?!\[).*\n?)*", text, re.MULTILINE)
        if table is None:
            raise UserError(f"{path}: no [{name}] table to update")
        body = table.group(0)
        shown = int(value) if float(value).is_integer() else value
        body = re.sub(r"^value = .*$", f"value = {shown}", body, count=1, flags=re.MULTILINE)
        # Keep why the figure was estimated; replace an earlier fit's note.
        cited = re.search(r'^source = "((?:[^"\\]|\\.)*)"', body, re.MULTILINE)
        reason = re.sub(r"\\(.)", r"\1", cited.group(1)).split("; fit:")[0] if cited else ""
        noted = source if not reason or reason.startswith("fit:") else f"{reason}; {source}"
        body = re.sub(r"^source = .*$", lambda _: f"source = {_toml_string(noted)}", body,
                      count=1, flags=re.MULTILINE)
        text = text[:table.start()] + body + text[table.end():]
    temporary = Path(path).with_name(Path(path).name + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)  # whole or not at all


def _toml_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
