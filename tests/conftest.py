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
import shutil
import tempfile
from pathlib import Path

# No test may reach a hub: the code paths are real, the files are local.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("CAPO_PROFILE", "smoke")

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


def pytest_unconfigure(config) -> None:
    """The process that made the folder removes it (an xdist worker has ``workerinput``)."""
    if _MADE_HERE and not hasattr(config, "workerinput"):
        shutil.rmtree(CACHE_ROOT, ignore_errors=True)


# One SFT warm-up (the smoke profile's, seed 0, noise 0.2) serves the committed-slice recompute and the
# chapters that train; the tests marked with this group run first, on one worker, and put it in the
# run's CAPO_CACHE while the other worker starts on the notebooks that train nothing.
SMOKE_WARM_UP = "smoke-warm-up"


def pytest_collection_modifyitems(config, items) -> None:
    """Longest first, so that two xdist workers finish together: the warm-up group, the notebooks
    (when nbmake collects them in the same run), the tests marked slow, then the rest (order kept)."""

    def rank(item) -> int:
        group = item.get_closest_marker("xdist_group")
        if group is not None and group.args == (SMOKE_WARM_UP,):
            return 0
        if item.path.suffix == ".ipynb":
            return 1
        return 2 if item.get_closest_marker("slow") else 3

    items.sort(key=rank)
