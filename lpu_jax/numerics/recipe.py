"""Precision recipes: the format and accumulation of each tensor class (configs/precision/*.toml).

A recipe file has one table per tensor class; a class it leaves out stays f32, and a key it does
not know is an error, so a typo cannot silently fall back to f32:

    description = "..."
    [embedding]         weights (+ group_size | block, mantissa_bits)
    [attention]         q, k, v and o projections: weights (+ options), inputs, accumulation, chunk
    [mlp]               gate, up and down projections: the same keys
    [experts]           a mixture of experts' gate, up and down projections (default: [mlp]'s)
    [lm_head]           the same keys (a tied model stores one tensor: give it the embedding's format)
    [kv_cache]          format: f32 | bf16 | f16 | fp8-e4m3 | fp8-e5m2
    [links]             format of activations passed between chips: an activation format
    [attention_logits]  format of the q.k scores and the softmax over them: f32 | bf16
"""

from __future__ import annotations

import dataclasses

from lpu_jax.errors import UserError
from lpu_jax.numerics.formats import F32, FLOAT_DTYPES, Format
from lpu_jax.numerics.matmul import ACTIVATION_FORMATS, MatmulPolicy
from lpu_jax.textfiles import read_toml, shipped, shipped_or_path

FORMAT_KEYS = ("weights", "group_size", "block", "mantissa_bits")
MATMUL_KEYS = FORMAT_KEYS + ("inputs", "accumulation", "chunk")
LOGITS_FORMATS = ("f32", "bf16")
MATMUL_CLASSES = ("attention", "mlp", "experts", "lm_head")


@dataclasses.dataclass(frozen=True)
class Recipe:
    name: str = "f32"
    description: str = "the reference: every tensor in f32"
    embedding: Format = F32
    attention: MatmulPolicy = MatmulPolicy()
    mlp: MatmulPolicy = MatmulPolicy()
    lm_head: MatmulPolicy = MatmulPolicy()
    kv_cache: str = "f32"
    links: str = "f32"
    attention_logits: str = "f32"
    experts: MatmulPolicy | None = None  # None: as the MLP

    def __post_init__(self):
        if self.experts is None:
            object.__setattr__(self, "experts", self.mlp)

    def policy(self, tensor_class: str) -> MatmulPolicy:
        """The matmul policy of a tensor class (lpu_jax/parameters.py's, but the embedding)."""
        return getattr(self, tensor_class)

    def weights(self, tensor_class: str) -> Format:
        """The storage format of a tensor class (lpu_jax/parameters.py's tensor_class)."""
        return self.embedding if tensor_class == "embedding" else self.policy(tensor_class).weights

    @property
    def kv_cache_dtype(self):
        return FLOAT_DTYPES[self.kv_cache]

    @property
    def attention_logits_dtype(self):
        return FLOAT_DTYPES[self.attention_logits]

    def with_kernel(self, kernel: str) -> "Recipe":
        """The same recipe with every matmul class using `kernel` (see MatmulPolicy)."""
        return dataclasses.replace(self, **{
            name: dataclasses.replace(getattr(self, name), kernel=kernel)
            for name in MATMUL_CLASSES})

    def as_dict(self) -> dict:
        def policy(p: MatmulPolicy) -> dict:
            out = {"weights": p.weights.describe(), "inputs": p.inputs,
                   "accumulation": p.accumulation}
            return {**out, "chunk": p.chunk} if p.accumulation == "bf16" else out
        return {"name": self.name, "embedding": self.embedding.describe(),
                **{name: policy(self.policy(name)) for name in MATMUL_CLASSES},
                "kv_cache": self.kv_cache, "links": self.links,
                "attention_logits": self.attention_logits}


def available() -> list[str]:
    """Names of the shipped recipes."""
    return shipped("precision")


def load_recipe(name_or_path: str | Recipe) -> Recipe:
    """A shipped recipe by name (e.g. "truepoint-int8"), or any .toml file by path."""
    if isinstance(name_or_path, Recipe):
        return name_or_path
    path = shipped_or_path("precision", name_or_path, "precision recipe")
    return parse(read_toml(path), path.stem, str(path))


def parse(raw: dict, name: str, source: str) -> Recipe:
    raw = dict(raw)
    description = raw.pop("description", name)
    fields = {}
    for section, value in raw.items():
        if not isinstance(value, dict):
            raise UserError(f"{source}: {section!r} must be a table ([{section}])")
        reader = _SECTIONS.get(section)
        if reader is None:
            raise UserError(f"{source}: unknown tensor class [{section}]; known: "
                            f"{', '.join(_SECTIONS)}")
        try:
            fields[section] = reader(dict(value))
        except UserError as e:
            raise UserError(f"{source}: [{section}] {e}") from None
    return Recipe(name=name, description=str(description), **fields)


def _take_keys(table: dict, allowed: tuple[str, ...]) -> dict:
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        raise UserError(f"unknown key {unknown[0]!r}; known: {', '.join(allowed)}")
    return table


def _format(table: dict) -> Format:
    for key in ("group_size", "block", "mantissa_bits", "chunk"):
        if key in table and (isinstance(table[key], bool) or not isinstance(table[key], int)):
            raise UserError(f"{key} must be an integer, got {table[key]!r}")
    return Format(kind=str(table.get("weights", "f32")), group_size=table.get("group_size", 0),
                  block=table.get("block", 0), mantissa_bits=table.get("mantissa_bits", 0))


def _embedding(table: dict) -> Format:
    return _format(_take_keys(table, FORMAT_KEYS))


def _matmul(table: dict) -> MatmulPolicy:
    _take_keys(table, MATMUL_KEYS)
    return MatmulPolicy(weights=_format(table), inputs=table.get("inputs", "f32"),
                        accumulation=table.get("accumulation", "f32"),
                        chunk=table.get("chunk", 64))


def _one_of(choices: tuple[str, ...]):
    def read(table: dict) -> str:
        value = _take_keys(table, ("format",)).get("format", "f32")
        if not isinstance(value, str) or value not in choices:
            raise UserError(f"format must be one of {', '.join(choices)}, got {value!r}")
        return value
    return read


_SECTIONS = {
    "embedding": _embedding, **{name: _matmul for name in MATMUL_CLASSES},
    "kv_cache": _one_of(tuple(FLOAT_DTYPES)), "links": _one_of(ACTIVATION_FORMATS),
    "attention_logits": _one_of(LOGITS_FORMATS),
}
