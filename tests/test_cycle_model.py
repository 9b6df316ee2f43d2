"""The cycle model: closed-form costs, the list schedule, nested jaxprs, deployment figures."""

import dataclasses
import io
import itertools
import json
import math
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, PartitionSpec

from lpu_jax.chips.layout import Layout
from lpu_jax.config import ModelConfig
from lpu_jax.engine.sampling import SamplingConfig
from lpu_jax.errors import UserError
from lpu_jax.lpu import calibration
from lpu_jax.lpu.deployment import CycleModel, Deployment, block_of, cycles_by_block, describe
from lpu_jax.lpu.hardware import load_hardware
from lpu_jax.lpu.lowering import ScheduleError
from lpu_jax.lpu.perfetto import write_trace
from lpu_jax.lpu.scheduler import schedule
from lpu_jax.model import BLOCKS
from lpu_jax.numerics.recipe import available as available_recipes
from lpu_jax.numerics.recipe import load_recipe
from lpu_jax.textfiles import shipped_or_path


def hardware_path(name):
    return shipped_or_path("hardware", name, "hardware")

LPU = load_hardware("lpu-v1")
S = jax.ShapeDtypeStruct
VXM_LATENCY, MXM_LATENCY = int(LPU["vxm_latency"]), int(LPU["mxm_latency"])
STAGGER = int(LPU["superlanes"] * LPU["stagger"])  # an instruction crossing the 20 superlanes
PASS = int(LPU["mxm_pass_overhead"])
INSTALL_STREAMS = int(LPU["mxm_install_streams"])
ALL_INSTALL_STREAMS = int(LPU["mxm_weight_install"] // LPU["lanes"])  # 32: P20's 40-cycle install


def read_path(unit):
    """MEM read, the stream distance to the unit, the stagger up the superlanes."""
    return int(LPU["mem_latency"] + LPU[f"stream_hops_mem_{unit}"]) + STAGGER


def write_path(unit):
    return int(LPU[f"stream_hops_mem_{unit}"] + LPU["mem_latency"])


def vxm_chain(vectors, *alu_ops):
    """Elementwise VXM operations chained on the streams, read from and written to MEM."""
    return read_path("vxm") + sum(alu_ops) * VXM_LATENCY + vectors + write_path("vxm")


def link_cycles(nbytes, hops):
    """One C2C phase in closed form: hop latency + whole 320-byte vectors at the link rate."""
    wire = math.ceil(nbytes / 320) * 320
    return hops * LPU["c2c_hop_latency"] + wire / (LPU["c2c_link_bandwidth"] * 0.975) * LPU["clock"]


def int8_dot(x, w):
    return jnp.dot(x, w, preferred_element_type=jnp.int32)


def float_dot(x, w):
    return jnp.dot(x, w, preferred_element_type=jnp.float32)


def mxm_events(result):
    return [e for e in result.events if e.unit == "MXM"]


def test_one_tile_product():
    """[1 x 320] . [320 x 320] int8 on one plane: 320 row vectors installed over the plane's
    install streams, one row streamed, the pass's turnaround; then the MXM pipeline and the
    paths from and to MEM."""
    result = schedule(int8_dot, S((1, 320), jnp.int8), S((320, 320), jnp.int8), weights=(1,))
    (event,) = mxm_events(result)
    issue = 320 // INSTALL_STREAMS + 1 + PASS
    assert (event.start, event.end) == (0, issue)
    assert result.ticks == issue + read_path("mxm") + MXM_LATENCY + write_path("mxm")


def test_product_spread_over_planes_reinstalls_beyond_four_tiles():
    """4 tiles fill the 4 planes once; a 5th tile is a second pass on one plane. The install
    shares P20's 32 install streams among the planes."""
    def issue(columns):
        result = schedule(int8_dot, S((1, 320), jnp.int8), S((320, columns), jnp.int8),
                          weights=(1,))
        (event,) = mxm_events(result)
        assert "on 4 plane(s)" in event.detail
        return event.end - event.start

    installs = lambda tiles: tiles * 320 // ALL_INSTALL_STREAMS  # noqa: E731
    assert issue(4 * 320) == installs(4) + 1 * (1 + PASS)
    assert issue(5 * 320) == installs(5) + 2 * (1 + PASS)


def test_streaming_rows_and_fp16_mode():
    # 1,024 rows through 6 tiles on 4 planes: two passes of 1,024 rows on the busiest plane.
    result = schedule(int8_dot, S((1024, 640), jnp.int8), S((640, 960), jnp.int8), weights=(1,))
    (event,) = mxm_events(result)
    assert event.end - event.start == 640 * 3 // ALL_INSTALL_STREAMS + 2 * (1024 + PASS)
    # fp16: [160 x 320] tiles on pairs of planes, two streams per installed vector.
    result = schedule(float_dot, S((1, 320), jnp.bfloat16), S((320, 320), jnp.bfloat16),
                      weights=(1,))
    (event,) = mxm_events(result)
    assert event.detail.startswith("fp16") and "on 2 plane(s)" in event.detail
    assert event.end - event.start == 320 * 2 // ALL_INSTALL_STREAMS + 1 + PASS


def test_widened_int8_weights_keep_their_storage_mode():
    """int8 weights converted and scaled in the program still install as int8 (with int8
    activations), and the conversion is folded into the install (no VXM op on the weights)."""
    def dequantized(x, w, scale):
        return int8_dot(x, w) * 1.0, (x.astype(jnp.float32) @ (w.astype(jnp.float32) * scale))

    result = schedule(dequantized, S((1, 640), jnp.int8), S((640, 960), jnp.int8),
                      S((1, 960), jnp.float32), weights=(1, 2))
    dots = mxm_events(result)
    assert [e.detail.split()[0] for e in dots] == ["int8", "int8"]
    assert dots[0].end - dots[0].start == dots[1].end - dots[1].start


def test_one_vector_op_and_the_stream_floor():
    """exp over 5,120 f32 values: 16 vectors, one a cycle (an f32 vector takes 4 of the 64
    streams, so no op over N values can issue in fewer than 4N / (32 x 320) cycles), e^x being
    two ALU operations (x log2 e, then exp2)."""
    for rows in (8, 64):
        result = schedule(jnp.exp, S((rows, 640), jnp.float32))
        (event,) = result.events
        vectors = rows * 2
        assert event.end - event.start == vectors
        assert result.ticks == vxm_chain(vectors, 2)
    # Many independent f32 ops together: the streams, not the ALUs, set the pace. 4 ops issue
    # side by side in one op's time; 32 take the floor, 4 x 32 x 5,120 / (32 x 320) = 64.
    for ops, span in ((4, 16), (32, 64)):
        result = schedule(lambda *xs: [x + 1.0 for x in xs], *[S((8, 640), jnp.float32)] * ops)
        assert len(result.events) == ops
        assert max(e.end for e in result.events) - min(e.start for e in result.events) == span


def test_elementwise_ops_chain_on_the_streams():
    """exp, add, tanh and mul in a chain: the first reads MEM, each next one takes its input
    off the streams (paying only its own ALU delay), the last writes MEM."""
    chain = schedule(lambda x: jnp.tanh(jnp.exp(x) + 1.0) * 2.0, S((640,), jnp.float32))
    assert chain.ticks == vxm_chain(2, 2, 1, 5, 1)
    starts = [e.start for e in chain.events]
    assert starts == sorted(starts) and starts[-1] < chain.events[0].done


def test_a_chain_through_mem_pays_the_stagger_and_latency_at_every_step():
    """A reduction's result exists only when its last vector is in: what reads it waits for
    MEM. k such steps cost at least k x (20 + the VXM latency)."""
    def steps(x, k):
        for _ in range(k):
            x = x * jnp.sum(x, axis=0, keepdims=True)
        return x

    for k in (1, 3):
        result = schedule(lambda x: steps(x, k), S((8, 320), jnp.float32))
        assert result.ticks >= k * (STAGGER + VXM_LATENCY)
    single = schedule(lambda x: steps(x, 1), S((8, 320), jnp.float32))
    double = schedule(lambda x: steps(x, 2), S((8, 320), jnp.float32))
    reduction, mul = single.events
    assert mul.start >= reduction.done  # read back from MEM, not off the streams
    assert double.ticks - single.ticks >= read_path("vxm") + write_path("vxm")


def test_reductions_across_lanes_cross_the_superlanes():
    """Summing down the rows adds whole vectors; summing along a row folds the 320 lanes with
    log2(320) = 9 shift-add steps between the VXM and the SXM."""
    rows = schedule(lambda x: jnp.sum(x, axis=0), S((8, 320), jnp.float32))
    lanes = schedule(lambda x: jnp.sum(x, axis=1), S((8, 320), jnp.float32))
    step = 2 * int(LPU["stream_hops_vxm_sxm"]) + int(LPU["sxm_latency"]) + VXM_LATENCY
    assert lanes.ticks - rows.ticks >= 9 * step
    assert [e.unit for e in lanes.events] == ["VXM", "SXM"]


def test_the_stream_budget_limits_what_runs_at_once():
    """f32 binary ops take 12 streams each (two operands, one result): five fit the 64 streams
    at once, a sixth waits."""
    x = S((32, 320), jnp.float32)
    five = schedule(lambda *a: [a[i] * a[i + 1] for i in range(0, 10, 2)], *[x] * 10)
    assert {e.start for e in five.events} == {0}
    six = schedule(lambda *a: [a[i] * a[i + 1] for i in range(0, 12, 2)], *[x] * 12)
    assert sorted(e.start for e in six.events)[-1] == 32  # once the first op's streams free


def test_two_products_compete_for_streams():
    """Two independent 2-tile products on their own planes: each alone installs over 32
    streams; together the second gets what the first leaves free, so the pair takes longer
    than either alone."""
    x, w = S((64, 320), jnp.int8), S((320, 640), jnp.int8)
    alone = schedule(int8_dot, x, w, weights=(1,))
    both = schedule(lambda a, b, w1, w2: (int8_dot(a, w1), int8_dot(b, w2)), x, x, w, w,
                    weights=(2, 3))
    first, second = mxm_events(both)
    assert first.end - first.start == mxm_events(alone)[0].end - mxm_events(alone)[0].start
    assert second.end > first.end or second.end - second.start > first.end - first.start
    assert both.ticks > alone.ticks


def test_operand_read_by_several_planes_is_copied_first():
    """One activation streamed by four products at once (the LSTM's four gates): copied next
    to the planes first, one read per hemisphere (a MEM slice serves one read a cycle)."""
    result = schedule(lambda x, w: [int8_dot(x, w[g]) for g in range(4)],
                      S((3, 1024), jnp.int8), S((4, 1024, 320), jnp.int8), weights=(1,))
    copy = result.events[0]
    assert copy.name == "copy" and copy.unit == "MEM"
    assert copy.end - copy.start == 2 * 3 * 4  # 2 reads of 3 rows x 4 vectors
    assert all(e.start >= copy.done for e in mxm_events(result))


def test_unknown_primitives_are_named():
    mystery = jax.extend.core.Primitive("mystery_op")
    mystery.def_abstract_eval(lambda x: x)
    with pytest.raises(ScheduleError, match="does not know the primitive 'mystery_op'"):
        schedule(lambda x: mystery.bind(x), S((4,), jnp.float32))


def test_the_cpu_workarounds_are_costed_as_the_lpu_operation():
    """numerics/portable.py's ordered sum and exp (for XLA:CPU bit-identity) schedule as the
    plain reduction and exp: the same cycles, with no slice or pad trees."""
    from lpu_jax.numerics import portable

    x = S((4, 576), jnp.float32)
    ported = schedule(lambda a: portable.ordered_sum(portable.exp(a), -1), x)
    plain = schedule(lambda a: jnp.sum(jnp.exp(a), -1), x)
    assert ported.ticks == plain.ticks
    assert [e.name for e in ported.events] == [e.name for e in plain.events]


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
    op = vxm_chain(2, 5)  # tanh of 640 values, from MEM to MEM
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
    assert schedule(branch, S((640,), jnp.float32), S((), jnp.bool_)).ticks == (
        vxm_chain(1, 1) + vxm_chain(2, 2, 5))


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
    dots = mxm_events(result)
    # fp16 mode: 8 tiles of [160 x 320] over both plane pairs, 2 streams per installed vector.
    assert [e.end - e.start for e in dots] == [320 * 4 * 2 // ALL_INSTALL_STREAMS
                                               + 4 * (1 + PASS)] * 2
    assert dots[1].start == dots[0].end  # the planes are the second product's to wait for
    assert result.ticks > dots[1].done and {e.unit for e in result.events} >= {"MXM", "VXM"}


def test_groq_lstm_cycle_counts_within_tolerance():
    """Groq's published LSTM step cycle counts (GroqAPI LSTM notebook): every LSTM-512 case
    (the fitting set) within 15 %, every LSTM-1024 case (never fitted to) within 20 %, with
    the one shipped config."""
    sets = [calibration.load(name) for name in calibration.available()]
    assert {s.role for s in sets} == {"fit", "check"}
    rows = calibration.Calibrator(sets).table(LPU)
    assert len(rows) == 10
    for row in rows:
        assert abs(row["error"]) <= row["tolerance"], row


def test_calibration_files_are_validated(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('source = "s"\nrole = "tune"\ntolerance = 0.1\nworkload = "lstm"\n')
    with pytest.raises(UserError, match="'role' must be one of fit, check"):
        calibration.load(str(bad))
    bad.write_text('source = "s"\nrole = "fit"\ntolerance = 0.1\nworkload = "lstm"\n'
                   '[[case]]\ninput_size = 8\nbatch = 1\ncycles = 9\n')
    with pytest.raises(UserError, match="must give exactly input_size, hidden_size, batch"):
        calibration.load(str(bad))


def test_fitting_touches_only_estimates_and_writes_back(tmp_path):
    cases = calibration.load("groq-lstm-512")
    small = dataclasses.replace(cases, cases=cases.cases[:2])
    calibrator = calibration.Calibrator([small])
    with pytest.raises(UserError, match="'clock' is published"):
        calibrator.fit(LPU, ["clock"], "fit: x")
    detuned = LPU.with_values({"mxm_pass_overhead": 60}, "test")
    fitted, residual = calibrator.fit(detuned, ["mxm_pass_overhead"], "fit: test")
    assert residual < calibrator.residual(detuned)
    copy = tmp_path / "lpu.toml"
    shutil.copy(hardware_path("lpu-v1"), copy)
    calibration.write_figures(copy, {"mxm_pass_overhead": fitted["mxm_pass_overhead"]},
                              "fit: test (rms 1% -> 0.5%)")
    reread = load_hardware(str(copy))
    assert reread["mxm_pass_overhead"] == fitted["mxm_pass_overhead"]
    figure = reread.figures["mxm_pass_overhead"]
    assert figure.estimate and figure.source.endswith("; fit: test (rms 1% -> 0.5%)")
    assert figure.source.startswith("E: ")  # why it was estimated is kept


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


@pytest.mark.parametrize("collective, share", [
    (lambda x: jax.lax.psum(x, "tp"), 2 * 7 / 8),  # reduce-scatter, then all-gather
    (lambda x: jax.lax.all_gather(x, "tp"), 7),  # the seven other GPUs' operands arrive
    (lambda x: jax.lax.ppermute(x, "tp", [(i, (i + 1) % 8) for i in range(8)]), 1)])
def test_gpu_collectives_pay_a_latency_and_their_bytes_over_nvlink(collective, share):
    h100 = load_hardware("h100")
    result = schedule(collective, S((1, 8192), jnp.float32), hardware=h100,
                      axes=(("tp", 8),))
    seconds = h100["nvlink_latency"] + share * 8192 * 4 / h100["nvlink_bandwidth"]
    assert result.ticks == math.ceil(seconds * 1e9)


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


def test_what_if_figures_change_the_report_and_are_listed():
    def report(hardware):
        model = CycleModel(Deployment(tiny_config(), Layout(), load_recipe("int8-exact"),
                                      hardware))
        return model.report(16, [16], context=64)

    base = report(LPU)
    faster = report(LPU.what_if(["clock=1.8e9"]))
    assert faster["decode"]["cycles_per_token"] == base["decode"]["cycles_per_token"]
    assert faster["decode"]["latency_per_token_s"] == pytest.approx(
        base["decode"]["latency_per_token_s"] / 2)
    assert base["what_if"] == {} and faster["what_if"] == {"clock": 1.8e9}
    assert describe(faster).startswith("lpu-v1, clock=1.8e+09, 1 chip(s)")
    small = report(LPU.what_if([f"sram={base['memory_per_chip']['total_bytes'] - 1}"]))
    assert not small["memory_per_chip"]["fits"]


def test_memory_plan_and_chips_needed():
    big = tiny_config(layers=40, hidden=2560, heads=8, kv_heads=8, intermediate=10240)
    model = CycleModel(Deployment(big, Layout(), load_recipe("int8-exact"), LPU))
    memory = model.report(16, [16], context=256)["memory_per_chip"]
    assert not memory["fits"] and memory["weights_bytes"] > LPU["sram"]
    needed = memory["chips_needed"]
    assert needed["chips"] > 1
    layout = model.memory.balanced(Layout(tp=needed["tp"], pp=needed["pp"]), 1, 256)
    fitting = CycleModel(Deployment(big, layout, load_recipe("int8-exact"), LPU))
    memory = fitting.report(16, [16], context=256)["memory_per_chip"]
    assert memory["fits"]
    # and it is the fewest: no layout of fewer chips holds even the weights and the cache
    for tp, pp in itertools.product((1, 2, 4, 8), range(1, big.num_layers + 1)):
        if tp * pp < needed["chips"]:
            assert model.memory.fitting(Layout(tp=tp, pp=pp), 1, 256, LPU["sram"]) is None
    most, one = memory["max_sequences"], memory
    assert most >= 1
    # The most that fit beside the weights and this run's activations; --batch reserves its own.
    full = fitting.report(16, [16], most, context=256)["memory_per_chip"]
    assert full["kv_cache_bytes"] == most * one["kv_cache_bytes"]
    assert one["weights_bytes"] + full["kv_cache_bytes"] + one["activations_bytes"] <= LPU["sram"]
    over = fitting.report(16, [16], most + 1, context=256)["memory_per_chip"]
    assert not over["fits"]


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
    assert max(e["ts"] + e["dur"] for e in spans) <= decode.seconds * 1e6
    assert max(e["args"]["results_in_mem_tick"] for e in spans) == decode.ticks
    assert {"attention/qkv", "mlp/down", "lm_head"} <= {
        block_of(e["args"]["scope"]) for e in per_chip}


def test_engine_steps_classify_every_primitive_and_report_blocks():
    """The engine's prefill, decode and ring steps under every shipped recipe, with sampling
    that truncates, lower without an unclassified primitive; reports give cycles per block."""
    sampling = SamplingConfig(temperature=0.7, top_k=5, top_p=0.9)
    config = tiny_config(layers=2, hidden=320, heads=4, kv_heads=2, intermediate=640)
    for recipe in available_recipes():
        model = CycleModel(Deployment(config, Layout(tp=2, pp=2), load_recipe(recipe), LPU,
                                      sampling))
        for kind, batch, tokens in (("prefill", 1, 8), ("decode", 1, 0), ("verify", 1, 4),
                                    ("ring", 2, 0)):
            step = model.step(kind, batch, 8, prompt_len=tokens)
            assert step.ticks > 0
        blocks = cycles_by_block(model.step("decode", 1, 8))
        # Work outside the model's named blocks (the step's own bookkeeping) stays small:
        # about 2 % of the cycles here; a block lost to "other" would be far more.
        assert blocks.get("other", 0) < 0.05 * sum(blocks.values()), blocks
        assert {"attention/qkv", "attention/core", "mlp/up", "mlp/down", "norm", "links",
                "sampling", "lm_head"} <= set(blocks)

