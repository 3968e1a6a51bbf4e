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
# pip installs with --no-compile and Python writes each module's bytecode when it is first imported
# (into .venv): a test run imports a small part of what pip would compile (installing torch takes 28 s
# of CPU, 8 s without compiling), and a shell that sets PYTHONDONTWRITEBYTECODE would make every
# process compile its imports again.
unexport PYTHONDONTWRITEBYTECODE

.PHONY: venv test test-fast test-trl-matrix test-oldest book lint clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --no-compile "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet --no-compile -e ".[dev,book]"
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check capo_tutorial tests benchmarks experiments

# Tests never write the user's caches: every recipe below that runs tests makes one temporary folder,
# CAPO_TEST_CACHES, removed when it ends; tests/conftest.py points CAPO_CACHE, HF_HOME, HF_HUB_CACHE
# and HF_DATASETS_CACHE into it (the notebooks' kernels inherit them), so the unit tests and the
# notebooks share one SFT warm-up per run and nothing depends on what an earlier run left behind.
TEST_CACHES = export CAPO_TEST_CACHES="$$(mktemp -d -t capo-tests-XXXXXX)" && trap 'rm -rf "$$CAPO_TEST_CACHES"' EXIT
# Two pytest-xdist workers on 2 cores, one BLAS thread each (or they fight over the cores);
# --dist loadfile keeps a file on one worker: its module fixtures are built once, and the two
# committed-slice recomputes share one SFT warm-up (xdist_group marks are not honoured with pytest 9).
# --no-loadscope-reorder hands out the files in the order tests/conftest.py sorts them (the warm-up
# first, the notebooks that reuse it last), not by their number of tests.
PYTEST = OMP_NUM_THREADS=1 $(PY) -m pytest -n 2 --dist loadfile --no-loadscope-reorder

# The README's test command: ruff, then the unit tests and every notebook (nbmake) in one pytest run,
# and beside it the TRL matrix (its environments, built the first time only, then its tests), whose log
# prints at the end. The two share the cores from the start, the matrix at a lower priority (nice): the
# smoke warm-up that the notebooks wait for keeps a core, and the matrix fills the cores' idle time. The
# matrix runs in its own process group (setsid, where there is one), so that Ctrl-C or a kill stops it
# too.
# A notebook cell may take an hour before nbmake calls it hung: a loaded machine is not a failure.
test: venv lint
	@$(TEST_CACHES); \
	PYTHON=$(PYTHON) TORCH_SPEC="$(TORCH_SPEC)" $$(command -v setsid) nice -n 10 .ci/trl_matrix.sh > "$$CAPO_TEST_CACHES/trl-matrix.log" 2>&1 & \
	matrix=$$!; \
	trap 'kill -- -$$matrix 2>/dev/null || kill $$matrix 2>/dev/null; exit 130' INT TERM; \
	$(PYTEST) tests book --nbmake --nbmake-timeout=3600; status=$$?; \
	wait $$matrix; matrix_status=$$?; \
	echo "== the TRL matrix (.ci/trl_matrix.sh)"; cat "$$CAPO_TEST_CACHES/trl-matrix.log"; \
	if [ $$status -ne 0 ]; then exit $$status; fi; \
	exit $$matrix_status

# TRL compatibility matrix (.ci/trl_matrix.sh): trl 0.29.1 (the oldest CAPOTrainer supports) and trl 0.24.0
# (cDPO parity; transformers < 5), each in its own .venv-trl-VERSION; the newest TRL runs in .venv above.
test-trl-matrix:
	@$(TEST_CACHES); PYTHON=$(PYTHON) TORCH_SPEC="$(TORCH_SPEC)" .ci/trl_matrix.sh

# The edit loop: unit tests not marked slow (no notebooks, no end-to-end runs), a minute or two.
# The oldest transformers, datasets, peft and accelerate that pyproject.toml allows (what Colab may keep),
# in .venv-oldest: every unit test but TRL's and the slow ones (.ci/oldest_deps.sh). Not part of `make test`.
test-oldest:
	PYTHON=$(PYTHON) TORCH_SPEC="$(TORCH_SPEC)" .ci/oldest_deps.sh

test-fast: venv
	@$(TEST_CACHES); $(PYTEST) tests -m "not slow"

# The main job: build the book to _build/html, executing every notebook (warnings are errors).
# Jupyter Book re-executes only the notebooks that Sphinx finds changed, yet every chapter runs the
# package and several read the committed results: when either changes, drop the notebook cache and
# Sphinx's record of what it has read (.doctrees), so that every chapter executes again. A grid being
# rerun into a `-new` folder (appended to while it runs) is not read by the book and does not count.
BOOK_INPUTS := $(shell find capo_tutorial -name '*.py') pyproject.toml \
	$(shell find experiments/results \( -name results.csv -o -name manifest.json \) -not -path '*-new/*')
_build/.inputs-stamp: $(BOOK_INPUTS)
	rm -rf _build/.jupyter_cache _build/.doctrees
	mkdir -p _build && touch $@

book: venv _build/.inputs-stamp
	OMP_NUM_THREADS=1 $(VENV)/bin/jupyter-book build . --warningiserror --keep-going --path-output .

clean:
	rm -rf _build .pytest_cache .ruff_cache .venv-trl-* .venv-oldest
