#!/usr/bin/env bash
# The TRL compatibility matrix: one virtual environment per pinned TRL version, each running only the
# TRL test files (tests/test_trl_parity.py, tests/test_trl_integration.py).
#
# The main .venv holds the newest supported TRL (what `pip install "capo-tutorial[trl]"` resolves to);
# this script covers the versions that cannot live beside it:
#   trl==0.29.1  the oldest version CAPOTrainer supports (TRL rewrote DPOTrainer in 0.29: the loss is
#                inline in `_compute_loss`, with logits and selective_log_softmax instead of 1.x's fused head)
#   trl==0.24.0  the last DPOTrainer with a `dpo_loss` method and label smoothing in its "sigmoid" loss
#                (cDPO); needs transformers < 5. CAPOTrainer's tests skip there, with the reason.
#
# Usage: .ci/trl_matrix.sh [--create-only] [VERSION ...]      (default: every version below)
# Each environment is .venv-trl-VERSION, created once and reused while pyproject.toml and this script
# are unchanged (pip installs with --no-compile: the tests import a small part of what it would compile).
# torch is installed first and pinned (a CPU wheel on local disk; unpinned, pip would fetch
# a multi-GB CUDA build), then the package with the pinned trl and a transformers that it supports.
# --create-only builds the environments and stops. `make test` runs this script beside its own pytest run.
# The versions' tests run side by side too, one process (one BLAS thread) each: on 2 cores that is
# as fast as pytest-xdist inside each, without starting its workers; their logs print one after the other.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# The environments are installed without bytecode (--no-compile): the first import writes it, once.
unset PYTHONDONTWRITEBYTECODE

# VERSION -> the extra requirements that pin a transformers it works with.
declare -A EXTRA_REQUIREMENTS=(
    ["0.29.1"]="transformers>=5,<6"
    ["0.24.0"]="transformers>=4.56.1,<5"
)
create_only=0
if [ "${1:-}" = "--create-only" ]; then
    create_only=1
    shift
fi
versions=("$@")
if [ ${#versions[@]} -eq 0 ]; then
    versions=("0.29.1" "0.24.0")
fi

create_env() {
    local version=$1 venv=$2
    local stamp="$venv/.capo-installed"
    if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ] && [ "$stamp" -nt "$0" ]; then
        echo "== reusing $venv"
        return
    fi
    if [ -z "${EXTRA_REQUIREMENTS[$version]+set}" ]; then
        echo "unknown TRL version $version: add it to EXTRA_REQUIREMENTS in $0" >&2
        exit 2
    fi
    local start=$SECONDS
    echo "== creating $venv (trl==$version, ${EXTRA_REQUIREMENTS[$version]})"
    rm -rf "$venv"
    "$PYTHON" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --upgrade pip
    "$venv/bin/python" -m pip install --quiet --no-compile "$TORCH_SPEC"
    # shellcheck disable=SC2086
    "$venv/bin/python" -m pip install --quiet --no-compile -e . "trl==$version" ${EXTRA_REQUIREMENTS[$version]} "pytest>=8.0" "pytest-xdist>=3.5"
    touch "$stamp"
    echo "== $venv created in $((SECONDS - start)) s"
}

run_tests() {
    local version=$1 start=$SECONDS
    echo "== TRL tests with trl==$version"
    OMP_NUM_THREADS=1 ".venv-trl-$version/bin/python" -m pytest tests/test_trl_parity.py \
        tests/test_trl_integration.py -p no:cacheprovider || return 1
    echo "== trl==$version tests took $((SECONDS - start)) s"
}

for version in "${versions[@]}"; do  # one at a time: two editable installs would share one egg-info
    create_env "$version" ".venv-trl-$version"
done
if [ $create_only -eq 1 ]; then
    exit 0
fi

# Every version's tests at once, each into its own log; the logs print in order once all have ended.
logs=$(mktemp -d -t capo-trl-matrix-XXXXXX)
trap 'rm -rf "$logs"' EXIT
pids=()
for version in "${versions[@]}"; do
    run_tests "$version" > "$logs/$version" 2>&1 &
    pids+=($!)
done
status=0
for i in "${!versions[@]}"; do
    wait "${pids[$i]}" || status=1
    cat "$logs/${versions[$i]}"
done
exit $status
