# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
# Most tests wait on the processes and servers they start, so three workers (a test file each
# at a time) keep two cores busy; TEST_WORKERS=0 runs the suite in this one process.
TEST_WORKERS ?= 3

.PHONY: demo test lint typecheck bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	touch $@

$(TEST_STAMP): $(STAMP) pyproject.toml
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

demo: $(STAMP)
	$(BIN)/mrbatch demo

test: $(TEST_STAMP)
	$(BIN)/python -m tests.setup_deps
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

lint: $(TEST_STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_end_to_end.py 1000000 4000000
	$(BIN)/python benchmarks/bench_failover.py

clean:
	rm -rf $(VENV) build dist .pytest_cache .ruff_cache .mypy_cache
