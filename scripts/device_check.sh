#!/usr/bin/env bash
# On the device machine, from the repository copy, with .whl/ carried (scripts/device_wheels.sh
# fills it): installs the wheels the image lacks and lpu_jax itself (no dependencies, no index)
# into a temporary folder, then runs scripts/device_check.py into $OUT (or device_check_out/).
# Arguments go to device_check.py (e.g. --only a,b or --small).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
site=$(mktemp -d)
shopt -s nullglob
wheels=(.whl/*.whl)
if (( ${#wheels[@]} )); then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" \
    "${wheels[@]}"
fi
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
# Built with the carried setuptools (first on PYTHONPATH), from a copy: no build/ left behind
# in the tree to go stale between calls.
source=$(mktemp -d)
cp -r pyproject.toml README.md lpu_jax kernels configs "$source"
"$PYTHON" -m pip install -q --no-index --no-deps --no-build-isolation --no-compile \
  --no-cache-dir --target "$site" "$source"
exec "$PYTHON" -P scripts/device_check.py --out "${OUT:-device_check_out}" "$@"
