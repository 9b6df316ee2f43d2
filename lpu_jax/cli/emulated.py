"""Flags and output shared by the commands that report emulated hardware figures."""

from __future__ import annotations

import io
import sys
from pathlib import Path

from absl import flags

from lpu_jax.cli import common

HARDWARE = flags.DEFINE_string("hardware", "lpu-v1", "Hardware the cycle model emulates: a name "
                               "from configs/hardware (lpu-v1; h100, h200 for a roofline "
                               "comparison) or a .toml file.")
TRACE = flags.DEFINE_string("trace", None, "Write the decode step's static schedule as a Perfetto "
                            "/ Chrome trace JSON, a track per chip and unit (ui.perfetto.dev).")


def trace_path() -> Path | None:
    """The --trace path, checked before any work."""
    return common.check_output_path(TRACE.value, "--trace") if TRACE.value else None


def save_trace(schedule, path: Path, title: str) -> None:
    from lpu_jax.lpu.perfetto import write_trace

    shown = []

    def write(binary):
        text = io.TextIOWrapper(binary, encoding="utf-8")
        shown.append(write_trace(schedule, text, title))
        text.flush()
        text.detach()

    common.write_atomically(path, write)
    if shown[0] < schedule.chips:
        print(f"[trace] {path}: chips 0-{shown[0] - 1} of {schedule.chips} (every chip runs the "
              "same program)", file=sys.stderr)
