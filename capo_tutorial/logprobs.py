"""Summed completion log-probs of chosen and rejected responses from one forward pass.

A preference batch of B pairs is one tensor of 2B rows (chosen rows first, then rejected rows),
as :class:`capo_tutorial.data.PreferenceCollator` builds it::

    input_ids        (2B, T)  prompt tokens, then completion tokens, then padding (or padding first)
    attention_mask   (2B, T)  1 on real tokens
    completion_mask  (2B, T)  1 on completion tokens (the tokens whose log-probs are summed)

The log-prob of a completion is ``sum_t log pi(token_t | tokens_<t)`` over its completion tokens;
prompt and padding tokens contribute nothing, and left or right padding give the same numbers
(position ids are derived from the attention mask).
"""

from __future__ import annotations

import inspect
from typing import NamedTuple

import torch
from torch import Tensor, nn

__all__ = ["PairLogps", "concatenated_logps", "sequence_logps", "token_logps"]


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


def _accepts(model: nn.Module, argument: str) -> bool:
    """Whether the (possibly PEFT-wrapped) model's forward names ``argument`` explicitly."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return argument in inspect.signature(base.forward).parameters


def sequence_logps(
    model: nn.Module, input_ids: Tensor, attention_mask: Tensor, completion_mask: Tensor
) -> tuple[Tensor, Tensor]:
    """Summed completion log-probs of N sequences under ``model`` (grad flows if enabled).

    Only the logits from the first completion position on are computed when the model supports
    ``logits_to_keep`` (transformers >= 4.45), which saves the prompt's share of the LM head.

    Args:
        model: any transformers causal LM (or a PEFT wrapper of one).
        input_ids, attention_mask, completion_mask: (N, T) long tensors.

    Returns:
        (logps, lengths), each (N,) float32: summed log-probs and completion token counts.
    """
    # Token t is predicted by the logits at position t - 1: targets are positions 1..T-1.
    target_mask = completion_mask[:, 1:].bool()
    has_completion = target_mask.any(dim=0)
    first_target = int(has_completion.float().argmax()) if bool(has_completion.any()) else 0
    # Logits needed at positions first_target .. T-2 (predicting first_target+1 .. T-1).
    keep = input_ids.shape[1] - first_target
    position_ids = (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)
    kwargs = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids}
    if _accepts(model, "logits_to_keep"):
        kwargs["logits_to_keep"] = keep
    logits = model(**kwargs, use_cache=False).logits[:, -keep:-1]
    targets = input_ids[:, first_target + 1 :]
    mask = target_mask[:, first_target:]
    per_token = token_logps(logits, targets) * mask
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
