"""The test run's own caches (tests/conftest.py): nothing reads or writes the user's ~/.cache."""

import os
from pathlib import Path

import datasets
import huggingface_hub

from capo_tutorial.models import cache_root

RUN_CACHES = Path(os.environ["CAPO_TEST_CACHES"])


def test_every_cache_is_inside_the_runs_temporary_folder():
    assert not RUN_CACHES.is_relative_to(Path.home() / ".cache")
    assert cache_root().is_relative_to(RUN_CACHES)
    assert Path(huggingface_hub.constants.HF_HUB_CACHE).is_relative_to(RUN_CACHES)
    assert Path(datasets.config.HF_DATASETS_CACHE).is_relative_to(RUN_CACHES)
