# Set-up and everyday commands. The virtualenv is built on first use from pyproject.toml,
# so a fresh machine needs nothing but Python 3.10+.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv demo test test-fast lint format clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,smp]'
	touch $(STAMP)

venv: $(STAMP)

## The main job: dense training on built-in synthetic data, then inverse transfer.
demo: $(STAMP)
	$(BIN)/dense-lightning fit --config configs/segmentation/quickstart.yaml

## The whole test suite (lint, then every test, slow ones included), as CI runs it.
test: $(STAMP)
	$(BIN)/ruff check dense_lightning tests benchmarks
	$(BIN)/python -m pytest -q -m "slow or not slow"

## Fast tests only.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check dense_lightning tests benchmarks
	$(BIN)/ruff format --check dense_lightning tests benchmarks

format: $(STAMP)
	$(BIN)/ruff check --fix dense_lightning tests benchmarks
	$(BIN)/ruff format dense_lightning tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis lightning_logs outputs
