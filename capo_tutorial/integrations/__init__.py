"""Bridges from capo_tutorial to other training libraries; each is an optional extra.

- ``capo_tutorial.integrations.trl``: :class:`CAPOTrainer` and :class:`CAPOConfig`, TRL's DPOTrainer
  with its loss computed by :mod:`capo_tutorial.losses` (needs ``pip install "capo-tutorial[trl]"``).

Nothing is imported here, so ``import capo_tutorial.integrations`` works without any of them; import
the submodule you need, which says how to install what it is missing.
"""

__all__: list[str] = []
