"""A schedule as a Chrome / Perfetto trace (JSON): a process per chip, a thread per unit slot.

Loads in ui.perfetto.dev or chrome://tracing. Times are microseconds of emulated hardware time.
Loop bodies are unrolled trip by trip. Every chip runs the same program, so when all chips'
events together would pass MAX_EVENTS, only the first chips are written (the result says how
many).
"""

from __future__ import annotations

import json
from typing import IO

from lpu_jax.lpu.scheduler import Schedule

MAX_EVENTS = 2_000_000


def write_trace(schedule: Schedule, out: IO[str], title: str = "") -> int:
    """Write the trace to `out`; returns how many chips it shows."""
    flat = list(schedule.flat())
    chips = max(1, min(schedule.chips, MAX_EVENTS // max(len(flat), 1)))
    us = schedule.tick_s * 1e6
    tracks = sorted({(e.unit, e.slot) for e in flat})
    track_id = {track: index for index, track in enumerate(tracks)}
    events = []
    for chip in range(chips):
        events.append({"ph": "M", "name": "process_name", "pid": chip,
                       "args": {"name": f"chip {chip}" + (f" ({title})" if title else "")}})
        for (unit, slot), tid in track_id.items():
            events.append({"ph": "M", "name": "thread_name", "pid": chip, "tid": tid,
                           "args": {"name": f"{unit} {slot}"}})
            events.append({"ph": "M", "name": "thread_sort_index", "pid": chip, "tid": tid,
                           "args": {"sort_index": tid}})
    out.write('{"displayTimeUnit": "ns", "traceEvents": [\n')
    out.write(",\n".join(json.dumps(e) for e in events))
    for chip in range(chips):
        for e in flat:
            record = {"ph": "X", "name": e.name, "pid": chip, "tid": track_id[(e.unit, e.slot)],
                      "ts": e.start * us, "dur": (e.end - e.start) * us,
                      "args": {"start_tick": e.start, "end_tick": e.end,
                               "results_in_mem_tick": e.done, "scope": e.scope,
                               "cost": e.detail}}
            out.write(",\n" + json.dumps(record))
    out.write("\n]}\n")
    return chips
