# VisionOps — `make help` lists the targets. `make run` and `make test` install everything they need.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# CI has 2 cores: two pytest workers, each test file on one worker (session fixtures stay shared in a file)
TEST_WORKERS ?= 2
OUT ?= runs/local
# torch's spinning OpenMP threads slow everything down on a small, busy machine
export OMP_WAIT_POLICY ?= PASSIVE

.DEFAULT_GOAL := help

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "} {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip wheel
	@# torch and torchvision first, as the pinned pair (see constraints.txt)
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt torch torchvision
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP) ## Create/reuse .venv and install the project with its pinned dependencies

run: $(STAMP) ## The main job: synthetic data -> the whole pipeline locally (kfp.local) -> a summary
	$(BIN)/visionops pipeline run --local --output $(OUT)

test: $(STAMP) ## Run the test suite (what CI runs), in TEST_WORKERS processes (TEST_WORKERS=0: one)
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)

test-fast: $(STAMP) ## Only the fast tests (no slow, no integration)
	$(BIN)/pytest -m "not slow and not integration" $(PYTEST_ARGS)

lint: $(STAMP) ## ruff lint + format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP) ## Apply ruff fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

compile: $(STAMP) ## Compile the training pipeline to pipelines/training_pipeline.yaml
	$(BIN)/visionops pipeline compile pipelines/training_pipeline.yaml

golden: $(STAMP) ## Regenerate the golden compiled pipeline used by the tests
	$(BIN)/visionops pipeline compile tests/golden/training_pipeline.yaml

demo: $(STAMP) ## The closed loop end to end on a laptop (serving, drift, alert, retrain, roll forward)
	$(BIN)/visionops demo loop --output runs/demo

demo-real: $(STAMP) ## The closed loop on real photos (../shared/data: faces-glasses -> faces-stream net_7876)
	$(BIN)/visionops demo loop --real --output runs/demo-real

bench: $(STAMP) ## Run every benchmark in benchmarks/
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

system-deps: ## Install Prometheus, Alertmanager, promtool and Chromium from Debian (root)
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus prometheus-alertmanager chromium >/dev/null

image: ## Build the image (docker, else buildah from a debootstrapped base); prints its size and build time
	scripts/image.sh build

wheelhouse: ## Only the wheelhouse the buildah image build installs from (outside the repo, see docs/kubernetes.md)
	scripts/image.sh wheelhouse

image-deps: ## Install buildah, debootstrap and runc from Debian (root), to build and test the image without Docker
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq buildah debootstrap runc >/dev/null

test-image: $(STAMP) image ## Build the image, then start its containers as the cluster would (tests marked image)
	$(BIN)/pytest -m image $(PYTEST_ARGS)

clean: ## Remove run outputs (keeps .venv)
	rm -rf runs .pytest_cache

.PHONY: help install run test test-fast lint format compile golden demo demo-real bench system-deps image \
	wheelhouse image-deps test-image clean
