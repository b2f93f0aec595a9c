# Everything runs inside the project's own virtual environment, .venv/.
# `make run` and `make test` create it on first use from the pinned lock file.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=
RUN_ARGS ?=

.PHONY: venv run test test-system-deps bench-data sample lock clean help proto

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

# Two xdist workers for everything but the tests marked `alone` (timing
# assertions, see tests/conftest.py), which run after, with the machine to
# themselves. Both parts always run; exit code 5 is "nothing selected".
test: $(STAMP) test-system-deps  ## run the test suite (starts its own S3 and HTTP servers)
	@$(BIN)/python -m pytest -n 2 --dist loadfile -m "not alone" $(PYTEST_ARGS); parallel=$$?; \
	$(BIN)/python -m pytest -m alone $(PYTEST_ARGS); alone=$$?; \
	for code in $$parallel $$alone; do [ $$code -eq 0 ] || [ $$code -eq 5 ] || exit 1; done; \
	[ $$parallel -eq 0 ] || [ $$alone -eq 0 ]

# The web page tests drive a real headless Chromium, and the monitoring tests
# a real Prometheus and promtool (Debian's packages). As root with apt they are
# installed; otherwise those tests skip and say why.
SYSTEM_TEST_PACKAGES := chromium:chromium prometheus:prometheus promtool:prometheus
test-system-deps:
	@missing=""; for pair in $(SYSTEM_TEST_PACKAGES); do \
	  command -v $${pair%%:*} >/dev/null 2>&1 || missing="$$missing $${pair#*:}"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing$$missing for the web page and monitoring tests"; \
	    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "note:$$missing not installed; the tests that need it will skip"; fi; fi

bench-data: $(STAMP)  ## benchmark ingest + preprocess of the full archive
	$(BIN)/python bench/ingest_preprocess.py

sample: $(STAMP)  ## rebuild src/cifarflow/data/sample/ from the full archive in ../shared/data
	$(BIN)/python scripts/make_sample.py

lock:  ## re-resolve requirements/*.in into requirements/constraints.txt
	rm -rf /tmp/cifarflow-lock && $(PYTHON) -m venv /tmp/cifarflow-lock
	/tmp/cifarflow-lock/bin/pip install --quiet -r requirements/base.in -r requirements/dev.in
	/tmp/cifarflow-lock/bin/pip freeze > requirements/constraints.txt

clean:  ## remove the virtual environment and local run outputs
	rm -rf $(VENV) runs .pytest_cache

# Container images (dockerfiles/), built with the repository root as the context.
# The tags come from src/cifarflow/images.py, the one place the pipeline's
# components and the Kubernetes manifests take them from too; it needs no
# dependency, so the system Python answers and no venv is built first.
# IMAGE_REPOSITORY and IMAGE_TAG retarget both tags, e.g. for your registry
# and a tag per commit (`cifarflow compile`/`submit` take the same values as
# --image-repository/--image-tag); IMAGE_BUILDER=podman works as well.
IMAGE_BUILDER ?= docker
IMAGE_REPOSITORY ?=
IMAGE_TAG ?=
IMAGE_OF = $(shell PYTHONPATH=src $(PYTHON) -c 'from cifarflow.images import $(1); print($(1)("$(IMAGE_REPOSITORY)" or None, "$(IMAGE_TAG)" or None))')

.PHONY: image image-gpu

image:  ## build the CPU project image (pipeline steps, gateway, sync)
	$(IMAGE_BUILDER) build -f dockerfiles/Dockerfile -t $(call IMAGE_OF,cpu_image) .

image-gpu:  ## build the GPU project image (the train step)
	$(IMAGE_BUILDER) build -f dockerfiles/Dockerfile.gpu -t $(call IMAGE_OF,gpu_image) .

proto: $(STAMP)  ## regenerate the gateway's gRPC code from src/cifarflow/serving/gateway/proto/classifier.proto
	$(BIN)/python -m cifarflow.serving.gateway.proto.generate
