"""lpu-generate: text from a checkpoint, token by token, streamed as it arrives."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

from absl import flags

from lpu_jax.cli import common
from lpu_jax.errors import UserError

_PROMPT_IDS = flags.DEFINE_string("prompt_ids", None, "Prompt as comma-separated token ids, "
                                  "e.g. 1,2,3 (instead of --prompt).")
_CHAT = flags.DEFINE_bool("chat", False, "Wrap the prompt in the checkpoint's chat template.")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.0, "Sampling temperature; 0 means greedy.")
_TOP_K = flags.DEFINE_integer("top_k", 0, "Sample among the k most likely tokens (0: all).")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "Sample from the smallest set of tokens whose "
                            "probability reaches p (1: all).")
_SEED = flags.DEFINE_integer("seed", 0, "Random seed for sampling.")
_TP = flags.DEFINE_integer("tp", 1, "Tensor-parallel emulated chips per stage (split heads, "
                           "MLP columns, vocabulary).")
_PP = flags.DEFINE_integer("pp", 1, "Pipeline stages (groups of layers), each of --tp chips.")
_FOLD = flags.DEFINE_bool("fold", None, "Fold all chips onto one device (default: one chip per "
                          "device when there are enough devices).")
_CPU_DEVICES = flags.DEFINE_integer("cpu_devices", None, "Emulate this many CPU devices (per "
                                    "process), e.g. one per chip.")
_COORDINATOR = flags.DEFINE_string("coordinator", None, "HOST:PORT of process 0, to spread the "
                                   "chips over several processes (jax.distributed).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 1, "Processes in the deployment.")
_PROCESS_ID = flags.DEFINE_integer("process_id", 0, "This process's index; only process 0 "
                                   "prints and writes files.")
_DUMP_LOGITS = flags.DEFINE_string("dump_logits", None, "Save the logits that chose each new "
                                   "token as a float32 .npy array [new_tokens, vocab].")


def parse_prompt_ids(text: str) -> list[int]:
    try:
        ids = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"--prompt_ids must be comma-separated integers, got {text!r}") from None
    if not ids:
        raise UserError("--prompt_ids is empty")
    return ids


def prompt_tokens(tokenizer) -> list[int]:
    if (common.PROMPT.value is None) == (_PROMPT_IDS.value is None):
        raise UserError("pass exactly one of --prompt and --prompt_ids")
    if _PROMPT_IDS.value is not None:
        if _CHAT.value:
            raise UserError("--chat needs --prompt text, not --prompt_ids")
        return parse_prompt_ids(_PROMPT_IDS.value)
    if tokenizer is None:
        raise UserError("this checkpoint ships no tokenizer lpu_jax can read; use --prompt_ids")
    if _CHAT.value:
        return tokenizer.apply_chat_template([{"role": "user", "content": common.PROMPT.value}])
    return tokenizer.encode(common.PROMPT.value)


def check_output_path(path: str) -> Path:
    out = Path(path)
    if not out.parent.is_dir():
        raise UserError(f"--dump_logits: directory {out.parent} does not exist")
    return out


def save_npy_atomically(path: Path, array) -> None:
    """Write beside the target, then rename: a failure never leaves a half-written file."""
    import numpy as np

    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, array)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main() -> None:
    from lpu_jax.engine.sampling import SamplingConfig

    sampling = SamplingConfig(_TEMPERATURE.value, _TOP_K.value, _TOP_P.value, _SEED.value)
    if common.MAX_NEW_TOKENS.value < 1:
        raise UserError(f"--max_new_tokens must be >= 1, got {common.MAX_NEW_TOKENS.value}")
    dump_path = check_output_path(_DUMP_LOGITS.value) if _DUMP_LOGITS.value else None
    if common.PROMPT.value is None and _PROMPT_IDS.value is None:
        raise UserError("pass --prompt TEXT (or --prompt_ids 1,2,3)")

    from lpu_jax.chips import distributed

    if _NUM_PROCESSES.value > 1:
        # gloo prints its connection log on file descriptor 1: give it stderr, keep stdout ours.
        sys.stdout = os.fdopen(os.dup(1), "w")
        os.dup2(2, 1)
    distributed.start(_CPU_DEVICES.value, _COORDINATOR.value, _NUM_PROCESSES.value,
                      _PROCESS_ID.value)
    common.enable_compilation_cache()
    from lpu_jax.checkpoint import load_model
    from lpu_jax.chips.layout import Layout
    from lpu_jax.engine.generate import Engine
    from lpu_jax.tokenizer import IncrementalDecoder

    start = time.perf_counter()
    model = load_model(common.MODEL.value)
    load_s = time.perf_counter() - start
    ids = prompt_tokens(model.tokenizer)

    speaks = _PROCESS_ID.value == 0
    on_token = None
    if speaks and not common.JSON.value and model.tokenizer is not None:
        stream = IncrementalDecoder(model.tokenizer)

        def on_token(token_id):
            sys.stdout.write(stream.push(token_id))
            sys.stdout.flush()

    engine = Engine(model, sampling, Layout(tp=_TP.value, pp=_PP.value), fold=_FOLD.value)
    result = engine.generate(ids, common.MAX_NEW_TOKENS.value, on_token=on_token,
                             keep_logits=dump_path is not None)
    result.wall.load_s = load_s
    if not speaks:
        return
    if dump_path is not None:
        save_npy_atomically(dump_path, result.logits)
    text = model.tokenizer.decode(result.tokens) if model.tokenizer else None

    if common.JSON.value:
        print(json.dumps({"text": text, "tokens": result.tokens, "prompt_tokens": len(ids),
                          "finish_reason": result.finish_reason, "model": model.source,
                          "chips": engine.placement.describe(),
                          "wall": result.wall.as_dict()}))
        return
    if model.tokenizer is None:
        print(" ".join(map(str, result.tokens)))
    else:
        print()
    if result.finish_reason == "context":
        print(f"[stopped: the model's context of {model.config.max_position_embeddings} tokens "
              "is full]", file=sys.stderr)
    w = result.wall
    print(f"[wall] load {w.load_s:.2f} s, compile {w.compile_s:.2f} s, prefill {len(ids)} tokens "
          f"{w.prefill_s:.3f} s, decode {w.decode_tokens} tokens {w.decode_s:.2f} s "
          f"({w.decode_tokens_per_s:.1f} tokens/s)", file=sys.stderr)


def run() -> None:
    common.run(main)


if __name__ == "__main__":
    run()
