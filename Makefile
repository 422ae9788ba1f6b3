# `make train`: set up .venv for training (once) and run the default CPU job.
# `make test`: add the test tools to it (once) and run the tests.
# Both are idempotent: the second run installs nothing and prints only what the job prints.
SHELL  := /bin/bash
VENV   ?= .venv
PY     := $(abspath $(VENV))/bin/python
STAMP  := $(VENV)/.longweave-installed
TRAIN_STAMP := $(VENV)/.longweave-train-installed
CONFIG ?= configs/tiny.toml
ARGS   ?=
PYTEST_ARGS ?=
TORCH  := torch==2.13.0
PIPQ   := 2>&1 | { grep -v "is ignored: it is neither" || true; }

.PHONY: setup train test lint clean

# what training needs: torch (CPU build first) and this package with its runtime dependencies
$(TRAIN_STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	@echo "setting up $(VENV) for training ($(TORCH) CPU first, then -e .) ..."
	@set -o pipefail; $(PY) -m pip install -q $(TORCH) $(PIPQ)
	@set -o pipefail; $(PY) -m pip install -q -e . $(PIPQ)
	@cd / && $(PY) -c "import torch, numpy, webdataset, tensorboard, models, train, data, kernels, parallel, launch" \
		|| (echo "set-up failed: see pip output above"; exit 1)
	@touch $(TRAIN_STAMP)

# the tests and tools on top: -e .[dev] (pytest, ruff, triton, DeepSpeed, transformers, ...)
$(STAMP): $(TRAIN_STAMP)
	@echo "setting up $(VENV) for the tests (-e .[dev]) ..."
	@set -o pipefail; $(PY) -m pip install -q -e '.[dev]' $(PIPQ)
	@cd / && $(PY) -c "import pytest, triton, models, train, data, kernels, parallel, launch" \
		|| (echo "set-up failed: see pip output above"; exit 1)
	@touch $(STAMP)

setup: $(STAMP)

train: $(TRAIN_STAMP)
	@$(PY) -m train --config $(CONFIG) $(ARGS)

test: $(STAMP)
	@$(PY) -m pytest -q $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; rc=0; fi; exit $$rc

lint: $(STAMP)
	@$(PY) -m ruff check .

clean:
	rm -rf runs
