"""The reference model pi_ref, in three interchangeable forms.

- ``copy``: a frozen copy of the starting policy, run forward on every batch (2 models in memory).
- ``adapter``: the policy itself with its LoRA adapter disabled (one model in memory; LoRA only).
- ``precomputed``: reference log-probs computed once over the data set before training and read
  from the batch (``ref_chosen_logps`` / ``ref_rejected_logps``): no reference forward at all.

All three give the same numbers for the same starting weights; they differ in memory and speed
(see ``benchmarks/train_throughput.py``).
"""

from __future__ import annotations

import contextlib

import datasets
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from capo_tutorial.logprobs import concatenated_logps
from capo_tutorial.models import frozen_copy, reference_context

__all__ = ["REFERENCE_COLUMNS", "REFERENCE_MODES", "Reference", "precompute_reference_logps"]

REFERENCE_MODES = ("copy", "adapter", "precomputed")
REFERENCE_COLUMNS = ("ref_chosen_logps", "ref_rejected_logps")


class Reference:
    """Gives reference log-probs (chosen, rejected), each (B,) float32, for a 2B batch.

    Args:
        mode: "copy", "adapter" or "precomputed".
        policy: the policy being trained (a PEFT model for "adapter").
    """

    def __init__(self, mode: str, policy: nn.Module) -> None:
        if mode not in REFERENCE_MODES:
            raise ValueError(f"reference mode must be one of {REFERENCE_MODES}, got {mode!r}")
        if mode == "adapter" and not hasattr(policy, "disable_adapter"):
            raise ValueError(
                "reference='adapter' needs a LoRA (PEFT) policy: set lora_r > 0, "
                "or use 'copy' or 'precomputed'"
            )
        self.mode = mode
        self.policy = policy
        self.frozen = frozen_copy(policy) if mode == "copy" else None

    def forward_model(self) -> contextlib.AbstractContextManager[nn.Module]:
        """Context giving a module whose forward pass is the reference model (not for "precomputed")."""
        if self.mode == "copy":
            return contextlib.nullcontext(self.frozen)
        if self.mode == "adapter":
            return reference_context(self.policy)
        raise RuntimeError("a precomputed reference has no model: read the log-probs from the batch")

    @torch.no_grad()
    def logps(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """(reference_chosen_logps, reference_rejected_logps), each (B,), for a 2B batch."""
        if self.mode == "precomputed":
            return _precomputed_from_batch(batch)
        with self.forward_model() as model:
            out = concatenated_logps(model, batch)
        return out.chosen_logps, out.rejected_logps


def _precomputed_from_batch(batch: dict) -> tuple[Tensor, Tensor]:
    missing = [column for column in REFERENCE_COLUMNS if column not in batch]
    if missing:
        raise KeyError(
            f"the batch has no {missing}: with reference='precomputed', run precompute_reference_logps "
            "on the data set first"
        )
    device = batch["input_ids"].device
    return tuple(torch.as_tensor(batch[c], dtype=torch.float32, device=device) for c in REFERENCE_COLUMNS)


@torch.no_grad()
def precompute_reference_logps(
    model: nn.Module, dataset: datasets.Dataset, collator, *, batch_size: int = 32, device=None
) -> datasets.Dataset:
    """Add ``ref_chosen_logps`` and ``ref_rejected_logps`` columns computed with ``model``.

    Args:
        model: the reference model (e.g. the policy before preference training).
        dataset: a tokenized preference data set (what ``collator`` accepts).
        collator: builds the 2B batch.
        batch_size: pairs per forward pass.
        device: where to run (default: the model's device).

    Returns:
        The data set with two float32 columns (existing reference columns are replaced).
    """
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    dataset = dataset.remove_columns([c for c in REFERENCE_COLUMNS if c in dataset.column_names])
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collator)
    chosen, rejected = [], []
    for batch in loader:
        batch = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items()}
        out = concatenated_logps(model, batch)
        chosen.append(out.chosen_logps.cpu())
        rejected.append(out.rejected_logps.cpu())
    model.train(was_training)
    dataset = dataset.add_column(REFERENCE_COLUMNS[0], torch.cat(chosen).tolist())
    return dataset.add_column(REFERENCE_COLUMNS[1], torch.cat(rejected).tolist())
