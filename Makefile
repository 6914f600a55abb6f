# Two commands on a fresh machine:  `make dashboard` (the workbench on the embedded default model)
# and `make test` (the whole test suite). Both set up .venv first when needed.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: dashboard test install browser-deps lint bench

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0   # the CPU build from local disk, before anything that needs torch
	$(BIN)/pip install --quiet -e '.[dashboard,test]'
	touch $@

install: $(VENV)/.installed

dashboard: install
	$(BIN)/steerlab dashboard

browser-deps:
	@command -v chromium >/dev/null 2>&1 || bash .ci/browser-setup.sh

test: install browser-deps
	$(BIN)/pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-cache   # the layer contract in pyproject.toml (docs/architecture.md)

# Each benchmark asserts equal work on both sides, writes its record and exits non-zero on a missed floor;
# README's benchmark table is read from these records.
bench: install
	$(BIN)/python benchmarks/overhead.py --models smollm,moe --json docs/records/overhead_bench.json
	$(BIN)/python benchmarks/sampling.py --out docs/records/sampling_bench.json
	$(BIN)/python benchmarks/experts.py --out docs/records/experts_bench.json
	$(BIN)/python benchmarks/preferences.py --json docs/records/preferences_bench.json
