"""Batches: the collator that builds one 2B batch (chosen rows, then rejected rows) from B tokenized
pairs, sequence lengths and padding, and the length-grouped, resumable batch sampler."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import datasets
import numpy as np
import pyarrow.compute as pc
import torch
from torch.utils.data import Sampler

from capo_tutorial.data.records import (
    TOKEN_FIELDS,
)

__all__ = [
    "LengthGroupedBatchSampler",
    "PreferenceCollator",
    "padding_fraction",
    "pair_lengths",
    "sequence_lengths",
]

# ----------------------------------------------------------------------------------------------
# Collation
# ----------------------------------------------------------------------------------------------


class PreferenceCollator:
    """Collate B tokenized pairs into ONE batch of 2B rows: chosen rows first, then rejected rows.

    Row i (i < B) is prompt_i + chosen_i; row B + i is prompt_i + rejected_i, the layout
    :func:`capo_tutorial.logprobs.concatenated_logps` expects. Keys of the returned dict::

        input_ids        (2B, T) long   token ids, padded with the pad id
        attention_mask   (2B, T) long   1 on real tokens, 0 on padding
        completion_mask  (2B, T) long   1 exactly on completion tokens (including the EOS)
        strength         (B,) float32   only when the rows have a ``strength`` field
        <any other key>  list (B)       per-pair metadata passed through as python lists, e.g.
                                        language, script, task, margin_class, flipped, pair_id

    T is the longest row, rounded up to ``pad_to_multiple_of``. With ``padding_side="left"`` the
    padding goes before the tokens (position ids must then come from the attention mask, as
    capo_tutorial.logprobs does).

    Args:
        pad_token_id: the pad id, or a tokenizer (its ``pad_token_id`` is used).
        padding_side: "right" (default) or "left".
        pad_to_multiple_of: round T up to a multiple of this (tensor-core friendly shapes).
    """

    def __init__(
        self, pad_token_id: Any, *, padding_side: str = "right", pad_to_multiple_of: int | None = None
    ) -> None:
        pad = getattr(pad_token_id, "pad_token_id", pad_token_id)
        if pad is None:
            raise ValueError("no pad token id: set tokenizer.pad_token (e.g. to its eos token) first")
        if padding_side not in ("right", "left"):
            raise ValueError(f"padding_side={padding_side!r}: use 'right' or 'left'")
        if pad_to_multiple_of is not None and pad_to_multiple_of < 1:
            raise ValueError(f"pad_to_multiple_of={pad_to_multiple_of} must be >= 1")
        self.pad_token_id = int(pad)
        self.padding_side = padding_side
        self.pad_to_multiple_of = pad_to_multiple_of

    def _width(self, longest: int) -> int:
        multiple = self.pad_to_multiple_of or 1
        return -(-longest // multiple) * multiple

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        if not features:
            raise ValueError("PreferenceCollator got an empty list of pairs")
        missing = [k for k in TOKEN_FIELDS if k not in features[0]]
        if missing:
            raise ValueError(f"pairs lack {missing}: run tokenize_preferences on the data first")
        rows = [(list(f["prompt_input_ids"]), list(f[k])) for k in TOKEN_FIELDS[1:] for f in features]
        width = self._width(max(len(p) + len(c) for p, c in rows))
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        completion_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, (prompt, completion) in enumerate(rows):
            n = len(prompt) + len(completion)
            start = 0 if self.padding_side == "right" else width - n
            input_ids[i, start : start + n] = torch.tensor(prompt + completion, dtype=torch.long)
            attention_mask[i, start : start + n] = 1
            completion_mask[i, start + len(prompt) : start + n] = 1
        batch: dict[str, Any] = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "completion_mask": completion_mask,
        }
        if "strength" in features[0]:
            batch["strength"] = torch.tensor([f["strength"] for f in features], dtype=torch.float32)
        for key in features[0]:
            if key not in TOKEN_FIELDS and key != "strength":
                batch[key] = [f[key] for f in features]
        return batch


# ----------------------------------------------------------------------------------------------
# Length-grouped batching
# ----------------------------------------------------------------------------------------------


def sequence_lengths(dataset: datasets.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """(chosen_lengths, rejected_lengths): tokens of prompt + completion per row, shape (N,) each."""
    table = dataset.with_format("arrow")[:]
    prompt = pc.list_value_length(table["prompt_input_ids"]).to_numpy()
    chosen = pc.list_value_length(table["chosen_input_ids"]).to_numpy()
    rejected = pc.list_value_length(table["rejected_input_ids"]).to_numpy()
    return (prompt + chosen).astype(np.int64), (prompt + rejected).astype(np.int64)


def pair_lengths(dataset: datasets.Dataset) -> np.ndarray:
    """Per pair, the longer of its two rows (what sets its share of the padded width), shape (N,)."""
    chosen, rejected = sequence_lengths(dataset)
    return np.maximum(chosen, rejected)


def padding_fraction(
    batches: Iterable[Sequence[int]],
    chosen_lengths: Sequence[int],
    rejected_lengths: Sequence[int] | None = None,
    *,
    pad_to_multiple_of: int | None = None,
) -> float:
    """Share of the collated tensors' slots that are padding, over all batches (0 = no padding).

    Each batch of B pairs becomes 2B rows of width T = longest row (rounded up to
    ``pad_to_multiple_of``), as PreferenceCollator builds it. Pass ``rejected_lengths=None`` to
    treat ``chosen_lengths`` as one length per row (e.g. pair_lengths).
    """
    chosen = np.asarray(chosen_lengths)
    rejected = chosen if rejected_lengths is None else np.asarray(rejected_lengths)
    multiple = pad_to_multiple_of or 1
    real = slots = 0
    for batch in batches:
        index = np.asarray(batch, dtype=np.int64)
        width = -(-int(max(chosen[index].max(), rejected[index].max())) // multiple) * multiple
        real += int(chosen[index].sum() + rejected[index].sum())
        slots += 2 * len(index) * width
    return 0.0 if slots == 0 else 1.0 - real / slots


class LengthGroupedBatchSampler(Sampler[list[int]]):
    """Batches of pairs with similar lengths, in an order fixed by (seed, epoch).

    With ``shuffle=True``, each epoch: a random permutation (numpy, seeded with (seed, epoch)) is
    cut into groups of ``group_size`` pairs; each group is sorted by length and cut into batches;
    the batches are shuffled, and the one holding the longest pair goes first (an out-of-memory
    error shows at step 1, not hours later). Random order across batches, little padding within.
    With ``shuffle=False`` (evaluation), pairs are sorted by length once.

    The order depends only on (lengths, batch_size, seed, epoch), so a run resumed mid-epoch gets
    the same batches and can skip the ones it has done (e.g. accelerate's skip_first_batches).
    Under accelerate, set the epoch on the PREPARED loader (``loader.set_epoch(epoch)``): its
    ``__iter__`` calls this sampler's set_epoch with the loader's own epoch counter, which starts
    at 0 for a freshly prepared loader and would override a value set here directly.

    Args:
        lengths: one length per pair (e.g. :func:`pair_lengths`), shape (N,).
        batch_size: pairs per batch.
        shuffle: shuffle as above; False gives a sorted, fixed order.
        seed: seed of the shuffle.
        drop_last: drop the batches smaller than batch_size.
        group_size: pairs sorted together (default 50 * batch_size, rounded to whole batches);
            smaller groups are more random, larger ones pad less.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        group_size: int | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1")
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        group = group_size or 50 * batch_size
        self.group_size = max(batch_size, group // batch_size * batch_size)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order __iter__ yields (call before each epoch)."""
        self.epoch = int(epoch)

    def _cut(self, index: np.ndarray) -> list[list[int]]:
        # Longest first, ties by index: a stable order that does not depend on the sort algorithm.
        order = index[np.lexsort((index, -self.lengths[index]))]
        return [order[i : i + self.batch_size].tolist() for i in range(0, len(order), self.batch_size)]

    def batches(self, epoch: int | None = None) -> list[list[int]]:
        """The batches (lists of row indices) of ``epoch`` (default: the current one)."""
        n = len(self.lengths)
        if not self.shuffle:
            out = self._cut(np.arange(n))
        else:
            rng = np.random.default_rng([self.seed, self.epoch if epoch is None else epoch])
            perm = rng.permutation(n)
            out = [
                b
                for start in range(0, n, self.group_size)
                for b in self._cut(perm[start : start + self.group_size])
            ]
            out = [out[i] for i in rng.permutation(len(out))]
            longest = max(range(len(out)), key=lambda i: self.lengths[out[i]].max(), default=0)
            out.insert(0, out.pop(longest))
        if self.drop_last:
            out = [b for b in out if len(b) == self.batch_size]
        return out

    def __iter__(self) -> Iterator[list[int]]:
        yield from self.batches()

    def __len__(self) -> int:
        return len(self.batches())
