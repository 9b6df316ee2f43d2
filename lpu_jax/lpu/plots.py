"""Pictures of the cycle model's figures for people without Perfetto: tokens/s against chips for
a set of deployments, and one step's schedule as a Gantt chart."""

from __future__ import annotations

from typing import BinaryIO

from lpu_jax.lpu.deployment import block_of
from lpu_jax.model import LAYER_SCOPE
from lpu_jax.lpu.scheduler import Schedule

MOST_BANDS = 4  # chips drawn in a Gantt chart: every chip runs the same program
HARDWARE_MARKERS = "osD^vP*X"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    return pyplot


SERIES = (  # (name, marker, colour, tokens/s of a report, whether its sequences fit)
    ("one stream", "o", "tab:blue", lambda r: r["decode"]["tokens_per_s"],
     lambda r: r["memory_per_chip"]["fits"]),
    ("pipeline full", "s", "tab:orange", lambda r: r["pipeline_full"]["tokens_per_s"],
     lambda r: r["memory_per_chip"]["fits"] and r["pipeline_full"]["fits"]),  # pp > 1 only
    ("most sequences that fit", "^", "tab:green",
     lambda r: r["at_most_sequences"]["tokens_per_s"],
     lambda r: r["memory_per_chip"]["fits"] and r["at_most_sequences"]["sequences"] > 0),
)


def draw_scaling(rows: list[dict], out: BinaryIO, title: str) -> None:
    """Tokens/s against chips, a point per report and series (hollow where the sequences it
    needs do not fit); the layouts that no fewer chips beat are labelled tp x pp."""
    plt = _pyplot()
    from matplotlib.ticker import FuncFormatter

    from matplotlib.lines import Line2D

    fig, ax = plt.subplots(figsize=(9, 5.5))
    hardware = list(dict.fromkeys(row["hardware"] for row in rows))
    several = len(hardware) > 1  # then the marker tells the hardware, the colour the series
    handles = []
    for name, marker, color, rate, fits in SERIES:
        for fitting in (True, False):
            for index, hw in enumerate(hardware):
                picked = [r for r in _points(rows, name, rate)
                          if fits(r) == fitting and r["hardware"] == hw]
                if picked:
                    ax.scatter([r["chips"] for r in picked], [rate(r) for r in picked],
                               marker=HARDWARE_MARKERS[index] if several else marker,
                               facecolors=color if fitting else "none", edgecolors=color)
            if any(fits(r) == fitting for r in _points(rows, name, rate)):
                handles.append(Line2D([], [], linestyle="", marker="o" if several else marker,
                                      markerfacecolor=color if fitting else "none",
                                      markeredgecolor=color,
                                      label=name + ("" if fitting else " (does not fit)")))
        for hw in hardware:
            best = 0.0
            for row in sorted((r for r in _points(rows, name, rate)
                               if fits(r) and r["hardware"] == hw),
                              key=lambda r: (r["chips"], -rate(r))):
                if rate(row) > best:  # the frontier: more tokens/s than any fewer chips give
                    best = rate(row)
                    label = f"{row['tp']}x{row['pp']}" + (f" {hw}" if several else "")
                    ax.annotate(label, (row["chips"], best), fontsize=7, xytext=(4, 3),
                                textcoords="offset points", color=color)
    if several:
        handles += [Line2D([], [], linestyle="", marker=HARDWARE_MARKERS[i], color="0.4",
                           label=hw) for i, hw in enumerate(hardware)]
    chips = [row["chips"] for row in rows]
    if max(chips) > 4 * min(chips):
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.set(xlabel=f"chips or GPUs ({', '.join(hardware)}; labels: tp x pp)" if several
           else f"chips ({hardware[0]}; labels: tp x pp)", ylabel="tokens/s",
           yscale="log", title=title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(handles=handles, fontsize=8)
    fig.tight_layout()
    fig.savefig(out, format="png", dpi=120)
    plt.close(fig)


def _points(rows: list[dict], series: str, rate) -> list[dict]:
    """The reports a series has a point for: a rate to show, and a pipeline to fill."""
    return [r for r in rows if rate(r) > 0 and (series != "pipeline full" or r["pp"] > 1)]


def draw_gantt(step: Schedule, tp: int, layers: int, out: BinaryIO, title: str) -> None:
    """One step's schedule: a band per chip of the first stage (at most MOST_BANDS), a row per
    unit in each, every operation a bar from its issue to its end, coloured by model block;
    below, chip 0 over its first two decoder layers (of the `layers` the step runs), where the
    blocks can be told apart."""
    plt = _pyplot()
    from matplotlib.patches import Patch

    events = [e for e in step.flat() if e.unit and e.end > e.start]
    units = sorted({e.unit for e in events})
    blocks = sorted({block_of(e.scope) for e in events})
    colors = {block: plt.get_cmap("tab20")(i % 20) for i, block in enumerate(blocks)}
    bands = min(tp, MOST_BANDS)
    us = step.tick_s * 1e6
    fig, (whole, zoom) = plt.subplots(
        2, 1, figsize=(12, 2.5 + 0.3 * (bands + 1) * (len(units) + 1)),
        gridspec_kw={"height_ratios": [bands, 1.3]})

    def bars(ax, base):
        for row, unit in enumerate(units):
            for block in blocks:
                spans = [(e.start * us, (e.end - e.start) * us) for e in events
                         if e.unit == unit and block_of(e.scope) == block]
                if spans:
                    ax.broken_barh(spans, (base + row + 0.1, 0.8), facecolors=colors[block])

    for chip in range(bands):
        bars(whole, chip * (len(units) + 1))
    whole.set_yticks([chip * (len(units) + 1) + row + 0.5 for chip in range(bands)
                      for row in range(len(units))],
                     [f"chip {chip} {unit}" for chip in range(bands) for unit in units],
                     fontsize=7)
    whole.invert_yaxis()
    whole.set_xlabel(f"microseconds of emulated time ({step.ticks:,} ticks)", fontsize=8)
    shown = "" if bands == tp else f"; chips 0-{bands - 1} of the stage's {tp}"
    whole.set_title(f"{title}{shown} (every chip runs the same program)", fontsize=10)
    whole.legend(handles=[Patch(color=colors[block], label=block) for block in blocks],
                 fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), title="block")

    bars(zoom, 0)
    first = min((e.start for e in events if e.scope.split("/")[0] == LAYER_SCOPE), default=0)
    zoom.set_xlim(first * us, (first + 2 * step.ticks / max(layers, 1)) * us)
    zoom.set_yticks([row + 0.5 for row in range(len(units))], [f"chip 0 {u}" for u in units],
                    fontsize=7)
    zoom.invert_yaxis()
    zoom.set_xlabel("microseconds: the first two decoder layers", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, format="png", dpi=120)
    plt.close(fig)
