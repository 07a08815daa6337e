# Two entry points: `make demo` (main job on the built-in generated data) and
# `make test` (lint, types, tests). Both create .venv and install into it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RECIPE ?= recipes/quickstart.yaml

.PHONY: demo test lint typecheck pytest clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# torch 2.13.0 is installed first and on its own: the CPU wheel lies on disk here,
# and a range resolved by pip alone could pull a multi-GB CUDA build instead.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

RUN ?= runs/quickstart
# CPU threads for torch, e.g. `make demo THREADS=1` on shared or busy cores
# (empty: torch's default, all cores).
THREADS ?=
THREADS_ARG := $(if $(THREADS),--threads $(THREADS),)

# The main job: prune (resuming an interrupted run), then export the pruned
# split-4 partitions to ONNX with parity checks.
demo: $(STAMP)
	$(BIN)/patrol-compress prune $(RECIPE) --out $(RUN) $(if $(wildcard $(RUN)/stages.json),--resume,) $(THREADS_ARG)
	$(BIN)/patrol-compress export $(RUN) --split 4 --target onnx --force $(THREADS_ARG)

lint: $(STAMP)
	$(BIN)/ruff check patrol_compress exporters tests benchmarks
	$(BIN)/ruff format --check patrol_compress exporters tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy patrol_compress exporters

# The whole suite in one process (the INT8 exports included: see issue 24 and
# docs/measurements.md, "OpenVINO and the signal stack").
pytest: $(STAMP)
	$(BIN)/python -m pytest -q

test: lint typecheck pytest

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
