# efflab: every target bootstraps .venv idempotently first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NOTEBOOK ?= notebooks/00_tour.ipynb

.PHONY: setup lab test test-long test-browser gpu-check report weights benchmarks lint clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev,class]'
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (efflab)" >/dev/null
	touch $(STAMP)

setup: $(STAMP)

lab: $(STAMP)
	$(BIN)/jupyter lab --allow-root $(NOTEBOOK)

test: $(STAMP)
	$(BIN)/python -m pytest -q

# the checks that take minutes: 20 seeded SIGKILLs of a sweep, concurrent writers
test-long: $(STAMP)
	EFFLAB_LONG_TESTS=1 $(BIN)/python -m pytest -q -p no:cacheprovider -m long

# every lesson in JupyterLab + Chromium (make test runs two of them)
test-browser: $(STAMP)
	EFFLAB_BROWSER_NOTEBOOKS=all $(BIN)/python -m pytest -q -p no:cacheprovider tests/test_browser.py

# on a CUDA machine: the gpu tests, every lesson (SMOKE, PRESET="auto"), the GPU benchmarks;
# writes benchmarks/results/gpu/<device>.json and .html (without CUDA: says so, exits 0)
gpu-check: $(STAMP)
	$(BIN)/python scripts/gpu_check.py

report: $(STAMP)
	$(BIN)/efflab report --out reports

weights: $(STAMP)
	$(BIN)/efflab train --preset cpu-small --minutes 15 --out data/weights

benchmarks: $(STAMP)
	$(BIN)/python benchmarks/run_benchmarks.py

lint: $(STAMP)
	$(BIN)/ruff check efflab tests benchmarks

clean:
	rm -rf $(VENV) reports .pytest_cache
