"""scripts/device_check.py --small end to end on this machine: every item runs and every field of
its JSON is there and sane, so the check is ready when an accelerator is lent."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "device_check.py"


def records(result: dict, item: str, what: str) -> list[dict]:
    return [r for r in result["items"][item]["records"] if r["what"] == what]


def positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("device_check")
    # Caps four times the usual: other test workers share the cores (the caps have their test).
    run = subprocess.run([sys.executable, str(SCRIPT), "--small", "--cap_scale", "4",
                          "--out", str(out)], capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr
    return json.loads((out / "device_check.json").read_text()), run.stdout, out


def test_every_item_runs_and_ends_ok(small_run):
    result, stdout, out = small_run
    assert list(result["items"]) == ["device", "a", "b", "c", "d", "e", "f"]
    for name, item in result["items"].items():
        assert item["status"] == "ok" and item["error"] is None, (name, item)
        assert 0 < item["seconds"] <= item["cap_s"] and item["records"], name
        assert f"[{name}] {item['title']}: ok" in stdout
    assert result["small"] is True and result["platform"] == "cpu"
    assert (out / "device_check.txt").read_text().strip() in stdout


def test_device_and_roofline_figures(small_run):
    result, _, _ = small_run
    (device,) = records(result, "device", "device")
    assert device["platform"] == "cpu" and device["devices"] >= 1
    assert device["hardware_config"] is None  # no shipped config for a CPU
    assert device["allocator_limit_bytes"] is None  # XLA:CPU keeps no memory statistics
    assert Path(device["lpu_jax"]).name == "lpu_jax"
    assert positive(device["measured_bandwidth_Bps"]) and device["copy_bytes"] == 2 * 64 * 2**20
    decodes = records(result, "a", "decode") + records(result, "b", "decode")
    assert [d["recipe"] for d in decodes] == ["bf16", "truepoint-int8", "int8-exact",
                                              "int8-exact"]
    for d in decodes:
        assert d["new_tokens"] == 4 and d["execution"] == "f32-copy"  # auto, on a CPU
        for field in ("load_s", "compile_s", "decode_tokens_per_s", "weight_bytes",
                      "bytes_read_per_token", "roofline_tokens_per_s_measured",
                      "of_measured_roofline"):
            assert positive(d[field]), field
        assert d["roofline_tokens_per_s_config"] is None  # no config for this device
        assert d["bytes_read_per_token"] < d["weight_bytes"]  # the embedding gives one row
        assert d["of_measured_roofline"] == pytest.approx(
            d["decode_tokens_per_s"] / d["roofline_tokens_per_s_measured"])
    bf16, truepoint, exact, folded = decodes
    assert bf16["weight_bytes"] > truepoint["weight_bytes"]  # 2 bytes a weight, against ~1
    assert (folded["chips"], folded["tp"], folded["pp"]) == (9, 3, 3)
    assert folded["half_roofline_goal"] == 0.5 and folded["peak_device_bytes"] is None  # CPU
    (goals,) = records(result, "a", "goals")
    assert goals["int8_over_bf16"] == pytest.approx(
        exact["decode_tokens_per_s"] / bf16["decode_tokens_per_s"])


def test_executions_agree(small_run):
    result, _, _ = small_run
    runs = records(result, "c", "execution")
    assert [(r["recipe"], r["execution"]) for r in runs] == [
        (recipe, execution) for recipe in ("int8-exact", "int4-g32")
        for execution in ("widen", "pallas", "f32-copy")]
    for r in runs:
        assert r["tokens_equal_widen"] and r["first_difference"] is None and r["within_bound"], r
        assert 0 <= r["logits_difference_of_largest"] <= r["bound"]
        assert positive(r["decode_tokens_per_s"])


def test_bench_tokens_across_platforms_and_the_estimate(small_run):
    result, _, _ = small_run
    (bench,) = records(result, "d", "bench")
    assert bench["tokens_equal"] and bench["first_difference"] is None
    assert positive(bench["lpu_jax_decode_tokens_per_s"]) and positive(bench["ratio"])
    assert bench["new_tokens"] == 16 and "random weights" in bench["checkpoint"]
    tokens = records(result, "e", "tokens")
    assert [t["tp"] for t in tokens] == [1, 3]
    assert all(t["equal"] and t["tokens"] == 4 and t["first_difference"] is None
               and positive(t["smallest_margin"]) for t in tokens)
    (estimate,) = records(result, "f", "estimate")
    assert estimate["chips"] == 4 and positive(estimate["wall_s"])
    assert estimate["best_tp"] * estimate["best_pp"] <= 4


def test_an_item_stopped_at_its_cap_is_reported_and_what_came_before_is_kept(tmp_path):
    run = subprocess.run([sys.executable, str(SCRIPT), "--small", "--only", "a",
                          "--caps", "a=0.05", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    result = json.loads((tmp_path / "device_check.json").read_text())
    assert list(result["items"]) == ["device", "a"]  # the device item always runs first
    assert result["items"]["device"]["status"] == "ok"
    assert records(result, "device", "device")[0]["platform"] == "cpu"
    item = result["items"]["a"]
    assert item["status"] == "timeout" and item["error"] == "stopped at its cap of 0.05 s"
    # what the stopped child had appended (here perhaps nothing) is in the results
    written = (tmp_path / "records_a.jsonl")
    assert item["records"] == ([json.loads(line) for line in written.read_text().splitlines()]
                               if written.exists() else [])
    assert "[a] " in run.stdout and ": timeout in " in run.stdout
