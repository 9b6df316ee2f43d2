"""The generate loop: prefill the prompt, then decode one token per compiled step.

Both steps are lowered and compiled ahead of time, once per shape, and kept: prompt lengths are
padded up to a power-of-two bucket and the KV cache to a power-of-two length, so a new prompt
reuses an executable instead of compiling one. The cache is donated to each step, so XLA updates it
in place.
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
from lpu_jax.chips import program
from lpu_jax.chips.layout import Layout
from lpu_jax.chips.placement import Placement
from lpu_jax.chips.split import split_params
from lpu_jax.engine.sampling import SamplingConfig
from lpu_jax.errors import UserError
from lpu_jax.model import KVCache

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
    wall: WallTimes
    logits: np.ndarray | None = None  # [len(tokens), V] float32, when asked for


class Engine:
    """Generates from one loaded model on a deployment of emulated chips.

    Executables are compiled once per shape. `fold` forces all chips onto one device (True) or one
    chip per device (False); None picks one chip per device when there are enough devices.
    """

    def __init__(self, model: LoadedModel, sampling: SamplingConfig = SamplingConfig(),
                 layout: Layout = Layout(), fold: bool | None = None):
        layout.check(model.config)
        self.model = model
        self.sampling = sampling
        self.layout = layout
        self.placement = Placement.choose(layout, fold)
        self.params = self.placement.put(split_params(model.params, model.config, layout))
        self._key = jax.random.key(sampling.seed)
        self._compiled: dict[tuple, jax.stages.Compiled] = {}
        self.compile_count = 0

    def _empty_cache(self, batch: int, length: int) -> KVCache:
        """Every chip's KV cache, stacked along the chip axes and placed like the parameters."""
        config, layout = self.model.config, self.layout
        per_chip = KVCache.zeros(config, batch, length, kv_heads=config.num_kv_heads // layout.tp,
                                 layers=layout.layer_slots(config.num_layers))
        grid = (layout.pp, layout.tp)
        return self.placement.put(jax.tree.map(lambda a: jnp.broadcast_to(a, grid + a.shape),
                                               per_chip))

    @property
    def context_length(self) -> int:
        return self.model.config.max_position_embeddings

    def _executable(self, kind: str, *shape_args) -> tuple[jax.stages.Compiled, float]:
        """The compiled step for these shapes, and the seconds spent compiling it now (0: cached)."""
        key = (kind, *shape_args)
        if key in self._compiled:
            return self._compiled[key], 0.0
        start = time.perf_counter()
        config = self.model.config
        batch, cache_len = shape_args[0], shape_args[1]
        cache = jax.eval_shape(lambda: self._empty_cache(batch, cache_len))
        cache = jax.tree.map(lambda a: jax.ShapeDtypeStruct(
            a.shape, a.dtype, sharding=self.placement.chip_sharding()), cache)
        i32 = jax.ShapeDtypeStruct((), jnp.int32)
        step = program.prefill if kind == "prefill" else program.decode
        fn = functools.partial(step, config=config, layout=self.layout, sampling=self.sampling)
        tokens_shape = (batch, shape_args[2]) if kind == "prefill" else (batch,)
        args = (jax.ShapeDtypeStruct(tokens_shape, jnp.int32), i32)
        on_chips = self.placement.run_per_chip(fn, num_replicated_outputs=2)
        compiled = jax.jit(on_chips, donate_argnums=(1,)).lower(
            self.params, cache, *args, self._key).compile()
        # XLA:CPU finishes setting an executable up on its first run (about as long as a whole
        # decode of dozens of tokens here): pay that now, with zeros, so step timings are steady.
        zeros = [jnp.zeros(a.shape, a.dtype) for a in args]
        jax.block_until_ready(compiled(self.params, self._empty_cache(batch, cache_len), *zeros,
                                       self._key))
        self._compiled[key] = compiled
        self.compile_count += 1
        return compiled, time.perf_counter() - start

    def generate(self, prompt_ids: Sequence[int], max_new_tokens: int,
                 stop_token_ids: Sequence[int] | None = None,
                 on_token: Callable[[int], None] | None = None,
                 keep_logits: bool = False) -> Generation:
        """Prefill, then decode until a stop token, max_new_tokens or the context limit."""
        n = len(prompt_ids)
        if n == 0:
            raise UserError("the prompt is empty")
        if max_new_tokens < 1:
            raise UserError(f"--max_new_tokens must be >= 1, got {max_new_tokens}")
        vocab = self.model.config.vocab_size
        if any(not 0 <= int(t) < vocab for t in prompt_ids):
            raise UserError(f"prompt token ids must be in [0, {vocab}) for this model")
        if n >= self.context_length:
            raise UserError(f"the prompt has {n} tokens; the model's context is "
                            f"{self.context_length}, leaving no room to generate. Shorten it")
        budget = min(max_new_tokens, self.context_length - n)
        stops = set(self.model.stop_token_ids if stop_token_ids is None else stop_token_ids)

        wall = WallTimes()
        cache_len = bucket(n + budget, self.context_length)
        prompt_len = bucket(n, cache_len)
        prefill, seconds = self._executable("prefill", 1, cache_len, prompt_len)
        wall.compile_s += seconds
        decode, seconds = self._executable("decode", 1, cache_len)
        wall.compile_s += seconds

        params = self.params
        cache = self._empty_cache(1, cache_len)
        padded = np.zeros((1, prompt_len), np.int32)
        padded[0, :n] = prompt_ids

        start = time.perf_counter()
        token, logits, cache = prefill(params, cache, jnp.asarray(padded), jnp.int32(n), self._key)
        tokens, kept_logits = [int(token[0])], [np.asarray(logits[0])] if keep_logits else []
        wall.prefill_s = time.perf_counter() - start
        if on_token:
            on_token(tokens[-1])

        start = time.perf_counter()
        while tokens[-1] not in stops and len(tokens) < budget:
            position = jnp.int32(n + len(tokens) - 1)
            token, logits, cache = decode(params, cache, token, position, self._key)
            tokens.append(int(token[0]))
            if keep_logits:
                kept_logits.append(np.asarray(logits[0]))
            if on_token:
                on_token(tokens[-1])
        wall.decode_s = time.perf_counter() - start
        wall.decode_tokens = len(tokens) - 1

        if tokens[-1] in stops:
            reason = "stop"
        else:
            reason = "length" if len(tokens) == max_new_tokens else "context"
        return Generation(tokens, reason, wall, np.stack(kept_logits) if keep_logits else None)
