"""Shared test set-up: everything runs offline, on the CPU, deterministically."""

import os

# No test may reach a hub: the code paths are real, the files are local.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("CAPO_PROFILE", "smoke")
