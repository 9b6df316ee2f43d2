"""lpu-generate: text from a checkpoint, token by token, streamed as it arrives."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from absl import flags

from lpu_jax.cli import common, emulated
from lpu_jax.errors import UserError

_MODEL = common.model_flag()
_CONFIG = common.config_flag()
_RANDOM_WEIGHTS = flags.DEFINE_bool("random_weights", False, "Run a model of --config's shape "
                                    "with weights drawn from --seed, stored in --precision's "
                                    "formats (no checkpoint; text is read as UTF-8 bytes).")
_PROMPT, _MAX_NEW_TOKENS = common.prompt_flags()
_PROMPT_IDS = common.prompt_ids_flag()
_CHAT = flags.DEFINE_bool("chat", False, "Wrap the prompt in the checkpoint's chat template.")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.0, "Sampling temperature; 0 means greedy.")
_TOP_K = flags.DEFINE_integer("top_k", 0, "Sample among the k most likely tokens (0: all).")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "Sample from the smallest set of tokens whose "
                            "probability reaches p (1: all).")
_SEED = flags.DEFINE_integer("seed", 0, "Random seed for sampling.")
_TP = flags.DEFINE_integer("tp", 1, "Tensor-parallel emulated chips per stage (split heads, "
                           "MLP columns or experts, vocabulary).")
_PP = flags.DEFINE_integer("pp", 1, "Pipeline stages (groups of layers), each of --tp chips.")
_EP = common.ep_flag()
_FOLD = flags.DEFINE_bool("fold", None, "Fold all chips onto one device (default: one chip per "
                          "device when there are enough devices).")
_CPU_DEVICES = flags.DEFINE_integer("cpu_devices", None, "Emulate this many CPU devices (per "
                                    "process), e.g. one per chip.")
_COORDINATOR = flags.DEFINE_string("coordinator", None, "HOST:PORT of process 0, to spread the "
                                   "chips over several processes (jax.distributed).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 1, "Processes in the deployment.")
_PROCESS_ID = flags.DEFINE_integer("process_id", 0, "This process's index; only process 0 "
                                   "prints and writes files.")
_PROMPTS_FILE = flags.DEFINE_string("prompts_file", None, "A batch: a text file with one prompt "
                                    "per line, decoded together with the pipeline full (ring "
                                    "mode); the count must be a multiple of --pp.")
_PRECISION = flags.DEFINE_string("precision", "f32", "Precision recipe: a name from "
                                 "configs/precision (f32, bf16, truepoint-int8, int4-g32, ...) "
                                 "or a .toml file.")
_EXECUTION = flags.DEFINE_enum("execution", "auto", ["auto", "widen", "pallas", "f32-copy"],
                               "How steps read low-bit weights: widened inside each matmul by "
                               "XLA, by the Pallas kernel (int8/int4; interpreted, slowly, on "
                               "CPU), or from an f32 copy of the same values made at load time "
                               "(auto: the copy on CPU, widen elsewhere).")
_CPU_FMA = flags.DEFINE_bool("cpu_fma", True, "Let XLA:CPU fuse multiplies and adds into FMA "
                             "instructions. --nocpu_fma makes results independent of how each "
                             "chip layout's program is fused: with --precision int8-exact, "
                             "logits are bit-identical across --tp.")
_DUMP_LOGITS = flags.DEFINE_string("dump_logits", None, "Save the logits that chose each new "
                                   "token as a float32 .npy array [new_tokens, vocab].")


def model_config():
    """The model's config: --config's with --random_weights, else the checkpoint's."""
    from lpu_jax.checkpoint import load_config
    from lpu_jax.config import ModelConfig

    if not _RANDOM_WEIGHTS.value:
        if _CONFIG.value is not None:
            raise UserError("--config gives a model's shape only: add --random_weights, or "
                            "pass a checkpoint with --model")
        return load_config(_MODEL.value)
    if _CONFIG.value is None:
        raise UserError("--random_weights needs --config (a config.json, or a name from "
                        "configs/models) for the model's shape")
    if _MODEL.value is not None:
        raise UserError("--random_weights draws the weights: pass --config, not --model")
    return ModelConfig.shipped_or_file(_CONFIG.value)


def prompt_batch(tokenizer) -> tuple[list[list[int]], bool]:
    """The prompts as token ids, and whether they came as a batch (--prompts_file)."""
    given = [f for f in (_PROMPT, _PROMPT_IDS, _PROMPTS_FILE) if f.value is not None]
    if len(given) != 1:
        raise UserError("pass exactly one of --prompt, --prompt_ids and --prompts_file")
    if _PROMPT_IDS.value is not None:
        if _CHAT.value:
            raise UserError("--chat needs --prompt text, not --prompt_ids")
        return [common.parse_prompt_ids(_PROMPT_IDS.value)], False
    if tokenizer is None:
        raise UserError("this checkpoint ships no tokenizer lpu_jax can read; use --prompt_ids")
    texts = [common.prompt_text(_PROMPT)] if _PROMPT.value is not None else read_prompts_file()

    def encode(text):
        if _CHAT.value:
            return tokenizer.apply_chat_template([{"role": "user", "content": text}])
        return tokenizer.encode(text)
    return [encode(text) for text in texts], _PROMPTS_FILE.value is not None


def read_prompts_file() -> list[str]:
    try:
        lines = Path(_PROMPTS_FILE.value).read_text().splitlines()
    except FileNotFoundError:
        raise UserError(f"--prompts_file: {_PROMPTS_FILE.value}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"--prompts_file: cannot read {_PROMPTS_FILE.value} ({e})") from None
    prompts = [line for line in lines if line.strip()]
    if not prompts:
        raise UserError(f"--prompts_file: {_PROMPTS_FILE.value} holds no prompt")
    return prompts


def main() -> None:
    from lpu_jax.engine.sampling import SamplingConfig

    sampling = SamplingConfig(_TEMPERATURE.value, _TOP_K.value, _TOP_P.value, _SEED.value)
    if _MAX_NEW_TOKENS.value < 1:
        raise UserError(f"--max_new_tokens must be >= 1, got {_MAX_NEW_TOKENS.value}")
    dump_path = (common.check_output_path(_DUMP_LOGITS.value, "--dump_logits")
                 if _DUMP_LOGITS.value else None)
    trace_path = emulated.trace_path()
    common.check_distinct({"--dump_logits": dump_path, "--trace": trace_path})
    if all(f.value is None for f in (_PROMPT, _PROMPT_IDS, _PROMPTS_FILE)):
        raise UserError("pass --prompt TEXT (or --prompt_ids 1,2,3, or --prompts_file FILE)")

    from lpu_jax.chips import distributed

    if not _CPU_FMA.value:
        common.disable_cpu_fma()
    if _NUM_PROCESSES.value > 1:
        # gloo prints its connection log on file descriptor 1: give it stderr, keep stdout ours.
        sys.stdout = os.fdopen(os.dup(1), "w")
        os.dup2(2, 1)
    distributed.start(_CPU_DEVICES.value, _COORDINATOR.value, _NUM_PROCESSES.value,
                      _PROCESS_ID.value)
    common.enable_compilation_cache()
    from lpu_jax.checkpoint import load_model
    from lpu_jax.chips.layout import Layout
    from lpu_jax.chips.placement import Placement
    from lpu_jax.engine.generate import Engine
    from lpu_jax.lpu.deployment import CycleModel, Deployment, check_chips
    from lpu_jax.numerics.recipe import load_recipe
    from lpu_jax.tokenizer import IncrementalDecoder

    # Every flag is checked against the hardware, the devices and the model's config before the
    # weights load (the Engine and the CycleModel check them again): a mistake costs a moment.
    layout = Layout(tp=_TP.value, pp=_PP.value, ep=_EP.value)
    hardware = emulated.hardware()
    check_chips(hardware, layout)
    precision = load_recipe(_PRECISION.value)
    Placement.choose(layout, _FOLD.value)
    config = model_config()
    layout.check(config)

    start = time.perf_counter()
    if _RANDOM_WEIGHTS.value:
        from lpu_jax.checkpoint.random_weights import random_model

        model = random_model(config, _SEED.value, _CONFIG.value)  # drawn by the Engine
    else:
        model = load_model(_MODEL.value)
    prompts, is_batch = prompt_batch(model.tokenizer)
    if is_batch and dump_path is not None:
        raise UserError("--dump_logits takes a single prompt, not --prompts_file")
    engine = Engine(model, sampling, layout, fold=_FOLD.value,
                    precision=precision, execution=_EXECUTION.value)
    model = engine.model  # without the loaded weights: the engine holds them as stored
    load_s = time.perf_counter() - start  # read (or drawn), stored and placed
    cycle_model = CycleModel(Deployment(model.config, engine.layout, engine.precision, hardware,
                                        sampling))
    speaks = _PROCESS_ID.value == 0

    if is_batch:
        results = engine.generate_batch(prompts, _MAX_NEW_TOKENS.value)
    else:
        on_token = None
        if speaks and not common.JSON.value and model.tokenizer is not None:
            stream = IncrementalDecoder(model.tokenizer)

            def on_token(token_id):
                sys.stdout.write(stream.push(token_id))
                sys.stdout.flush()
        results = [engine.generate(prompts[0], _MAX_NEW_TOKENS.value, on_token=on_token,
                                   keep_logits=dump_path is not None)]
    wall = results[0].wall  # one run: a batch shares its wall times
    wall.load_s = load_s
    if not speaks:
        return
    figures = emulate(cycle_model, prompts, results)
    with common.Outputs() as outputs:  # all written, or none changed
        if dump_path is not None:
            import numpy as np

            outputs.stage(dump_path, lambda f: np.save(f, results[0].logits))
        if trace_path is not None:
            emulated.save_trace(cycle_model.last_decode, trace_path,
                                f"decode, {hardware.name}, {layout.describe()}",
                                outputs)
    report(model, engine, prompts, results, is_batch, figures)


def emulate(cycle_model, prompts, results) -> dict:
    """The emulated figures of this run: its prompt lengths, its decode positions, its context."""
    first, prompt_len = results[0], max(len(p) for p in prompts)
    positions = list(range(len(prompts[0]), len(prompts[0]) + len(first.tokens) - 1))
    context = max(len(p) + len(r.tokens) for p, r in zip(prompts, results))
    return cycle_model.report(prompt_len, positions, batch=len(prompts), context=context)


def report(model, engine, prompts, results, is_batch: bool, figures: dict) -> None:
    decode = model.tokenizer.decode if model.tokenizer else lambda ids: None
    outputs = [{"text": decode(r.tokens), "tokens": r.tokens, "prompt_tokens": len(p),
                "finish_reason": r.finish_reason} for p, r in zip(prompts, results)]
    wall = results[0].wall
    if common.JSON.value:
        common_fields = {"model": model.source, "chips": engine.placement.describe(),
                         "precision": engine.weight_report(), "wall": wall.as_dict(),
                         "emulated": figures}
        body = {"batch": outputs} if is_batch else outputs[0]
        print(json.dumps({**body, **common_fields}))
        return
    for index, out in enumerate(outputs):
        shown = out["text"] if out["text"] is not None else " ".join(map(str, out["tokens"]))
        if is_batch:
            print(f"[{index}] {shown}")
        elif model.tokenizer is None:
            print(shown)
        else:
            print()  # the text itself was streamed
        if out["finish_reason"] == "context":
            print(f"[stopped: the model's context of {model.config.max_position_embeddings} "
                  "tokens is full]", file=sys.stderr)
    weights = engine.weight_report()
    print(f"[precision] {weights['recipe']}: weights {weights['weight_bytes'] / 1e6:.1f} MB in "
          f"device memory ({weights['ratio_to_f32']:.3f}x f32), {weights['execution']}",
          file=sys.stderr)
    prompt_tokens = sum(len(p) for p in prompts)
    print(f"[wall] load {wall.load_s:.2f} s, compile {wall.compile_s:.2f} s, prefill "
          f"{prompt_tokens} tokens {wall.prefill_s:.3f} s, decode {wall.decode_tokens} tokens "
          f"{wall.decode_s:.2f} s ({wall.decode_tokens_per_s:.1f} tokens/s)", file=sys.stderr)
    from lpu_jax.lpu.deployment import describe

    print(f"[emulated] {describe(figures)}", file=sys.stderr)


def run() -> None:
    common.run(main)


if __name__ == "__main__":
    run()
