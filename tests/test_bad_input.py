"""Bad input a user can cause, read by one schema per format: one clear line (a UserError naming
the file, the field and what was expected), never a traceback, a hang or a damaged file."""

import json
import os
import stat
import struct
import time
from pathlib import Path

import numpy as np
import pytest

from lpu_jax.checkpoint.gguf import GGUFCheckpoint
from lpu_jax.checkpoint.gguf_file import GGUFFile
from lpu_jax.checkpoint.safetensors_file import SafetensorsFile
from lpu_jax.cli import common
from lpu_jax.config import ModelConfig
from lpu_jax.engine.sampling import SamplingConfig, sample
from lpu_jax.errors import UserError
from lpu_jax.tokenizer import MAX_TEMPLATE_SECONDS, Tokenizer, render_bounded
from tests import tiny_models
from tests.cli_forks import run_each
from tests.gguf_files import write_gguf
from tests.test_cli import assert_user_error

GOOD_CONFIG = dict(model_type="llama", vocab_size=32, hidden_size=64, intermediate_size=96,
                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                   max_position_embeddings=128)


@pytest.mark.parametrize("change, message", [
    (dict(hidden_size="big"), "hidden_size must be a whole number >= 1 and <= 262,144, got 'big'"),
    (dict(rms_norm_eps="tiny"), "rms_norm_eps must be a finite number > 0, got 'tiny'"),
    (dict(rms_norm_eps=float("nan")), "rms_norm_eps must be a finite number > 0, got nan"),
    (dict(rope_parameters=[1, 2]), "rope_parameters must be a table of fields, got [1, 2]"),
    (dict(num_hidden_layers=2.7), "num_hidden_layers must be a whole number >= 1"),
    (dict(num_hidden_layers=10**7), "num_hidden_layers must be a whole number >= 1 and <= 2,048"),
    (dict(num_hidden_layers=True), "num_hidden_layers must be a whole number >= 1"),
    (dict(vocab_size=-1), "vocab_size must be a whole number >= 1"),
    (dict(tie_word_embeddings="yes"), "tie_word_embeddings must be true or false, got 'yes'"),
    (dict(eos_token_id=["a"]), "eos_token_id[0] must be a whole number >= 0, got 'a'"),
    (dict(rope_theta=float("inf")), "rope_theta must be a finite number > 0, got inf"),
    (dict(rope_theta=1e-300), "rope_theta must be > 1, got 1e-300"),
    (dict(rope_parameters=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                               high_freq_factor="x", original_max_position_embeddings=8192)),
     "[rope_parameters]: high_freq_factor must be a finite number > 0, got 'x'"),
])
def test_config_fields_are_read_by_type_and_range(tmp_path, change, message):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**GOOD_CONFIG, **change}))
    with pytest.raises(UserError) as error:
        ModelConfig.from_json_file(path)
    assert str(error.value).startswith(str(path)) and message in str(error.value)


def test_absurd_literals_and_empty_tables(tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{"vocab_size": 1' + "0" * 5000 + "}")  # beyond Python's int parsing
    with pytest.raises(UserError, match="not valid JSON"):
        ModelConfig.from_json_file(path)
    scaling = dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                   original_max_position_embeddings=64)
    config = ModelConfig.from_hf_dict({**GOOD_CONFIG, "rope_parameters": {},
                                       "rope_scaling": scaling})
    assert config.rope_scaling.factor == 8.0  # an empty table does not hide the other spelling


def test_an_integral_float_is_a_whole_number():
    config = ModelConfig.from_hf_dict({**GOOD_CONFIG, "max_position_embeddings": 4096.0})
    assert config.max_position_embeddings == 4096


def safetensors_with(tmp_path, header, data=b"\0" * 64):
    raw = json.dumps(header).encode()
    path = tmp_path / "model.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


@pytest.mark.parametrize("header, message", [
    ([1, 2], "corrupt safetensors header (a JSON list, not an object of tensors)"),
    ({"w": {"dtype": "F32", "shape": [-2, 2], "data_offsets": [0, 16]}},
     "shape must be a list of whole numbers >= 0, got [-2, 2]"),
    ({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0.5, 16]}},
     "data_offsets must be [begin, end] with 0 <= begin <= end, got [0.5, 16]"),
    # an offset before the data would read the header's bytes as weights
    ({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [-8, 8]}},
     "data_offsets must be [begin, end] with 0 <= begin <= end, got [-8, 8]"),
    ({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [16, 0]}}, "0 <= begin <= end"),
    ({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
      "v": {"dtype": "F32", "shape": [2, 2], "data_offsets": [8, 24]}}, "overlap in the data"),
    ({"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 16]}},
     "holds 16 bytes, its shape [2, 3] and dtype F32 need 24"),
    ({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 80]}}, "truncated"),
    ({"w": "weights"}, "it needs dtype, shape and data_offsets"),
])
def test_safetensors_headers_are_checked_entry_by_entry(tmp_path, header, message):
    with pytest.raises(UserError, match=None) as error:
        SafetensorsFile(safetensors_with(tmp_path, header))
    assert message in str(error.value)


@pytest.mark.parametrize("name", ["../elsewhere.safetensors", "/etc/passwd", "sub/x.safetensors",
                                  "weights.bin", 7, ["a.safetensors"]])
def test_a_sharded_index_names_files_of_its_own_directory(tmp_path, name):
    from lpu_jax.checkpoint.hf import safetensors_files

    (tmp_path / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"model.embed_tokens.weight": name}}))
    with pytest.raises(UserError, match="it must name .safetensors files in the checkpoint's "
                                        "own directory"):
        safetensors_files(tmp_path)


def gguf_with(tmp_path, **metadata):
    """A tiny llama GGUF: every field the config needs, then `metadata` over them."""
    fields = {"llama.block_count": 2, "llama.embedding_length": 64,
              "llama.feed_forward_length": 96, "llama.attention.head_count": 4,
              "llama.context_length": 128, **metadata}
    return write_gguf(tmp_path / "model.gguf", fields,
                      {"token_embd.weight": np.zeros((32, 64), np.float32)})


@pytest.mark.parametrize("metadata, message", [
    (dict(**{"general.alignment": 0}), "general.alignment must be a whole number >= 1"),
    (dict(**{"llama.attention.head_count": 0}), "llama.attention.head_count must be a whole "
                                                 "number >= 1"),
    (dict(**{"llama.embedding_length": "big"}), "llama.embedding_length must be a whole number"),
    (dict(**{"llama.block_count": 4_000_000_000}), "llama.block_count must be a whole number >= 1 "
                                                   "and <= 2,048"),
    (dict(**{"llama.attention.layer_norm_rms_epsilon": float("inf")}),
     "llama.attention.layer_norm_rms_epsilon must be a finite number > 0, got inf"),
])
def test_gguf_metadata_is_read_by_type_and_range(tmp_path, metadata, message):
    path = gguf_with(tmp_path, **metadata)
    with pytest.raises(UserError) as error:
        GGUFCheckpoint(path).config()
    assert str(error.value).startswith(str(path)) and message in str(error.value)


def test_gguf_dimensions_that_overflow_are_refused(tmp_path):
    path = gguf_with(tmp_path)
    data = bytearray(path.read_bytes())
    at = data.index(b"token_embd.weight") + len(b"token_embd.weight") + 4  # after n_dims
    data[at:at + 16] = struct.pack("<QQ", 2**62, 2**62)
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match="truncated: tensor 'token_embd.weight' ends at byte"):
        GGUFFile(path)


def test_a_chat_template_that_runs_away_is_stopped():
    start = time.perf_counter()
    with pytest.raises(Exception, match=f"ran for more than {MAX_TEMPLATE_SECONDS:g} s"):
        render_bounded("{% for i in range(100000) %}{% for j in range(100000) %}{{ i }}"
                       "{% endfor %}{% endfor %}")
    assert time.perf_counter() - start < MAX_TEMPLATE_SECONDS + 5
    doubling = ("{% set ns = namespace(s='x') %}{% for i in range(60) %}"
                "{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}")
    for template in ("{{ 'x' * 10**10 }}", "{{ 2 ** 100000000 }}", "{{ ''.__class__.__mro__ }}x",
                     "{{ x.y.z }}", doubling, "{{ '%999999999d' % 1 }}"):
        try:
            assert len(render_bounded(template)) < 100
        except Exception as e:  # refused: by the sandbox, or as too big
            assert type(e).__module__.startswith("jinja2"), e


@pytest.mark.parametrize("files, message", [
    ({"tokenizer_config.json": json.dumps({"chat_template": 42})},
     "chat_template must be a string or a list"),
    ({"tokenizer_config.json": json.dumps({"chat_template": [{"name": "default"}]})},
     "chat_template must be a string or a list"),
    ({"tokenizer_config.json": json.dumps({"eos_token": 7})}, "eos_token must be a string"),
    ({"tokenizer_config.json": "[]"}, "expected a JSON object"),
    ({"chat_template.jinja": b"\xff\xfe{{ x }}"}, "not valid UTF-8 text"),
])
def test_tokenizer_files_are_checked(tiny_checkpoints, tmp_path, files, message):
    directory = tiny_models.with_byte_tokenizer(tiny_checkpoints.get("mha"), tmp_path / "t")
    for name, content in files.items():
        path = directory / name
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    with pytest.raises(UserError, match=None) as error:
        Tokenizer.from_hf_dir(directory)
    assert message in str(error.value)


def test_a_temperature_that_underflows_samples_greedily():
    import jax

    # 3 / 1e-38 still fits float32; 30 / 1e-38 and anything / 1e-45 (a subnormal) overflow
    logits = jax.numpy.array([[0.5, 30.0, -1.0, 29.9]], np.float32)
    key = jax.random.key(0)
    for temperature, top_k, top_p in ((1e-38, 0, 1.0), (1e-45, 0, 1.0), (1e-45, 2, 0.9)):
        config = SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p)
        with np.errstate(over="ignore"):
            assert np.isinf(np.float32(30.0) / np.float32(temperature))
        assert int(sample(logits, key, config)[0]) == 1
    with pytest.raises(UserError, match="--seed must fit in 32 bits"):
        SamplingConfig(seed=2**31)


def test_outputs_are_checked_before_work_and_written_whole(tmp_path):
    (tmp_path / "dir").mkdir()
    for path, message in [("/dev/null", "is not a regular file"),
                          (str(tmp_path / "dir"), "is a directory"),
                          ("/proc/lpu_jax_out.json", "cannot write in /proc"),
                          (str(tmp_path / "no" / "x.json"), "does not exist")]:
        with pytest.raises(UserError, match=message):
            common.check_output_path(path, "--out")
    old, new = tmp_path / "old.npy", tmp_path / "new.json"
    old.write_bytes(b"before")
    with pytest.raises(RuntimeError):
        with common.Outputs() as outputs:
            outputs.stage(old, lambda f: f.write(b"after"))
            raise RuntimeError("the second output failed")
    assert old.read_bytes() == b"before" and sorted(os.listdir(tmp_path)) == ["dir", "old.npy"]
    umask = os.umask(0o027)
    try:
        with common.Outputs() as outputs:
            outputs.stage(new, lambda f: f.write(b"{}"))
    finally:
        os.umask(umask)
    assert stat.S_IMODE(new.stat().st_mode) == 0o640


GENERATE_FLAGS = [
    (["--prompt", "hi", "--seed", "2147483648"], "--seed must fit in 32 bits"),
    (["--prompt", "hi", "--cpu_devices", "100000000"], "--cpu_devices must be in [1, 4096]"),
    (["--prompt", "hi", "--num_processes", "2", "--coordinator", "nohost"],
     "--coordinator must be HOST:PORT"),
    (["--prompt", "hi", "--num_processes", "2", "--coordinator", "h:\u00b2"],
     "--coordinator must be HOST:PORT"),
    (["--prompt", "hi", "--dump_logits", "/tmp/" + "a" * 300 + ".npy"], "File name too long"),
    (["--prompt", "hi", "--set", "lanes=1e300"], "lanes is beyond any hardware's"),
    (["--prompt", "hi", "--set", "clock=1e-300"], "clock is too small"),
    (["--prompt", ""], "--prompt is empty"),
    (["--prompt", "hi", "--precision", "/tmp/lpu_jax_test_dir.toml"], "is a directory, not a TOML file"),
    (["--prompt", "hi", "--dump_logits", "/dev/null"], "is not a regular file"),
    (["--prompt", "hi", "--trace", "/proc/trace.json"], "cannot write in /proc"),
    (["--prompt", "hi", "--random_weights"], "--random_weights needs --config"),
    (["--prompt", "hi", "--config", "Llama-2-7b-hf"], "--config gives a model's shape only"),
    (["--prompt", "hi", "--config", "Llama-2-7b-hf", "--random_weights", "--model", "/tmp"],
     "--random_weights draws the weights: pass --config, not --model"),
    # 69 billion f32 weights (an f32 recipe needs no execution copy), on a host of a few dozen GB
    (["--prompt", "hi", "--config", "Llama-2-70b-hf", "--random_weights", "--tp", "8",
      "--pp", "10"], "the f32 weights need 275.94 GB on cpu:0, which has"),
    (["--prompt", "hi", "--config", "Llama-2-70b-hf", "--random_weights", "--tp", "8",
      "--pp", "10", "--precision", "int4-g32"],
     "the int4-g32 weights and their f32 execution copy need 3"),
    (["--prompt", "hi", "--config", "SmolLM2-135M-Instruct", "--random_weights", "--chat"],
     "random weights come with no chat template; drop --chat"),
]
ESTIMATE_FLAGS = [
    (["--config", "Llama-2-7b-hf", "--context", "0"], "--context must be >= 1, got 0"),
    (["--config", "Llama-2-7b-hf", "--batch", "-2"], "--batch must be >= 1"),
    (["--config", "/tmp/lpu_jax_test_dir.json"], "is a directory, not a JSON file"),
    (["--config", "Llama-2-70b-hf", "--tp", "1", "--pp", "1"], "it needs at least 320 chips"),
    (["--config", "Llama-2-7b-hf", "--plot", "/dev/null"], "/dev/null is not a regular file"),
    (["--config", "Llama-2-7b-hf", "--plot", "/tmp/lpu_jax_same.png", "--gantt",
      "/tmp/lpu_jax_same.png"], "--gantt and --plot name the same file"),
]


@pytest.fixture(scope="module")
def flag_runs(tmp_path_factory):
    for name in ("lpu_jax_test_dir.toml", "lpu_jax_test_dir.json"):
        os.makedirs(f"/tmp/{name}", exist_ok=True)
    runs = run_each("lpu_jax.cli.generate", [args for args, _ in GENERATE_FLAGS])
    runs.update(run_each("lpu_jax.cli.estimate", [args for args, _ in ESTIMATE_FLAGS]))
    runs.update(run_each("lpu_jax.cli.bench", [args for args, _ in BENCH_FLAGS]))
    runs.update(run_each("lpu_jax.cli.sweep", [args for args, _ in SWEEP_FLAGS]))
    return runs


BENCH_FLAGS = [(["--prompt", ""], "--prompt is empty"),
               (["--prompt", "hi", "--prompt_ids", "1,2"],
                "pass at most one of --prompt and --prompt_ids"),
               (["--prompt_ids", "1,x"], "--prompt_ids must be comma-separated integers")]
SWEEP_FLAGS = [(["--recipes", ""], "--recipes names no recipe")]


@pytest.mark.parametrize("args, message",
                         GENERATE_FLAGS + ESTIMATE_FLAGS + BENCH_FLAGS + SWEEP_FLAGS)
def test_flags_get_one_line(flag_runs, args, message):
    assert_user_error(flag_runs[tuple(args)], message)


def test_a_config_of_ten_million_layers_is_refused_at_once(tmp_path):
    path = tmp_path / "huge.json"
    path.write_text(json.dumps({**GOOD_CONFIG, "num_hidden_layers": 10**7}))
    start = time.perf_counter()
    result = run_each("lpu_jax.cli.estimate", [["--config", str(path)]])[("--config", str(path))]
    assert_user_error(result, "num_hidden_layers must be a whole number >= 1 and <= 2,048")
    assert time.perf_counter() - start < 60


@pytest.mark.parametrize("module, own, foreign", [
    ("lpu_jax.cli.estimate", {"--config", "--chips", "--json", "--hardware"},
     {"--model", "--prompt", "--max_new_tokens"}),
    ("lpu_jax.cli.sweep", {"--model", "--recipes", "--json"}, {"--prompt", "--max_new_tokens"}),
    ("lpu_jax.cli.bench", {"--model", "--prompt", "--max_new_tokens"}, {"--config", "--tp"})])
def test_each_command_lists_its_own_flags(module, own, foreign):
    result = run_each(module, [["--help"]])[("--help",)]
    assert result.returncode == 0, result.stderr
    listed = {word.split(":")[0].replace("--[no]", "--") for word in result.stdout.split()
              if word.startswith("--")}
    assert own <= listed and not foreign & listed, listed


def test_a_run_refused_on_one_output_leaves_the_others_untouched(tmp_path):
    dump = tmp_path / "logits.npy"
    dump.write_bytes(b"yesterday's logits")
    (tmp_path / "trace.json").mkdir()
    args = ["--prompt", "hi", "--dump_logits", str(dump), "--trace", str(tmp_path / "trace.json")]
    result = run_each("lpu_jax.cli.generate", [args])[tuple(args)]
    assert_user_error(result, "trace.json is a directory; name a file")
    assert dump.read_bytes() == b"yesterday's logits"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["logits.npy", "trace.json"]


def test_an_output_through_a_symlink_replaces_the_file_it_names(tmp_path):
    target, link = tmp_path / "real.json", tmp_path / "link.json"
    target.write_text("old")
    link.symlink_to(target)
    with common.Outputs() as outputs:
        outputs.stage(common.check_output_path(str(link), "--trace"), lambda f: f.write(b"new"))
    assert link.is_symlink() and target.read_text() == "new"


def test_gguf_tensors_named_twice_or_overlapping_are_refused(tmp_path):
    data = bytearray(write_gguf(tmp_path / "x.gguf", {"llama.block_count": 2}, {
        "aaa.weight": np.zeros(32, np.float32), "bbb.weight": np.zeros(32, np.float32)})
        .read_bytes())
    twice = data.replace(b"bbb.weight", b"aaa.weight")
    (tmp_path / "twice.gguf").write_bytes(bytes(twice))
    with pytest.raises(UserError, match="tensor 'aaa.weight' appears twice"):
        GGUFFile(tmp_path / "twice.gguf")
    at = data.index(b"bbb.weight") + len(b"bbb.weight") + 4 + 8 + 4  # n_dims, dim, type
    data[at:at + 8] = struct.pack("<Q", 0)  # bbb's data where aaa's is
    (tmp_path / "overlap.gguf").write_bytes(bytes(data))
    with pytest.raises(UserError, match="tensors 'aaa.weight' and 'bbb.weight' overlap"):
        GGUFFile(tmp_path / "overlap.gguf")


def test_a_rename_that_fails_puts_back_the_outputs_already_replaced(tmp_path, monkeypatch):
    first, second = tmp_path / "first.json", tmp_path / "second.json"
    first.write_text("old first")
    second.write_text("old second")
    real_replace = os.replace

    def failing(src, dst):
        if Path(dst) == second:
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing)
    with pytest.raises(UserError, match="cannot write .*second.json"):
        with common.Outputs() as outputs:
            outputs.stage(first, lambda f: f.write(b"new first"))
            outputs.stage(second, lambda f: f.write(b"new second"))
    monkeypatch.undo()
    assert first.read_text() == "old first" and second.read_text() == "old second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["first.json", "second.json"]
    with common.Outputs() as outputs:  # and when all goes well, no old copy is left behind
        outputs.stage(first, lambda f: f.write(b"new first"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["first.json", "second.json"]
