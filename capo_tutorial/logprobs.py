"""Summed completion log-probs of chosen and rejected responses from one forward pass.

A preference batch of B pairs is one tensor of 2B rows (chosen rows first, then rejected rows),
as :class:`capo_tutorial.data.PreferenceCollator` builds it::

    input_ids        (2B, T)  prompt tokens, then completion tokens, then padding (or padding first)
    attention_mask   (2B, T)  1 on real tokens
    completion_mask  (2B, T)  1 on completion tokens (the tokens whose log-probs are summed)

The log-prob of a completion is ``sum_t log pi(token_t | tokens_<t)`` over its completion tokens;
prompt and padding tokens contribute nothing, and left or right padding give the same numbers
(position ids are derived from the attention mask).

Memory: the model runs with its LM head switched off, so its output is the final hidden states
(2B, L, H); the head is then applied a chunk of rows at a time and each chunk's logits are upcast
to float32, reduced to one log-prob per position and dropped. No full-vocabulary float32 logits
tensor of the whole micro-batch ever exists (with a 152k-token vocabulary that tensor would be
~5 GB for 8 rows of 1,024 tokens). When more than one chunk is needed and gradients are on, each
chunk is checkpointed: its logits are recomputed in the backward pass instead of being kept.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

__all__ = ["LOGITS_CHUNK_ELEMENTS", "PairLogps", "concatenated_logps", "sequence_logps", "token_logps"]

# Logits materialised at once: 2**26 float32 values are 256 MiB (e.g. 4 rows x 110 positions of a
# 152k vocabulary). A micro-batch whose logits fit in one chunk takes the plain path.
LOGITS_CHUNK_ELEMENTS = 2**26


class PairLogps(NamedTuple):
    """Per-pair outputs of :func:`concatenated_logps`; every tensor has shape (B,).

    Attributes:
        chosen_logps, rejected_logps: summed completion log-probs (nats), float32.
        chosen_lengths, rejected_lengths: completion token counts, float32.
    """

    chosen_logps: Tensor
    rejected_logps: Tensor
    chosen_lengths: Tensor
    rejected_lengths: Tensor


def token_logps(logits: Tensor, targets: Tensor, rows_per_chunk: int = 8) -> Tensor:
    """log softmax(logits)[target] per position, in float32, without a full float32 copy of the logits.

    Args:
        logits: (N, L, V) next-token logits, any float dtype.
        targets: (N, L) token ids whose log-probs are wanted.
        rows_per_chunk: rows upcast to float32 at a time (bounds peak memory for large vocabularies).

    Returns:
        (N, L) float32 log-probs.
    """
    pieces = []
    for start in range(0, logits.shape[0], rows_per_chunk):
        chunk = logits[start : start + rows_per_chunk].float()
        picked = chunk.gather(-1, targets[start : start + rows_per_chunk].unsqueeze(-1)).squeeze(-1)
        pieces.append(picked - torch.logsumexp(chunk, dim=-1))
    return torch.cat(pieces, dim=0)


class _Head(NamedTuple):
    """The LM head of a causal LM and the scalings its forward applies to the logits."""

    module: nn.Module
    softcap: float | None  # Gemma 2 style: cap * tanh(logits / cap)
    scale: float  # multiplies the logits (Cohere's logit_scale; 1 / Granite's logits_scaling)

    def logits(self, hidden: Tensor) -> Tensor:
        logits = self.module(hidden)
        if self.scale != 1.0:
            logits = logits * self.scale
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits


def _base_model(model: nn.Module) -> nn.Module:
    """The transformers model inside DDP / Accelerate / PEFT wrappers."""
    model = getattr(model, "module", model)  # DistributedDataParallel
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _output_head(base: nn.Module) -> tuple[nn.Module, str, _Head] | None:
    """(parent module, attribute name, head) of the model's LM head, or None when it has none."""
    get = getattr(base, "get_output_embeddings", None)
    module = get() if get is not None else None
    if not isinstance(module, nn.Module):
        return None
    for name, candidate in base.named_modules():
        if candidate is module and name:
            parent_name, _, attribute = name.rpartition(".")
            config = getattr(base, "config", None)
            scale = float(getattr(config, "logit_scale", None) or 1.0)
            scale /= float(getattr(config, "logits_scaling", None) or 1.0)
            softcap = getattr(config, "final_logit_softcapping", None)
            return base.get_submodule(parent_name), attribute, _Head(module, softcap, scale)
    return None


@contextlib.contextmanager
def _head_switched_off(model: nn.Module) -> Iterator[_Head | None]:
    """Inside, the model's LM head is the identity, so ``model(...).logits`` are hidden states.

    Yields the real head (None when the model exposes none: then the logits are real logits).
    """
    found = _output_head(_base_model(model))
    if found is None:
        yield None
        return
    parent, attribute, head = found
    setattr(parent, attribute, nn.Identity())
    try:
        yield head
    finally:
        setattr(parent, attribute, head.module)


def _chunk_logps(head: _Head, hidden: Tensor, targets: Tensor) -> Tensor:
    """Log-probs of ``targets`` (N, L) from hidden states (N, L + 1, H): the last position predicts
    nothing. The head runs on all L + 1 positions, as the model's own forward would."""
    return token_logps(head.logits(hidden)[:, :-1], targets)


def head_token_logps(head: _Head, hidden: Tensor, targets: Tensor) -> Tensor:
    """Per-position log-probs from final hidden states, a chunk of rows at a time.

    Args:
        head: the model's LM head.
        hidden: (N, L + 1, H) final hidden states; position t predicts ``targets[:, t]``.
        targets: (N, L) token ids.

    Returns:
        (N, L) float32 log-probs.
    """
    vocabulary = head.module.weight.shape[0]
    rows = max(1, LOGITS_CHUNK_ELEMENTS // max(1, hidden.shape[1] * vocabulary))
    if rows >= hidden.shape[0]:
        return _chunk_logps(head, hidden, targets)
    recompute = torch.is_grad_enabled()
    pieces = []
    for start in range(0, hidden.shape[0], rows):
        part = (head, hidden[start : start + rows], targets[start : start + rows])
        if recompute:  # keep only the hidden chunk; the logits are recomputed in the backward pass
            pieces.append(checkpoint(_chunk_logps, *part, use_reentrant=False))
        else:
            pieces.append(_chunk_logps(*part))
    return torch.cat(pieces, dim=0)


def _accepts(model: nn.Module, argument: str) -> bool:
    """Whether the (possibly wrapped) model's forward names ``argument`` explicitly."""
    return argument in inspect.signature(_base_model(model).forward).parameters


def sequence_logps(
    model: nn.Module, input_ids: Tensor, attention_mask: Tensor, completion_mask: Tensor
) -> tuple[Tensor, Tensor]:
    """Summed completion log-probs of N sequences under ``model`` (grad flows if enabled).

    Only the positions from the first completion token on go through the LM head (transformers'
    ``logits_to_keep``), which saves the prompt's share of the head; see the module docstring for
    how the head's logits are kept small.

    Args:
        model: any transformers causal LM (or a PEFT / Accelerate / DDP wrapper of one).
        input_ids, attention_mask, completion_mask: (N, T) long tensors.

    Returns:
        (logps, lengths), each (N,) float32: summed log-probs and completion token counts.
    """
    # Token t is predicted by the logits at position t - 1: targets are positions 1..T-1.
    target_mask = completion_mask[:, 1:].bool()
    has_completion = target_mask.any(dim=0)
    first_target = int(has_completion.float().argmax()) if bool(has_completion.any()) else 0
    # Hidden states needed at positions first_target .. T-2 (predicting first_target+1 .. T-1).
    keep = input_ids.shape[1] - first_target
    position_ids = (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)
    kwargs = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids}
    if _accepts(model, "logits_to_keep"):
        kwargs["logits_to_keep"] = keep
    targets = input_ids[:, first_target + 1 :]
    mask = target_mask[:, first_target:]
    with _head_switched_off(model) as head:
        outputs = model(**kwargs, use_cache=False).logits[:, -keep:]
    if head is None:  # the model exposes no head: its outputs are logits
        per_token = token_logps(outputs[:, :-1], targets)
    else:
        per_token = head_token_logps(head, outputs, targets)
    per_token = per_token * mask
    return per_token.sum(dim=1), mask.sum(dim=1).float()


def concatenated_logps(model: nn.Module, batch: dict[str, Tensor]) -> PairLogps:
    """Chosen and rejected summed completion log-probs from one forward pass over the 2B batch.

    Args:
        model: a causal LM.
        batch: ``input_ids``, ``attention_mask``, ``completion_mask``, each (2B, T), chosen rows
            first (rows 0..B-1), rejected rows after (rows B..2B-1).

    Returns:
        :class:`PairLogps` with (B,) tensors.
    """
    input_ids = batch["input_ids"]
    if input_ids.shape[0] % 2:
        raise ValueError(
            f"a preference batch has 2B rows (chosen rows, then rejected rows); got {input_ids.shape[0]} rows"
        )
    logps, lengths = sequence_logps(model, input_ids, batch["attention_mask"], batch["completion_mask"])
    chosen_logps, rejected_logps = logps.chunk(2)
    chosen_lengths, rejected_lengths = lengths.chunk(2)
    return PairLogps(chosen_logps, rejected_logps, chosen_lengths, rejected_lengths)
