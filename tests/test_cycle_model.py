"""The cycle model: closed-form costs, the list schedule, nested jaxprs, deployment figures."""

import io
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, PartitionSpec

from lpu_jax.chips.layout import Layout
from lpu_jax.config import ModelConfig
from lpu_jax.lpu.deployment import CycleModel, Deployment
from lpu_jax.lpu.hardware import load_hardware
from lpu_jax.lpu.lowering import ScheduleError
from lpu_jax.lpu.perfetto import write_trace
from lpu_jax.lpu.scheduler import schedule
from lpu_jax.numerics.recipe import load_recipe

LPU = load_hardware("lpu-v1")
S = jax.ShapeDtypeStruct
LATENCY = {unit: int(LPU[f"{unit}_latency"]) for unit in ("mxm", "vxm")}


def link_cycles(nbytes, hops):
    """One C2C phase in closed form: hop latency + whole 320-byte vectors at the link rate."""
    wire = math.ceil(nbytes / 320) * 320
    return hops * LPU["c2c_hop_latency"] + wire / (LPU["c2c_link_bandwidth"] * 0.975) * LPU["clock"]


def int8_dot(x, w):
    return jnp.dot(x, w, preferred_element_type=jnp.int32)


def float_dot(x, w):
    return jnp.dot(x, w, preferred_element_type=jnp.float32)


@pytest.mark.parametrize("m, dtype, expected", [
    # One token: installing the weights dominates. 640 x 960 int8 bytes at 10,240 B/cycle.
    (1, jnp.int8, 640 * 960 // 10240 + LATENCY["mxm"]),
    # fp16 mode: two bytes per installed weight.
    (1, jnp.bfloat16, 640 * 960 * 2 // 10240 + LATENCY["mxm"]),
    # 1024 rows: streaming dominates: 2 x 3 tiles of 320 x 320, 1024 rows each, 4 per cycle.
    (1024, jnp.int8, 6 * 1024 // 4 + LATENCY["mxm"]),
])
def test_one_matmul(m, dtype, expected):
    dot = int8_dot if dtype == jnp.int8 else float_dot
    result = schedule(dot, S((m, 640), dtype), S((640, 960), dtype), weights=(1,))
    (event,) = result.events
    assert (event.unit, event.start, event.end, result.ticks) == ("MXM", 0, expected, expected)


def test_widened_int8_weights_keep_their_storage_mode():
    """int8 weights converted and scaled in the program still install as int8 (with int8
    activations), and the conversion is folded into the install (no VXM op)."""
    def dequantized(x, w, scale):
        return int8_dot(x, w) * 1.0, (x.astype(jnp.float32) @ (w.astype(jnp.float32) * scale))

    result = schedule(dequantized, S((1, 640), jnp.int8), S((640, 960), jnp.int8),
                      S((1, 960), jnp.float32), weights=(1, 2))
    dots = [e for e in result.events if e.unit == "MXM"]
    assert [e.detail.split()[0] for e in dots] == ["int8", "int8"]
    assert [e.end - e.start for e in dots] == [100, 100]


def test_one_vector_op():
    """5,120 f32 values: 16 vectors of 320 lanes, spread over the 16 ALUs of each lane."""
    result = schedule(jnp.exp, S((8, 640), jnp.float32))
    assert result.ticks == 1 + LATENCY["vxm"]
    result = schedule(jnp.exp, S((32, 640), jnp.float32))  # 64 vectors over 16 ALUs
    assert result.ticks == 4 + LATENCY["vxm"]


def test_dependency_chain_and_independent_ops():
    chain = schedule(lambda x: jnp.tanh(jnp.exp(x) + 1.0) * 2.0, S((640,), jnp.float32))
    assert chain.ticks == 4 * (1 + LATENCY["vxm"])
    ends = [e.end for e in chain.events]
    starts = [e.start for e in chain.events]
    assert starts[1:] == ends[:-1]  # each waits for the one before
    # Two independent ops of 2 vectors each share the VXM's ALUs and run at once.
    pair = schedule(lambda x, y: (jnp.exp(x), jnp.exp(y)), S((640,), jnp.float32),
                    S((640,), jnp.float32))
    assert pair.ticks == 1 + LATENCY["vxm"]
    assert [e.start for e in pair.events] == [0, 0]


def test_ppermute_one_hop_and_across_nodes():
    x = S((1, 3200), jnp.float32)  # 12,800 bytes
    one_hop = schedule(lambda a: jax.lax.ppermute(a, "pp", [(0, 1), (1, 0)]), x,
                       axes=(("pp", 2),))
    assert one_hop.ticks == math.ceil(link_cycles(12800, 1))
    # 16 chips in a row: chip 7 and chip 8 sit in different nodes of 8, in one rack.
    ring = [(i, (i + 1) % 16) for i in range(16)]
    far = schedule(lambda a: jax.lax.ppermute(a, "pp", ring), x, axes=(("pp", 16),))
    assert far.ticks == math.ceil(link_cycles(12800, LPU["rack_hops"]))
    # 80 chips: chip 71 and chip 72 sit in different racks: the dragonfly's longest path.
    ring = [(i, (i + 1) % 80) for i in range(80)]
    farther = schedule(lambda a: jax.lax.ppermute(a, "pp", ring), x, axes=(("pp", 80),))
    assert farther.ticks == math.ceil(link_cycles(12800, LPU["max_hops"]))


def test_psum_inside_a_node():
    """4 chips of one node: one phase (every peer gets the whole operand over its own link)
    or two (reduce-scatter, all-gather of a quarter each), whichever is shorter."""
    for n in (320, 1_280_000):
        result = schedule(lambda a: jax.lax.psum(a, "tp"), S((n // 4,), jnp.float32),
                          axes=(("tp", 4),))
        expected = min(link_cycles(n, 1), 2 * link_cycles(n / 4, 1))
        assert result.ticks == math.ceil(expected)
    assert schedule(lambda a: jax.lax.psum(a, "tp"), S((80,), jnp.float32),
                    axes=(("tp", 1),)).ticks == 0  # a group of one chip sends nothing


def test_scan_while_and_cond():
    op = 1 + LATENCY["vxm"]  # tanh of 640 values
    scanned = schedule(lambda x: jax.lax.scan(lambda c, _: (jnp.tanh(c), None), x, None,
                                              length=5)[0], S((640,), jnp.float32))
    assert scanned.ticks == 5 * op
    assert scanned.operations() == 1 + 5

    counted = schedule(lambda x: jax.lax.while_loop(lambda c: c[0] < 7,
                                                    lambda c: (c[0] + 1, jnp.tanh(c[1])),
                                                    (0, x))[1], S((640,), jnp.float32))
    assert counted.ticks == 7 * op

    def unknown_trips(x, n):
        return jax.lax.while_loop(lambda c: c[0] < n, lambda c: (c[0] + 1, c[1] * 2), (0, x))[1]

    with pytest.raises(ScheduleError, match="trip count is not known"):
        schedule(unknown_trips, S((640,), jnp.float32), S((), jnp.int32))

    def branch(x, pick):
        return jax.lax.cond(pick, lambda a: jnp.tanh(jnp.exp(a)), jnp.tanh, x)

    # The predicate becomes a branch index (one scalar op), then the longer branch runs.
    assert schedule(branch, S((640,), jnp.float32), S((), jnp.bool_)).ticks == 3 * op


def test_shard_map_body_uses_its_mesh():
    mesh = Mesh(np.array(jax.devices()[:4]), ("tp",))

    def per_device(x):
        return jax.lax.psum(jnp.exp(x), "tp")

    fn = jax.shard_map(per_device, mesh=mesh, in_specs=PartitionSpec("tp"),
                       out_specs=PartitionSpec(), check_vma=False)
    result = schedule(fn, S((4 * 320,), jnp.float32))
    assert [e.unit for e in result.events] == ["VXM", "C2C"]
    assert result.chips == 1  # the caller's axes; the body's own mesh costs the psum
    c2c = result.events[1]
    assert c2c.end - c2c.start == math.ceil(min(link_cycles(1280, 1), 2 * link_cycles(320, 1)))


def test_any_function_an_lstm_cell():
    def lstm_cell(params, x, h, c):
        w, u, b = params
        gates = x @ w + h @ u + b
        i, f, g, o = jnp.split(gates, 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        return jax.nn.sigmoid(o) * jnp.tanh(c), c

    params = (S((320, 1280), jnp.bfloat16), S((320, 1280), jnp.bfloat16), S((1280,), jnp.float32))
    state = S((1, 320), jnp.bfloat16)
    result = schedule(lstm_cell, params, state, state, S((1, 320), jnp.float32), weights=(0,))
    dots = [e for e in result.events if e.unit == "MXM"]
    # fp16 mode: 320 x 1280 x 2 bytes installed at 10,240 B/cycle, one product after the other.
    assert [e.end - e.start for e in dots] == [80 + LATENCY["mxm"]] * 2
    assert dots[1].start == dots[0].end
    assert result.ticks > dots[1].end and {e.unit for e in result.events} >= {"MXM", "VXM"}


def test_vmap_with_an_axis_name_is_costed_batched():
    fn = jax.vmap(lambda x: jax.lax.psum(jnp.exp(x), "chips"), axis_name="chips")
    result = schedule(fn, S((4, 640), jnp.float32))
    assert {e.unit for e in result.events} == {"VXM"}  # the psum became a batched reduction


def test_gpu_roofline():
    h100 = load_hardware("h100")
    result = schedule(lambda x, w: jnp.dot(x, w, preferred_element_type=jnp.float32),
                      S((1, 4096), jnp.bfloat16), S((4096, 4096), jnp.bfloat16),
                      hardware=h100, weights=(1,))
    moved = 4096 * 2 + 4096 * 4096 * 2 + 4096 * 4
    assert result.ticks == math.ceil(moved / h100["hbm_bandwidth"] * 1e9)


def tiny_config(layers=4, hidden=640, heads=8, kv_heads=8, intermediate=1280) -> ModelConfig:
    return ModelConfig.from_hf_dict(dict(
        model_type="llama", vocab_size=1000, hidden_size=hidden, intermediate_size=intermediate,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
        max_position_embeddings=4096, rms_norm_eps=1e-5, tie_word_embeddings=False))


def decode_cycles(config, recipe="int8-exact", layout=Layout(), context=64) -> int:
    model = CycleModel(Deployment(config, layout, load_recipe(recipe), LPU))
    return model.step("decode", 1, context).ticks


def test_figures_move_the_right_way():
    # Wide enough that installing weights outweighs the hop latency of tp's collectives.
    wide = tiny_config(layers=2, hidden=2560, intermediate=10240)
    base = decode_cycles(wide)
    assert decode_cycles(wide, recipe="bf16") > base  # fp16 mode: 2 bytes per installed weight
    assert decode_cycles(wide, layout=Layout(tp=4)) < base  # each chip installs a quarter
    assert decode_cycles(wide, context=2000) > base  # attention over more of the cache
    assert decode_cycles(tiny_config(layers=4, hidden=2560, intermediate=10240)) > base


def test_attention_follows_the_context_not_the_static_cache():
    model = CycleModel(Deployment(tiny_config(), Layout(), load_recipe("int8-exact"), LPU))
    short = model.report(10, list(range(10, 20)), context=4096)
    long = model.report(1000, list(range(1000, 1010)), context=4096)
    assert short["memory_per_chip"]["kv_cache_bytes"] == long["memory_per_chip"]["kv_cache_bytes"]
    assert long["decode"]["cycles_per_token"] > short["decode"]["cycles_per_token"]
    assert long["time_to_first_token_s"] > short["time_to_first_token_s"]


def test_reports_are_deterministic_and_cached():
    def fresh():
        return CycleModel(Deployment(tiny_config(), Layout(tp=2, pp=2),
                                     load_recipe("truepoint-int8"), LPU))

    model = fresh()
    first = model.report(16, [16, 17, 18])
    assert model.step("decode", 1, 17) is model.step("decode", 1, 18)  # same shape, one schedule
    again = fresh().report(16, [16, 17, 18])
    first.pop("scheduling_s"), again.pop("scheduling_s")
    assert first == again
    assert first["pipeline_full"]["tokens_per_s"] > first["decode"]["tokens_per_s"]


def test_memory_plan_and_chips_needed():
    big = tiny_config(layers=40, hidden=2560, heads=8, kv_heads=8, intermediate=10240)
    model = CycleModel(Deployment(big, Layout(), load_recipe("int8-exact"), LPU))
    memory = model.report(16, [16], context=256)["memory_per_chip"]
    assert not memory["fits"] and memory["weights_bytes"] > LPU["sram"]
    needed = memory["chips_needed"]
    layout = Layout(tp=needed["tp"], pp=needed["pp"])
    assert layout.num_chips == needed["chips"] > 1
    fitting = CycleModel(Deployment(big, layout, load_recipe("int8-exact"), LPU))
    assert fitting.report(16, [16], context=256)["memory_per_chip"]["fits"]


def test_perfetto_trace_has_a_track_per_chip_and_unit():
    model = CycleModel(Deployment(tiny_config(layers=2), Layout(tp=2), load_recipe("f32"), LPU))
    decode = model.step("decode", 1, 32)
    out = io.StringIO()
    assert write_trace(decode, out, "test") == 2
    events = json.loads(out.getvalue())["traceEvents"]
    spans = [e for e in events if e["ph"] == "X"]
    assert {e["pid"] for e in spans} == {0, 1}
    names = {e["args"]["name"] for e in events if e.get("name") == "thread_name"}
    assert {"MXM 0", "VXM 0", "C2C 0"} <= names
    per_chip = [e for e in spans if e["pid"] == 0]
    assert len(per_chip) == decode.operations() - sum(1 for e in decode.events if e.body)
    assert max(e["ts"] + e["dur"] for e in spans) == pytest.approx(decode.seconds * 1e6)
