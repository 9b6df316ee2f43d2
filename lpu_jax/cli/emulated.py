"""Flags and output shared by the commands that report emulated hardware figures."""

from __future__ import annotations

import io
import sys
from pathlib import Path

from absl import flags

from lpu_jax.cli import common

HARDWARE = flags.DEFINE_string("hardware", "lpu-v1", "Hardware the cycle model emulates: a name "
                               "from configs/hardware (lpu-v1; h100, h200: a node of 8 GPUs, for "
                               "comparison) or a .toml file; lpu-estimate compares several, "
                               "e.g. lpu-v1,h100,h200.")
SET = flags.DEFINE_multi_string("set", [], "What-if: replace a figure of the --hardware config, "
                                 "NAME=VALUE in the figure's unit; repeatable (e.g. --set "
                                 "clock=1.25e9 --set sram=460e6). Reports list what was set.")
TRACE = flags.DEFINE_string("trace", None, "Write the decode step's static schedule as a Perfetto "
                            "/ Chrome trace JSON, a track per chip and unit (ui.perfetto.dev).")


def hardware():
    """The --hardware config with the --set figures replaced."""
    (one,) = hardware_list(several=False)
    return one


def hardware_list(several: bool = True) -> list:
    """Each --hardware config (comma-separated), the --set figures replaced in a lone one."""
    from lpu_jax.errors import UserError
    from lpu_jax.lpu.hardware import load_hardware

    names = [name.strip() for name in HARDWARE.value.split(",")]
    if len(names) > 1 and not several:
        raise UserError("--hardware takes one config here (lpu-estimate compares several)")
    if len(names) > 1 and SET.value:
        raise UserError("--set changes the figures of one --hardware config: give one")
    return [load_hardware(name).what_if(SET.value) for name in names]


def trace_path() -> Path | None:
    """The --trace path, checked before any work."""
    return common.check_output_path(TRACE.value, "--trace") if TRACE.value else None


def save_trace(schedule, path: Path, title: str, outputs: "common.Outputs") -> None:
    """Stage the schedule's Perfetto trace among the run's outputs."""
    from lpu_jax.lpu.perfetto import write_trace

    shown = []

    def write(binary):
        text = io.TextIOWrapper(binary, encoding="utf-8")
        shown.append(write_trace(schedule, text, title))
        text.flush()
        text.detach()

    outputs.stage(path, write)
    if shown[0] < schedule.chips:
        print(f"[trace] {path}: chips 0-{shown[0] - 1} of {schedule.chips} (every chip runs the "
              "same program)", file=sys.stderr)
