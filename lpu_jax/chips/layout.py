"""How many emulated chips a deployment has and how the model is split across them."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from lpu_jax.config import ModelConfig
from lpu_jax.errors import UserError

PP_AXIS, TP_AXIS = "pp", "tp"


@dataclasses.dataclass(frozen=True)
class Layout:
    """pp pipeline stages, each a group of tp chips that split every layer Megatron-style.

    The vocabulary (embedding and LM head) is split over all pp * tp chips, consecutive rows in
    chip order (stage-major). `vocab_rows[s]` is how many each chip of stage s holds, so stages
    with fewer layers can take more of it (chips.memory.MemoryPlan.balanced chooses them); empty means
    equal shares.

    In a mixture of experts the tp chips of a stage form `ep` expert groups: the experts are
    split ep ways (E / ep whole experts per group) and each expert's columns over the tp / ep
    chips of its group. ep 1 is tensor-parallel experts (every chip a column slice of every
    expert), ep = tp expert parallelism (every chip whole experts); see the README.
    """

    tp: int = 1
    pp: int = 1
    vocab_rows: tuple[int, ...] = ()
    ep: int = 1

    @property
    def num_chips(self) -> int:
        return self.tp * self.pp

    @property
    def axes(self) -> tuple[tuple[str, int], ...]:
        """(name, size) of the chip axes, major first: the shape of the chip grid."""
        return ((PP_AXIS, self.pp), (TP_AXIS, self.tp))

    @property
    def tp_axis(self) -> str | None:
        return TP_AXIS if self.tp > 1 else None

    @property
    def vocab_axes(self) -> tuple[tuple[str, int], ...]:
        return tuple((name, size) for name, size in self.axes if size > 1)

    def check(self, config: ModelConfig) -> None:
        if self.tp < 1 or self.pp < 1:
            raise UserError(f"--tp and --pp must be >= 1, got tp={self.tp}, pp={self.pp}")
        check_expert_groups(config, self.ep)
        if self.tp % self.ep:
            raise UserError(f"--ep={self.ep} does not divide --tp={self.tp}: the tp chips of a "
                            "stage form ep expert groups")
        if self.tp not in valid_tp(config, self.ep):
            columns = (f"intermediate_size={config.intermediate_size} over tp / ep chips"
                       if config.num_experts else f"intermediate_size={config.intermediate_size}")
            raise UserError(
                f"--tp={self.tp} does not divide the model (num_attention_heads="
                f"{config.num_heads}, num_key_value_heads={config.num_kv_heads}, {columns}); "
                f"valid: {', '.join(map(str, valid_tp(config, self.ep)))}")
        if self.vocab_rows and (len(self.vocab_rows) != self.pp or min(self.vocab_rows) < 0
                                or sum(self.vocab_rows) * self.tp < config.vocab_size):
            raise ValueError(f"vocab_rows {self.vocab_rows} do not hold the "
                             f"{config.vocab_size}-token vocabulary on {self.pp} stages of "
                             f"{self.tp} chips")
        if self.pp > config.num_layers:
            raise UserError(f"--pp={self.pp} is larger than the model's {config.num_layers} "
                            f"layers; use at most {config.num_layers} pipeline stages")

    def expert_groups(self, config: ModelConfig) -> ExpertGroups | None:
        """How a stage's chips hold a mixture's experts (None for a dense model)."""
        if not config.num_experts:
            return None
        return ExpertGroups(config.num_experts // self.ep, self.tp // self.ep, self.tp_axis)

    def describe(self) -> str:
        return f"tp={self.tp}{f' ep={self.ep}' if self.ep > 1 else ''} pp={self.pp}"

    def as_flags(self) -> str:
        """The command-line flags that ask for this layout."""
        return f"--tp {self.tp}{f' --ep {self.ep}' if self.ep > 1 else ''} --pp {self.pp}"

    def stage_layers(self, num_layers: int) -> list[range]:
        """The layers of each stage: contiguous, sizes differing by at most one."""
        bounds = np.cumsum([0] + [len(part) for part in np.array_split(np.arange(num_layers),
                                                                        self.pp)])
        return [range(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]

    def vocab_shares(self, vocab: int) -> list[int]:
        """Rows of the vocabulary each chip holds, in chip order; every chip's block is padded
        to the largest share with zero rows, and the last chips' shares may run past `vocab`."""
        if not self.vocab_rows:
            return [-(-vocab // self.num_chips)] * self.num_chips
        return [rows for rows in self.vocab_rows for _ in range(self.tp)]

    def vocab_columns(self, vocab: int) -> np.ndarray:
        """Where each token's logit lands in the chips' gathered blocks (chip-major)."""
        shares = self.vocab_shares(vocab)
        block = max(shares)
        columns = np.concatenate([chip * block + np.arange(rows)
                                  for chip, rows in enumerate(shares)])
        return columns[:vocab]

    def vocab_starts(self, vocab: int) -> np.ndarray:
        """The first row of each chip's share, in chip order."""
        return np.cumsum([0] + self.vocab_shares(vocab)[:-1])

    def kv_heads_per_chip(self, config: ModelConfig) -> int:
        """KV heads each chip holds: its share, or one copy when there are more chips than KV
        heads (each KV head is then replicated on the chips whose query heads read it)."""
        return max(config.num_kv_heads // self.tp, 1)

    def layer_slots(self, num_layers: int) -> int:
        """Layers per stage in the per-chip program; shorter stages fill up with identity layers."""
        return -(-num_layers // self.pp)


@dataclasses.dataclass(frozen=True)
class ExpertGroups:
    """Which experts a chip holds, for model.moe: its group of chips_per_expert chips (in tp
    order) holds experts_per_chip consecutive experts, each chip a 1 / chips_per_expert share of
    their columns. A static part of a chip's layers (the same on every chip); the chip's place
    comes from its index on tp_axis."""

    experts_per_chip: int
    chips_per_expert: int
    tp_axis: str | None

    def _chip(self) -> jax.Array | int:
        return 0 if self.tp_axis is None else jax.lax.axis_index(self.tp_axis)

    def first_expert(self) -> jax.Array | int:
        """The id of this chip's first expert."""
        return self._chip() // self.chips_per_expert * self.experts_per_chip

    @property
    def splits_columns(self) -> bool:
        """Whether a (token, expert) pair's hidden vector is split over several chips."""
        return self.chips_per_expert > 1

    def adds_output(self) -> jax.Array | bool:
        """Whether this chip adds the output of a pair split over its group (the first does)."""
        return self._chip() % self.chips_per_expert == 0


def layouts_within(config: ModelConfig, most_chips: int | None = None,
                   batch: int | None = None, ep: int = 1) -> list[Layout]:
    """Every layout that splits the model, of at most `most_chips` chips (None: any), with pp
    dividing `batch` into equal micro-batches when one is given and `ep` expert groups:
    fewest chips first, then fewest tp chips (they stay inside a node)."""
    bound = most_chips or config.num_layers * config.num_heads
    layouts = [Layout(tp=tp, pp=pp, ep=ep) for tp in valid_tp(config, ep)
               for pp in range(1, min(config.num_layers, bound // tp) + 1)
               if batch is None or batch % pp == 0]
    return sorted(layouts, key=lambda layout: (layout.num_chips, layout.tp))


def check_expert_groups(config: ModelConfig, ep: int) -> None:
    """--ep against the model: at least 1, and more only for a mixture of experts whose experts
    it divides."""
    if ep < 1:
        raise UserError(f"--ep must be >= 1, got {ep}")
    if ep > 1 and not config.num_experts:
        raise UserError(f"--ep={ep} splits a mixture of experts' experts; this model has none "
                        "(use --tp)")
    if ep > 1 and config.num_experts % ep:
        raise UserError(f"--ep={ep} does not divide the model's {config.num_experts} experts "
                        "(num_local_experts)")


def valid_tp(config: ModelConfig, ep: int = 1) -> list[int]:
    """Chip counts that split the query heads and the MLP evenly (a mixture of experts: tp a
    multiple of ep, each expert's columns over tp / ep chips) and either split the KV heads or
    hold whole copies of them, as serving engines do beyond the KV head count (the vocabulary
    is padded)."""
    heads, kv = config.num_heads, config.num_kv_heads

    def splits_mlp(t: int) -> bool:
        if config.num_experts:
            return t % ep == 0 and config.intermediate_size % (t // ep) == 0
        return config.intermediate_size % t == 0

    return [t for t in range(1, heads + 1) if heads % t == 0 and splits_mlp(t)
            and (kv % t == 0 or t % kv == 0)]
