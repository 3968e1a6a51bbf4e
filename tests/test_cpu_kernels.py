"""The CPU kernels the committed numbers were made with: selected for the tests, overridable, recorded."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from capo_tutorial.cpu_kernels import COMMITTED_KERNELS, kernels_in_use, select_committed_kernels

CPUINFO = Path("/proc/cpuinfo")
HAS_AVX2 = CPUINFO.is_file() and " avx2" in CPUINFO.read_text()
# conftest selects the committed kernels unless the user set a variable to something else
USERS_OWN = {k: os.environ[k] for k, v in COMMITTED_KERNELS.items() if os.environ.get(k, v) != v}


def _fresh_python(code: str, **variables: str) -> str:
    """Run ``code`` in a new interpreter without the kernel variables this test run set (plus
    ``variables``); its standard output."""
    env = {k: v for k, v in os.environ.items() if k not in COMMITTED_KERNELS} | variables
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout


@pytest.mark.skipif(not HAS_AVX2, reason="the committed kernels are x86-64's AVX2 ones")
@pytest.mark.skipif(bool(USERS_OWN), reason=f"the run chose its own kernels: {USERS_OWN}")
def test_the_tests_run_on_the_committed_kernels():
    assert kernels_in_use() == {"cpu_capability": "AVX2", **COMMITTED_KERNELS}


@pytest.mark.skipif(not HAS_AVX2, reason="the committed kernels are x86-64's AVX2 ones")
def test_selecting_before_torch_loads_picks_them_and_a_users_choice_wins():
    code = (
        "from capo_tutorial.cpu_kernels import select_committed_kernels\n"
        "print(select_committed_kernels()['ATEN_CPU_CAPABILITY'])\n"
        "import torch\n"
        "print(torch.backends.cpu.get_cpu_capability())\n"
    )
    assert _fresh_python(code).split() == ["avx2", "AVX2"]
    assert _fresh_python(code, ATEN_CPU_CAPABILITY="default").split() == ["default", "DEFAULT"]


def test_selecting_after_torch_loaded_warns(monkeypatch):
    import torch  # noqa: F401  (loaded, as in any test process)

    monkeypatch.delenv("MKL_CBWR")
    with pytest.warns(RuntimeWarning, match="MKL_CBWR may come too late"):
        chosen = select_committed_kernels()
    assert chosen["MKL_CBWR"] == COMMITTED_KERNELS["MKL_CBWR"], "the processes it starts still get it"
