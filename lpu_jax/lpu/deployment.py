"""What a deployment would do on the hardware: the per-chip prefill, decode and ring steps the
engine runs, scheduled by the cycle model, and the figures derived from them (the `emulated`
report of lpu-generate and lpu-estimate).

Only shapes are needed: the parameters are abstract (jax.eval_shape of storing and splitting
them), so a 70B model is estimated without its weights. Schedules are cached per shape.

- Attention's cost follows the context a step actually sees: a step is scheduled with a KV cache
  of the visible positions, rounded up to whole 320-position vectors (the hardware's grain),
  not with the engine's static cache.
- Single stream: a token crosses every pipeline stage in one decode step, so the latency per token
  is the decode step's schedule.
- Pipeline full: pp micro-batches circulate (the token ring); every tick each stage works on one,
  and M tokens (one micro-batch) leave the last stage: tokens/s = M / tick.
- Energy per token: the dynamic energy of one token's useful work on every chip (the ring tick
  with M = 1, where no stage computes on a bubble) plus the chips' static power over the time
  the token takes.
- Memory of the fullest chip (chips.memory): weights in their storage formats, the KV cache of
  the run's sequences at its context, and the decode and ring steps' peak of live values (the
  prompt's are reported, with the chunk of it that fits); the most sequences whose caches and
  step fit, and their tokens/s. A deployment that does not fit is told the fewest chips whose
  caches and weights hold the same sequences (arithmetic, with this step's activations).
- GPU configs: a node of up to gpus_per_node GPUs, each a roofline (lpu/costs.py).
"""

from __future__ import annotations

import dataclasses
import functools
import time

import jax
import jax.numpy as jnp

from lpu_jax.chips import program
from lpu_jax.chips.layout import Layout
from lpu_jax.chips.memory import MemoryPlan
from lpu_jax.chips.split import abstract_chip_params
from lpu_jax.config import ModelConfig
from lpu_jax.engine.sampling import SamplingConfig
from lpu_jax.errors import UserError
from lpu_jax.lpu.hardware import HardwareSpec
from lpu_jax.lpu.scheduler import Schedule, schedule
from lpu_jax.model import BLOCKS, LAYER_SCOPE
from lpu_jax.numerics.recipe import Recipe


@dataclasses.dataclass(frozen=True)
class Deployment:
    config: ModelConfig
    layout: Layout
    recipe: Recipe
    hardware: HardwareSpec
    sampling: SamplingConfig = SamplingConfig()


def block_of(scope: str) -> str:
    """The model block (model.BLOCKS) a named scope belongs to: the innermost one named in it."""
    parts = scope.split("/")
    best, reach = "other", -1
    for block in BLOCKS:
        size = block.count("/") + 1
        for end in range(len(parts), size - 1, -1):
            if "/".join(parts[end - size:end]) == block:
                if end > reach:
                    best, reach = block, end
                break
    return best


def cycles_by_block(step: Schedule) -> dict[str, int]:
    """Cycles each model block has work in flight in a step, the costliest first."""
    cycles = step.cycles_by_scope(block_of)
    return dict(sorted(cycles.items(), key=lambda kv: (-kv[1], kv[0])))


def _in_layer(scope: str) -> str:
    return LAYER_SCOPE if scope.split("/")[0] == LAYER_SCOPE else ""


def cycles_per_layer(step: Schedule, layers: int) -> int:
    """Cycles from a decoder layer's first operation to its last result, averaged over the
    `layers` decoder layers the step runs (one token through every stage: pp x layers per
    stage, bubbles included)."""
    return round(step.cycles_by_scope(_in_layer).get(LAYER_SCOPE, 0) / max(layers, 1))


def most_chips(hardware: HardwareSpec) -> int | None:
    """The most chips a deployment may have: a GPU config models one NVLink node."""
    return int(hardware["gpus_per_node"]) if hardware.kind == "gpu" else None


def capacity(hardware: HardwareSpec) -> float:
    """Bytes of memory one chip holds a deployment in: an LPU's SRAM, a GPU's HBM."""
    return hardware["sram" if hardware.kind == "lpu" else "hbm"]


def check_chips(hardware: HardwareSpec, layout: Layout) -> None:
    bound = most_chips(hardware)
    if bound is not None and layout.num_chips > bound:
        raise UserError(f"the {hardware.name} config models one node of {bound} GPUs: use at "
                        f"most {bound} (tp x pp = {layout.num_chips})")


@dataclasses.dataclass(frozen=True)
class Steady:
    """A deployment's steady-state steps (see CycleModel.steady)."""

    decode: list[Schedule]  # one stream, at each decode position
    micro: int  # sequences per micro-batch of the ring
    ring_context: int  # the positions the ring ticks see: the middle decode position's
    lone: Schedule  # a ring tick of one sequence per stage
    full: Schedule  # a ring tick of the run's batch
    memory: dict  # the memory plan

    @property
    def latency_s(self) -> float:
        return sum(s.seconds for s in self.decode) / len(self.decode)


class CycleModel:
    """Schedules one deployment's per-chip steps; cached per shape."""

    def __init__(self, deployment: Deployment, memory: MemoryPlan | None = None):
        d = self.deployment = deployment
        d.layout.check(d.config)
        check_chips(d.hardware, d.layout)
        self.lanes = int(d.hardware["lanes"]) if d.hardware.kind == "lpu" else 1
        self._precision = d.recipe.with_kernel("xla")  # the plain-JAX twin of any kernel
        self._params = None
        self._schedules: dict[tuple, Schedule] = {}
        self.memory = memory or MemoryPlan(d.config, d.recipe)
        self.scheduling_s = 0.0
        self.last_decode: Schedule | None = None  # the decode step of the latest report

    def _chip_params(self):
        if self._params is None:
            d = self.deployment
            self._params = abstract_chip_params(self.memory.one_layer_model, d.config, d.layout)
        return self._params

    def visible(self, positions: int) -> int:
        """The cache length a step is scheduled with: the visible positions in whole vectors."""
        return -(-positions // self.lanes) * self.lanes

    def step(self, kind: str, batch: int, context: int, prompt_len: int = 0) -> Schedule:
        """The schedule of one step ("prefill", "decode" or "ring") seeing `context` positions."""
        length = self.visible(context)
        key = (kind, batch, length, prompt_len)
        if key in self._schedules:
            return self._schedules[key]
        start = time.perf_counter()
        d = self.deployment
        state = jax.eval_shape(lambda: program.initial_state(
            kind, d.config, d.layout, batch, length, d.recipe.kv_cache_dtype))
        args = program.step_arguments(kind, batch, d.layout.pp, prompt_len)
        step_fn = functools.partial(program.step(kind), config=d.config, layout=d.layout,
                                    sampling=d.sampling, precision=self._precision)
        seed = jax.ShapeDtypeStruct((), jnp.int32)
        result = schedule(step_fn, self._chip_params(), state, *args, seed,
                          hardware=d.hardware, axes=d.layout.axes, weights=(0,))
        self._schedules[key] = result
        self.scheduling_s += time.perf_counter() - start
        return result

    def steady(self, decode_positions: list[int], batch: int, context: int) -> Steady:
        """The decode steps at the given positions and the ring ticks of `batch` sequences,
        and the memory plan their activations leave: what deciding whether a deployment fits
        and ranking it needs (no prefill)."""
        layout = self.deployment.layout
        steps = [self.step("decode", 1, p + 1) for p in decode_positions]
        micro = max(batch // layout.pp, 1)
        ring_context = decode_positions[len(decode_positions) // 2] + 1
        # With one stage and one sequence the ring tick is the decode step.
        lone = (self.step("decode", 1, ring_context) if layout.pp == 1
                else self.step("ring", layout.pp, ring_context))
        full = lone if micro == 1 else self.step("ring", micro * layout.pp, ring_context)
        # The steady state's live values; the prompt's are not reserved (see _prefill_chunk).
        activations = max(s.peak_activation_bytes for s in (steps[-1], lone, full))
        return Steady(steps, micro, ring_context, lone, full,
                      self._memory_plan(batch, context, activations))

    def at_most_sequences(self, steady: Steady) -> tuple[int, float]:
        """The most sequences in flight whose caches and step activations fit, and their
        tokens/s: whole micro-batches around the token ring or, with fewer sequences than
        stages, all of them decoded together through every stage."""
        memory, layout = steady.memory, self.deployment.layout
        activations = memory["activations_bytes"]
        for _ in range(3):  # more sequences hold more live values: settle on what fits
            most = self.memory.max_sequences(layout, memory["context"],
                                             memory["capacity_bytes"] - activations)
            used = most if most < layout.pp else most // layout.pp * layout.pp
            if used == 0:
                return 0, 0.0
            if used < layout.pp or used == 1:
                step, tokens = self.step("decode", used, steady.ring_context), used
            else:
                step, tokens = (self.step("ring", used, steady.ring_context),
                                used // layout.pp)
            if step.peak_activation_bytes <= activations:
                return used, tokens / step.seconds
            activations = step.peak_activation_bytes
        return 0, 0.0

    def report(self, prompt_len: int, decode_positions: list[int], batch: int = 1,
               context: int | None = None) -> dict:
        """The emulated figures of a run: prompts of prompt_len tokens (a batch of `batch`),
        single-stream decode steps at the given positions, a context of `context` positions per
        sequence (default: the model's) for the SRAM plan."""
        d, hw = self.deployment, self.deployment.hardware
        layout, chips = d.layout, d.layout.num_chips
        context = context or d.config.max_position_embeddings
        positions = decode_positions or [prompt_len]
        steady = self.steady(positions, batch, context)
        steps, micro, lone, full, memory = (steady.decode, steady.micro, steady.lone, steady.full,
                                            steady.memory)
        self.last_decode = steps[-1]
        mean_s = steady.latency_s
        streams = micro * layout.pp
        # The first token of one prompt: the batch's prompts are prefilled one after another.
        prefill = self.step("prefill", 1, prompt_len, prompt_len)

        static_w = hw.figures["power_static"].value if "power_static" in hw.figures else 0.0
        host = 0.0
        if "host_link_latency" in hw.figures:  # the prompt in, the first token out
            host = 2 * hw["host_link_latency"] + 4 * (prompt_len + 1) / hw["host_link_bandwidth"]
        is_lpu = hw.kind == "lpu"
        most, most_rate = self.at_most_sequences(steady)
        return {
            "hardware": hw.name,
            "chips": chips, "tp": layout.tp, "pp": layout.pp, "ep": layout.ep,
            "decode": {
                "cycles_per_token": (round(sum(s.ticks for s in steps) / len(steps))
                                     if is_lpu else None),
                "latency_per_token_s": mean_s,
                "tokens_per_s": 1 / mean_s,
                "context_positions": [positions[0] + 1, positions[-1] + 1],
                "bottleneck": self.last_decode.bottleneck(),
                "cycles_by_block": cycles_by_block(self.last_decode) if is_lpu else None,
                "cycles_per_layer": (cycles_per_layer(
                    self.last_decode, layout.pp * layout.layer_slots(d.config.num_layers))
                    if is_lpu else None),
                "utilization": {u: round(v, 4)
                                for u, v in self.last_decode.utilization().items()},
                "operations": self.last_decode.operations(),
            },
            "pipeline_full": {
                "micro_batch": micro, "streams": streams,
                "fits": streams <= memory["max_sequences"],
                "cycles_per_tick": full.ticks if is_lpu else None,
                "tokens_per_s": micro / full.seconds,
            },
            "at_most_sequences": {"sequences": most, "tokens_per_s": most_rate},
            "time_to_first_token_s": prefill.seconds + host,
            "prefill": {"prompt_tokens": prompt_len,
                        "cycles": prefill.ticks if is_lpu else None,
                        "seconds": prefill.seconds, "bottleneck": prefill.bottleneck(),
                        "activations_bytes": prefill.peak_activation_bytes,
                        "chunk_tokens": self._prefill_chunk(prefill, prompt_len, memory)},
            "memory_per_chip": memory,
            "energy_per_token_j": {
                "single_stream": lone.energy_pj * chips * 1e-12 + static_w * chips * mean_s,
                "pipeline_full": (full.energy_pj * chips * 1e-12 / micro
                                  + static_w * chips * full.seconds / micro),
            },
            "power_w": hw["power_typical"] * chips,
            "estimates_used": hw.estimates(),
            "what_if": {name: hw[name] for name in hw.changed},
            "scheduling_s": round(self.scheduling_s, 3),
        }

    def _memory_plan(self, batch: int, context: int, activations: int) -> dict:
        """The fullest chip's bytes against its memory for `batch` sequences' KV caches
        (activations: the decode and ring steps' peak), and the most sequences whose caches
        would fit beside the weights. The chips needed, when it does not fit, assume the same
        activation bytes."""
        d = self.deployment
        memory, room = "SRAM" if d.hardware.kind == "lpu" else "HBM", capacity(d.hardware)
        held = self.memory.fullest(d.layout, batch, context)
        total = held.weights + held.kv_cache + activations
        plan = {"memory": memory, "weights_bytes": held.weights, "kv_cache_bytes": held.kv_cache,
                "activations_bytes": activations, "total_bytes": total,
                "capacity_bytes": int(room), "fits": total <= room, "context": context,
                "sequences": batch,
                "max_sequences": self.memory.max_sequences(d.layout, context,
                                                           room - activations)}
        if total > room:
            needed = self.memory.chips_needed(room, batch, context, activations,
                                              most_chips(d.hardware),
                                              batch if batch > 1 else None, d.layout.ep)
            plan["chips_needed"] = (None if needed is None else
                                    {"chips": needed.num_chips, "tp": needed.tp, "pp": needed.pp,
                                     "ep": needed.ep, "flags": needed.as_flags()})
        return plan

    @staticmethod
    def _prefill_chunk(prefill: Schedule, prompt_len: int, memory: dict) -> int:
        """Prompt tokens whose live values fit the memory the weights, the caches and the
        steady state leave: the program prefills the whole prompt at once, a compiler for the
        chip would take it in chunks of this many (an assumption: the time above is the
        whole prompt's, chunks would reinstall weights)."""
        room = memory["capacity_bytes"] - memory["total_bytes"] + memory["activations_bytes"]
        per_token = prefill.peak_activation_bytes / prompt_len
        return min(prompt_len, max(int(room // per_token), 0)) if per_token else prompt_len


def describe(emulated: dict) -> str:
    """One line for a terminal."""
    e, dec, memory = emulated, emulated["decode"], emulated["memory_per_chip"]
    most = e["at_most_sequences"]
    cycles = f"{dec['cycles_per_token']:,} cycles = " if dec["cycles_per_token"] else ""
    fits = "fits" if memory["fits"] else "does NOT fit"
    needed = memory.get("chips_needed")
    if needed:
        fits += f"; needs {needed['chips']} chips, e.g. {needed['flags']}"
    what_if = "".join(f", {name}={value:g}" for name, value in e["what_if"].items())
    ep = f", ep {e['ep']}" if e["ep"] > 1 else ""
    return (f"{e['hardware']}{what_if}, {e['chips']} chip(s) (tp {e['tp']}{ep}, pp {e['pp']}): "
            f"decode "
            f"{cycles}{dec['latency_per_token_s'] * 1e6:,.1f} us/token, "
            f"{dec['tokens_per_s']:,.0f} tokens/s one stream, "
            f"{e['pipeline_full']['tokens_per_s']:,.0f} with the pipeline full"
            f"{'' if e['pipeline_full']['fits'] else ' (its caches would not fit)'}, "
            f"{most['tokens_per_s']:,.0f} at the most sequences that fit; first token "
            f"{e['time_to_first_token_s'] * 1e3:,.3f} ms; bottleneck {dec['bottleneck']}"
            f"{_costliest(dec)}; "
            f"{memory['memory']}/chip {memory['total_bytes'] / 1e6:,.1f} of "
            f"{memory['capacity_bytes'] / 1e6:,.1f} MB "
            f"({fits}; at most {_sequences(memory['max_sequences'])} of {memory['context']:,} "
            f"positions); {e['energy_per_token_j']['single_stream'] * 1e3:,.3f} mJ/token")


def _sequences(n: int) -> str:
    return f"{n:,} sequence{'' if n == 1 else 's'}"


TABLE_COLUMNS = ("hardware", "tp", "pp", "chips", "us/token", "tokens/s 1 stream",
                 "tokens/s most", "sequences", "first token ms", "MB/chip", "J/token", "kW")


def _tp_cell(report: dict) -> str:
    return f"{report['tp']} (ep {report['ep']})" if report["ep"] > 1 else str(report["tp"])


def tabulate(reports: list[dict]) -> list[str]:
    """One aligned row per report, under a header: the figures people compare deployments by."""
    rows = [TABLE_COLUMNS] + [(
        e["hardware"], _tp_cell(e), str(e["pp"]), f"{e['chips']:,}",
        f"{e['decode']['latency_per_token_s'] * 1e6:,.1f}",
        f"{e['decode']['tokens_per_s']:,.0f}",
        f"{e['at_most_sequences']['tokens_per_s']:,.0f}",
        f"{e['at_most_sequences']['sequences']:,}",
        f"{e['time_to_first_token_s'] * 1e3:,.2f}",
        f"{e['memory_per_chip']['total_bytes'] / 1e6:,.1f}",
        f"{e['energy_per_token_j']['single_stream']:,.3f}",
        f"{e['power_w'] / 1e3:,.1f}") for e in reports]
    widths = [max(len(row[i]) for row in rows) for i in range(len(TABLE_COLUMNS))]
    return ["  ".join(cell.rjust(w) if i else cell.ljust(w)
                      for i, (cell, w) in enumerate(zip(row, widths))).rstrip() for row in rows]


def _costliest(decode: dict) -> str:
    blocks = decode.get("cycles_by_block")
    if not blocks:
        return ""
    block, cycles = next(iter(blocks.items()))
    return f", costliest block {block} ({cycles:,} cycles in flight)"
