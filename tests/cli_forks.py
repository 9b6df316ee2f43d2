"""Run one command-line tool many times, each run a process of its own, forked from this one.

The bad-input tests need real processes (an exit status, stderr and no traceback) but not a
fresh Python, JAX and lpu_jax start-up each: this process imports them once, then forks one
child per argument list, before any JAX backend starts (a child starts its own). Run as

    python tests/cli_forks.py lpu_jax.cli.generate < cases.json

with a JSON list of argument lists on stdin; it writes a JSON list of {returncode, stdout,
stderr} on stdout, one per case, in order.
"""

import importlib
import json
import os
import subprocess
import sys
import tempfile
import traceback


def run_each(module: str, cases: list[list[str]]) -> dict[tuple, subprocess.CompletedProcess]:
    """Each argument list run by `python -m module` in a process of its own: args -> result."""
    # By path, not `-m tests.cli_forks`: that needs the repository root on sys.path, where its
    # kernels/ would shadow the kernels distribution (the tests run with PYTHONSAFEPATH set, so
    # this file's own folder is not put on sys.path either; it imports nothing from it).
    driver = subprocess.run([sys.executable, __file__, module],
                            input=json.dumps(cases), capture_output=True, text=True,
                            timeout=1800)
    assert driver.returncode == 0, driver.stderr
    return {tuple(args): subprocess.CompletedProcess(args, r["returncode"], r["stdout"],
                                                     r["stderr"])
            for args, r in zip(cases, json.loads(driver.stdout))}


def run_in_child(module, args: list[str]) -> dict:
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.dup2(out.fileno(), 1)
                os.dup2(err.fileno(), 2)
                sys.argv = [module.__file__, *args]  # as `python -m` sets it
                module.run()
                code = 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (e.code is not None)
                if isinstance(e.code, str):
                    print(e.code, file=sys.stderr)
            except BaseException:  # what a plain interpreter would print, then exit 1
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(int(code))
        _, status = os.waitpid(pid, 0)
        out.seek(0)
        err.seek(0)
        return {"returncode": os.waitstatus_to_exitcode(status),
                "stdout": out.read().decode(errors="replace"),
                "stderr": err.read().decode(errors="replace")}


def main() -> None:
    module = importlib.import_module(sys.argv[1])
    # What every run imports anyway; no backend starts here, so the children may still fork.
    import jax  # noqa: F401

    import lpu_jax.checkpoint  # noqa: F401
    import lpu_jax.engine.generate  # noqa: F401
    import lpu_jax.lpu.deployment  # noqa: F401

    cases = json.load(sys.stdin)
    results = [run_in_child(module, args) for args in cases]
    sys.stdout.write(json.dumps(results))


if __name__ == "__main__":
    main()
