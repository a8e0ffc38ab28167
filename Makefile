# wav2vec2-ee: set-up, tests, demo. CPU torch is pinned here (the CPU wheel); pyproject.toml only asks
# for a compatible range so that GPU users can install their own build first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0

.PHONY: install test test-fast lint format demo demo-quick bench clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# pip runs again only when pyproject.toml changed since the last install (so `make demo` after
# `make install` starts at once); `rm .venv/.installed` forces it.
STAMP := $(VENV)/.installed

install: $(STAMP)

$(STAMP): pyproject.toml | $(BIN)/activate
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[all]"
	touch $@

test:
	$(BIN)/python -m pytest -q

test-fast:
	$(BIN)/python -m pytest -q -m "not slow"

lint:
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

format:
	$(BIN)/ruff check --fix src tests benchmarks
	$(BIN)/ruff format src tests benchmarks

demo: install
	$(BIN)/wav2vec2-ee demo

demo-quick: install
	$(BIN)/wav2vec2-ee demo --quick

bench:
	$(BIN)/python benchmarks/bench_training.py

clean:
	rm -rf $(VENV) demo_out .pytest_cache
