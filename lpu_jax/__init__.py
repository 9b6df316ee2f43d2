"""lpu_jax: a JAX emulator of Groq-style LPUs.

The public API, curated. Names are imported on first use, so `import lpu_jax` (and the command
line tools' error paths) stay fast and JAX options can still be set before JAX starts.

    model = lpu_jax.load_model()                      # the embedded SmolLM2-135M-Instruct
    engine = lpu_jax.Engine(model, layout=lpu_jax.Layout(tp=3, pp=2),
                            precision="truepoint-int8")  # or a Recipe, or a .toml file
    ids = model.tokenizer.apply_chat_template([{"role": "user", "content": "Hi!"}])
    print(model.tokenizer.decode(engine.generate(ids, 32).tokens))
"""

import importlib

_PUBLIC = {
    "load_model": "lpu_jax.checkpoint",
    "LoadedModel": "lpu_jax.checkpoint",
    "ModelConfig": "lpu_jax.config",
    "Engine": "lpu_jax.engine.generate",
    "Generation": "lpu_jax.engine.generate",
    "SamplingConfig": "lpu_jax.engine.sampling",
    "Layout": "lpu_jax.chips.layout",
    "load_hardware": "lpu_jax.lpu.hardware",
    "load_recipe": "lpu_jax.numerics.recipe",
    "Recipe": "lpu_jax.numerics.recipe",
    "UserError": "lpu_jax.errors",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name):
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'lpu_jax' has no attribute {name!r}")
