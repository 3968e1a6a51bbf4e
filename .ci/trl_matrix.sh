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
# Usage: .ci/trl_matrix.sh [VERSION ...]      (default: every version below)
# Each environment is .venv-trl-VERSION, created once and reused while pyproject.toml and this script
# are unchanged. torch is installed first and pinned (a CPU wheel on local disk; unpinned, pip would
# fetch a multi-GB CUDA build), then the package with the pinned trl and a transformers that it supports.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

# VERSION -> the extra requirements that pin a transformers it works with.
declare -A EXTRA_REQUIREMENTS=(
    ["0.29.1"]="transformers>=5,<6"
    ["0.24.0"]="transformers>=4.56.1,<5"
)
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
    "$venv/bin/python" -m pip install --quiet "$TORCH_SPEC"
    # shellcheck disable=SC2086
    "$venv/bin/python" -m pip install --quiet -e . "trl==$version" ${EXTRA_REQUIREMENTS[$version]} "pytest>=8.0" "pytest-xdist>=3.5"
    touch "$stamp"
    echo "== $venv created in $((SECONDS - start)) s"
}

status=0
for version in "${versions[@]}"; do
    venv=".venv-trl-$version"
    create_env "$version" "$venv"
    start=$SECONDS
    echo "== TRL tests with trl==$version"
    "$venv/bin/python" -m pytest tests/test_trl_parity.py tests/test_trl_integration.py -p no:cacheprovider || status=$?
    echo "== trl==$version tests took $((SECONDS - start)) s"
done
exit $status
