# The two commands of this project (see README.md): `make book` and `make test`.
# Both create or reuse .venv, install torch (pinned, CPU wheel) first, then the package with its extras.

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.capo-installed
# Tests never reach a hub; notebooks run the smoke profile unless told otherwise.
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
export CAPO_PROFILE ?= smoke

.PHONY: venv test test-fast test-trl-matrix book lint clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev,book]"
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check capo_tutorial tests benchmarks experiments

# The README's test command: unit tests, then every notebook through nbmake (two at a time).
# Two workers at a time on 2 cores: one BLAS thread each, or they fight over the cores.
test: venv lint
	OMP_NUM_THREADS=1 $(PY) -m pytest tests -n 2 --dist loadgroup
	OMP_NUM_THREADS=1 $(PY) -m pytest --nbmake -n 2 book
	$(MAKE) test-trl-matrix

# TRL compatibility matrix (.ci/trl_matrix.sh): trl 0.29.1 (the oldest CAPOTrainer supports) and trl 0.24.0
# (cDPO parity; transformers < 5), each in its own .venv-trl-VERSION; the newest TRL runs in .venv above.
test-trl-matrix:
	PYTHON=$(PYTHON) TORCH_SPEC="$(TORCH_SPEC)" .ci/trl_matrix.sh

test-fast: venv
	$(PY) -m pytest tests -n 2 -m "not slow"

# The main job: build the book to _build/html, executing every notebook (warnings are errors).
PKG_SOURCES := $(shell find capo_tutorial -name '*.py') pyproject.toml
# Jupyter Book's cache only notices changed notebooks: drop it when the package changes.
_build/.package-stamp: $(PKG_SOURCES)
	rm -rf _build/.jupyter_cache
	mkdir -p _build && touch $@

book: venv _build/.package-stamp
	OMP_NUM_THREADS=1 $(VENV)/bin/jupyter-book build . --warningiserror --keep-going --path-output .

clean:
	rm -rf _build .pytest_cache .ruff_cache .venv-trl-*
