"""lpu-bench: decode tokens/s of lpu_jax against Hugging Face transformers, same model, same machine.

Both sides decode greedily with no stop token, so each produces exactly --max_new_tokens tokens.
Decode speed excludes prefill on both sides: lpu_jax times its decode steps directly; for
transformers, the time of a one-token generate is subtracted from that of the full one. Each side is
warmed up once (lpu_jax compiles, torch allocates), then timed --repeats times; the median is shown.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

from absl import flags

from lpu_jax.cli import common
from lpu_jax.errors import UserError

_MODEL = common.model_flag()
_PROMPT, _MAX_NEW_TOKENS = common.prompt_flags()
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed runs per side (the median is reported).")
DEFAULT_PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."


def lpu_jax_decode_rate(model, ids: list[int], new_tokens: int, repeats: int) -> float:
    from lpu_jax.engine.generate import Engine

    engine = Engine(model)
    engine.generate(ids, new_tokens, stop_token_ids=())  # compiles
    return statistics.median(engine.generate(ids, new_tokens, stop_token_ids=()).wall
                             .decode_tokens_per_s for _ in range(repeats))


def transformers_decode_rate(source: str, ids: list[int], new_tokens: int,
                             repeats: int) -> tuple[float, str]:
    try:
        import torch
        import transformers
    except ImportError:
        raise UserError("lpu-bench compares against transformers with torch; install them with "
                        "pip install -e '.[test]'") from None
    transformers.utils.logging.disable_progress_bar()
    path = Path(source)
    kwargs = {"gguf_file": path.name} if path.suffix == ".gguf" else {}
    directory = path.parent if path.suffix == ".gguf" else path
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = transformers.AutoModelForCausalLM.from_pretrained(
        directory, dtype=torch.float32, **kwargs).to(device).eval()
    prompt = torch.tensor([ids], device=device)

    def generate_seconds(n: int) -> float:
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.no_grad():
            model.generate(prompt, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                           pad_token_id=0)
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    generate_seconds(new_tokens)  # warm-up
    rates = [(new_tokens - 1) / (generate_seconds(new_tokens) - generate_seconds(1))
             for _ in range(repeats)]
    return statistics.median(rates), f"torch {torch.__version__} on {device}, float32"


def main() -> None:
    new_tokens = _MAX_NEW_TOKENS.value
    if new_tokens < 2:
        raise UserError("--max_new_tokens must be >= 2 to time decoding")
    if _REPEATS.value < 1:
        raise UserError("--repeats must be >= 1")
    common.enable_compilation_cache()
    import jax

    from lpu_jax.checkpoint import load_model

    prompt = common.prompt_text(_PROMPT) or DEFAULT_PROMPT
    model = load_model(_MODEL.value)
    if model.tokenizer is None:
        raise UserError("lpu-bench needs a checkpoint with a tokenizer")
    ids = model.tokenizer.encode(prompt)
    ours = lpu_jax_decode_rate(model, ids, new_tokens, _REPEATS.value)
    theirs, peer = transformers_decode_rate(model.source, ids, new_tokens, _REPEATS.value)
    device = jax.devices()[0]
    result = {"model": model.source, "prompt_tokens": len(ids), "new_tokens": new_tokens,
              "lpu_jax_decode_tokens_per_s": ours, "transformers_decode_tokens_per_s": theirs,
              "ratio": ours / theirs, "lpu_jax_device": f"{device.platform} ({device.device_kind})",
              "transformers": peer}
    if common.JSON.value:
        print(json.dumps(result))
        return
    print(f"model: {model.source}\nprompt {len(ids)} tokens, {new_tokens} new tokens, greedy, "
          f"median of {_REPEATS.value}")
    print(f"{'':14}{'decode tokens/s':>16}  runs on")
    print(f"{'lpu_jax':14}{ours:16.1f}  jax {jax.__version__} on {result['lpu_jax_device']}")
    print(f"{'transformers':14}{theirs:16.1f}  {peer}")
    print(f"{'ratio':14}{ours / theirs:15.2f}x")
    sys.stdout.flush()


def run() -> None:
    common.run(main)


if __name__ == "__main__":
    run()
