# One venv at the repo root; every target goes through it. `make setup` is idempotent: pip runs only
# when requirements.txt changed, and the extension rebuilds only when csrc/ or setup.py changed.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
# This machine's pip config lists local indexes that do not exist; drop pip's warning per missing package.
QUIET_PIP := 2>&1 | { grep -v 'is ignored: it is neither' || true; }
VENV := .venv
PY := $(VENV)/bin/python
# the venv's site-packages, whatever python3 made it (read when a recipe needs it, after the venv exists)
SITE = $(shell $(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
CUDA_HOME ?= /usr/local/cuda-13.0
TORCH_CUDA_ARCH_LIST ?= 8.0;9.0
export TORCH_EXTENSIONS_DIR := $(CURDIR)/.torch_extensions
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
EXT_SRC := setup.py $(shell find csrc -type f 2>/dev/null)
DEMO_DIR ?= data/synthetic
DEMO_OUT ?= outputs/demo

.PHONY: setup test test-fast lint format demo bench clean

setup: $(VENV)/.ext-stamp

$(PY):
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip $(QUIET_PIP)

$(VENV)/.reqs-stamp: requirements.txt | $(PY)
	$(PY) -m pip install -q -r requirements.txt $(QUIET_PIP)
	touch $@

# CI compiles and links the CUDA kernels even without a GPU, so a broken .cu fails the build.
$(VENV)/.ext-stamp: $(VENV)/.reqs-stamp $(EXT_SRC)
	CUDA_HOME=$(CUDA_HOME) CPATH="$(SITE)/nvidia/cu13/include$${CPATH:+:$$CPATH}" \
	TORCH_CUDA_ARCH_LIST="$(TORCH_CUDA_ARCH_LIST)" MAX_JOBS=2 \
	$(PY) -m pip install -q --no-build-isolation --no-deps -e . $(QUIET_PIP)
	touch $@

test: setup
	$(PY) -m pytest

test-fast: setup
	$(PY) -m pytest -m "not slow"

lint: setup
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

demo: setup
	$(PY) -m clipbert.demo --data $(DEMO_DIR) --out $(DEMO_OUT)

bench: setup
	$(PY) benchmarks/bench_ops.py --device cpu
	$(PY) benchmarks/bench_data.py --device cpu

clean:
	rm -rf build *.egg-info clipbert/*.so .torch_extensions
