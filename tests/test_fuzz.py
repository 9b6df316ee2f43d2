"""Fuzz tests: every file format lpu_jax reads, mutated (truncated, bytes flipped, fields given
0 / -1 / huge / nan / inf / strings / lists / tables), is either read correctly or refused with a
UserError (which the commands print as one line, exit status 2); never another exception, a hang
or a changed input file.

CI runs a fixed set of examples (derandomized). A longer, random run:

    LPU_JAX_FUZZ_EXAMPLES=20000 LPU_JAX_FUZZ_RANDOM=1 .venv/bin/pytest tests/test_fuzz.py -q
"""

import copy
import json
import math
import os
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lpu_jax.checkpoint.gguf import GGUFCheckpoint
from lpu_jax.checkpoint.gguf_file import GGUFFile
from lpu_jax.checkpoint.safetensors_file import SafetensorsFile
from lpu_jax.config import ModelConfig
from lpu_jax.errors import UserError
from lpu_jax.lpu import hardware
from lpu_jax.numerics import recipe
from lpu_jax.numerics.formats import Format
from lpu_jax.textfiles import read_toml
from lpu_jax.tokenizer import Tokenizer
from tests.gguf_files import write_gguf

FUZZ = settings(max_examples=int(os.environ.get("LPU_JAX_FUZZ_EXAMPLES", "300")),
                derandomize=not os.environ.get("LPU_JAX_FUZZ_RANDOM"), deadline=None,
                suppress_health_check=[HealthCheck.too_slow], database=None)

# What a field can wrongly hold: the values the issue names and anything else JSON or TOML allow.
JUNK = st.one_of(
    st.sampled_from([0, -1, 1, 2**31, 2**63, 2**64 + 1, -2**63, 0.5, 2.7, 1e308, -0.0,
                     math.nan, math.inf, -math.inf, "", "x", "big", [], [0], [-1, 2], {},
                     {"a": 1}, None, True, False]),
    st.integers(min_value=-2**70, max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6),
    st.lists(st.integers(min_value=-5, max_value=2**40), max_size=4),
)


def refused_or(read, check=lambda result: None):
    """`read()` either raises UserError or gives a result that passes `check`, which asserts
    (a value it returned would be dropped, a check that could never fail)."""
    try:
        result = read()
    except UserError as e:
        assert str(e) and "\n" not in str(e).strip(), repr(e)
        return
    assert check(result) is None, "a check asserts; it returns nothing"


def mutated(data: bytes, cut: int | None, flips: list[tuple[int, int]]) -> bytes:
    out = bytearray(data if cut is None else data[:cut % (len(data) + 1)])
    for at, value in flips:
        if out:
            out[at % len(out)] = value
    return bytes(out)


BYTE_DAMAGE = dict(cut=st.none() | st.integers(min_value=0),
                   flips=st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 255)),
                                  max_size=4))


# config.json: every field the reader knows, and one more it does not.
GOOD_CONFIG = dict(model_type="llama", vocab_size=32, hidden_size=64, intermediate_size=96,
                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                   max_position_embeddings=128, rms_norm_eps=1e-5, rope_theta=10000.0,
                   tie_word_embeddings=False, head_dim=16, eos_token_id=2, bos_token_id=1,
                   attention_bias=False, mlp_bias=False, hidden_act="silu",
                   rope_parameters=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                                        high_freq_factor=4.0,
                                        original_max_position_embeddings=64))


def check_config(config: ModelConfig):
    for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                 "num_kv_heads", "head_dim", "max_position_embeddings"):
        value = getattr(config, name)
        assert isinstance(value, int) and not isinstance(value, bool) and value >= 1
    assert math.isfinite(config.rms_norm_eps) and config.rms_norm_eps > 0
    assert math.isfinite(config.rope_theta) and config.rope_theta > 1


@FUZZ
@given(changes=st.dictionaries(st.sampled_from(sorted(GOOD_CONFIG) + ["rope_scaling", "factor",
                                                                      "sliding_window"]),
                               JUNK, min_size=1, max_size=3),
       nested=st.booleans())
def test_config_json(changes, nested):
    raw = copy.deepcopy(GOOD_CONFIG)
    (raw["rope_parameters"] if nested else raw).update(changes)
    with tempfile.TemporaryDirectory() as directory:  # through the file, as a user gives it
        path = Path(directory) / "config.json"
        path.write_text(json.dumps(raw))
        refused_or(lambda: ModelConfig.from_json_file(path), check_config)


def safetensors_bytes(header: dict, data: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


SAFETENSORS_HEADER = {"a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
                      "b": {"dtype": "BF16", "shape": [4], "data_offsets": [24, 32]},
                      "__metadata__": {"format": "pt"}}
SAFETENSORS_DATA = np.arange(8, dtype=np.float32).tobytes()


def read_every_tensor(path: Path):
    """Every tensor, each exactly the bytes its header entry names in the data region (never
    bytes of the header), in its shape."""
    with SafetensorsFile(path) as f:  # refused here, or the header below parses
        raw = path.read_bytes()
        (header_len,) = struct.unpack("<Q", raw[:8])
        header, data = json.loads(raw[8:8 + header_len]), raw[8 + header_len:]
        for name in f.names():
            array = f.read(name)
            begin, end = header[name]["data_offsets"]
            assert array.shape == tuple(header[name]["shape"])
            assert 0 <= begin and array.tobytes() == data[begin:end]


@FUZZ
@given(field=st.tuples(st.sampled_from(["a", "b"]),
                       st.sampled_from(["dtype", "shape", "data_offsets"]), JUNK) | st.none(),
       shift=st.tuples(st.sampled_from(["a", "b"]), st.integers(-48, 48)))
def test_safetensors_header_fields(field, shift):
    header = copy.deepcopy(SAFETENSORS_HEADER)
    if field is not None:
        name, key, value = field
        header[name][key] = value
    if isinstance(header[shift[0]]["data_offsets"], list):
        # the same extent elsewhere: into the header, past the data, over the other tensor
        name, by = shift
        header[name]["data_offsets"] = [v + by if isinstance(v, int) else v
                                        for v in header[name]["data_offsets"]]
    check_safetensors(safetensors_bytes(header, SAFETENSORS_DATA))


@FUZZ
@given(**BYTE_DAMAGE)
def test_safetensors_bytes(cut, flips):
    check_safetensors(mutated(safetensors_bytes(SAFETENSORS_HEADER, SAFETENSORS_DATA), cut,
                              flips))


def check_safetensors(data: bytes):
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "model.safetensors"
        path.write_bytes(data)
        refused_or(lambda: read_every_tensor(path))
        assert path.read_bytes() == data  # read, never written


GGUF_FIELDS = {"llama.block_count": 2, "llama.embedding_length": 64,
               "llama.feed_forward_length": 96, "llama.attention.head_count": 4,
               "llama.attention.head_count_kv": 2, "llama.context_length": 128,
               "llama.attention.layer_norm_rms_epsilon": 1e-5, "llama.rope.freq_base": 1e4,
               "general.alignment": 32, "tokenizer.ggml.eos_token_id": 2}


def gguf_bytes(fields: dict) -> bytes:
    with tempfile.TemporaryDirectory() as directory:
        return write_gguf(Path(directory) / "model.gguf", fields,
                          {"token_embd.weight": np.ones((32, 64), np.float32),
                           "output_norm.weight": np.ones(64, np.float32)}).read_bytes()


@FUZZ
@given(changes=st.dictionaries(st.sampled_from(sorted(GGUF_FIELDS)), JUNK, min_size=1,
                               max_size=2))
def test_gguf_metadata(changes):
    check_gguf(gguf_bytes({**GGUF_FIELDS, **changes}))


@FUZZ
@given(**BYTE_DAMAGE)
def test_gguf_bytes(cut, flips):
    check_gguf(mutated(GGUF_GOOD, cut, flips))


GGUF_GOOD = gguf_bytes(GGUF_FIELDS)


def check_gguf(data: bytes):
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "model.gguf"
        path.write_bytes(data)
        refused_or(lambda: GGUFCheckpoint(path).config(), check_config)
        refused_or(lambda: read_every_gguf_tensor(path))
        assert path.read_bytes() == data


def read_every_gguf_tensor(path: Path):
    gguf_file = GGUFFile(path)
    for name, info in gguf_file.tensors.items():
        assert gguf_file.read_raw(name).nbytes == info.nbytes


WORDS = 4  # the word tokenizer's vocabulary


@pytest.fixture(scope="module")
def word_tokenizer(tmp_path_factory):
    """A directory with a tiny tokenizer.json, for the tokenizer files' fuzz."""
    import tokenizers
    from tokenizers import models, pre_tokenizers

    directory = tmp_path_factory.mktemp("tokenizer")
    backend = tokenizers.Tokenizer(models.WordLevel(
        dict(zip(["[UNK]", "hi", "<s>", "</s>"], range(WORDS))), unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.save(str(directory / "tokenizer.json"))
    return directory


TEMPLATES = st.one_of(
    JUNK, st.text(max_size=40),
    st.sampled_from(["{% for m in messages %}{{ m.role }}: {{ m.content }}{% endfor %}",
                     "{{ bos_token }}{{ messages[0]['content'] }}{{ eos_token }}",
                     "{{ raise_exception('no system role') }}", "{% for %}", "{{ 1 / 0 }}",
                     "{{ messages * 100000000 }}", "{{ '%99999999d' % 1 }}",
                     "{% set ns = namespace(s='ab') %}{% for i in range(64) %}"
                     "{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}",
                     "{{ range(10**9) | list }}",
                     [{"name": "default", "template": "{{ messages }}"}], [{"name": "x"}]]))


@settings(FUZZ, suppress_health_check=[HealthCheck.too_slow,
                                       HealthCheck.function_scoped_fixture])
@given(template=TEMPLATES, bos=JUNK | st.just("<s>"), eos=JUNK | st.just("</s>"),
       as_file=st.booleans(), raw_bytes=st.binary(max_size=8))
def test_tokenizer_files(word_tokenizer, template, bos, eos, as_file, raw_bytes):
    config = {"bos_token": bos, "eos_token": eos}
    if as_file:  # transformers 5 keeps the template in a file of its own
        text = template if isinstance(template, str) else str(template)
        (word_tokenizer / "chat_template.jinja").write_bytes(text.encode() + raw_bytes)
    else:
        config["chat_template"] = template
        (word_tokenizer / "chat_template.jinja").unlink(missing_ok=True)
    (word_tokenizer / "tokenizer_config.json").write_text(json.dumps(config))

    def render():
        tokenizer = Tokenizer.from_hf_dir(word_tokenizer)
        return tokenizer.apply_chat_template([{"role": "user", "content": "hi"}])

    def check_token_ids(ids):  # the tokenizer's own ids, nothing else
        assert all(type(i) is int and 0 <= i < WORDS for i in ids), ids

    refused_or(render, check_token_ids)


HARDWARE = read_toml(Path(hardware.shipped_or_path("hardware", "lpu-v1", "hardware")))
H100 = read_toml(Path(hardware.shipped_or_path("hardware", "h100", "hardware")))


@FUZZ
@given(config=st.sampled_from(["lpu", "gpu"]), figure=st.integers(min_value=0),
       part=st.sampled_from(["value", "unit", "source", "estimate", "extra"]), value=JUNK)
def test_hardware_toml(config, figure, part, value):
    raw = copy.deepcopy(HARDWARE if config == "lpu" else H100)
    names = sorted(k for k, v in raw.items() if isinstance(v, dict))
    raw[names[figure % len(names)]][part] = value

    def check_figures(spec):  # each figure as written
        for key, entry in raw.items():
            if isinstance(entry, dict):
                read = spec.figures[key]
                assert (read.value, read.unit, read.source) == (
                    float(entry["value"]), entry["unit"], entry["source"]), key
                assert read.estimate is entry.get("estimate", False), key

    refused_or(lambda: hardware.parse(copy.deepcopy(raw), "fuzz", "fuzz.toml"), check_figures)


RECIPE = read_toml(Path(recipe.shipped_or_path("precision", "truepoint-int8", "recipe")))


@FUZZ
@given(section=st.integers(min_value=0), key=st.sampled_from(
    ["weights", "format", "inputs", "accumulation", "chunk", "group_size", "block",
     "mantissa_bits", "x"]), value=JUNK)
def test_precision_toml(section, key, value):
    raw = copy.deepcopy(RECIPE)
    tables = sorted(k for k, v in raw.items() if isinstance(v, dict))
    raw[tables[section % len(tables)]][key] = value

    def check_recipe(parsed):  # every key of every table read as written
        for name, table in raw.items():
            if isinstance(table, dict):
                for key, written in table.items():
                    assert recipe_entry(getattr(parsed, name), key) == written, (name, key)

    refused_or(lambda: recipe.parse(copy.deepcopy(raw), "fuzz", "fuzz.toml"), check_recipe)


def recipe_entry(read, key: str):
    """What a parsed recipe holds for a key of one of its tables."""
    if key == "format":  # kv_cache, links, attention_logits: the format's name
        return read
    weights = read if isinstance(read, Format) else read.weights
    if key == "weights":
        return weights.kind
    if key in ("group_size", "block", "mantissa_bits"):
        return getattr(weights, key)
    return getattr(read, key)  # inputs, accumulation, chunk
