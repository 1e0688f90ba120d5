# rollbackd developer tasks. GNU make; every recipe runs in bash with errexit and pipefail.
#
#   make install   create .venv (python3 >= 3.11) and install rollbackd with its dev extras
#   make test      install, make the local services available, run pytest ($(PYTEST_ARGS) passed on)
#   make lint      ruff and mypy --strict (both run; fails if either fails)
#   make bench     run the benchmarks; results go to bench/results/
#   make demo      replay the labelled release recordings and show what rollbackd decides
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
PYTEST_ARGS ?=

.PHONY: install test lint bench demo clean distclean

install: $(INSTALLED)

$(INSTALLED): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else \
		"$(PYTHON) is Python " + sys.version.split()[0] + "; rollbackd needs 3.11 or newer: make PYTHON=python3.11 ...")'
	@if [[ ! -x $(BIN)/python ]]; then \
		echo "creating $(VENV) with $$($(PYTHON) -c 'import sys; print(sys.executable)')"; \
		$(PYTHON) -m venv $(VENV); \
	fi
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $@

test: install
	@scripts/ensure-services.sh
	$(BIN)/pytest $(PYTEST_ARGS)

lint: install
	@status=0; \
	echo "$(BIN)/ruff check ."; $(BIN)/ruff check . || status=1; \
	echo "$(BIN)/mypy"; $(BIN)/mypy || status=1; \
	exit $$status

bench: install
	$(BIN)/python -m bench.run_all

clean:
	rm -rf build dist .mypy_cache .ruff_cache .pytest_cache
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)

# Until the live demo lands: the labelled release recordings through the real detectors and
# decision framework, as a readable table.
SCENARIOS ?= ../shared/scenarios
demo: install
	$(BIN)/rollbackd replay --format table $(SCENARIOS)
