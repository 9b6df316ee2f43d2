"""What every lpu_jax command shares: flag parsing and the one-line, exit-status-2 error contract."""

from __future__ import annotations

import functools
import os
import shutil
import stat
import sys
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable

from absl import app, flags, logging

from lpu_jax.errors import UserError

EXIT_USER_ERROR = 2

# Every command prints --json. The flags only some share are defined by the commands that use
# them (model_flag, prompt_flags), so each command's --help lists its own flags only.
JSON = flags.DEFINE_bool("json", False, "Print one JSON object instead of text for people.")


@functools.cache
def model_flag() -> flags.FlagHolder:
    return flags.DEFINE_string("model", None, "Hugging Face directory or .gguf file "
                               "(default: the embedded SmolLM2-135M-Instruct).")


@functools.cache
def ep_flag() -> flags.FlagHolder:
    return flags.DEFINE_integer("ep", 1, "Expert groups among each stage's tp chips (a mixture "
                                "of experts): the experts split ep ways, each expert's columns "
                                "over tp / ep chips; 1 splits every expert over all tp chips, "
                                "--ep equal to --tp gives each chip whole experts.")


@functools.cache
def config_flag() -> flags.FlagHolder:
    return flags.DEFINE_string("config", None, "A Hugging Face config.json, or a name from "
                               "configs/models (e.g. Llama-2-7b-hf, Meta-Llama-3-8B).")


@functools.cache
def prompt_flags() -> tuple[flags.FlagHolder, flags.FlagHolder]:
    """--prompt and --max_new_tokens."""
    return (flags.DEFINE_string("prompt", None, "Prompt text."),
            flags.DEFINE_integer("max_new_tokens", 128, "Most new tokens to generate."))


def prompt_ids_flag() -> flags.FlagHolder:
    """--prompt_ids: a prompt as token ids, for checkpoints without a tokenizer."""
    return flags.DEFINE_string("prompt_ids", None, "Prompt as comma-separated token ids, "
                               "e.g. 1,2,3 (instead of --prompt).")


def parse_prompt_ids(text: str) -> list[int]:
    try:
        ids = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"--prompt_ids must be comma-separated integers, got {text!r}") from None
    if not ids:
        raise UserError("--prompt_ids is empty")
    return ids


def prompt_text(prompt: flags.FlagHolder) -> str | None:
    """--prompt, refused when given empty (an empty prompt has nothing to continue)."""
    if prompt.value is not None and not prompt.value:
        raise UserError("--prompt is empty")
    return prompt.value


def fail(message: str) -> None:
    """One line on stderr naming the command, then exit status 2."""
    prog = Path(sys.argv[0]).name or "lpu_jax"
    line = " ".join(message.splitlines())  # one line, whatever a file's text put in it
    print(f"{prog}: error: {line}", file=sys.stderr)
    sys.exit(EXIT_USER_ERROR)


HELP_FLAGS = ("--help", "-help", "-h", "--helpshort", "--helpfull", "-?")


def _parse_flags(argv: list[str]) -> list[str]:
    try:
        rest = flags.FLAGS(argv)
    except flags.Error as e:
        fail(str(e).splitlines()[0])
    except SystemExit:
        if any(arg in HELP_FLAGS for arg in argv[1:]):
            sys.exit(0)  # absl exits 1 after printing the help that was asked for
        raise
    if len(rest) > 1:
        fail(f"unexpected argument {rest[1]!r} (every option is a --flag)")
    return rest


def check_output_path(path: str, flag: str) -> Path:
    """An output file's path, checked before any work: its directory exists and takes a new
    file (tried, so /proc or a read-only mount is found now), and the path is absent or a
    regular file we may replace (never a directory, a device, a FIFO or a socket)."""
    out = Path(path)
    try:
        if not out.parent.is_dir():
            raise UserError(f"{flag}: directory {out.parent} does not exist")
        mode = out.stat().st_mode if out.exists() else None  # through a symlink, as a write
    except OSError as e:  # a name too long, a directory we may not enter
        raise UserError(f"{flag}: cannot use {path} ({e.strerror})") from None
    if mode is not None:
        if stat.S_ISDIR(mode):
            raise UserError(f"{flag}: {out} is a directory; name a file")
        if not stat.S_ISREG(mode):
            raise UserError(f"{flag}: {out} is not a regular file (a device, FIFO or socket); "
                            "name a file")
        if not os.access(out, os.W_OK):
            raise UserError(f"{flag}: {out} is not writable")
    try:
        fd, probe = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UserError(f"{flag}: cannot write in {out.parent} ({e.strerror})") from None
    return out


def check_distinct(outputs: dict[str, Path | None]) -> None:
    """Two output flags naming one file would leave only the last written: refused."""
    seen: dict[Path, str] = {}
    for flag, path in outputs.items():
        if path is None:
            continue
        where = path.resolve()
        if where in seen:
            raise UserError(f"{seen[where]} and {flag} name the same file {path}")
        seen[where] = flag


def check_png_path(path: str, flag: str) -> Path:
    """A picture's path: a .png that check_output_path accepts."""
    out = check_output_path(path, flag)
    if out.suffix != ".png":
        raise UserError(f"{flag} must end in .png, got {out.name}")
    return out


class Outputs:
    """A run's output files, each written beside its target and all renamed into place only
    when the run succeeds: a failure leaves every file as it was. New files get the mode the
    user's umask gives; a replaced file keeps its own mode.

        with Outputs() as outputs:
            outputs.stage(path, lambda f: f.write(data))
    """

    def __init__(self):
        self._staged: list[tuple[str, Path]] = []

    def stage(self, path: Path, write: Callable[[BinaryIO], None]) -> None:
        path = path.resolve()  # through a symlink: the file it names is replaced, not the link
        if any(path == staged for _, staged in self._staged):
            raise ValueError(f"{path} is staged twice")  # check_distinct refuses it before work
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        self._staged.append((tmp, path))
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, stat.S_IMODE(path.stat().st_mode) if path.exists() else _new_file_mode())

    def __enter__(self) -> "Outputs":
        return self

    def __exit__(self, kind, error, traceback) -> None:
        saved: list[tuple[str, Path]] = []  # the files replaced so far, kept until all are
        kept = None
        try:
            if kind is None:
                for tmp, path in self._staged:
                    kept = _keep(path) if path.exists() else None
                    os.replace(tmp, path)
                    if kept is not None:
                        saved.append((kept, path))
                    kept = None
                for old, _ in saved:  # every output in place: the old versions go
                    Path(old).unlink()
                saved.clear()
        except OSError as e:
            for old, replaced in saved:  # put back what this run had replaced
                os.replace(old, replaced)
            raise UserError(f"cannot write {path} ({e.strerror})") from None
        finally:
            for leftover in [tmp for tmp, _ in self._staged] + [old for old, _ in saved] + [
                    kept]:
                if leftover is not None:
                    Path(leftover).unlink(missing_ok=True)


def _keep(path: Path) -> str:
    """A copy of `path` beside it (a hard link where the file system has them)."""
    fd, old = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".old")
    os.close(fd)
    os.unlink(old)
    try:
        os.link(path, old)
    except OSError:
        shutil.copy2(path, old)
    return old


def _new_file_mode() -> int:
    umask = os.umask(0)  # reading the umask means setting it: put it straight back
    os.umask(umask)
    return 0o666 & ~umask


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
