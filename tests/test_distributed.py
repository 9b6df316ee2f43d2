"""One deployment spread over two local processes (jax.distributed) gives one process's tokens."""

import json
import os
import socket
import subprocess
import sys

from lpu_jax.checkpoint import load_model
from lpu_jax.engine.generate import Engine
from tests import tiny_models


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_hold_the_chips_and_produce_the_same_tokens(tiny_checkpoints):
    path = tiny_checkpoints.get("gqa")
    prompt = tiny_models.random_prompt(9, seed=50)
    expected = Engine(load_model(path)).generate(prompt, 12, stop_token_ids=()).tokens

    port = free_port()
    env = dict(os.environ, LPU_JAX_CACHE_DIR="")
    procs = [subprocess.Popen(
        [sys.executable, "-m", "lpu_jax.cli.generate", "--model", str(path),
         "--prompt_ids", ",".join(map(str, prompt)), "--max_new_tokens", "12", "--json",
         "--tp", "3", "--pp", "2", "--fold=false", "--cpu_devices", "3",
         "--coordinator", f"127.0.0.1:{port}", "--num_processes", "2", "--process_id", str(i)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for i in range(2)]
    outputs = [p.communicate(timeout=1800) for p in procs]
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err
    result = json.loads(outputs[0][0])
    assert result["chips"]["chips"] == 6 and result["chips"]["devices"] == 6
    assert not result["chips"]["folded"]
    assert outputs[1][0] == ""  # only process 0 prints
    assert result["tokens"] == expected
