# `make train`: set up .venv (once) and run the default CPU job.  `make test`: set up and run the tests.
# Both are idempotent: the second run installs nothing and prints only what the job prints.
SHELL  := /bin/bash
VENV   ?= .venv
PY     := $(abspath $(VENV))/bin/python
STAMP  := $(VENV)/.longweave-installed
CONFIG ?= configs/tiny.toml
ARGS   ?=
PYTEST_ARGS ?=

.PHONY: setup train test lint clean

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	@echo "setting up $(VENV) (torch 2.13.0 CPU first, then -e .[dev]) ..."
	@set -o pipefail; $(PY) -m pip install -q torch==2.13.0 2>&1 | { grep -v "is ignored: it is neither" || true; }
	@set -o pipefail; $(PY) -m pip install -q -e '.[dev]' 2>&1 | { grep -v "is ignored: it is neither" || true; }
	@cd / && $(PY) -c "import torch, numpy, webdataset, tensorboard, pytest, triton, models, train, data, kernels, parallel, launch" \
		|| (echo "set-up failed: see pip output above"; exit 1)
	@touch $(STAMP)

setup: $(STAMP)

train: $(STAMP)
	@$(PY) -m train --config $(CONFIG) $(ARGS)

test: $(STAMP)
	@$(PY) -m pytest -q $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; rc=0; fi; exit $$rc

lint: $(STAMP)
	@$(PY) -m ruff check .

clean:
	rm -rf runs
