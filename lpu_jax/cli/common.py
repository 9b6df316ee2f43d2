"""What every lpu_jax command shares: flag parsing and the one-line, exit-status-2 error contract."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable

from absl import app, flags, logging

from lpu_jax.errors import UserError

EXIT_USER_ERROR = 2

# Flags every command shares (each console script imports one command module, plus this one).
MODEL = flags.DEFINE_string("model", None, "Hugging Face directory or .gguf file "
                            "(default: the embedded SmolLM2-135M-Instruct).")
PROMPT = flags.DEFINE_string("prompt", None, "Prompt text.")
MAX_NEW_TOKENS = flags.DEFINE_integer("max_new_tokens", 128, "Most new tokens to generate.")
JSON = flags.DEFINE_bool("json", False, "Print one JSON object instead of text for people.")


def fail(message: str) -> None:
    """One line on stderr naming the command, then exit status 2."""
    prog = Path(sys.argv[0]).name or "lpu_jax"
    print(f"{prog}: error: {message}", file=sys.stderr)
    sys.exit(EXIT_USER_ERROR)


def _parse_flags(argv: list[str]) -> list[str]:
    try:
        rest = flags.FLAGS(argv)
    except flags.Error as e:
        fail(str(e).splitlines()[0])
    if len(rest) > 1:
        fail(f"unexpected argument {rest[1]!r} (every option is a --flag)")
    return rest


def check_output_path(path: str, flag: str) -> Path:
    """An output file's path, refused before any work when its directory does not exist."""
    out = Path(path)
    if not out.parent.is_dir():
        raise UserError(f"{flag}: directory {out.parent} does not exist")
    return out


def check_png_path(path: str, flag: str) -> Path:
    """A picture's path: a .png in a directory that exists, refused before any work."""
    out = check_output_path(path, flag)
    if out.suffix != ".png":
        raise UserError(f"{flag} must end in .png, got {out.name}")
    return out


def write_atomically(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write beside the target, then rename: a failure never leaves a half-written file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def disable_cpu_fma() -> None:
    """Keep XLA:CPU from fusing a multiply and an add into one FMA (must run before JAX starts).

    LLVM contracts them wherever both land in one fusion, and fusions differ from one chip
    layout's program to another's, so the same value can be rounded once in one layout and
    twice in another. Capping the instruction set at AVX (FMA came with AVX2) turns that off;
    with int8-exact, logits are then bit-identical across tp. It costs little where decode is
    memory-bound.
    """
    flags_now = os.environ.get("XLA_FLAGS", "")
    os.environ["XLA_FLAGS"] = f"{flags_now} --xla_cpu_max_isa=AVX".strip()


def enable_compilation_cache(min_compile_secs: float = 0.5) -> None:
    """Keep compiled executables on disk between runs (LPU_JAX_CACHE_DIR overrides, '' disables);
    only those that took at least min_compile_secs to compile."""
    import jax

    directory = os.environ.get("LPU_JAX_CACHE_DIR",
                               os.path.join(os.path.expanduser("~"), ".cache", "lpu_jax", "xla"))
    if directory:
        jax.config.update("jax_compilation_cache_dir", directory)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_secs)


def run(main: Callable[[], None]) -> None:
    """Run main under absl with our flag parser; a UserError becomes one line and exit status 2."""

    def guarded(_argv):
        logging.set_verbosity(logging.WARNING)  # keep JAX's start-up chatter (no TPU...) quiet
        try:
            main()
        except UserError as e:
            fail(str(e))
        except KeyboardInterrupt:
            sys.exit(130)

    # --help lists the flags registered under the running program's name; console scripts run a
    # wrapper, so name this command's flags and the shared ones for it.
    modules = [m for m in flags.FLAGS.flags_by_module_dict() if m.startswith("lpu_jax.cli")]
    for module in modules + [main.__module__]:
        for flag in flags.FLAGS.get_flags_for_module(module):
            flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
    app.run(guarded, flags_parser=_parse_flags)
