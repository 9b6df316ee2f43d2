"""Shared fixtures. JAX options must be set before JAX starts, hence at import time here."""

import os

os.environ.setdefault("LPU_JAX_CACHE_DIR", "")  # tests compile for real, no persistent cache

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 16)  # one per chip up to 16 chips

import pytest  # noqa: E402

from tests import tiny_models  # noqa: E402


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory):
    """Build tiny random checkpoints once per session: name -> directory."""
    return tiny_models.CheckpointFactory(tmp_path_factory.mktemp("checkpoints"))
