"""lpu-bench: decode tokens/s of lpu_jax against Hugging Face transformers, same model, same machine.

Both sides decode greedily with no stop token, so each produces exactly --max_new_tokens tokens;
the report says whether the two sides' tokens are the same (and where they first part).
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
_PROMPT_IDS = common.prompt_ids_flag()
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed runs per side (the median is reported).")
DEFAULT_PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."


def lpu_jax_decode_rate(model, ids: list[int], new_tokens: int,
                        repeats: int) -> tuple[float, list[int]]:
    """The median decode tokens/s, and the greedy tokens."""
    from lpu_jax.engine.generate import Engine

    engine = Engine(model)
    tokens = engine.generate(ids, new_tokens, stop_token_ids=()).tokens  # compiles
    return statistics.median(engine.generate(ids, new_tokens, stop_token_ids=()).wall
                             .decode_tokens_per_s for _ in range(repeats)), tokens


def transformers_decode_rate(source: str, ids: list[int], new_tokens: int,
                             repeats: int) -> tuple[float, list[int], str]:
    """The median decode tokens/s, the greedy tokens, and what ran them."""
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
    # No stop token, as on lpu_jax's side. Not min_new_tokens: that masks the stop token's
    # logit, so the greedy tokens part wherever the model would choose it.
    model.generation_config.eos_token_id = model.config.eos_token_id = None
    prompt = torch.tensor([ids], device=device)

    def generate(n: int) -> tuple[float, list[int]]:
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.no_grad():
            out = model.generate(prompt, max_new_tokens=n, do_sample=False, pad_token_id=0)
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start, out[0, len(ids):].tolist()

    _, tokens = generate(new_tokens)  # warm-up
    # Decode time = a full generate less a one-token one (its prefill), medians of each.
    full = statistics.median(generate(new_tokens)[0] for _ in range(repeats))
    prefill = statistics.median(generate(1)[0] for _ in range(repeats))
    if full <= prefill:  # a decode this short drowns in the timer's noise
        raise UserError(f"transformers decoded {new_tokens} tokens no slower than one: too "
                        "short to time; raise --max_new_tokens")
    return ((new_tokens - 1) / (full - prefill), tokens,
            f"torch {torch.__version__} on {device}, float32")


def first_difference(ours: list[int], theirs: list[int]) -> int | None:
    """The first position where two token lists differ (None: the same)."""
    return next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b),
                None if len(ours) == len(theirs) else min(len(ours), len(theirs)))


def main() -> None:
    new_tokens = _MAX_NEW_TOKENS.value
    if new_tokens < 2:
        raise UserError("--max_new_tokens must be >= 2 to time decoding")
    if _REPEATS.value < 1:
        raise UserError("--repeats must be >= 1")
    common.enable_compilation_cache()
    import jax

    from lpu_jax.checkpoint import load_model

    if _PROMPT.value is not None and _PROMPT_IDS.value is not None:
        raise UserError("pass at most one of --prompt and --prompt_ids")
    ids = common.parse_prompt_ids(_PROMPT_IDS.value) if _PROMPT_IDS.value is not None else None
    prompt = common.prompt_text(_PROMPT) or DEFAULT_PROMPT
    model = load_model(_MODEL.value)
    if ids is None:
        if model.tokenizer is None:
            raise UserError("this checkpoint ships no tokenizer lpu_jax can read; use "
                            "--prompt_ids")
        ids = model.tokenizer.encode(prompt)
    ours, our_tokens = lpu_jax_decode_rate(model, ids, new_tokens, _REPEATS.value)
    theirs, their_tokens, peer = transformers_decode_rate(model.source, ids, new_tokens,
                                                          _REPEATS.value)
    device = jax.devices()[0]
    differs_at = first_difference(our_tokens, their_tokens)
    result = {"model": model.source, "prompt_tokens": len(ids), "new_tokens": new_tokens,
              "lpu_jax_decode_tokens_per_s": ours, "transformers_decode_tokens_per_s": theirs,
              "ratio": ours / theirs, "lpu_jax_device": f"{device.platform} ({device.device_kind})",
              "transformers": peer, "tokens_equal": differs_at is None,
              "first_difference": differs_at}
    if common.JSON.value:
        print(json.dumps(result))
        return
    print(f"model: {model.source}\nprompt {len(ids)} tokens, {new_tokens} new tokens, greedy, "
          f"median of {_REPEATS.value}")
    print(f"{'':14}{'decode tokens/s':>16}  runs on")
    print(f"{'lpu_jax':14}{ours:16.1f}  jax {jax.__version__} on {result['lpu_jax_device']}")
    print(f"{'transformers':14}{theirs:16.1f}  {peer}")
    print(f"{'ratio':14}{ours / theirs:15.2f}x")
    print("greedy tokens: the same" if differs_at is None
          else f"greedy tokens: differ from position {differs_at}")
    sys.stdout.flush()


def run() -> None:
    common.run(main)


if __name__ == "__main__":
    run()
