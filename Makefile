# Two entry points, each installs what it needs into .venv:
#   make demo   the main job (build the SK-VQA sample, ...)
#   make test   lint + type-check + the whole test suite (what CI runs)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

.PHONY: install demo test lint bench
install: $(STAMP)

demo: $(STAMP)
	$(BIN)/hubsets demo

lint: $(STAMP)
	$(BIN)/ruff check hubsets builders tests benchmarks
	$(BIN)/mypy hubsets builders

test: lint
	$(BIN)/pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_build.py
