"""The reference model pi_ref, in three interchangeable forms.

- ``copy``: a frozen copy of the starting policy, run forward on every batch (2 models in memory).
- ``adapter``: the policy itself with its LoRA adapter disabled (one model in memory; LoRA only).
- ``precomputed``: reference log-probs computed once over the data set before training and read
  from the batch (``ref_chosen_logps`` / ``ref_rejected_logps``): no reference forward at all.

All three give the same numbers for the same starting weights; they differ in memory and speed
(see ``benchmarks/train_throughput.py``).

This module holds all of it: the two model forms (:func:`frozen_copy`, :func:`reference_context`), the
log-probs of a batch in any mode (:class:`Reference`), :func:`precompute_reference_logps`, the mode a
run uses (:func:`reference_mode`), and :func:`freeze_reference`, which after the SFT warm-up
(``capo_tutorial.warmup``) turns the warmed-up policy into pi_ref: its weights saved once (so that a
resumed run or a later method of a grid finds them) and, in "precomputed" mode, its log-probs cached.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import datasets
import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.utils.data import DataLoader

from capo_tutorial._io import atomic_path
from capo_tutorial.config import RunConfig
from capo_tutorial.logprobs import concatenated_logps
from capo_tutorial.models import apply_lora, cache_root, enable_gradient_checkpointing
from capo_tutorial.warmup import hash_tokens, reference_weights_path

if TYPE_CHECKING:
    from capo_tutorial.components import Components

__all__ = [
    "REFERENCE_COLUMNS",
    "REFERENCE_MODES",
    "Reference",
    "freeze_reference",
    "frozen_copy",
    "precompute_reference_logps",
    "reference_context",
    "reference_mode",
]

REFERENCE_MODES = ("copy", "adapter", "precomputed")
REFERENCE_COLUMNS = ("ref_chosen_logps", "ref_rejected_logps")


def frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A deep copy in eval mode with every parameter's ``requires_grad`` off: the "copy" reference.

    Costs a second model's memory; with LoRA, :func:`reference_context` avoids that.
    """
    reference = copy.deepcopy(model)
    reference.eval()
    reference.requires_grad_(False)
    return reference


@contextlib.contextmanager
def reference_context(model: PeftModel) -> Iterator[PeftModel]:
    """Inside, ``model`` is the reference: adapters off, eval mode, no autograd.

    The "adapter" reference mode: one model in memory serves as both policy and reference::

        with reference_context(policy):
            reference_logits = policy(input_ids, attention_mask=mask).logits
        policy_logits = policy(input_ids, attention_mask=mask).logits  # adapters on again

    The train/eval mode is restored on exit. With Accelerate, pass ``accelerator.unwrap_model(policy)``.
    """
    if not isinstance(model, PeftModel):
        raise TypeError(
            "reference_context needs a LoRA model from apply_lora (a PeftModel), "
            f"got {type(model).__name__}; "
            "for a full model use reference = frozen_copy(model) (reference mode 'copy')."
        )
    was_training = model.training
    model.eval()
    try:
        with model.disable_adapter(), torch.no_grad():
            yield model
    finally:
        model.train(was_training)


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

    Runs in the caller's precision: under mixed-precision training, call it inside the
    accelerator's ``autocast()`` so that the reference's log-probs match the policy's at the start.

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


# --------------------------------------------------------------------------------------------------
# A run's reference: the mode it uses, and freezing the warmed-up policy into pi_ref
# --------------------------------------------------------------------------------------------------


def reference_mode(config: RunConfig) -> str:
    """The reference mode a run uses ("auto": the adapter with LoRA, else precomputed log-probs)."""
    if config.reference != "auto":
        return config.reference
    return "adapter" if config.lora_r else "precomputed"


def freeze_reference(config: RunConfig, components: Components, accelerator, *, load: bool) -> None:
    """Make the warmed-up policy the reference model, and start preference training from it.

    With LoRA, the warm-up's adapter is merged into the base weights and a fresh adapter is
    added, so that "adapter" mode (adapter disabled) gives the warmed-up model. After an SFT
    warm-up the weights are saved to ``warmup.reference_weights_path``; with ``load=True`` (a cache
    hit, or a resumed run) they are loaded from there instead.
    """
    model = components.model
    if config.lora_r:
        model = model.merge_and_unload()
    path = reference_weights_path(config, components)
    if config.sft_steps and load:
        _load_full_state(model, path)
    elif config.sft_steps and accelerator.is_main_process:
        _save_full_state(model, path)
    accelerator.wait_for_everyone()
    if config.lora_r:
        model = apply_lora(
            model,
            r=config.lora_r,
            alpha=config.lora_alpha,
            dropout=config.lora_dropout,
            seed=config.seed,
            verbose=False,
        )
    if config.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    # On the run's device whether the warm-up ran here (it is there already) or was loaded.
    components.model = model = model.to(accelerator.device)
    mode = reference_mode(config)
    components.reference = Reference(mode, model)
    if mode == "precomputed":
        _precompute(config, components, accelerator)


def _save_full_state(model: nn.Module, path: Path) -> None:
    """Every weight (tied weights once) to safetensors, atomically (``_io.atomic_path``)."""
    seen, state = set(), {}
    for name, tensor in model.state_dict().items():
        if tensor.data_ptr() not in seen:  # safetensors refuses two names for one memory
            seen.add(tensor.data_ptr())
            state[name] = tensor.detach().cpu().contiguous()
    _save_safetensors(state, path)


def _save_safetensors(tensors: dict[str, Tensor], path: Path) -> None:
    """safetensors written atomically: a reader (another run of the grid) never sees half a file."""
    with atomic_path(path) as temporary:
        save_file(tensors, str(temporary))


def _load_full_state(model: nn.Module, path: Path) -> None:
    if not path.exists():
        raise FileNotFoundError(
            f"the warmed-up reference weights {path} are missing: rerun with resume=False"
        )
    missing, unexpected = model.load_state_dict(load_file(str(path)), strict=False)
    tied = {name for name in missing if "lm_head" in name or "embed" in name}
    if unexpected or set(missing) - tied:
        raise ValueError(f"{path} does not fit the model: missing {missing[:3]}, unexpected {unexpected[:3]}")


def _precompute(config: RunConfig, components: Components, accelerator) -> None:
    """Reference log-probs of the train and eval pairs; with the SFT cache on, they are cached too
    (every method trained from the same warm-up shares them).

    They are computed under the run's autocast, as the policy's are in training, so that the two
    agree at the first step. The autocast must be explicit: a model that trained its warm-up in this
    process carries Accelerate's autocast in its forward, one whose warm-up was loaded (a cache hit, a
    resumed run) does not, and on a GPU the two would give different reference log-probs.
    """
    device = accelerator.device
    model = components.model
    for name in ("train_dataset", "eval_dataset"):
        dataset = getattr(components, name)
        digest = hashlib.sha256(components.warmup_key.encode())
        hash_tokens(digest, dataset)
        cached = cache_root() / "reference-logps" / f"{digest.hexdigest()[:24]}.safetensors"
        if config.sft_cache and cached.exists():
            logps = load_file(str(cached))
            dataset = dataset.add_column(REFERENCE_COLUMNS[0], logps["chosen"].tolist())
            dataset = dataset.add_column(REFERENCE_COLUMNS[1], logps["rejected"].tolist())
        else:
            with accelerator.autocast():
                dataset = precompute_reference_logps(
                    model, dataset, components.collator, batch_size=config.eval_batch_size, device=device
                )
            if config.sft_cache:
                tensors = {c.split("_")[1]: torch.tensor(dataset[c][:]) for c in REFERENCE_COLUMNS}
                _save_safetensors(tensors, cached)
        setattr(components, name, dataset)
