"""lpu-estimate: deployments sized from a config alone, and its one-line errors."""

import json
import os
import subprocess
import sys

import pytest

from tests.cli_forks import run_each
from tests.test_cli import assert_user_error


def estimate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lpu_jax.cli.estimate", *args],
                          capture_output=True, text=True, env=dict(os.environ), timeout=600)


def test_a_sweep_of_pipeline_depths_for_llama_2_7b():
    result = estimate("--config", "Llama-2-7b-hf", "--tp", "8", "--pp", "2,8", "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    shallow, deep = out["deployments"]
    assert (shallow["chips"], deep["chips"]) == (16, 64)
    # int8 weights: about 6.7 GB over 64 chips, plus the KV cache and activations.
    assert 6.7e9 / 64 < deep["memory_per_chip"]["weights_bytes"] < 1.1 * 6.7e9 / 64
    assert deep["memory_per_chip"]["fits"] and not shallow["memory_per_chip"]["fits"]
    assert shallow["memory_per_chip"]["chips_needed"]["chips"] > 16
    # one stream reserved; the eight the full pipeline holds fit too, and many more
    assert deep["memory_per_chip"]["sequences"] == 1
    assert deep["pipeline_full"]["fits"] and deep["memory_per_chip"]["max_sequences"] > 8
    assert deep["pipeline_full"]["tokens_per_s"] > shallow["pipeline_full"]["tokens_per_s"]
    # A decode step of 7B int8 weights is the matmuls' (MXM 27 % busy here, C2C 14 %): the
    # bottleneck reported is the unit busiest in the utilisation reported beside it.
    used = {unit: share for unit, share in deep["decode"]["utilization"].items()
            if unit != "streams"}
    assert deep["decode"]["bottleneck"] == max(used, key=used.get) == "MXM"


def test_llama_2_70b_on_576_chips_fits_one_stream_at_4096_positions():
    # Groq's size for Llama-2-70B: 80 layers on 72 stages leave eight stages two layers.
    result = estimate("--config", "Llama-2-70b-hf", "--tp", "8,16", "--pp", "72,36",
                      "--context", "4096", "--json")
    assert result.returncode == 0, result.stderr
    rows = {(r["tp"], r["pp"]): r for r in json.loads(result.stdout)["deployments"]}
    for layout in (8, 72), (16, 36):
        memory = rows[layout]["memory_per_chip"]
        assert memory["fits"] and memory["sequences"] == 1 and memory["max_sequences"] >= 1


def test_mixtral_8x7b_on_256_chips_with_its_experts_split_either_way():
    runs = {}
    for ep in (1, 8):
        result = estimate("--config", "Mixtral-8x7B-v0.1", "--tp", "8", "--pp", "32", "--ep",
                          str(ep), "--json")
        assert result.returncode == 0, result.stderr
        runs[ep] = json.loads(result.stdout)
    for ep, run in runs.items():
        memory = run["memory_per_chip"]
        assert run["ep"] == ep and memory["fits"]
        # 46.7 billion int8 weights (and their scales) over 256 chips, however they are split
        assert 46.7e9 / 256 < memory["weights_bytes"] < 1.01 * 46.7e9 / 256
    # A token's two experts: at ep 1 every chip installs its column slice of both, at ep 8 the
    # static schedule must let a chip install a whole expert (its own, if chosen): 4x the bytes.
    up = {ep: run["decode"]["cycles_by_block"]["mlp/up"] for ep, run in runs.items()}
    assert up[8] > 2.5 * up[1]
    assert runs[1]["decode"]["tokens_per_s"] > runs[8]["decode"]["tokens_per_s"]


def chosen(*args):
    result = estimate("--config", "SmolLM2-135M-Instruct", "--chips", "6", *args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_chips_ranks_every_layout_that_fits():
    rows = json.loads(chosen("--json"))["deployments"]
    # SmolLM2 splits at tp 1 and 3: pp 1-6 and pp 1-2, all of which fit in int8.
    assert sorted((r["tp"], r["pp"]) for r in rows) == [(1, pp) for pp in range(1, 7)] + [
        (3, 1), (3, 2)]
    latencies = [r["decode"]["latency_per_token_s"] for r in rows]
    assert latencies == sorted(latencies)
    by_throughput = json.loads(chosen("--json", "--objective", "throughput"))["deployments"]
    rates = [r["at_most_sequences"]["tokens_per_s"] for r in by_throughput]
    assert rates == sorted(rates, reverse=True) and by_throughput[0] != rows[0]
    text = chosen("--all").splitlines()
    assert text[0] == "best of 8 layouts of at most 6 chips that fit, by latency:"
    best = rows[0]
    assert text[1].startswith(f"lpu-v1, {best['chips']} chip(s) (tp {best['tp']}, pp "
                              f"{best['pp']})")
    assert text[2].split()[:3] == ["hardware", "tp", "pp"] and len(text) == 3 + 8


def test_pictures_of_the_chosen_layouts_and_the_best_ones_schedule(tmp_path):
    plot, gantt = tmp_path / "chips.png", tmp_path / "gantt.png"
    chosen("--plot", str(plot), "--gantt", str(gantt))
    for picture in plot, gantt:
        data = picture.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    # nothing is left beside them (written through a temporary file, then renamed)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chips.png", "gantt.png"]


def test_the_gpu_roofline_reads_every_weight_once_per_token():
    result = estimate("--config", "Llama-2-7b-hf", "--hardware", "h100", "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    weights = out["memory_per_chip"]["weights_bytes"]
    assert out["decode"]["latency_per_token_s"] == pytest.approx(weights / 3.35e12, rel=0.05)


def test_trace_of_one_deployment(tmp_path):
    trace = tmp_path / "smollm2.json"
    result = estimate("--config", "SmolLM2-135M-Instruct", "--tp", "3", "--trace", str(trace))
    assert result.returncode == 0, result.stderr
    assert "lpu-v1, 3 chip(s) (tp 3, pp 1)" in result.stdout
    events = json.loads(trace.read_text())["traceEvents"]
    assert {e["pid"] for e in events if e["ph"] == "X"} == {0, 1, 2}


def test_a_node_of_gpus_pays_nvlink_for_every_all_reduce():
    result = estimate("--config", "Llama-2-7b-hf", "--hardware", "h100", "--tp", "8",
                      "--precision", "bf16", "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    weights = out["memory_per_chip"]["weights_bytes"]
    # each GPU reads its eighth of the weights; two all-reduces per layer wait on NVLink (int8
    # activations add two more: each row-parallel input's scale is a max over the node)
    floor = weights / 3.35e12 + 2 * 32 * 8e-6
    assert floor < out["decode"]["latency_per_token_s"] < 1.2 * floor
    assert out["power_w"] == 8 * 700


def test_the_lpu_next_to_gpus():
    result = estimate("--config", "Llama-2-7b-hf", "--hardware", "lpu-v1,h100,h200", "--json")
    assert result.returncode == 0, result.stderr
    lpu, h100, h200 = json.loads(result.stdout)["hardware"]
    assert (lpu["hardware"], h100["hardware"], h200["hardware"]) == ("lpu-v1", "h100", "h200")
    # each on the fewest devices that hold it: int8 weights of 6.7 GB
    assert lpu["chips"] == 32 and h100["chips"] == h200["chips"] == 1
    assert lpu["memory_per_chip"]["fits"] and h100["memory_per_chip"]["memory"] == "HBM"
    ratio = h200["decode"]["tokens_per_s"] / h100["decode"]["tokens_per_s"]
    assert ratio == pytest.approx(4.8 / 3.35, rel=0.05)  # decode reads the weights: bandwidth
    assert (h200["at_most_sequences"]["sequences"] > h100["at_most_sequences"]["sequences"]
            > lpu["at_most_sequences"]["sequences"] >= 1)
    table = estimate("--config", "Llama-2-7b-hf", "--hardware", "lpu-v1,h100,h200")
    lines = table.stdout.splitlines()
    assert len(lines) == 4 and lines[0].split()[:4] == ["hardware", "tp", "pp", "chips"]
    assert [line.split()[0] for line in lines[1:]] == ["lpu-v1", "h100", "h200"]


BAD_INPUT = [
    (["--config", "Llama-2-7b-hf", "--tp", "8"], "it needs at least"),
    (["--config", "Mixtral-8x7B-v0.1", "--tp", "8", "--ep", "3"],
     "--ep=3 does not divide the model's 8 experts"),
    (["--config", "Mixtral-8x7B-v0.1", "--chips", "64", "--ep", "0"], "--ep must be >= 1"),
    (["--config", "SmolLM2-135M-Instruct", "--chips", "8", "--ep", "2"],
     "--ep=2 splits a mixture of experts' experts; this model has none"),
    (["--config", "Llama-2-7b-hf", "--pp", "1,x"], "--pp takes comma-separated integers"),
    (["--config", "Llama-2-7b-hf", "--pp", "2,4", "--trace", "t.json"],
     "--trace and --gantt show one deployment"),
    (["--config", "no-such-model"], "unknown model config 'no-such-model'"),
    ([], "pass --config"),
    (["--config", "Llama-2-7b-hf", "--context", "9000"], "must fit the model's context of 4096"),
    (["--config", "Llama-2-7b-hf", "--batch", "0"], "--batch must be >= 1"),
    (["--config", "Llama-2-7b-hf", "--set", "nosuch=1"], "lpu-v1 has no figure 'nosuch'"),
    (["--config", "Llama-2-7b-hf", "--set", "clock=-1"], "lpu-v1 figure clock must be > 0 Hz"),
    (["--config", "Llama-2-7b-hf", "--chips", "0"], "--chips must be >= 1, got 0"),
    (["--config", "Llama-2-7b-hf", "--tp", "8", "--pp", "4,8", "--gantt", "g.png"],
     "--trace and --gantt show one deployment"),
    (["--config", "Llama-2-7b-hf", "--plot", "chips.jpg"], "--plot must end in .png, got chips.jpg"),
    (["--config", "Llama-2-7b-hf", "--gantt", "/no/such/dir/g.png"],
     "--gantt: directory /no/such/dir does not exist"),
    (["--config", "Llama-2-7b-hf", "--hardware", "h100", "--tp", "16"],
     "the h100 config models one node of 8 GPUs"),
    (["--config", "Llama-2-7b-hf", "--hardware", "lpu-v1,h100", "--set", "clock=1e9"],
     "--set changes the figures of one --hardware config"),
    (["--config", "Llama-2-7b-hf", "--hardware", "lpu-v1,h100", "--tp", "1,2"],
     "several --hardware configs compare one deployment each"),
    (["--config", "Llama-2-7b-hf", "--chips", "8"],
     "fits no layout of at most 8 lpu-v1 chip(s) at --context 256; the fewest that hold it "
     "are 32 (--tp"),
    (["--config", "Llama-2-7b-hf", "--chips", "8", "--tp", "2"], "--chips chooses --tp and --pp"),
    # the fewest chips that hold three sequences split them into equal micro-batches
    (["--config", "Llama-2-7b-hf", "--chips", "8", "--batch", "3"],
     "the fewest that hold it are 48 (--tp 16 --pp 3)"),
    (["--config", "Llama-2-7b-hf", "--all"], "--all and --objective choose among the layouts"),
    (["--config", "Llama-2-7b-hf", "--chips", "8", "--objective", "nonsense"],
     "flag --objective=nonsense: value should be one of <latency|throughput>"),
]


@pytest.fixture(scope="module")
def bad_input_runs():
    return run_each("lpu_jax.cli.estimate", [args for args, _ in BAD_INPUT])


@pytest.mark.parametrize("args, message", BAD_INPUT)
def test_bad_input_gets_one_line(bad_input_runs, args, message):
    assert_user_error(bad_input_runs[tuple(args)], message)
