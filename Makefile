# rollbackd developer tasks. GNU make; every recipe runs in bash with errexit and pipefail.
#
#   make install   create .venv (python3 >= 3.11) and install rollbackd with its dev extras
#   make test      install, make the local services available, run pytest ($(PYTEST_ARGS) passed on)
#   make lint      ruff, mypy --strict and the import contracts of .importlinter (all run; fails
#                  if any fails)
#   make bench     run the benchmarks; results go to bench/results/
#   make demo      install with the demo extra and run `rollbackd demo`: a bad release undoes itself
#                  on an emulated cluster (SCENARIO=canary|bluegreen|deployment|gateway|gitops|flag|
#                  config, DEMO_ARGS=...)
#   make replay    replay the labelled release recordings and show what rollbackd decides
#   make clean     remove caches and build artefacts (keeps .venv and bench/results)
#   make distclean clean, and remove .venv too

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := test
MAKEFLAGS += --no-builtin-rules

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Touched after a successful install; reinstalls when pyproject.toml changes.
INSTALLED := $(VENV)/.installed
DEMO_INSTALLED := $(VENV)/.installed-demo
PYTEST_ARGS ?=
SCENARIO ?= canary
DEMO_ARGS ?=

.PHONY: install test lint bench demo replay clean distclean

install: $(INSTALLED)

# Check the Python version and create the virtual environment if there is none.
define make-venv
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else \
		"$(PYTHON) is Python " + sys.version.split()[0] + "; rollbackd needs 3.11 or newer: make PYTHON=python3.11 ...")'
	@if [[ ! -x $(BIN)/python ]]; then \
		echo "creating $(VENV) with $$($(PYTHON) -c 'import sys; print(sys.executable)')"; \
		$(PYTHON) -m venv $(VENV); \
	fi
endef

$(INSTALLED): pyproject.toml
	$(make-venv)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $@

$(DEMO_INSTALLED): pyproject.toml
	$(make-venv)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[demo]'
	@touch $@

test: install
	@scripts/ensure-services.sh
	$(BIN)/pytest $(PYTEST_ARGS)

lint: install
	@status=0; \
	echo "$(BIN)/ruff check ."; $(BIN)/ruff check . || status=1; \
	echo "$(BIN)/mypy"; $(BIN)/mypy || status=1; \
	echo "$(BIN)/lint-imports"; $(BIN)/lint-imports --no-cache || status=1; \
	exit $$status

bench: install
	$(BIN)/python -m bench.run_all

clean:
	rm -rf build dist .mypy_cache .ruff_cache .pytest_cache
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)

# One command, no cluster and no container engine: an emulated Kubernetes API, real sample apps,
# a real Prometheus when one is installed, and the real daemon rolling a bad release back.
demo: $(DEMO_INSTALLED)
	$(BIN)/rollbackd demo --scenario $(SCENARIO) $(DEMO_ARGS)

# The labelled release recordings through the real detectors and decision framework, as a table.
SCENARIOS ?= ../shared/scenarios
replay: install
	$(BIN)/rollbackd replay --format table $(SCENARIOS)
