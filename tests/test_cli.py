"""lpu-generate end to end: output contract, and one clear line with exit status 2 on bad input."""

import json
import subprocess

import numpy as np
import pytest

from tests import tiny_models
from tests.cli_forks import run_each


GENERATE = "lpu_jax.cli.generate"


def assert_user_error(result: subprocess.CompletedProcess, message: str):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert message in lines[0], lines[0]


def test_json_output_and_dumped_logits(runs, out_dir):
    result = runs["json"]
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert set(out) >= {"text", "tokens", "wall", "precision", "emulated"}
    emulated = out["emulated"]
    assert emulated["hardware"] == "lpu-v1" and emulated["chips"] == 1
    # Decode steps at positions 4..8 see 5..9 cached positions.
    assert emulated["decode"]["context_positions"] == [5, 4 + len(out["tokens"]) - 1]
    assert emulated["decode"]["cycles_per_token"] > 0 and emulated["memory_per_chip"]["fits"]
    assert emulated["prefill"]["prompt_tokens"] == 4
    trace = json.loads((out_dir / "trace.json").read_text())
    assert any(e["ph"] == "X" and e["tid"] is not None for e in trace["traceEvents"])
    assert out["precision"]["recipe"] == "f32" and out["precision"]["ratio_to_f32"] == 1.0
    assert len(out["tokens"]) == out["wall"]["decode_tokens"] + 1
    assert set(out["wall"]) >= {"load_s", "compile_s", "prefill_s", "decode_s",
                                "decode_tokens_per_s"}
    logits = np.load(out_dir / "logits.npy")
    assert logits.shape == (len(out["tokens"]), tiny_models.VOCAB)
    assert np.argmax(logits, axis=-1).tolist() == out["tokens"]  # greedy chose each argmax


def test_default_model_answers_the_chat_question(runs):
    result = runs["chat"]
    assert result.returncode == 0, result.stderr
    assert "Paris" in result.stdout
    assert "decode" in result.stderr and "tokens/s" in result.stderr


@pytest.fixture(scope="module")
def broken(tmp_path_factory, tiny_checkpoints):
    """Damaged copies of a good checkpoint, one per kind of damage."""
    import shutil

    import safetensors.numpy
    import torch

    good = tiny_checkpoints.get("mha")
    root = tmp_path_factory.mktemp("broken")
    made = {}

    def copy(name):
        made[name] = root / name
        shutil.copytree(good, made[name])
        return made[name]

    data = (copy("truncated") / "model.safetensors").read_bytes()
    (made["truncated"] / "model.safetensors").write_bytes(data[: len(data) // 2])

    tensors = safetensors.numpy.load_file(good / "model.safetensors")
    missing = dict(tensors)
    del missing["model.layers.1.mlp.up_proj.weight"]
    safetensors.numpy.save_file(missing, copy("missing_tensor") / "model.safetensors")
    reshaped = dict(tensors)
    reshaped["model.layers.0.self_attn.k_proj.weight"] = np.zeros((8, 64), np.float32)
    safetensors.numpy.save_file(reshaped, copy("wrong_shape") / "model.safetensors")

    config = json.loads((good / "config.json").read_text())
    (copy("model_type") / "config.json").write_text(json.dumps({**config, "model_type": "gpt_neox"}))

    pickled = copy("pickle")
    (pickled / "model.safetensors").unlink()
    torch.save({"w": torch.zeros(2)}, pickled / "pytorch_model.bin")

    gguf = root / "truncated.gguf"
    from lpu_jax.checkpoint.default import default_model_path
    with open(default_model_path(), "rb") as f:
        gguf.write_bytes(f.read(3_000_000))
    made["truncated_gguf"] = gguf
    return made


DAMAGES = [
    ("truncated", "truncated: tensor"),
    ("missing_tensor", "checkpoint lacks tensor 'model.layers.1.mlp.up_proj.weight'"),
    ("wrong_shape", "has shape (8, 64), the config needs (64, 64)"),
    ("model_type", "unsupported model_type 'gpt_neox'"),
    ("pickle", "never unpickles"),
    ("truncated_gguf", "truncated: tensor"),
]


def damaged_args(broken, damage: str) -> list[str]:
    return ["--model", str(broken[damage]), "--prompt_ids", "1,2"]


@pytest.mark.parametrize("damage, message", DAMAGES)
def test_damaged_checkpoints_are_named(broken, runs, damage, message):
    assert_user_error(runs[tuple(damaged_args(broken, damage))], message)


def test_flags_are_checked_before_the_weights_load(runs):
    """A layout the model cannot take is named at once, from the config alone: the damaged
    weights behind it are never read."""
    assert_user_error(runs["checked_first"], "--tp=3 does not divide the model")


BAD_FLAGS = [
    (["--model", "/no/such/model", "--prompt", "hi"], "/no/such/model: no such file"),
    (["--prompt", "hi", "--temperature", "-1"], "--temperature must be"),
    (["--prompt", "hi", "--top_p", "0"], "--top_p must be in (0, 1]"),
    (["--prompt", "hi", "--top_k", "-2"], "--top_k must be >= 0"),
    (["--prompt", "hi", "--max_new_tokens", "0"], "--max_new_tokens must be >= 1"),
    (["--prompt", "hi", "--top_k", "many"], "top_k"),
    (["--prompt", "hi", "--no_such_flag"], "Unknown command line flag 'no_such_flag'"),
    (["--prompt_ids", "1,x"], "--prompt_ids must be comma-separated integers"),
    (["--prompt", "hi", "--prompt_ids", "1"], "exactly one of --prompt, --prompt_ids and --prompts_file"),
    (["--prompt", "hi", "--dump_logits", "/no/such/dir/x.npy"], "does not exist"),
    (["--prompt", "hi", "--tp", "2"], "--tp=2 does not divide the model"),
    (["--prompt", "hi", "--tp", "0"], "--tp and --pp must be >= 1"),
    (["--prompt", "hi", "--pp", "31"], "--pp=31 is larger than the model's 30 layers"),
    (["--prompt", "hi", "--tp", "3", "--fold=false"], "3 chips need 3 devices"),
    (["--prompts_file", "/no/such/prompts.txt"], "--prompts_file: /no/such/prompts.txt: no such"),
    (["--prompt", "hi", "--num_processes", "2"], "several processes need --coordinator"),
    (["--prompt", "hi", "--precision", "int3"], "unknown precision recipe 'int3'; shipped: bf16"),
    (["--prompt", "hi", "--precision", "/no/such/recipe.toml"], "recipe.toml: no such file"),
    (["--prompt", "hi", "--execution", "fast"], "execution"),
    (["--prompt", "hi", "--hardware", "tpu-v9"], "unknown hardware 'tpu-v9'"),
    (["--prompt", "hi", "--trace", "/no/such/dir/t.json"], "--trace: directory /no/such/dir"),
    (["--prompt", "hi", "--hardware", "h100", "--tp", "3", "--pp", "3"],
     "the h100 config models one node of 8 GPUs"),
    (["--prompt", "hi", "--hardware", "lpu-v1,h100"], "--hardware takes one config here"),
    (["--prompt", "hi", "--set", "sram=460MB"], "--set sram: '460MB' is not a number"),
    (["--prompt", "hi", "--num_processes", "2", "--process_id", "2", "--coordinator", "h:1"],
     "--process_id must be in [0, 2)"),
]


@pytest.mark.parametrize("args, message", BAD_FLAGS)
def test_bad_flags_get_one_line(runs, args, message):
    assert_user_error(runs[tuple(args)], message)


def test_prompt_longer_than_the_context(runs):
    assert_user_error(runs["too_long"],
                      "the prompt has 600 tokens; the model's context is 512")


def test_a_failed_run_leaves_no_logits_file(runs, out_dir):
    assert_user_error(runs["failed"], "prompt token ids must be in [0, 256)")
    assert list((out_dir / "failed").iterdir()) == []


def test_a_batch_of_prompts_decodes_with_the_pipeline_full(runs):
    result = runs["batch"]
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["chips"]["pp"] == 2 and len(out["batch"]) == 2
    assert [b["prompt_tokens"] for b in out["batch"]] == [5, 11]  # one token per byte
    for sequence in out["batch"]:
        assert 1 <= len(sequence["tokens"]) <= 12 and sequence["text"] is not None
    ring = out["emulated"]["pipeline_full"]
    assert ring["streams"] == 2 and ring["tokens_per_s"] > out["emulated"]["decode"]["tokens_per_s"]
    # That each sequence of a ring gets its single run's tokens is swept in test_chips.py.


def test_a_batch_that_does_not_fill_the_pipeline_gets_one_line(runs):
    assert_user_error(runs["batch_of_3"],
                      "a batch of 3 prompts does not fit 2 pipeline stages")


@pytest.mark.parametrize("name, recipe, most", [("truepoint-int8", "truepoint-int8", 0.27),
                                                ("mine.toml", "mine", 0.8)])
def test_precision_recipe_from_the_command_line(runs, name, recipe, most):
    result = runs[name]
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)["precision"]
    assert report["recipe"] == recipe
    assert report["ratio_to_f32"] < most and report["execution"] == "f32-copy"


def test_emulated_figures_on_a_gpu_config(runs):
    result = runs["gpu"]  # with a what-if: half the H100's bandwidth
    assert result.returncode == 0, result.stderr
    emulated = json.loads(result.stdout)["emulated"]
    assert emulated["hardware"] == "h100" and emulated["decode"]["cycles_per_token"] is None
    assert emulated["what_if"] == {"hbm_bandwidth": 1.675e12}
    assert emulated["memory_per_chip"]["memory"] == "HBM" and emulated["decode"]["tokens_per_s"] > 0


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="module")
def runs(tiny_checkpoints, broken, out_dir):
    """Every lpu-generate run of this module, each a process of its own forked from one driver
    that imported Python, JAX and lpu_jax once: CompletedProcess by arguments (the bad flags and
    damaged checkpoints) or by name (the runs that use this module's files)."""
    gqa, mha = str(tiny_checkpoints.get("gqa")), str(tiny_checkpoints.get("mha"))
    (out_dir / "mine.toml").write_text('[mlp]\nweights = "int4"\ngroup_size = 32\n'
                                       '[kv_cache]\nformat = "bf16"\n')
    # A tiny model that reads text, for the prompts files: the real model's answer is "chat".
    words = str(tiny_models.with_byte_tokenizer(tiny_checkpoints.get("mha"), out_dir / "bytes"))
    (out_dir / "prompts.txt").write_text("hello\nhello world\n")
    (out_dir / "three.txt").write_text("one\ntwo\nthree\n")
    (out_dir / "failed").mkdir()
    short = ["--prompt_ids", "5,6,7", "--max_new_tokens", "3", "--json"]
    named = {
        "json": ["--model", gqa, "--prompt_ids", "5,6,7,8", "--max_new_tokens", "6", "--json",
                 "--dump_logits", str(out_dir / "logits.npy"),
                 "--trace", str(out_dir / "trace.json")],
        "chat": ["--chat", "--prompt", "What is the capital of France?",
                 "--max_new_tokens", "24"],
        "checked_first": ["--model", str(broken["truncated"]), "--prompt_ids", "1,2",
                          "--tp", "3"],
        "too_long": ["--model", mha, "--prompt_ids", ",".join(["5"] * 600)],  # context 512
        "failed": ["--model", mha, "--prompt_ids", "999",
                   "--dump_logits", str(out_dir / "failed" / "logits.npy")],
        "batch": ["--model", words, "--prompts_file", str(out_dir / "prompts.txt"), "--pp", "2",
                  "--json", "--max_new_tokens", "12"],
        "batch_of_3": ["--model", words, "--prompts_file", str(out_dir / "three.txt"),
                       "--pp", "2"],
        "truepoint-int8": ["--model", mha, *short, "--precision", "truepoint-int8"],
        "mine.toml": ["--model", mha, *short, "--precision", str(out_dir / "mine.toml")],
        "gpu": ["--model", mha, *short, "--hardware", "h100",
                "--set", "hbm_bandwidth=1.675e12"],
    }
    cases = ([args for args, _ in BAD_FLAGS]
             + [damaged_args(broken, damage) for damage, _ in DAMAGES] + list(named.values()))
    results = run_each(GENERATE, cases)
    return {**results, **{name: results[tuple(args)] for name, args in named.items()}}
