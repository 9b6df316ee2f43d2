"""Hardware configs: shipped figures agree with each other, and bad configs are refused."""

import re

import pytest

from lpu_jax.errors import UserError
from lpu_jax.lpu.hardware import available, load_hardware, parse


# What a shipped figure's source begins with: a paper (shared/LPU_V1_FACTS.md's P20, P22), a
# vendor's page or tool (V:, vendor), or E: an estimate, with why.
CITED = re.compile(r"(P20|P22|V:|vendor|E: )")


def test_shipped_configs_cite_a_reference_for_every_figure():
    # parse() refuses a missing or blank source; this checks that each names where it is from.
    assert available() == ["h100", "h200", "lpu-v1"]
    for name in available():
        for key, figure in load_hardware(name).figures.items():
            assert CITED.match(figure.source), (name, key, figure.source)
            if figure.source.startswith("E: "):
                assert figure.estimate, (name, key)  # an estimate says so


def test_lpu_v1_figures_agree_with_each_other():
    lpu = load_hardware("lpu-v1")
    assert lpu["lanes"] == lpu["superlanes"] * 16
    assert lpu["mxm_int8_macs"] == lpu["mxm_planes"] * lpu["mxm_tile"] ** 2
    assert lpu["mxm_fp16_macs"] == lpu["mxm_int8_macs"] / 4
    assert lpu["sram"] == lpu["mem_slices"] * 2.5 * 2**20
    # 409,600 weights installed in under 40 cycles
    assert lpu["mxm_weight_install"] * 40 >= lpu["mxm_int8_macs"]
    assert sorted(lpu.estimates()) == [
        "c2c_hop_latency", "energy_c2c_byte", "energy_fp16_mac", "energy_int8_mac",
        "energy_sram_byte", "energy_vxm_op", "mem_latency", "mxm_latency", "mxm_pass_overhead",
        "power_static", "rack_hops", "stream_hops_mem_mxm", "stream_hops_mem_sxm",
        "stream_hops_mem_vxm", "stream_hops_vxm_sxm", "sxm_latency", "vxm_latency",
        "vxm_ops_polynomial"]
    # The stream distances follow the floorplan: MEM slices between the VXM and the SXM, the
    # MXM beyond the SXM; installs never exceed what one hemisphere's streams carry.
    assert lpu["stream_hops_mem_vxm"] + lpu["stream_hops_mem_sxm"] <= lpu["stream_hops_vxm_sxm"]
    assert lpu["stream_hops_mem_mxm"] > lpu["stream_hops_mem_sxm"]
    assert lpu["mxm_install_streams"] <= lpu["streams_per_direction"]
    # The energy estimates stay within the chip's power: all MACs busy at the int8 rate.
    mxm_watts = lpu["mxm_int8_macs"] * lpu["clock"] * lpu["energy_int8_mac"] * 1e-12
    assert mxm_watts + lpu["power_static"] < lpu["power_typical"]


def good_gpu():
    return {"kind": "gpu", "hbm": {"value": 1e9, "unit": "B", "source": "s"},
            "hbm_bandwidth": {"value": 1e12, "unit": "B/s", "source": "s"},
            "bf16_flops": {"value": 1e15, "unit": "FLOP/s", "source": "s"},
            "power_typical": {"value": 700, "unit": "W", "source": "s"},
            "gpus_per_node": {"value": 8, "unit": "chips", "source": "s"},
            "nvlink_bandwidth": {"value": 4e11, "unit": "B/s", "source": "s"},
            "nvlink_latency": {"value": 1e-5, "unit": "s", "source": "s", "estimate": True}}


@pytest.mark.parametrize("change, message", [
    (lambda c: c.update(kind="tpu"), "'kind' must be one of lpu, gpu"),
    (lambda c: c.update(hbm_speed={"value": 1, "unit": "B/s", "source": "s"}),
     "unknown figure 'hbm_speed'"),
    (lambda c: c.pop("bf16_flops"), "lacks 'bf16_flops' (FLOP/s)"),
    (lambda c: c["hbm_bandwidth"].update(unit="GB/s"), "must be in 'B/s', got 'GB/s'"),
    (lambda c: c["hbm"].update(source=""), "[hbm] has no source"),
    (lambda c: c["hbm"].update(value="lots"), "[hbm] value must be a finite number, got 'lots'"),
    (lambda c: c["hbm_bandwidth"].update(value=0), "[hbm_bandwidth] value must be > 0 B/s"),
    (lambda c: c["power_typical"].update(value=-5), "[power_typical] value must be >= 0 W"),
    (lambda c: c["gpus_per_node"].update(value=0.5), "[gpus_per_node] value counts chips: a whole number >= 1, got 0.5"),
])
def test_bad_configs_are_refused(change, message):
    config = good_gpu()
    change(config)
    with pytest.raises(UserError, match=re.escape(message)):
        parse(config, "x", "x.toml")


def test_unknown_hardware_name_lists_the_shipped_ones():
    with pytest.raises(UserError, match="unknown hardware 'tpu-v9'; shipped: h100, h200, lpu-v1"):
        load_hardware("tpu-v9")


def test_figures_can_be_replaced_with_a_source():
    lpu = load_hardware("lpu-v1")
    faster = lpu.with_values({"clock": 1.25e9}, "what-if")
    assert faster["clock"] == 1.25e9 and faster.figures["clock"].source == "what-if"
    assert lpu["clock"] == 900e6  # the original is unchanged
    with pytest.raises(UserError, match="lpu-v1 has no figure 'clok'"):
        lpu.with_values({"clok": 1.0}, "x")
    with pytest.raises(UserError, match="lpu-v1 figure clock must be a finite number"):
        lpu.with_values({"clock": float("inf")}, "x")


def test_what_if_settings_replace_figures_in_their_units():
    lpu = load_hardware("lpu-v1")
    what_if = lpu.what_if(["clock=1.25e9", " sram = 460e6", "mxm_latency=0"])
    assert (what_if["clock"], what_if["sram"], what_if["mxm_latency"]) == (1.25e9, 460e6, 0)
    assert what_if.changed == ("clock", "sram", "mxm_latency") and lpu.changed == ()
    assert "command line" in what_if.figures["sram"].source
    assert lpu.what_if([]) is lpu


@pytest.mark.parametrize("settings, message", [
    (["nosuch=1"], "lpu-v1 has no figure 'nosuch'; known: c2c_framing_overhead, "),
    (["clock=-1"], "lpu-v1 figure clock must be > 0 Hz, got -1"),
    (["clock=0"], "lpu-v1 figure clock must be > 0 Hz, got 0"),
    (["clock=fast"], "--set clock: 'fast' is not a number"),
    (["clock=nan"], "lpu-v1 figure clock must be a finite number, got nan"),
    (["clock"], "--set takes NAME=VALUE (e.g. clock=1.25e9), got 'clock'"),
    (["=5"], "--set takes NAME=VALUE"),
    (["lanes=320.5"], "lpu-v1 figure lanes counts lanes: a whole number >= 1, got 320.5"),
    (["c2c_framing_overhead=1"], "c2c_framing_overhead is a fraction: 0 <= value < 1, got 1"),
    (["mem_latency=-3"], "lpu-v1 figure mem_latency must be >= 0 cycles, got -3"),
    (["clock=1e9", "clock=2e9"], "--set clock is given twice"),
])
def test_bad_what_if_settings_are_refused(settings, message):
    with pytest.raises(UserError, match=re.escape(message)):
        load_hardware("lpu-v1").what_if(settings)
