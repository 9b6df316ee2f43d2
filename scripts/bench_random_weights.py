"""Peak host memory of lpu-generate with random weights, against the weights it holds.

    python scripts/bench_random_weights.py [--config Llama-3.2-1B] [--precision truepoint-int8]
        [--tp 4] [--pp 16] [--new_tokens 16] [--fold true]

Runs `lpu-generate --config ... --random_weights --json` in a child process and reads its peak
resident memory (getrusage of the children). Prints one JSON object: the stored weight bytes,
the f32 execution copy's bytes, the peak, and the peak against 2.5x the stored bytes plus the
copy (issue 13's bound), with the run's wall times and tokens.
"""

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="Llama-3.2-1B")
    parser.add_argument("--precision", default="truepoint-int8")
    parser.add_argument("--tp", default="4")
    parser.add_argument("--pp", default="16")
    parser.add_argument("--new_tokens", default="16")
    parser.add_argument("--fold", default="true")
    args = parser.parse_args()
    command = [str(Path(sys.executable).parent / "lpu-generate"), "--config", args.config,
               "--random_weights", "--precision", args.precision, "--tp", args.tp,
               "--pp", args.pp, "--fold=" + args.fold, "--prompt", "The emulator runs",
               "--max_new_tokens", args.new_tokens, "--json"]
    run = subprocess.run(command, capture_output=True, text=True)
    if run.returncode != 0:
        sys.exit(run.stderr)
    result = json.loads(run.stdout)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # kB on Linux
    weights = result["precision"]
    bound = 2.5 * weights["weight_bytes"] + weights["execution_copy_bytes"]
    print(json.dumps({"command": " ".join(command[1:]), "chips": result["chips"],
                      "stored_weight_bytes": weights["weight_bytes"],
                      "execution_copy_bytes": weights["execution_copy_bytes"],
                      "peak_host_bytes": peak, "bound_bytes": bound,
                      "peak_over_bound": peak / bound, "new_tokens": len(result["tokens"]),
                      "wall": result["wall"]}, indent=1))


if __name__ == "__main__":
    main()
