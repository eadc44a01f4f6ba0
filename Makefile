# Every target installs into .venv first if needed (from pyproject.toml), so on a fresh machine
# `make train` and `make test` are the only two commands a new user needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
ARGS ?=

.DEFAULT_GOAL := help
EXP ?= degradation
DIR ?=
CKPT ?=
INPUT ?=
STUDY_DIR ?= logs/study
DATA ?=
EPOCHS ?=
WANDB ?=
.PHONY: help install train sweep study claims report eval score export bench test test-full test-gpu mutate lint format docs docs-serve clean-logs

help: ## List every target
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## Create .venv and install the project with its dev extra

train: $(STAMP) ## Train RVAE on the offline digits data (add ARGS="model=ae ..." to override)
	$(PY) -m src.train data=digits trainer.max_epochs=30 $(ARGS)

sweep: $(STAMP) ## Run a sweep: EXP=degradation|rvae_vs_vae|rvae_vs_vae_depth|grad_explosion|bottleneck|rapp|rapp_unimodal ARGS="data=mnist_5k ..."
	$(PY) -m src.train experiment=$(EXP) $(ARGS)

study: $(STAMP) ## All five study sweeps, each with its report, into STUDY_DIR/<experiment>[_DATA], then claims[_DATA].md (offline: DATA=mnist_5k or digits, EPOCHS=30; WANDB=1: reports and claims to W&B too)
	@status=0; for e in degradation rvae_vs_vae rvae_vs_vae_depth grad_explosion bottleneck; do \
	  dir=$(STUDY_DIR)/$${e}$(if $(DATA),_$(DATA)); \
	  $(PY) -m src.train experiment=$$e $(if $(DATA),data=$(DATA)) $(if $(EPOCHS),trainer.max_epochs=$(EPOCHS)) \
	    hydra.sweep.dir=$$dir $(ARGS) || status=1; \
	  $(PY) -m src.report $$dir $(if $(WANDB),--wandb) || status=1; \
	done; \
	$(PY) -m src.claims $(STUDY_DIR) $(if $(DATA),--data $(DATA)) $(if $(WANDB),--wandb) || status=1; exit $$status

claims: $(STAMP) ## The study's claims on one page from make study's sweeps (STUDY_DIR=logs/study DATA=digits WANDB=1)
	$(PY) -m src.claims $(STUDY_DIR) $(if $(DATA),--data $(DATA)) $(if $(WANDB),--wandb)

report: $(STAMP) ## Tables and plots of a sweep: DIR=logs/<task>/multiruns/<time> (ARGS="--wandb", ARGS="--against <dir>")
	@test -n "$(DIR)" || { echo "usage: make report DIR=logs/<task>/multiruns/<time>"; exit 2; }
	$(PY) -m src.report $(DIR) $(ARGS)

eval: $(STAMP) ## Score a trained run again: CKPT=logs/train/runs/<time> (or a .ckpt; ARGS="stage=val ...")
	@test -n "$(CKPT)" || { echo "usage: make eval CKPT=logs/train/runs/<time> [ARGS=\"stage=val\"]"; exit 2; }
	$(PY) -m src.eval "ckpt_path='$(CKPT)'" $(ARGS)

score: $(STAMP) ## Score new samples: CKPT=<run or .ckpt> INPUT=<.npy/.npz/.csv/.parquet/folder> (ARGS="threshold=f1_max")
	@test -n "$(CKPT)" -a -n "$(INPUT)" || { echo "usage: make score CKPT=<run> INPUT=<file> [ARGS=\"threshold=f1_max\"]"; exit 2; }
	$(PY) -m src.score "ckpt_path='$(CKPT)'" "input='$(INPUT)'" $(ARGS)

export: $(STAMP) ## Export a detector: CKPT=<run or .ckpt> (ARGS="format=torchscript"; default ONNX)
	@test -n "$(CKPT)" || { echo "usage: make export CKPT=<run> [ARGS=\"format=torchscript\"]"; exit 2; }
	$(PY) -m src.export "ckpt_path='$(CKPT)'" $(ARGS)

bench: $(STAMP) ## Throughput vs a hand-written loop and a naive pipeline (ARGS="--n-train 50000 ...")
	$(PY) -m benchmarks.train_speed $(ARGS)

test: $(STAMP) ## Run the default test suite (offline, CPU, not slow)
	$(PY) -m pytest -m "not slow and not gpu" $(ARGS)

test-full: $(STAMP) ## Run every test but the GPU ones, slow ones included
	$(PY) -m pytest -m "not gpu" $(ARGS)

test-gpu: $(STAMP) ## Run the tests that need a CUDA device
	$(PY) -m pytest -m gpu $(ARGS)

mutate: $(STAMP) ## Mutation testing of the models, losses, metric and splits (mutmut; not part of make test)
	$(VENV)/bin/mutmut run || true
	$(VENV)/bin/mutmut results

lint: $(STAMP) ## ruff check and format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP) ## Format and fix lint with ruff
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

docs: $(STAMP) ## Build the documentation site into site/ (fails on a broken link or a page missing from the nav)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

docs-serve: $(STAMP) ## Serve the documentation site at http://127.0.0.1:8000, rebuilt on every change
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs serve

clean-logs: ## Delete logs/ (every run's outputs)
	rm -rf logs
