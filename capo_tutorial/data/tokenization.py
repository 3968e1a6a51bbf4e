"""Records to token ids: prompt, chosen and rejected tokenized apart, truncated to ``max_length``
(the prompt from the left, the completion from the right), with a report of what was cut."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import datasets

from capo_tutorial.data.records import (
    MESSAGE_FIELDS,
    TEXT_FIELDS,
    TOKEN_FIELDS,
    _has_chat_template,
    render_conversation,
)

__all__ = ["TokenizationReport", "tokenize_pair", "tokenize_preferences"]

logger = logging.getLogger(__name__)

# ----------------------------------------------------------------------------------------------
# Tokenization
# ----------------------------------------------------------------------------------------------


@dataclass
class TokenizationReport:
    """How many rows tokenize_preferences truncated (none are dropped).

    Attributes:
        n_rows: rows tokenized.
        rows_truncated: rows with any truncation (prompt or completion).
        prompt_truncated: rows whose prompt lost tokens at its start.
        completion_truncated: rows where chosen or rejected lost tokens at its end (and its EOS).
        truncated_rows: the first few truncated row indices.
    """

    n_rows: int = 0
    rows_truncated: int = 0
    prompt_truncated: int = 0
    completion_truncated: int = 0
    truncated_rows: list[int] = field(default_factory=list)


def _prefix_special_ids(tokenizer: Any) -> list[int]:
    """The special tokens the tokenizer puts before a text (its BOS, if it adds one)."""
    ids = list(tokenizer("", add_special_tokens=True)["input_ids"])
    if ids and ids[-1] == tokenizer.eos_token_id and tokenizer.eos_token_id != tokenizer.bos_token_id:
        ids = ids[:-1]  # an EOS after the prompt would tell a causal LM the text is over
    return ids


def _keep_end(ids: list[int], n: int, n_prefix: int) -> list[int]:
    """The last tokens of a prompt, keeping its leading special tokens (the BOS) in front."""
    return ids[:n_prefix] + ids[len(ids) - (n - n_prefix) :]


@dataclass(frozen=True)
class _Limits:
    max_length: int | None
    max_prompt_length: int | None
    max_completion_length: int | None


def _truncate(
    prompt: list[int], chosen: list[int], rejected: list[int], limits: _Limits, n_prefix: int
) -> tuple[list[int], list[int], list[int], bool, bool]:
    """Apply the truncation policy; returns the ids and (prompt_cut, completion_cut).

    The prompt keeps its END (the question next to the answer matters most) and its BOS;
    completions keep their START. With max_length, the prompt is cut first, but not below half of
    max_length, then the completions are cut to what is left.
    """
    prompt_cut = completion_cut = False
    if limits.max_prompt_length is not None and len(prompt) > limits.max_prompt_length:
        prompt, prompt_cut = _keep_end(prompt, limits.max_prompt_length, n_prefix), True
    room = limits.max_completion_length
    if limits.max_length is not None:
        longest = max(len(chosen), len(rejected))
        if len(prompt) + longest > limits.max_length:
            target = max(limits.max_length - longest, min(len(prompt), limits.max_length // 2))
            if len(prompt) > target:
                prompt, prompt_cut = _keep_end(prompt, target, n_prefix), True
            room = min(room or limits.max_length, limits.max_length - len(prompt))
    if room is not None and max(len(chosen), len(rejected)) > room:
        chosen, rejected, completion_cut = chosen[:room], rejected[:room], True
    return prompt, chosen, rejected, prompt_cut, completion_cut


def _check_limits(limits: _Limits, n_prefix: int) -> None:
    for name in ("max_length", "max_prompt_length", "max_completion_length"):
        value = getattr(limits, name)
        if value is not None and (not isinstance(value, int) or value <= n_prefix + 1):
            raise ValueError(
                f"{name}={value!r} must be an integer > {n_prefix + 1} (room for BOS and a token)"
            )


def _eos_id(tokenizer: Any) -> int:
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos token: set tokenizer.eos_token (completions end with it)")
    return int(tokenizer.eos_token_id)


def _tokenize_texts(
    prompts: list[str], chosens: list[str], rejecteds: list[str], tokenizer: Any
) -> tuple[list[list[int]], list[list[int]], list[list[int]], int]:
    """Token ids without truncation: [specials] + prompt; completion + [EOS] (as TRL does)."""
    prefix, eos = _prefix_special_ids(tokenizer), _eos_id(tokenizer)
    bos_text = getattr(tokenizer, "bos_token", None)

    def encode(texts: list[str]) -> list[list[int]]:
        return tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []

    # A chat template may already have written the BOS as text: adding it again would double it.
    prompt_ids = [
        ids if bos_text and text.startswith(bos_text) else prefix + ids
        for text, ids in zip(prompts, encode(prompts), strict=True)
    ]
    chosen_ids = [[*ids, eos] for ids in encode(chosens)]
    rejected_ids = [[*ids, eos] for ids in encode(rejecteds)]
    return prompt_ids, chosen_ids, rejected_ids, len(prefix)


def tokenize_pair(
    prompt: str,
    chosen: str,
    rejected: str,
    tokenizer: Any,
    *,
    max_length: int | None = None,
    max_prompt_length: int | None = None,
    max_completion_length: int | None = None,
) -> dict[str, Any]:
    """Token ids of one pair: ``prompt_input_ids``, ``chosen_input_ids``, ``rejected_input_ids``
    (lists of ints) and ``prompt_truncated``, ``completion_truncated`` (bools). See
    :func:`tokenize_preferences` for the policy."""
    limits = _Limits(max_length, max_prompt_length, max_completion_length)
    p, c, r, n_prefix = _tokenize_texts([prompt], [chosen], [rejected], tokenizer)
    _check_limits(limits, n_prefix)
    p, c, r, prompt_cut, completion_cut = _truncate(p[0], c[0], r[0], limits, n_prefix)
    return {
        "prompt_input_ids": p,
        "chosen_input_ids": c,
        "rejected_input_ids": r,
        "prompt_truncated": prompt_cut,
        "completion_truncated": completion_cut,
    }


def _rendered_texts(dataset: datasets.Dataset, tokenizer: Any) -> tuple[list[str], list[str], list[str]]:
    """The three text columns; conversations are re-rendered with this tokenizer's chat template."""
    missing = [name for name in TEXT_FIELDS if name not in dataset.column_names]
    if missing:
        raise ValueError(f"the dataset has no {missing} column(s): load it with load_preferences first")
    # [:] gives a list in every datasets version (datasets 5 returns a lazy Column otherwise).
    texts = {name: dataset[name][:] for name in TEXT_FIELDS}
    if all(name in dataset.column_names for name in MESSAGE_FIELDS) and _has_chat_template(tokenizer):
        messages = dataset.select_columns(list(MESSAGE_FIELDS)).to_list()
        for i, row in enumerate(messages):
            if row["prompt_messages"] is None:  # a plain-text row among conversations keeps its text
                continue
            texts["prompt"][i], texts["chosen"][i] = render_conversation(
                row["prompt_messages"], row["chosen_messages"], tokenizer
            )
            texts["rejected"][i] = render_conversation(
                row["prompt_messages"], row["rejected_messages"], tokenizer
            )[1]
    return texts["prompt"], texts["chosen"], texts["rejected"]


def tokenize_preferences(
    dataset: datasets.Dataset,
    tokenizer: Any,
    *,
    max_length: int | None = None,
    max_prompt_length: int | None = None,
    max_completion_length: int | None = None,
    keep_text: bool = False,
    return_report: bool = False,
) -> datasets.Dataset | tuple[datasets.Dataset, TokenizationReport]:
    """Tokenize a preference Dataset (as load_preferences returns) for the collator.

    Tokens, as TRL builds them: the prompt with the tokenizer's leading special tokens (its BOS,
    if it adds one; not twice when a chat template wrote it already); each completion without
    special tokens, followed by the EOS token. Conversational rows are rendered with this
    tokenizer's chat template from their ``*_messages`` columns.

    Truncation (no row is ever dropped): ``max_prompt_length`` keeps the END of the prompt (after
    its BOS); ``max_completion_length`` cuts the END of each completion (its EOS goes too);
    ``max_length`` bounds prompt + longer completion: the prompt is cut first (not below half of
    max_length), then the completions. The count is logged and returned in a TokenizationReport.

    Returns:
        A Dataset with prompt_input_ids, chosen_input_ids, rejected_input_ids (lists of int32),
        plus language, strength and every metadata column (the text and ``*_messages`` columns are
        dropped unless ``keep_text``); with ``return_report=True``, ``(dataset, report)``.
    """
    limits = _Limits(max_length, max_prompt_length, max_completion_length)
    texts = _rendered_texts(dataset, tokenizer)
    prompt_ids, chosen_ids, rejected_ids, n_prefix = _tokenize_texts(*texts, tokenizer)
    _check_limits(limits, n_prefix)
    report = TokenizationReport(n_rows=len(prompt_ids))
    for i in range(len(prompt_ids)):
        *ids, prompt_cut, completion_cut = _truncate(
            prompt_ids[i], chosen_ids[i], rejected_ids[i], limits, n_prefix
        )
        prompt_ids[i], chosen_ids[i], rejected_ids[i] = ids
        report.prompt_truncated += prompt_cut
        report.completion_truncated += completion_cut
        if prompt_cut or completion_cut:
            report.rows_truncated += 1
            if len(report.truncated_rows) < 10:
                report.truncated_rows.append(i)
    if report.rows_truncated:
        logger.warning(
            "tokenize_preferences: truncated %d of %d rows (prompt %d, completion %d; first rows %s)",
            report.rows_truncated,
            report.n_rows,
            report.prompt_truncated,
            report.completion_truncated,
            report.truncated_rows,
        )
    dropped = set() if keep_text else {*TEXT_FIELDS, *MESSAGE_FIELDS}
    kept = dataset.remove_columns([c for c in dataset.column_names if c in dropped or c in TOKEN_FIELDS])
    token_feature = datasets.Sequence(datasets.Value("int32"))
    for name, column in zip(TOKEN_FIELDS, (prompt_ids, chosen_ids, rejected_ids), strict=True):
        kept = kept.add_column(name, column, feature=token_feature)
    kept = kept.select_columns([*TOKEN_FIELDS, *[c for c in kept.column_names if c not in TOKEN_FIELDS]])
    return (kept, report) if return_report else kept
