#!/usr/bin/env bash
# The oldest releases pyproject.toml allows of the libraries Colab may keep at their own versions
# (transformers, datasets, peft, accelerate): one virtual environment, .venv-oldest, with exactly those
# pins, running every unit test except the TRL files (TRL has its own matrix, .ci/trl_matrix.sh) and
# the slow ones. A failure here means a lower bound in pyproject.toml is too low: raise it.
#
# Usage: .ci/oldest_deps.sh        (make test-oldest)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
VENV=.venv-oldest
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=1

# The lower bounds of pyproject.toml, read from it so that the two never disagree.
pins=$("$PYTHON" - <<'PY'
import re, tomllib
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
wanted = {"transformers", "datasets", "peft", "accelerate"}
for dep in deps:
    match = re.fullmatch(r"([A-Za-z0-9_.-]+)>=([0-9][^,;\s]*)", dep.strip())
    if match and match.group(1) in wanted:
        print(f"{match.group(1)}=={match.group(2)}")
PY
)
echo "oldest allowed: $(echo $pins | tr '\n' ' ')"
stamp=$VENV/.capo-oldest-$(cat pyproject.toml "$0" | sha256sum | cut -c1-12)
if [ ! -f "$stamp" ]; then
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet --no-compile "$TORCH_SPEC"
    # The package with its other dependencies at their newest, then the four pinned to their floor.
    "$VENV/bin/python" -m pip install --quiet --no-compile -e . pytest pytest-xdist pyyaml gguf $pins
    touch "$stamp"
fi
"$VENV/bin/python" -m pip list 2>/dev/null | grep -i -E "^(transformers|datasets|peft|accelerate) "
"$VENV/bin/python" -m pytest tests -n 2 -m "not slow" -p no:cacheprovider \
    --ignore=tests/test_trl_parity.py --ignore=tests/test_trl_integration.py --ignore=tests/test_book.py
