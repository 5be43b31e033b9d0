# pql-pipeline: `make run` and `make test` do all set-up on a fresh machine.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SPARK_STAMP := $(VENV)/.installed-spark
export DAGSTER_HOME := $(CURDIR)/.dagster_home
# Demo size: override e.g. `make run ACCOUNTS=1000 DAYS=120`
ACCOUNTS ?= 400
DAYS ?= 110
PYTEST_ARGS ?=

.PHONY: install install-spark install-browser run test lint ui bench bench-quick clean dagster-home

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing pql-pipeline and its dependencies into $(VENV) (log: $(VENV)/install.log) ..."
	@$(BIN)/python -m pip install --upgrade pip > $(VENV)/install.log 2>&1 || (cat $(VENV)/install.log; exit 1)
	@$(BIN)/python -m pip install -e '.[test]' >> $(VENV)/install.log 2>&1 || (cat $(VENV)/install.log; exit 1)
	@touch $(STAMP)

# the optional Spark engine (pyspark; Java 17+), for the tests that compare it with DuckDB
install-spark: $(SPARK_STAMP)

$(SPARK_STAMP): $(STAMP)
	@echo "installing the spark extra (pyspark) into $(VENV) ..."
	@$(BIN)/python -m pip install -e '.[test,spark]' >> $(VENV)/install.log 2>&1 || (cat $(VENV)/install.log; exit 1)
	@touch $(SPARK_STAMP)

# headless Chromium and its matching ChromeDriver for the browser tests (Debian packages; the
# test tools never download a browser). Elsewhere: install chromium and chromedriver yourself.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
install-browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif command -v apt-get >/dev/null; then \
		echo "installing Debian chromium and chromium-driver for the browser tests (log: $(VENV)/apt.log) ..."; \
		mkdir -p $(VENV); \
		( $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q \
			--no-install-recommends chromium chromium-driver ) > $(VENV)/apt.log 2>&1 || { cat $(VENV)/apt.log; exit 1; }; \
	else echo "no chromium/chromedriver and no apt-get: install them to run the browser tests (they skip locally, fail in CI)"; fi

dagster-home:
	@mkdir -p $(DAGSTER_HOME)
	@cmp -s dagster.yaml $(DAGSTER_HOME)/dagster.yaml || cp dagster.yaml $(DAGSTER_HOME)/dagster.yaml

## Generate demo events (once), materialize every asset, print a summary.
run: install dagster-home
	$(BIN)/pql demo --accounts $(ACCOUNTS) --days $(DAYS)

## Lint with ruff (its settings in pyproject.toml); `make test` runs it first.
lint: install
	@$(BIN)/ruff check --quiet . && echo "ruff: clean"

## Run the test suite (slow end-to-end tests included).
test: install install-spark install-browser lint
	@set +e; $(BIN)/python -m pytest -n 2 --dist loadfile --durations=15 $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing on purpose" >&2; exit 1; fi; exit $$rc

## Start the Dagster UI on http://127.0.0.1:3000
ui: install dagster-home
	$(BIN)/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

## Benchmarks (see benchmarks/README.md): the suite writes benchmarks/results/suite.{json,md}; bench-quick is its smoke run (CI)
bench: install
	$(BIN)/python benchmarks/run_suite.py

bench-quick: install
	$(BIN)/python benchmarks/run_suite.py --quick

clean:
	rm -rf data warehouse .dagster_home
