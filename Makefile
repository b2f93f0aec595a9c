# Everything runs inside the project's own virtual environment, .venv/.
# `make run` and `make test` create it on first use from the pinned lock file.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=
RUN_ARGS ?=

.PHONY: venv run test bench-data sample lock clean help

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/\t/'

$(STAMP): requirements/constraints.txt setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c requirements/constraints.txt -e '.[dev,tflite]'
	touch $@

venv: $(STAMP)  ## create .venv and install the package with pinned dependencies

run: $(STAMP)  ## run the pipeline end to end on the shipped sample (no cluster, no internet)
	$(BIN)/cifarflow run $(RUN_ARGS)

test: $(STAMP)  ## run the test suite (starts its own S3 and HTTP servers)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench-data: $(STAMP)  ## benchmark ingest + preprocess of the full archive
	$(BIN)/python bench/ingest_preprocess.py

sample: $(STAMP)  ## rebuild data/sample/ from the full archive in ../shared/data
	$(BIN)/python scripts/make_sample.py

lock:  ## re-resolve requirements/*.in into requirements/constraints.txt
	rm -rf /tmp/cifarflow-lock && $(PYTHON) -m venv /tmp/cifarflow-lock
	/tmp/cifarflow-lock/bin/pip install --quiet -r requirements/base.in -r requirements/dev.in
	/tmp/cifarflow-lock/bin/pip freeze > requirements/constraints.txt

clean:  ## remove the virtual environment and local run outputs
	rm -rf $(VENV) runs .pytest_cache
