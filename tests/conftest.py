"""Shared test set-up: everything runs offline, on the CPU, deterministically, in its own caches.

Every cache a test could read or write (``CAPO_CACHE``: converted models, SFT warm-ups, reference
log-probs; ``HF_HOME``, ``HF_HUB_CACHE``, ``HF_DATASETS_CACHE``: Hugging Face's) points into one
temporary folder per test run, whatever the user's environment says: a test never sees what an
earlier run or the user left in ``~/.cache``, and leaves nothing there. The first process makes the
folder and names it in ``CAPO_TEST_CACHES``; pytest-xdist's workers (and the processes tests start)
inherit that and share it. ``make test`` sets ``CAPO_TEST_CACHES`` itself, to give the notebooks the
same folder; then it, not pytest, removes it.
"""

import os
import resource
import shutil
import tempfile
from pathlib import Path

from capo_tutorial.cpu_kernels import select_committed_kernels

# The CPU kernels the committed numbers were made with, chosen before any test module imports torch:
# on a CPU with AVX-512, PyTorch's default kernels would move the recomputed slice beyond its
# tolerances (capo_tutorial.cpu_kernels). Notebooks' kernels and other child processes inherit them.
select_committed_kernels()

# No test may reach a hub: the code paths are real, the files are local.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("CAPO_PROFILE", "smoke")
# The CPU, also where a GPU is present: the committed numbers the tests recompute were made on one, and
# a GPU's mixed precision would not reproduce them. CAPO_TEST_GPU=1 leaves the GPU visible, for the
# training tests (tests/test_training.py, tests/test_gpu_path.py) on a GPU machine.
if not os.environ.get("CAPO_TEST_GPU"):
    os.environ["CUDA_VISIBLE_DEVICES"] = ""

_MADE_HERE = not os.environ.get("CAPO_TEST_CACHES")
if _MADE_HERE:
    os.environ["CAPO_TEST_CACHES"] = tempfile.mkdtemp(prefix="capo-tests-")
CACHE_ROOT = Path(os.environ["CAPO_TEST_CACHES"])

# Set before any test module imports huggingface_hub or datasets, which read them on import.
CACHES = {
    "CAPO_CACHE": CACHE_ROOT / "capo",
    "HF_HOME": CACHE_ROOT / "huggingface",
    "HF_HUB_CACHE": CACHE_ROOT / "huggingface" / "hub",
    "HF_DATASETS_CACHE": CACHE_ROOT / "huggingface" / "datasets",
}
for variable, folder in CACHES.items():
    os.environ[variable] = str(folder)


# CPU seconds, beside the wall-clock durations: on a shared machine they say what a run costs.
if "PYTEST_XDIST_WORKER" not in os.environ:  # the run's first process; xdist's workers inherit it
    os.environ["CAPO_TEST_RUN_ID"] = str(os.getpid())
CPU_TIMES = CACHE_ROOT / f"cpu-seconds-{os.environ['CAPO_TEST_RUN_ID']}"


def _cpu_seconds(who: int) -> float:
    """User + system CPU seconds of this process (RUSAGE_SELF) or of the processes it waited for."""
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def pytest_sessionfinish(session) -> None:
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker:
        CPU_TIMES.mkdir(parents=True, exist_ok=True)
        total = _cpu_seconds(resource.RUSAGE_SELF) + _cpu_seconds(resource.RUSAGE_CHILDREN)
        (CPU_TIMES / worker).write_text(str(total))


def pytest_terminal_summary(terminalreporter) -> None:
    workers = sorted(CPU_TIMES.glob("*")) if CPU_TIMES.is_dir() else []
    # The workers' own counts, or, once they have been waited for, the same seconds in our children's.
    others = max(_cpu_seconds(resource.RUSAGE_CHILDREN), sum(float(path.read_text()) for path in workers))
    total = _cpu_seconds(resource.RUSAGE_SELF) + others
    terminalreporter.write_line(
        f"CPU time of this run: {total:.0f} s (tests, notebook kernels and the processes they started, "
        f"{max(len(workers), 1)} worker(s))"
    )


def pytest_unconfigure(config) -> None:
    """The process that made the folder removes it (an xdist worker has ``workerinput``)."""
    if _MADE_HERE and not hasattr(config, "workerinput"):
        shutil.rmtree(CACHE_ROOT, ignore_errors=True)


# One SFT warm-up (the smoke profile's, seed 0, noise 0.2) serves the committed-slice recomputes and the
# chapters that train. Their tests run first, on one worker (make test distributes by file), and put it
# in the run's CAPO_CACHE while the other worker runs the unit tests; the notebooks come last, when it
# is there to be reused, instead of each computing it at the same time.
SMOKE_WARM_UP = "smoke-warm-up"
# The notebooks that reuse it, longest first (their durations in a `make test` run): they come after
# the other notebooks, so that no worker waits for the warm-up, and the longest starts first, so that
# the two workers end close together (xdist hands each worker its next files before it needs them).
NOTEBOOKS_ON_THE_WARM_UP = (
    "ch4_training",
    "ch5_reproducing_reward_accuracy",
    "ch8_auditing",
)


def pytest_collection_modifyitems(config, items) -> None:
    """The warm-up group, the tests marked slow, the other tests, the notebooks that do not need the
    warm-up, then those that do (when nbmake collects them in the same run), longest first; otherwise
    in the order of collection."""

    def rank(item) -> tuple[int, int]:
        group = item.get_closest_marker("xdist_group")
        if group is not None and group.args == (SMOKE_WARM_UP,):
            return 0, 0
        if item.path.suffix == ".ipynb":
            stem = item.path.stem
            if stem in NOTEBOOKS_ON_THE_WARM_UP:
                return 4, NOTEBOOKS_ON_THE_WARM_UP.index(stem)
            return 3, 0
        return (1 if item.get_closest_marker("slow") else 2), 0

    items.sort(key=rank)
