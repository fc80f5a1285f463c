# Two entry points, each installs what it needs into .venv:
#   make demo   the main job (build the SK-VQA sample, serve it, push it, load it back): the core install only
#   make test   lint + type-check + the whole test suite (what CI runs): adds the dev extra (torch, ray, ...)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CORE := $(VENV)/.installed-core
DEV := $(VENV)/.installed-dev
# mypy's cache lives outside the checkout, so a fresh clone on the same machine (CI) starts warm.
export MYPY_CACHE_DIR ?= $(HOME)/.cache/hubsets/mypy

$(CORE): pyproject.toml
	@echo "==> creating $(VENV) with $(PYTHON)"
	$(PYTHON) -m venv $(VENV)
	@echo "==> installing hubsets and what building, serving, pushing and loading with datasets need (no torch)"
	$(BIN)/pip install --progress-bar off -e .
	touch $(CORE)

$(DEV): $(CORE)
	@echo "==> installing the dev extra: torch, torchvision, ray, pytest, hypothesis, ruff, mypy (several GB)"
	$(BIN)/pip install --progress-bar off -e '.[dev]'
	touch $(DEV)

.PHONY: install install-core demo test lint bench
install: $(DEV)
install-core: $(CORE)

demo: $(CORE)
	@echo "==> running the demo: hubsets demo"
	$(BIN)/hubsets demo

lint: $(DEV)
	@echo "==> ruff"
	$(BIN)/ruff check hubsets builders tests benchmarks
	@echo "==> mypy (cache: $(MYPY_CACHE_DIR))"
	$(BIN)/mypy hubsets builders

test: lint
	@echo "==> pytest"
	$(BIN)/pytest -q

bench: $(DEV)
	$(BIN)/python benchmarks/bench_build.py
