"""Preference data: the record schema, loaders with clear errors, tokenization, collation, batching.

A preference record is one comparison::

    prompt     str    the context x (after format normalisation: plain text)
    chosen     str    the preferred completion y_w
    rejected   str    the dispreferred completion y_l
    language   str    a BCP-47 code, normalised with langcodes ("EN" -> "en", "arb_Arab" -> "ar")
    strength   float  optional, >= 0: the data set's own confidence in the pair (annotator
                      agreement, score gap); CAPO's prior s_i (book, chapter 2), 1 when absent

Data flows one way through this module::

    load_preferences   any source/format -> validated records (datasets.Dataset)
    tokenize_preferences   records -> prompt/chosen/rejected token ids (truncation reported)
    PreferenceCollator     B tokenized pairs -> one 2B batch (chosen rows, then rejected rows)
    LengthGroupedBatchSampler   batches of similar length (less padding), resumable order

Formats accepted by load_preferences (the ones TRL documents, plus any layout via ``column_map``):

- standard: ``{"prompt": str, "chosen": str, "rejected": str}``;
- conversational: ``prompt`` a list of ``{"role", "content"}`` messages, ``chosen``/``rejected``
  lists of assistant messages; rendered to text with the tokenizer's chat template when it has one
  (:func:`render_conversation`), and re-rendered at tokenization time from the kept messages;
- implicit prompt: no ``prompt``; ``chosen`` and ``rejected`` are full conversations (or texts)
  sharing a prefix, which becomes the prompt;
- column maps: ``column_map={"prompt": "question", "strength": lambda row: row["score_gap"]}``.

Row numbers in messages are 0-based indices into the source's rows; file lines are 1-based.

The package, by job (every public name is importable from ``capo_tutorial.data``):

- ``records``: the schema, errors and validation report, field checks, conversations;
- ``loading``: the source readers and :func:`load_preferences`;
- ``tokenization``: :func:`tokenize_preferences` and its truncation report;
- ``batching``: :class:`PreferenceCollator`, lengths and padding, :class:`LengthGroupedBatchSampler`.

Per-language text and token statistics (a chapter-3 analysis) are
``capo_tutorial.analysis.language_statistics``.
"""

from __future__ import annotations

from capo_tutorial.data.batching import (
    LengthGroupedBatchSampler,
    PreferenceCollator,
    padding_fraction,
    pair_lengths,
    sequence_lengths,
)
from capo_tutorial.data.loading import load_preferences
from capo_tutorial.data.records import (
    MESSAGE_FIELDS,
    RECORD_FIELDS,
    ROLES,
    TEXT_FIELDS,
    TOKEN_FIELDS,
    PreferenceDataError,
    ValidationReport,
    normalize_language,
    render_conversation,
)
from capo_tutorial.data.tokenization import TokenizationReport, tokenize_pair, tokenize_preferences

__all__ = [
    "MESSAGE_FIELDS",
    "RECORD_FIELDS",
    "ROLES",
    "TEXT_FIELDS",
    "TOKEN_FIELDS",
    "LengthGroupedBatchSampler",
    "PreferenceCollator",
    "PreferenceDataError",
    "TokenizationReport",
    "ValidationReport",
    "load_preferences",
    "normalize_language",
    "padding_fraction",
    "pair_lengths",
    "render_conversation",
    "sequence_lengths",
    "tokenize_pair",
    "tokenize_preferences",
]
