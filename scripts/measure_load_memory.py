"""Peak host memory of loading a checkpoint, against the checkpoint's size on disk.

    python scripts/measure_load_memory.py CHECKPOINT_DIR_OR_GGUF

Prints one JSON object. The baseline is the resident memory after JAX has started (its runtime is
not loading's cost); the peak is the process's resident high-water mark (VmHWM; not ru_maxrss,
which Linux carries over from a parent process) once loading is done, with the parameters still
held. Run it in a fresh process: the high-water mark never goes down.
"""

import json
import sys
from pathlib import Path


def status_bytes(field: str) -> int:
    """A memory figure from /proc/self/status (VmRSS: now, VmHWM: the peak so far)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def main(path: str) -> None:
    import jax
    import jax.numpy as jnp

    from lpu_jax.checkpoint import load_model

    jnp.zeros(1).block_until_ready()  # start the runtime before the baseline
    baseline = status_bytes("VmRSS")
    model = load_model(path)
    jax.block_until_ready(model.params)
    peak = status_bytes("VmHWM")
    target = Path(path)
    files = [target] if target.is_file() else [*target.glob("*.safetensors")]
    size = sum(f.stat().st_size for f in files)
    param_bytes = sum(x.nbytes for x in jax.tree.leaves(model.params))
    print(json.dumps({"checkpoint_bytes": size, "parameter_bytes": param_bytes,
                      "peak_increase_bytes": peak - baseline,
                      "peak_over_checkpoint": (peak - baseline) / size}))


if __name__ == "__main__":
    main(sys.argv[1])
