"""capo_tutorial: Confidence-Aware Preference Optimization (CAPO) for multilingual preferences.

Modules, in the order data flows through them:

- ``data``: preference records, validation, loaders, tokenization, collation
- ``testbed``: an offline multilingual preference set with ground-truth labels
- ``logprobs``: summed completion log-probs from one forward pass
- ``losses``: DPO, CAPO and baselines as pure functions of log-prob tensors
- ``training``: the training loop (Accelerate), checkpoints, history
- ``metrics``: reward accuracy, margins, per-language tables, calibration
- ``plots``: the figures the book shows
"""

from capo_tutorial._version import __version__

__all__ = ["__version__"]
