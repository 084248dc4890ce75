# One venv at the repo root; every target goes through it. `make setup` is idempotent: pip runs only
# when requirements.txt changed, and the extension rebuilds only when csrc/, setup.py, the installed torch or
# the build settings (.venv/.build-env: CLIPBERT_CUDA, CUDA_HOME, TORCH_CUDA_ARCH_LIST...) changed.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
# This machine's pip config lists local indexes that do not exist; drop pip's warning per missing package.
QUIET_PIP := 2>&1 | { grep -v 'is ignored: it is neither' || true; }
PYTHON ?= python3
# keep in step with python_requires in setup.py (tests/test_build.py checks it); datetime.UTC needs 3.11
PY_MIN := 3.11
VENV := .venv
PY := $(VENV)/bin/python
# the venv's site-packages, whatever python3 made it (read when a recipe needs it, after the venv exists)
SITE = $(shell $(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' 2>/dev/null)
# The toolkit that matches the pinned torch (a CUDA 13 build), where this machine has it; otherwise empty, and
# torch searches CUDA_PATH, nvcc on PATH and /usr/local/cuda itself.
CUDA_HOME ?= $(wildcard /usr/local/cuda-13.0)
TORCH_CUDA_ARCH_LIST ?= 8.0;9.0+PTX
CLIPBERT_CUDA ?= auto
CLIPBERT_CPU_SIMD ?= auto
export TORCH_EXTENSIONS_DIR := $(CURDIR)/.torch_extensions
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
EXT_SRC := setup.py $(shell find csrc -type f 2>/dev/null)
BUILD_ENV := $(VENV)/.build-env
DEMO_DIR ?= data/synthetic
DEMO_OUT ?= outputs/demo
# A value as one shell word, whatever it holds: `make demo DEMO_DIR="$HOME/My Research/data"` passed
# ".../My" and "Research/data" as two arguments, and an apostrophe ("John's data") ends a plain '...' quote.
quote = '$(subst ','\'',$(1))'

.PHONY: setup test test-fast lint format demo bench clean FORCE

setup: $(VENV)/.ext-stamp

# Exits naming the Python found and the one needed (single-quoted in the recipes: no ' in here).
CHECK_PY = import sys; found = sys.version.split()[0]; need = tuple(map(int, "$(PY_MIN)".split("."))); \
  sys.version_info >= need or sys.exit(f"make: {sys.executable} is Python {found}, clipbert needs Python \
  >= $(PY_MIN): run make PYTHON=python$(PY_MIN) (or newer)")

# The stamp is written last, so a venv that python3 or pip left half made is removed and made again. A venv
# without the stamp (made by hand or by an older Makefile) is kept when its Python is new enough and pip runs.
$(VENV)/.venv-stamp:
	@$(PYTHON) -c '$(CHECK_PY)'
	if $(PY) -c '$(CHECK_PY)' 2>/dev/null && $(PY) -m pip --version >/dev/null 2>&1; then touch $@; else \
	  rm -rf $(VENV); { $(PYTHON) -m venv $(VENV) && $(PY) -m pip install -q --upgrade pip $(QUIET_PIP) \
	  && touch $@; } || { rm -rf $(VENV); exit 1; }; fi

$(VENV)/.reqs-stamp: requirements.txt | $(VENV)/.venv-stamp
	$(PY) -m pip install -q -r requirements.txt $(QUIET_PIP)
	touch $@

# What the compiled kernels depend on besides their sources. Rewritten only when it changes, so its mtime
# triggers a rebuild exactly then; the installed torch stands in for requirements.txt, whose other pins do
# not touch the build (a change of them alone would otherwise recompile the CUDA kernels for minutes). `+`
# runs it under `make -n` too, so that a dry run shows a rebuild only where one is due.
$(BUILD_ENV): FORCE | $(VENV)/.reqs-stamp
	+@[ -x $(PY) ] || exit 0; \
	  new="$$(printf '%s\n' 'CLIPBERT_CUDA=$(CLIPBERT_CUDA)' 'CLIPBERT_CPU_SIMD=$(CLIPBERT_CPU_SIMD)' \
	  'CUDA_HOME=$(CUDA_HOME)' 'TORCH_CUDA_ARCH_LIST=$(TORCH_CUDA_ARCH_LIST)' \
	  "torch=$$($(PY) -c 'import importlib.metadata as m; print(m.version("torch"))')")" \
	  && { [ -f $@ ] && [ "$$(cat $@)" = "$$new" ] || { echo "$$new" > $@ && echo "build settings:" $$new; }; }

# The build's environment; CUDA_HOME only where set, so that torch's own search runs otherwise.
BUILD_VARS = $(if $(CUDA_HOME),CUDA_HOME=$(call quote,$(CUDA_HOME))) \
  CPATH="$(SITE)/nvidia/cu13/include$${CPATH:+:$$CPATH}" \
  CLIPBERT_CUDA=$(CLIPBERT_CUDA) CLIPBERT_CPU_SIMD=$(CLIPBERT_CPU_SIMD) \
  TORCH_CUDA_ARCH_LIST="$(TORCH_CUDA_ARCH_LIST)" MAX_JOBS=2

# CI compiles and links the CUDA kernels even without a GPU, so a broken .cu fails the build. `pip -q` hides
# setup.py's output, so `setup.py --name` says first whether the CUDA kernels are built and why (and fails
# early for CLIPBERT_CUDA=1 where they cannot be). pip builds every extension afresh in a temporary folder;
# the old CUDA module goes first, so a build that now skips CUDA leaves none built for another torch.
$(VENV)/.ext-stamp: $(BUILD_ENV) $(EXT_SRC) | $(VENV)/.reqs-stamp
	@$(BUILD_VARS) $(PY) setup.py --name 2>&1 \
	  | { grep -v -e '^clipbert$$' -e 'No CUDA runtime is found' || true; }
	rm -f clipbert/_cuda*.so
	$(BUILD_VARS) $(PY) -m pip install -q --no-build-isolation --no-deps -e . $(QUIET_PIP)
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
	$(PY) -m clipbert.demo --data $(call quote,$(DEMO_DIR)) --out $(call quote,$(DEMO_OUT))

bench: setup
	$(PY) benchmarks/bench_ops.py --device cpu
	$(PY) benchmarks/bench_data.py --device cpu

clean:
	rm -rf build *.egg-info clipbert/*.so .torch_extensions $(VENV)/.ext-stamp $(BUILD_ENV)
