# Every target sets itself up: a fresh clone needs only python3 (>= 3.11) and make.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Pinned: an unpinned torch makes pip fetch a CUDA build of several GB.
TORCH := torch==2.13.0
PORT ?= 8000

.PHONY: run test bench soak lint clean default-model docker-test

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# The serving dependencies come from requirements/serve.lock, the versions and hashes the
# image installs, so the tests run what ships; the lock is for Linux x86-64 and Python 3.11
# (its wheels and hashes), so elsewhere they are what resolves today.
LOCK_APPLIES := import platform, sys; sys.exit(not (sys.platform == "linux" and \
	platform.machine() == "x86_64" and sys.version_info[:2] == (3, 11)))
$(VENV)/.installed: pyproject.toml requirements/serve.lock | $(BIN)/python
	$(BIN)/pip install --quiet $(TORCH)
	if $(BIN)/python -c '$(LOCK_APPLIES)'; then \
		$(BIN)/pip install --quiet --require-hashes -r requirements/serve.lock; \
	else echo "requirements/serve.lock is for Linux x86-64, Python 3.11: not applied here"; fi
	$(BIN)/pip install --quiet -e '.[train,serve,ray,dev]'
	touch $@

run: $(VENV)/.installed
	$(BIN)/nanoinspect serve --port $(PORT)

# Rebuilds models/default.onnx and its measured metrics exactly as the model card says: the
# label-free path a user takes (normal images only; no flags: the default recipe and budget).
DM := runs/default
SIZE := 1024x704
default-model: $(VENV)/.installed
	rm -rf $(DM) && mkdir -p $(DM)
	$(BIN)/nanoinspect synth $(DM)/train --n-train 60 --n-test-good 0 --n-test-per-defect 0 --size $(SIZE) --seed 0 --no-sheet
	$(BIN)/nanoinspect synth $(DM)/test --n-train 1 --n-test-good 16 --n-test-per-defect 6 --size $(SIZE) --seed 2 --defects bead,film,clump,particle,beaded
	$(BIN)/nanoinspect train $(DM)/train --out $(DM)/run --config models/default.toml
	$(BIN)/nanoinspect export $(DM)/run --out models/default.onnx --name nanoinspect-default --force
	$(BIN)/nanoinspect evaluate models/default.onnx $(DM)/test --out $(DM)/report
	$(BIN)/python -m training.ablation models/default.onnx $(DM)/run $(DM)/test $(DM)/ablation
	$(BIN)/python -m training.card $(DM) models/default.onnx > models/default.metrics.json

test: $(VENV)/.installed
	$(BIN)/pytest -q tests

# One table from every tests/bench/bench_*.py (about 10-15 min on 2 idle cores).
bench: $(VENV)/.installed
	$(BIN)/python -m tests.bench

# 64 clients posting images for 60 s to a real server with the default model (after a
# 10 s warm-up): requests/s, p50/p99, statuses, max queue depth, RSS. Also part of `make bench`.
soak: $(VENV)/.installed
	$(BIN)/python -m tests.bench.bench_soak

# The synthetic domain matrix (training/quality.py): per domain, synth normals and a labelled
# test set at 1024x704, train with the default recipe and budget, export label-free, evaluate;
# writes quality/matrix.md and .json. ARGS, e.g. ARGS="--domains classic --max-minutes 3
# --n-train 30": --domains a,b --size WxH --n-train --n-test-good --n-test-per-defect
# --max-minutes --max-steps --train-seed --work DIR --out DIR. A benchmark (README:
# Quality), no asserts.
quality: $(VENV)/.installed
	$(BIN)/python -m training.quality matrix $(ARGS)

# The real PAN nanofibre SEM set: DATA is its folder or a bare git mirror of
# github.com/cagriyardimci/Nanofiber_SEM_Dataset. ARGS: --dev (train and test inside
# TrainingDataset, split by source image) --max-minutes --max-steps --n-train --n-test
# --work DIR --out DIR. Writes quality/real.md and .json (real-dev with --dev).
quality-real: $(VENV)/.installed
	$(if $(DATA),,$(error make quality-real needs DATA=DIR: the PAN set's folder or its bare git mirror))
	$(BIN)/python -m training.quality real "$(DATA)" $(ARGS)

.PHONY: quality quality-real

lint: $(VENV)/.installed audit
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/hadolint Dockerfile docker/train.Dockerfile
	$(BIN)/kubernetes-validate --strict --quiet docker/k8s/*.yaml
	if docker compose version >/dev/null 2>&1; then docker compose -f docker/compose.yaml config --quiet; \
	else $(BIN)/check-jsonschema --builtin-schema vendor.compose-spec docker/compose.yaml; fi

# pip-audit of the locked serving dependencies against PyPI's vulnerability data, failing on
# a known vulnerability or a package it cannot look up. Where that data cannot be reached
# (this workplace's mirror) it says so and audits nothing; REQUIRE_AUDIT=1 makes that fail.
audit: $(VENV)/.installed
	@if $(BIN)/python -c "import urllib.request as u; u.urlopen('https://pypi.org/pypi/pip/24.0/json', timeout=10)" 2>/dev/null; \
	then $(BIN)/pip-audit -r requirements/serve.lock --disable-pip --progress-spinner off --strict; \
	else echo "audit: PyPI's per-release JSON (vulnerability data) is unreachable: requirements/serve.lock NOT audited"; \
		test -z "$(REQUIRE_AUDIT)"; fi

# Builds the Dockerfile on a base made with debootstrap and runs it for real (docker/test.py).
docker-test: $(VENV)/.installed
	$(BIN)/python docker/test.py

# The serving dependencies pinned with hashes for the serving image (Linux x86-64, Python
# 3.11); `make lint` audits them. Regenerate after changing the serve extra of pyproject.toml.
.PHONY: lock audit
lock: $(VENV)/.installed
	$(BIN)/uv pip compile pyproject.toml --extra serve --python-version 3.11 \
		--python-platform x86_64-manylinux_2_28 --generate-hashes --no-header \
		--annotation-style line -o requirements/serve.lock

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
