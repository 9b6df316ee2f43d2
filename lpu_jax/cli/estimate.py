"""lpu-estimate: what a deployment would do on the hardware, from a model's config alone.

No weights are read: the per-chip program is traced with abstract shapes and scheduled by the
cycle model, so models far bigger than this machine can be sized. --tp and --pp take lists, and
every combination is one row; --chips N chooses the best layout of at most N chips; several
--hardware configs give one row each, side by side.
"""

from __future__ import annotations

import dataclasses
import json
import sys

from absl import flags

from lpu_jax.cli import common, emulated
from lpu_jax.errors import UserError

_CONFIG = common.config_flag()
_TP = flags.DEFINE_list("tp", ["1"], "Tensor-parallel chips per stage; a list sweeps them, "
                        "e.g. 1,2,4,8.")
_PP = flags.DEFINE_list("pp", ["1"], "Pipeline stages; a list sweeps them, e.g. 8,16,32.")
_EP = common.ep_flag()
_PRECISION = flags.DEFINE_string("precision", "int8-exact", "Precision recipe (name or .toml). "
                                 "int8-exact (int8 weights and activations, int32 sums) is the "
                                 "MXM's int8 mode; bf16 its fp16 mode.")
_PROMPT_LEN = flags.DEFINE_integer("prompt_len", 128, "Prompt tokens, for the time to first "
                                   "token.")
_NEW_TOKENS = flags.DEFINE_integer("new_tokens", 128, "Tokens decoded after the prompt; decode "
                                   "figures average over their positions.")
_CONTEXT = flags.DEFINE_integer("context", None, "Positions of KV cache each sequence reserves "
                                "in SRAM (default: prompt_len + new_tokens).")
_BATCH = flags.DEFINE_integer("batch", None, "Sequences decoded together with the pipeline full, "
                              "a multiple of pp, their KV caches reserved in SRAM (default: one "
                              "stream reserved; the pipeline-full figures then assume one "
                              "sequence per stage, and say whether they fit).")

_CHIPS = flags.DEFINE_integer("chips", None, "Choose the layout: every tp x pp of at most this "
                              "many chips that fits, ranked by --objective; prints the best "
                              "(--all: every one).")
_OBJECTIVE = flags.DEFINE_enum("objective", "latency", ["latency", "throughput"],
                               "What --chips ranks by: single-stream time per token, or tokens/s "
                               "with the most sequences that fit in flight.")
_ALL = flags.DEFINE_bool("all", False, "With --chips, a table of every layout that fits.")
_PLOT = flags.DEFINE_string("plot", None, "Draw tokens/s (one stream, pipeline full) against "
                            "chips for the deployments reported (a sweep, --chips, several "
                            "--hardware): a PNG.")
_GANTT = flags.DEFINE_string("gantt", None, "Draw the decode step's schedule of the deployment "
                             "(the best of --chips): units against time, a band per chip of the "
                             "first stage, coloured by model block; a PNG.")


def _integers(values: list[str], flag: str) -> list[int]:
    try:
        numbers = [int(v) for v in values]
    except ValueError:
        given = ",".join(values)
        raise UserError(f"--{flag} takes comma-separated integers, got {given!r}") from None
    if not numbers or min(numbers) < 1:
        raise UserError(f"--{flag} values must be >= 1")
    return numbers


@dataclasses.dataclass(frozen=True)
class _Question:
    """What every deployment is estimated for: the model, the recipe and the run."""

    name: str
    config: object  # ModelConfig
    recipe: object  # Recipe
    prompt_len: int
    positions: list[int]  # the decode steps' positions
    batch: int | None  # --batch, or None for one stream
    context: int
    ep: int  # expert groups of every layout

    def header(self) -> dict:
        return {"config": self.name, "precision": self.recipe.name,
                "prompt_len": self.prompt_len,
                "new_tokens": self.positions[-1] - self.prompt_len + 1}


def main() -> None:
    if _CONFIG.value is None:
        raise UserError("pass --config (a config.json, or a name from configs/models)")
    tps, pps = _integers(_TP.value, "tp"), _integers(_PP.value, "pp")
    chips, explicit = _CHIPS.value, flags.FLAGS["tp"].present or flags.FLAGS["pp"].present
    if chips is not None and explicit:
        raise UserError("--chips chooses --tp and --pp: give --chips, or --tp and --pp")
    if chips is not None and chips < 1:
        raise UserError(f"--chips must be >= 1, got {chips}")
    if chips is None and (_ALL.value or flags.FLAGS["objective"].present):
        raise UserError("--all and --objective choose among the layouts of --chips: give --chips")
    if _BATCH.value is not None and _BATCH.value < 1:
        raise UserError("--batch must be >= 1")
    if _PROMPT_LEN.value < 1 or _NEW_TOKENS.value < 1:
        raise UserError("--prompt_len and --new_tokens must be >= 1")
    if _CONTEXT.value is not None and _CONTEXT.value < 1:
        raise UserError(f"--context must be >= 1, got {_CONTEXT.value}")
    hardware = emulated.hardware_list()
    if len(hardware) > 1 and (len(tps) * len(pps) > 1 or _ALL.value):
        raise UserError("several --hardware configs compare one deployment each: give --tp "
                        "and --pp one value each, or --chips (without --all)")
    trace_path = emulated.trace_path()
    gantt_path, plot_path = (common.check_png_path(value, flag) if value else None
                             for value, flag in ((_GANTT.value, "--gantt"),
                                                 (_PLOT.value, "--plot")))
    common.check_distinct({"--trace": trace_path, "--gantt": gantt_path, "--plot": plot_path})
    one = len(hardware) == 1 and (chips is not None or len(tps) * len(pps) == 1)
    if (trace_path or gantt_path) and not one:
        raise UserError("--trace and --gantt show one deployment: give --tp and --pp one value "
                        "each (or --chips, for the best) and one --hardware")
    from lpu_jax.chips.layout import check_expert_groups
    from lpu_jax.config import ModelConfig
    from lpu_jax.numerics.recipe import load_recipe

    config = ModelConfig.shipped_or_file(_CONFIG.value)
    check_expert_groups(config, _EP.value)  # before a search that would find no layout
    recipe = load_recipe(_PRECISION.value)
    prompt_len, new_tokens = _PROMPT_LEN.value, _NEW_TOKENS.value
    context = _CONTEXT.value or prompt_len + new_tokens
    if context > config.max_position_embeddings or prompt_len + new_tokens > context:
        raise UserError(f"prompt_len + new_tokens = {prompt_len + new_tokens} and --context "
                        f"{context} must fit the model's context of "
                        f"{config.max_position_embeddings} positions, in that order")
    question = _Question(_CONFIG.value, config, recipe, prompt_len,
                         sorted({prompt_len, prompt_len + new_tokens - 1}), _BATCH.value, context,
                         _EP.value)
    if len(hardware) > 1:
        rows, models = _compare(question, hardware, (tps[0], pps[0]) if explicit else None)
    elif chips is not None:
        rows, models = _choose(question, hardware[0], chips)
    else:
        rows, models = _sweep(question, hardware[0], tps, pps)
    with common.Outputs() as outputs:  # all written, or none changed
        if plot_path is not None:
            from lpu_jax.lpu.plots import draw_scaling

            title = (f"{question.name}, {recipe.name}, {context:,} positions: tokens/s against "
                     "chips")
            outputs.stage(plot_path, lambda f: draw_scaling(rows, f, title))
        if trace_path or gantt_path:
            _show_one(question, models[0], trace_path, gantt_path, outputs)


def _show_one(question: _Question, model, trace_path, gantt_path, outputs) -> None:
    """The decode step of one reported deployment as a Perfetto trace and a Gantt chart."""
    step, layout = model.last_decode, model.deployment.layout
    title = (f"{question.name} decode step, {model.deployment.hardware.name}, "
             f"{layout.describe()}, {question.recipe.name}")
    if trace_path is not None:
        emulated.save_trace(step, trace_path, title, outputs)
    if gantt_path is not None:
        from lpu_jax.lpu.plots import draw_gantt

        layers = layout.pp * layout.layer_slots(question.config.num_layers)
        outputs.stage(gantt_path, lambda f: draw_gantt(step, layout.tp, layers, f, title))


def _report(question: _Question, hardware, tp: int, pp: int) -> tuple[dict, object]:
    """One deployment's report (and its cycle model), the vocabulary balanced for the run."""
    from lpu_jax.chips.layout import Layout
    from lpu_jax.chips.memory import MemoryPlan
    from lpu_jax.lpu.deployment import CycleModel, Deployment

    q, layout = question, Layout(tp=tp, pp=pp, ep=question.ep)
    layout.check(q.config)
    batch = q.batch or 1
    if q.batch and batch % pp:
        raise UserError(f"--batch {batch} does not split into {pp} equal micro-batches")
    plan = MemoryPlan(q.config, q.recipe)
    model = CycleModel(Deployment(q.config, plan.balanced(layout, batch, q.context), q.recipe,
                                  hardware), plan)
    return model.report(q.prompt_len, q.positions, batch, q.context), model


def _sweep(question: _Question, hardware, tps: list[int], pps: list[int]) -> tuple[list, list]:
    """--tp x --pp: a row per combination (and its cycle model)."""
    from lpu_jax.lpu.deployment import describe

    rows, models = zip(*(_report(question, hardware, tp, pp) for tp in tps for pp in pps))
    single = len(rows) == 1
    if single and not rows[0]["memory_per_chip"]["fits"]:
        raise UserError(_does_not_fit(rows[0], question.name, hardware))
    if common.JSON.value:
        print(json.dumps({**question.header(), **rows[0]} if single else
                         {**question.header(), "deployments": rows}))
        return rows, models
    for row in rows:
        print(describe(row))
    if not single and not any(r["memory_per_chip"]["fits"] for r in rows):
        print(_does_not_fit(rows[-1], question.name, hardware), file=sys.stderr)
    return rows, models


def _chosen(question: _Question, hardware, chips: int,
            reported: int | None) -> tuple[list, list, int]:
    """The reports of the best `reported` layouts of at most `chips` (None: all), best first,
    their cycle models, and how many fit; refused when none does."""
    from lpu_jax.lpu.search import fewest_chips, search

    q = question
    ranked = search(q.config, q.recipe, hardware, chips, _OBJECTIVE.value, q.positions, q.batch,
                    q.context, q.ep)
    if not ranked:
        fewest = fewest_chips(q.config, q.recipe, hardware, q.positions, q.batch, q.context,
                              q.ep)
        advice = (_nothing_fits(hardware) if fewest is None
                  else f"the fewest that hold it are {fewest.num_chips} ({fewest.as_flags()})")
        raise UserError(f"{q.name} fits no layout of at most {chips} {hardware.name} chip(s) "
                        f"at --context {q.context}; {advice}")
    shown = ranked[:reported]
    return ([c.model.report(q.prompt_len, q.positions, q.batch or 1, q.context) for c in shown],
            [c.model for c in shown], len(ranked))


def _choose(question: _Question, hardware, chips: int) -> tuple[list, list]:
    """--chips N: the best layout, or all of them."""
    from lpu_jax.lpu.deployment import describe, most_chips, tabulate

    every = _ALL.value or common.JSON.value or _PLOT.value is not None
    rows, models, fitting = _chosen(question, hardware, chips, None if every else 1)
    if common.JSON.value:
        print(json.dumps({**question.header(), "chips": chips, "objective": _OBJECTIVE.value,
                          "deployments": rows}))
        return rows, models
    node = most_chips(hardware)
    bound = (f"at most {chips} chips" if node is None or chips <= node
             else f"one node of at most {node} GPUs")
    print(f"best of {fitting} layout{'s' if fitting > 1 else ''} of {bound} that fit, by "
          f"{_OBJECTIVE.value}:")
    print(describe(rows[0]))
    if _ALL.value:
        print("\n".join(tabulate(rows)))
    return rows, models


def _compare(question: _Question, hardware: list,
             layout: tuple[int, int] | None) -> tuple[list, list]:
    """Several --hardware configs, a row each: the --tp/--pp layout, the best of --chips, or
    else the fewest devices that hold the model."""
    from lpu_jax.lpu.deployment import tabulate
    from lpu_jax.lpu.search import fewest_chips

    q, rows, models = question, [], []
    for spec in hardware:
        if layout is not None:
            row, model = _report(q, spec, *layout)
        elif _CHIPS.value is not None:
            (row,), (model,), _ = _chosen(q, spec, _CHIPS.value, 1)
        else:
            fewest = fewest_chips(q.config, q.recipe, spec, q.positions, q.batch, q.context,
                                  q.ep)
            if fewest is None:
                raise UserError(_does_not_fit(_report(q, spec, 1, 1)[0], q.name, spec))
            row, model = _report(q, spec, fewest.tp, fewest.pp)
        if not row["memory_per_chip"]["fits"]:
            raise UserError(_does_not_fit(row, q.name, spec))
        rows.append(row)
        models.append(model)
    if common.JSON.value:
        print(json.dumps({**q.header(), "hardware": rows}))
    else:
        print("\n".join(tabulate(rows)))
    return rows, models


def _does_not_fit(row: dict, model: str, hardware) -> str:
    from lpu_jax.chips.layout import Layout

    memory = row["memory_per_chip"]
    needed = memory.get("chips_needed")
    if needed is None:
        advice = _nothing_fits(hardware)
    else:
        advice = f"it needs at least {needed['chips']} chips, e.g. {needed['flags']}"
    layout = Layout(tp=row["tp"], pp=row["pp"], ep=row["ep"])
    return (f"{model} does not fit {row['chips']} {hardware.name} chip(s) at "
            f"{layout.describe()}: {memory['total_bytes'] / 1e6:,.0f} MB per chip against "
            f"{memory['capacity_bytes'] / 1e6:,.0f} MB; {advice}")


def _nothing_fits(hardware) -> str:
    if hardware.kind == "gpu":
        return (f"no layout of one node's {hardware['gpus_per_node']:.0f} GPUs holds it; "
                "choose a smaller recipe, context or batch")
    return "no layout fits: even one layer per stage is too big"


def run() -> None:
    common.run(main)


if __name__ == "__main__":
    run()
