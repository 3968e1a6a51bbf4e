"""capo_tutorial: Confidence-Aware Preference Optimization (CAPO) for multilingual preferences.

Modules, in the order data flows through them:

- ``data``: preference records and validation, loaders, tokenization, batching (a package)
- ``testbed``: an offline multilingual preference set with ground-truth labels (a package:
  languages, tasks, generate, card)
- ``models``: the tiny smoke model, pretrained loading, LoRA; ``gguf``: GGUF files converted once
- ``components``: a run's data, model and batching, built from its ``RunConfig``
- ``warmup``: the SFT warm-up's step and the cache of its result
- ``reference``: the reference model (frozen copy, disabled adapter, or precomputed log-probs)
- ``logprobs``: summed completion log-probs from one forward pass
- ``losses``: DPO, CAPO and baselines as pure functions of log-prob tensors, and their registry
- ``training``: the training loop (Accelerate), divergence guards, history; ``checkpoint``: resume
- ``evaluation``: implicit rewards of every evaluation pair; a finished run's evaluation
- ``metrics``: reward accuracy, margins, per-language tables, calibration
- ``experiments`` / ``analysis``: grids of runs and their tidy results, and reading them;
  per-language token statistics of a data set
- ``cpu_kernels``: the CPU kernels the committed numbers were made with, selected for a rerun
- ``plots``: the figures the book shows
- ``integrations.trl``: ``CAPOTrainer``, any loss of the package inside TRL's DPOTrainer

What the README and the book use is importable from here (``from capo_tutorial import train``);
each name is imported on first use, so ``import capo_tutorial`` stays fast (no torch until needed).
"""

from __future__ import annotations

import importlib
from typing import Any

from capo_tutorial._version import __version__

# public name -> the module that defines it
_EXPORTS: dict[str, str] = {
    **dict.fromkeys(
        [
            "CAPO_DEFAULTS",
            "LOSSES",
            "ConfidenceSignals",
            "LossSpec",
            "PreferenceLossOutput",
            "capo_loss",
            "capo_weights",
            "dpo_loss",
            "pair_confidence",
            "preference_loss",
            "register_loss",
        ],
        "losses",
    ),
    **dict.fromkeys(["PROFILES", "RunConfig", "profile_config", "select_profile"], "config"),
    **dict.fromkeys(["PreferenceCollator", "load_preferences", "tokenize_preferences"], "data"),
    "make_testbed": "testbed",
    "concatenated_logps": "logprobs",
    **dict.fromkeys(["TrainResult", "train"], "training"),
    "score_pairs": "evaluation",
    **dict.fromkeys(["per_language_summary", "reward_accuracy", "reward_margin"], "metrics"),
    **dict.fromkeys(["METHODS", "Method", "run_grid", "run_one"], "experiments"),
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    """Import a public name's module on first use (PEP 562) and cache the name here."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'capo_tutorial' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"capo_tutorial.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
