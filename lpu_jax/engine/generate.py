"""The generate loop: prefill the prompts, then decode one token per compiled step.

Every step is lowered and compiled ahead of time, once per shape, and kept: prompt lengths are
padded up to a power-of-two bucket and the KV cache to a power-of-two length, so a new prompt
reuses an executable instead of compiling one. The state (KV cache) is donated to each step, so XLA
updates it in place.

One prompt decodes in single-stream mode (lowest latency: each token crosses the pipeline stages
in one step). A batch decodes in ring mode: pp micro-batches circulate through the stages, one
tick per step, so every stage works at every tick (highest throughput).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lpu_jax.checkpoint import LoadedModel
from lpu_jax.checkpoint.assemble import abstract_params
from lpu_jax.chips import folded, program
from lpu_jax.chips.layout import Layout
from lpu_jax.chips.memory import MemoryPlan
from lpu_jax.chips.placement import Placement
from lpu_jax.chips.split import split_folded, split_params
from lpu_jax.config import ModelConfig
from lpu_jax.engine.sampling import SamplingConfig
from lpu_jax.errors import UserError
from lpu_jax.model import Params
from lpu_jax.numerics.formats import nbytes, num_values
from lpu_jax.numerics.recipe import Recipe, load_recipe
from lpu_jax.numerics.store import execution_copy, execution_copy_bytes, store_params

# How a step reads low-bit weights: "widen" converts them inside each matmul (an XLA fusion);
# "pallas" multiplies int8 / int4 weights in the Pallas kernel of kernels/ (interpreted on CPU);
# "f32-copy" reads an f32 copy made once at load time, whose values equal the stored ones.
# XLA:CPU runs converts fused into dots 10-30x slower than f32 dots, so "auto" copies there; the
# copy's logits are bit-identical to widening (tests/test_numerics.py).
EXECUTIONS = ("auto", "widen", "pallas", "f32-copy")

MIN_BUCKET = 16


def bucket(n: int, cap: int) -> int:
    """The power of two (at least MIN_BUCKET) that holds n, but never more than cap."""
    return min(cap, max(MIN_BUCKET, 1 << max(n - 1, 0).bit_length()))


@dataclasses.dataclass
class WallTimes:
    """Seconds spent here, on this machine (the emulated LPU times are reported elsewhere)."""

    load_s: float = 0.0
    compile_s: float = 0.0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    decode_tokens: int = 0

    @property
    def decode_tokens_per_s(self) -> float:
        return self.decode_tokens / self.decode_s if self.decode_s > 0 else 0.0

    def as_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["decode_tokens_per_s"] = self.decode_tokens_per_s
        return out


@dataclasses.dataclass
class Generation:
    tokens: list[int]  # the new tokens, a stop token included when one ended the run
    finish_reason: str  # "stop" (a stop token), "length" (max_new_tokens) or "context" (full)
    wall: WallTimes  # in a batch, shared by all its sequences
    logits: np.ndarray | None = None  # [len(tokens), V] float32, when asked for


class _Sequence:
    """One prompt's progress: its new tokens, its budget and why it ended."""

    def __init__(self, prompt_len: int, budget: int, max_new_tokens: int, stops: set[int]):
        self.prompt_len = prompt_len
        self.budget = budget  # tokens it may still get: max_new_tokens, or less near the context
        self.max_new = max_new_tokens
        self.stops = stops
        self.tokens: list[int] = []
        self.logits: list[np.ndarray] = []

    @property
    def done(self) -> bool:
        return bool(self.tokens) and (self.tokens[-1] in self.stops
                                      or len(self.tokens) >= self.budget)

    def finish_reason(self) -> str:
        if self.tokens[-1] in self.stops:
            return "stop"
        return "length" if len(self.tokens) == self.max_new else "context"


def prepare(config: ModelConfig, layout: Layout, fold: bool | None, precision: Recipe,
            execution: str) -> tuple[Layout, Placement, str]:
    """What an Engine of these settings runs on, checked before any weight is touched: the
    layout (with pp > 1, the vocabulary where the layers leave room, by lpu-estimate's rule, for
    one sequence at the model's whole context), the placement and the execution mode ("auto"
    resolved). Refused when the weights would not fit the device's memory."""
    layout.check(config)
    if execution not in EXECUTIONS:
        raise UserError(f"execution must be one of {', '.join(EXECUTIONS)}, got {execution!r}")
    if layout.pp > 1 and not layout.vocab_rows:
        layout = MemoryPlan(config, precision).balanced(layout, 1, config.max_position_embeddings)
    placement = Placement.choose(layout, fold)
    if execution == "auto":
        execution = "f32-copy" if placement.on_cpu else "widen"
    _check_memory(config, layout, placement, precision, execution)
    return layout, placement, execution


def _check_memory(config: ModelConfig, layout: Layout, placement: Placement, precision: Recipe,
                  execution: str) -> None:
    """The stored weights (and the f32 execution copy, where it is made) against the memory of
    one device, from their shapes alone. Steady state only: storing and splitting also hold a
    layer (or a vocabulary tensor) in f32 for a moment."""
    stored = jax.eval_shape(lambda p: _split(placement)(store_params(p, precision), config,
                                                        layout), abstract_params(config))
    copy = execution_copy_bytes(stored) if execution == "f32-copy" else 0
    needed = nbytes(stored) + copy
    if not (placement.folded or placement.on_cpu):
        needed //= layout.num_chips  # one chip's share on each device
    free = placement.free_bytes()
    if free is not None and needed > free:
        with_copy = " and their f32 execution copy" if copy else ""
        device = placement.devices[0]
        remedy = ("a smaller recipe or a machine with more memory" if placement.on_cpu else
                  "more devices (one chip each), a smaller recipe or another layout")
        if copy:
            remedy = f"--execution widen (no f32 copy), {remedy}"
        raise UserError(f"the {precision.name} weights{with_copy} need {needed / 1e9:.2f} GB on "
                        f"{device.platform}:{device.id}, which has {free / 1e9:.2f} GB free; "
                        f"use {remedy}")


def _split(placement: Placement):
    """How the placement's chips hold the weights: a buffer per chip folded, stacked else."""
    return split_folded if placement.folded else split_params


def stored_model(model: LoadedModel, precision: Recipe) -> Params:
    """The model's parameters in the recipe's formats (random weights are drawn so)."""
    if model.draw_stored is not None:
        return model.draw_stored(precision)
    return store_params(model.params, precision)


class Engine:
    """Generates from one loaded model on a deployment of emulated chips.

    Executables are compiled once per shape. `fold` forces all chips onto one device (True) or one
    chip per device (False); None picks one chip per device when there are enough devices.
    `precision` is a recipe (or its name or file) and `execution` one of EXECUTIONS.
    """

    def __init__(self, model: LoadedModel, sampling: SamplingConfig = SamplingConfig(),
                 layout: Layout = Layout(), fold: bool | None = None,
                 precision: Recipe | str = "f32", execution: str = "auto"):
        # The model's description; its weights live on as stored_params (a caller that drops
        # its own reference to the model frees the loaded copy).
        self.model = dataclasses.replace(model, params=None)
        self.sampling = sampling
        self.precision = load_recipe(precision)
        self.layout, self.placement, self.execution = prepare(model.config, layout, fold,
                                                              self.precision, execution)
        if self.execution == "pallas":
            self.precision = self.precision.with_kernel(
                "pallas-interpret" if self.placement.on_cpu else "pallas")
        # The weights as stored in device memory, in the recipe's formats: stored and split on
        # the one device of folded chips, else on the host (placing gives each device its share).
        with jax.default_device(self.placement.devices[0] if self.placement.folded
                                else jax.local_devices(backend="cpu")[0]):
            shares = _split(self.placement)(stored_model(model, self.precision), model.config,
                                            self.layout)
        self.stored_params = self.placement.put(shares)
        del shares
        self.params = (execution_copy(self.stored_params)
                       if self.execution == "f32-copy" else self.stored_params)
        self._seed = np.int32(sampling.seed)
        self._compiled: dict[tuple, jax.stages.Compiled] = {}
        self.compile_count = 0

    @property
    def context_length(self) -> int:
        return self.model.config.max_position_embeddings

    def weight_report(self) -> dict:
        """The stored weights' bytes in device memory (all chips), against f32 for the same
        values; with one chip per device, the identity layers that pad short pipeline stages and
        the vocabulary padding count.
        execution_copy_bytes: what the f32 execution copy adds (0 when steps read the stored
        weights)."""
        stored, values = nbytes(self.stored_params), num_values(self.stored_params)
        copy = (execution_copy_bytes(self.stored_params) if self.execution == "f32-copy"
                else 0)
        return {"recipe": self.precision.name, "execution": self.execution,
                "weight_bytes": stored, "weight_bytes_per_chip": stored // self.layout.num_chips,
                "f32_bytes": 4 * values, "ratio_to_f32": stored / (4 * values),
                "execution_copy_bytes": copy}

    def _initial_state(self, kind: str, batch: int, length: int):
        """The chips' state before a step of `kind` (zeros), placed: every chip's
        (program.initial_state, stacked on the chip axes), or the folded grid's."""
        config, dtype = self.model.config, self.precision.kv_cache_dtype
        if self.placement.folded:
            return self.placement.put(folded.initial_state(kind, config, self.layout, batch,
                                                           length, dtype))
        grid = (self.layout.pp, self.layout.tp)
        one_chip = program.initial_state(kind, config, self.layout, batch, length, dtype)
        return self.placement.put(jax.tree.map(lambda a: jnp.broadcast_to(a, grid + a.shape),
                                               one_chip))

    def _executable(self, kind: str, batch: int, cache_len: int,
                    prompt_len: int = 0) -> tuple[jax.stages.Compiled, float]:
        """The compiled step for these shapes, and the seconds spent compiling it now (0: cached)."""
        key = (kind, batch, cache_len, prompt_len)
        if key in self._compiled:
            return self._compiled[key], 0.0
        start = time.perf_counter()
        args = program.step_arguments(kind, batch, self.layout.pp, prompt_len)
        state = self._initial_state(kind, batch, cache_len)  # also the warm-up's input, below
        abstract_state = jax.tree.map(
            lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), state)
        static = dict(config=self.model.config, layout=self.layout, sampling=self.sampling,
                      precision=self.precision)
        if self.placement.folded:
            on_chips = folded.step(kind, **static)
        else:
            on_chips = self.placement.run_per_chip(functools.partial(program.step(kind), **static),
                                                   num_replicated_outputs=2)
        compiled = jax.jit(on_chips, donate_argnums=(1,)).lower(
            self.params, abstract_state, *args, jax.ShapeDtypeStruct((), jnp.int32)).compile()
        # XLA:CPU finishes setting an executable up on its first run (about as long as a whole
        # decode of dozens of tokens here): pay that now, with zeros, so step timings are steady.
        zeros = [np.zeros(a.shape, a.dtype) for a in args]
        jax.block_until_ready(compiled(self.params, state, *zeros, self._seed))
        self._compiled[key] = compiled
        self.compile_count += 1
        return compiled, time.perf_counter() - start

    def _plan(self, prompts: Sequence[Sequence[int]], max_new_tokens: int,
              stop_token_ids: Sequence[int] | None) -> tuple[list[_Sequence], int, int]:
        """Check the prompts; each one's budget; the cache length and the padded prompt length."""
        if max_new_tokens < 1:
            raise UserError(f"--max_new_tokens must be >= 1, got {max_new_tokens}")
        vocab = self.model.config.vocab_size
        stops = set(self.model.stop_token_ids if stop_token_ids is None else stop_token_ids)
        sequences = []
        for prompt in prompts:
            n = len(prompt)
            if n == 0:
                raise UserError("the prompt is empty")
            if any(not 0 <= int(t) < vocab for t in prompt):
                raise UserError(f"prompt token ids must be in [0, {vocab}) for this model")
            if n >= self.context_length:
                raise UserError(f"the prompt has {n} tokens; the model's context is "
                                f"{self.context_length}, leaving no room to generate. Shorten it")
            sequences.append(_Sequence(n, min(max_new_tokens, self.context_length - n),
                                       max_new_tokens, stops))
        cache_len = bucket(max(s.prompt_len + s.budget for s in sequences), self.context_length)
        return sequences, cache_len, bucket(max(s.prompt_len for s in sequences), cache_len)

    def _prefill(self, prompts, sequences, cache_len, prompt_len, wall, keep_logits):
        prefill, seconds = self._executable("prefill", len(prompts), cache_len, prompt_len)
        wall.compile_s += seconds
        padded = np.zeros((len(prompts), prompt_len), np.int32)
        for row, prompt in enumerate(prompts):
            padded[row, :len(prompt)] = prompt
        lengths = np.array([len(p) for p in prompts], np.int32)
        start = time.perf_counter()
        tokens, logits, cache = prefill(self.params,
                                        self._initial_state("prefill", len(prompts), cache_len),
                                        padded, np.int32(0), lengths, self._seed)
        tokens = np.array(tokens)  # a writable copy: the ring updates it
        for row, seq in enumerate(sequences):
            seq.tokens.append(int(tokens[row]))
            if keep_logits:
                seq.logits.append(np.asarray(logits[row]))
        wall.prefill_s = time.perf_counter() - start
        return tokens, cache

    def generate(self, prompt_ids: Sequence[int], max_new_tokens: int,
                 stop_token_ids: Sequence[int] | None = None,
                 on_token: Callable[[int], None] | None = None,
                 keep_logits: bool = False) -> Generation:
        """One prompt, single-stream: prefill, then decode until a stop token, max_new_tokens or
        the context limit."""
        (seq,), cache_len, prompt_len = self._plan([prompt_ids], max_new_tokens, stop_token_ids)
        # Shared step arguments are passed as numpy values: with several processes each one
        # hands in the same host value, which a device array of one process could not be.
        wall = WallTimes()
        token, cache = self._prefill([prompt_ids], [seq], cache_len, prompt_len, wall, keep_logits)
        if on_token:
            on_token(seq.tokens[-1])
        if not seq.done:  # one new token (or a stop token at once) needs no decode step
            decode, seconds = self._executable("decode", 1, cache_len)
            wall.compile_s += seconds

        start = time.perf_counter()
        one = np.ones(1, np.int32)  # the decode step's one real entry per row
        while not seq.done:
            position = np.int32(seq.prompt_len + len(seq.tokens) - 1)
            token, logits, cache = decode(self.params, cache, token[:, None], position, one,
                                          self._seed)
            seq.tokens.append(int(token[0]))
            if keep_logits:
                seq.logits.append(np.asarray(logits[0]))
            if on_token:
                on_token(seq.tokens[-1])
        wall.decode_s = time.perf_counter() - start
        wall.decode_tokens = len(seq.tokens) - 1
        return Generation(seq.tokens, seq.finish_reason(), wall,
                          np.stack(seq.logits) if keep_logits else None)

    def generate_batch(self, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                       stop_token_ids: Sequence[int] | None = None,
                       keep_logits: bool = False) -> list[Generation]:
        """Several prompts at once, decoded in ring mode with the pipeline full.

        The batch must split into pp equal micro-batches; each sequence stops on its own, the
        ring runs until the last one is done.
        """
        pp = self.layout.pp
        if not prompts or len(prompts) % pp:
            valid = ", ".join(str(pp * k) for k in range(1, 4))
            raise UserError(f"a batch of {len(prompts)} prompts does not fit {pp} pipeline "
                            f"stages: it must split into {pp} equal micro-batches ({valid}, ...)")
        sequences, cache_len, prompt_len = self._plan(prompts, max_new_tokens, stop_token_ids)
        wall = WallTimes()
        newest, cache = self._prefill(prompts, sequences, cache_len, prompt_len, wall,
                                      keep_logits)
        ring, seconds = self._executable("ring", len(prompts), cache_len)
        wall.compile_s += seconds
        micro = len(prompts) // pp
        # The prompts' caches, and nothing yet in flight between the stages.
        state = self._initial_state("ring", len(prompts), cache_len).replace(cache=cache)
        positions = np.array([s.prompt_len for s in sequences], np.int32)

        start, tick = time.perf_counter(), 0
        while not all(s.done for s in sequences):
            entering = slice((tick % pp) * micro, (tick % pp + 1) * micro)
            tokens, logits, state = ring(self.params, state, newest[entering].copy(),
                                         np.int32(tick), positions.copy(), self._seed)
            if tick >= pp - 1:  # the micro-batch leaving the last stage has its next tokens
                leaving = slice(((tick + 1) % pp) * micro, ((tick + 1) % pp + 1) * micro)
                tokens = np.asarray(tokens)
                newest[leaving] = tokens
                positions[leaving] += 1
                for row, seq in enumerate(sequences[leaving]):
                    if not seq.done:
                        seq.tokens.append(int(tokens[row]))
                        if keep_logits:
                            seq.logits.append(np.asarray(logits[row]))
            tick += 1
        wall.decode_s = time.perf_counter() - start
        wall.decode_tokens = sum(len(s.tokens) - 1 for s in sequences)
        return [Generation(s.tokens, s.finish_reason(), wall,
                           np.stack(s.logits) if keep_logits else None) for s in sequences]
