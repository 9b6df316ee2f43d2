"""Shared fixtures. JAX options must be set before JAX starts, hence at import time here."""

import os
import shutil
import tempfile

# One compilation cache for the whole session, shared with the CLI subprocesses (they inherit
# the variable): many tests compile the same single-chip reference programs, and an executable
# loaded from the cache is the very one XLA built, so results are unchanged. Removed at the end.
XLA_CACHE = tempfile.mkdtemp(prefix="lpu_jax_test_xla_")
os.environ["LPU_JAX_CACHE_DIR"] = XLA_CACHE

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 16)  # one per chip up to 16 chips

import pytest  # noqa: E402

from lpu_jax.cli.common import enable_compilation_cache  # noqa: E402

from tests import tiny_models  # noqa: E402

enable_compilation_cache(min_compile_secs=0.0)  # into XLA_CACHE, as the subprocesses do


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(XLA_CACHE, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory):
    """Build tiny random checkpoints once per session: name -> directory."""
    return tiny_models.CheckpointFactory(tmp_path_factory.mktemp("checkpoints"))
