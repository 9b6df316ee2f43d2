"""Shared fixtures. JAX options must be set before JAX starts, hence at import time here."""

import os
import shutil
import tempfile

# One compilation cache for the whole session, shared by the pytest-xdist workers and the CLI
# subprocesses (they inherit the variable from the process that made it): many tests compile the
# same single-chip reference programs, and an executable loaded from the cache is the very one
# XLA built, so results are unchanged. The process that made it removes it at the end.
_OWN_CACHE = "LPU_JAX_TEST_CACHE" not in os.environ
if _OWN_CACHE:
    os.environ["LPU_JAX_TEST_CACHE"] = tempfile.mkdtemp(prefix="lpu_jax_test_xla_")
XLA_CACHE = os.environ["LPU_JAX_CACHE_DIR"] = os.environ["LPU_JAX_TEST_CACHE"]

# Compiling, not running, is most of the suite's time on a small CPU, and XLA spends most of a
# compile in LLVM's optimisation of the generated code; these test programs are tiny, so leave
# it out. The flags change neither the HLO nor XLA's fusion choices, and every comparison in the
# suite is between programs built under the same flags; the product keeps XLA's defaults.
_FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
if _FAST_COMPILE not in os.environ.get("XLA_FLAGS", ""):  # workers inherit it already set
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_FAST_COMPILE}".strip()

# Every Python the tests start (`python -m lpu_jax.cli...`, tests/cli_forks.py) puts neither
# its working directory nor its script's folder on sys.path: from the repository root that
# would put kernels/ ahead of site-packages' `kernels` (tests/test_environment.py checks).
os.environ["PYTHONSAFEPATH"] = "1"

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 16)  # one per chip up to 16 chips

import pytest  # noqa: E402

from lpu_jax.cli.common import enable_compilation_cache  # noqa: E402

from tests import tiny_models  # noqa: E402

# Into XLA_CACHE, as the subprocesses do; programs that compile in under half a second (JAX's
# one-operation programs) cost more to store than to compile again.
enable_compilation_cache()


def pytest_sessionfinish(session, exitstatus):
    if _OWN_CACHE:
        shutil.rmtree(XLA_CACHE, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory):
    """Build tiny random checkpoints once per session: name -> directory."""
    return tiny_models.CheckpointFactory(tmp_path_factory.mktemp("checkpoints"))
