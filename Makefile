# Every target sets itself up: a fresh clone needs only python3 (>= 3.11) and make.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Pinned: an unpinned torch makes pip fetch a CUDA build of several GB.
TORCH := torch==2.13.0
PORT ?= 8000

.PHONY: run test bench lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e '.[train,serve,dev]'
	touch $@

run: $(VENV)/.installed
	$(BIN)/nanoinspect synth runs/demo-data --n-train 40 --n-test-good 8 --n-test-per-defect 4 --size 256x256 --seed 0
	$(BIN)/nanoinspect train runs/demo-data --out runs/demo --max-steps 200

test: $(VENV)/.installed
	$(BIN)/pytest -q tests

bench: $(VENV)/.installed
	$(BIN)/python -m tests.bench

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
