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
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import datasets
import langcodes
import numpy as np
import pandas as pd
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from torch.utils.data import Sampler

__all__ = [
    "RECORD_FIELDS",
    "LengthGroupedBatchSampler",
    "PreferenceCollator",
    "PreferenceDataError",
    "TokenizationReport",
    "ValidationReport",
    "language_statistics",
    "load_preferences",
    "normalize_language",
    "padding_fraction",
    "pair_lengths",
    "render_conversation",
    "sequence_lengths",
    "tokenize_pair",
    "tokenize_preferences",
]

logger = logging.getLogger(__name__)

TEXT_FIELDS: tuple[str, ...] = ("prompt", "chosen", "rejected")
RECORD_FIELDS: tuple[str, ...] = (*TEXT_FIELDS, "language", "strength")
MESSAGE_FIELDS: tuple[str, ...] = tuple(f"{name}_messages" for name in TEXT_FIELDS)
TOKEN_FIELDS: tuple[str, ...] = tuple(f"{name}_input_ids" for name in TEXT_FIELDS)
ROLES: frozenset[str] = frozenset({"system", "user", "assistant", "tool"})
_FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
_SKIP_HINT = " (or pass on_error='skip' to drop such rows and get a report)"

ColumnSource = str | Callable[[Mapping[str, Any]], Any]
Messages = list[dict[str, str]]


# ----------------------------------------------------------------------------------------------
# Errors and reports
# ----------------------------------------------------------------------------------------------


class PreferenceDataError(ValueError):
    """Bad preference data: the message says where (file, line, row), which field, what, and the fix.

    Reasons of row problems (raised, or dropped and counted with on_error="skip"): missing_field,
    null_field, empty_text, not_a_string, identical_pair, unknown_language, malformed_messages,
    mixed_formats, invalid_strength, column_map_failed, not_a_dict, invalid_json,
    undecodable_bytes. Reasons of source problems (always raised): not_found, empty_file,
    unsupported_file, bad_split_or_config, no_valid_rows (and missing_field for a column that
    no row has).

    Attributes:
        reason: the short key above, as used in ValidationReport.skipped.
        row: 0-based row index in the source, or None for a whole-source problem.
        field: the field at fault, or None.
        line: 1-based line in the file, when the source is a text file.
        source: the file, folder or data set name, when known.
    """

    def __init__(
        self,
        what: str,
        *,
        reason: str,
        fix: str = "",
        row: int | None = None,
        field: str | None = None,
        line: int | None = None,
        source: str | None = None,
    ) -> None:
        self.reason, self.row, self.field, self.line, self.source = reason, row, field, line, source
        self.what, self.fix = what, fix
        super().__init__(self._message())

    def _message(self) -> str:
        where = []
        if self.source:
            where.append(str(self.source))
        if self.line is not None:
            where.append(f"line {self.line}")
        if self.row is not None:
            where.append(f"row {self.row}")
        place = ", ".join(where) or "data"
        subject = f"field '{self.field}' " if self.field else ""
        fix = f" {self.fix}" if self.fix else ""
        return f"{place}: {subject}{self.what}.{fix}"

    def located(self, *, row: int | None, line: int | None, source: str | None) -> PreferenceDataError:
        """The same error with its location filled in (row checks do not know where they run)."""
        return PreferenceDataError(
            self.what, reason=self.reason, fix=self.fix, field=self.field, row=row, line=line, source=source
        )


def _row_error(reason: str, field: str | None, what: str, fix: str) -> PreferenceDataError:
    return PreferenceDataError(what, reason=reason, field=field, fix=fix + _SKIP_HINT)


@dataclass
class ValidationReport:
    """What load_preferences kept and dropped (returned with ``return_report=True``, always logged).

    Attributes:
        source: the source's name.
        n_read: rows read (including bad ones).
        n_kept: rows in the returned Dataset.
        skipped: reason -> rows dropped for it (only with on_error="skip").
        first_rows: reason -> the first few row numbers dropped for it.
        messages: reason -> the first full error message, to see what was wrong.
        duplicates: rows that repeat an earlier (prompt, chosen, rejected, language); kept, warned.
        duplicate_rows: the first few duplicated row numbers.
    """

    source: str = ""
    n_read: int = 0
    n_kept: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    first_rows: dict[str, list[int]] = field(default_factory=dict)
    messages: dict[str, str] = field(default_factory=dict)
    duplicates: int = 0
    duplicate_rows: list[int] = field(default_factory=list)

    @property
    def n_skipped(self) -> int:
        return sum(self.skipped.values())

    def add_skip(self, error: PreferenceDataError, max_rows: int = 5) -> None:
        self.skipped[error.reason] = self.skipped.get(error.reason, 0) + 1
        rows = self.first_rows.setdefault(error.reason, [])
        if len(rows) < max_rows and error.row is not None:
            rows.append(error.row)
        self.messages.setdefault(error.reason, str(error))

    def __str__(self) -> str:
        text = f"{self.source}: kept {self.n_kept} of {self.n_read} rows"
        if self.skipped:
            parts = [f"{reason} {n} (rows {self.first_rows[reason]})" for reason, n in self.skipped.items()]
            text += "; skipped " + ", ".join(parts)
        if self.duplicates:
            text += f"; {self.duplicates} duplicated pairs kept (rows {self.duplicate_rows})"
        return text


# ----------------------------------------------------------------------------------------------
# Field checks
# ----------------------------------------------------------------------------------------------


def normalize_language(code: Any) -> str:
    """A valid BCP-47 tag in canonical form ("EN" -> "en", "pt_BR" -> "pt-BR", "arb_Arab" -> "ar").

    Raises PreferenceDataError (reason "unknown_language") for anything langcodes does not know.
    """
    fix = "Use a BCP-47 code such as 'en', 'pt-BR' or 'zh-Hans', or pass language='xx' for all rows."
    if not isinstance(code, str) or not code.strip():
        raise _row_error("unknown_language", "language", f"must be a language code, got {code!r}", fix)
    try:
        tag = langcodes.standardize_tag(code.strip().replace("_", "-"), macro=True)
    except (ValueError, LookupError) as error:
        what = f"{code!r} is not a language code ({error})"
        raise _row_error("unknown_language", "language", what, fix) from None
    if tag == "und" or not langcodes.Language.get(tag).is_valid():
        raise _row_error("unknown_language", "language", f"{code!r} is not a known BCP-47 language code", fix)
    return tag


def _check_text(name: str, value: Any) -> str:
    """A non-empty string, or the error that says what the value is instead."""
    if value is None:
        raise _row_error("null_field", name, "is None (null)", f"Give every row a {name}.")
    if not isinstance(value, str):
        raise _row_error(
            "not_a_string",
            name,
            f"must be a string or a list of {{role, content}} messages, got {type(value).__name__}",
            f"Convert {name} to text.",
        )
    if not value.strip():
        raise _row_error(
            "empty_text", name, "is empty or only whitespace", f"Give every row a non-empty {name}."
        )
    return value


def _check_strength(value: Any) -> float:
    """A finite float >= 0 (numeric strings from CSV files are accepted)."""
    fix = "Strength must be a finite number >= 0 (e.g. annotator agreement); drop the column if unknown."
    if value is None:
        raise _row_error("null_field", "strength", "is None (null)", fix)
    number = value
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            raise _row_error("invalid_strength", "strength", f"is not a number: {value!r}", fix) from None
    if isinstance(number, bool) or not isinstance(number, int | float | np.integer | np.floating):
        raise _row_error("invalid_strength", "strength", f"is not a number: {value!r}", fix)
    if not math.isfinite(number) or number < 0:
        raise _row_error("invalid_strength", "strength", f"must be finite and >= 0, got {value!r}", fix)
    return float(number)


def _check_messages(name: str, messages: Any) -> Messages:
    """A non-empty list of {role, content} dicts with known roles and non-empty string content."""
    fix = "Each message must be {'role': 'user' | 'assistant' | 'system' | 'tool', 'content': '<text>'}."
    if not isinstance(messages, list) or not messages:
        raise _row_error("malformed_messages", name, "must be a non-empty list of messages", fix)
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise _row_error("malformed_messages", name, f"message {i} is not a dict", fix)
        for key in ("role", "content"):
            if key not in message or message[key] is None:
                raise _row_error("malformed_messages", name, f"message {i} has no '{key}'", fix)
        if message["role"] not in ROLES:
            raise _row_error(
                "malformed_messages", name, f"message {i} has unknown role {message['role']!r}", fix
            )
        if not isinstance(message["content"], str) or not message["content"].strip():
            raise _row_error("malformed_messages", name, f"message {i} has empty or non-text content", fix)
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def _check_role_order(prompt: Messages, completion: Messages, name: str) -> None:
    """System only first; the prompt ends with the user (or a tool); the completion starts with the
    assistant; user and assistant turns alternate (two user turns in a row are a formatting slip)."""
    fix = "Order messages as [system], user, assistant, user, ...; the completion starts with 'assistant'."
    roles = [m["role"] for m in prompt + completion]
    problem = None
    if "system" in roles[1:]:
        problem = f"has a 'system' message at position {roles.index('system', 1)}, not first"
    elif prompt[-1]["role"] not in ("user", "tool"):
        problem = f"follows a prompt that ends with a '{prompt[-1]['role']}' message, not 'user'"
    elif completion[0]["role"] != "assistant":
        problem = f"starts with a '{completion[0]['role']}' message, not 'assistant'"
    else:
        for i in range(1, len(roles)):
            if roles[i] == roles[i - 1] and roles[i] in ("user", "assistant"):
                problem = (
                    f"has two '{roles[i]}' messages in a row (positions {i - 1} and {i} of the conversation)"
                )
                break
    if problem:
        raise _row_error("malformed_messages", name, f"has a bad role order: it {problem}", fix)


# ----------------------------------------------------------------------------------------------
# Conversations
# ----------------------------------------------------------------------------------------------


def _has_chat_template(tokenizer: Any) -> bool:
    return tokenizer is not None and bool(getattr(tokenizer, "chat_template", None))


def render_conversation(prompt: Messages, completion: Messages, tokenizer: Any = None) -> tuple[str, str]:
    """Render a conversational prompt and one completion to (prompt_text, completion_text).

    With a tokenizer that has a chat template, this is what TRL does: the prompt is rendered with
    the generation prompt (e.g. "<start_of_turn>model\\n"), the whole conversation is rendered, and
    the completion is what follows the prompt text. Without one, a plain "role: content" layout is
    used, so the data stays usable (and the tokenize step can re-render it with a template later).
    """
    if _has_chat_template(tokenizer):
        prompt_text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        full_text = tokenizer.apply_chat_template(prompt + completion, tokenize=False)
        if not full_text.startswith(prompt_text):
            raise _row_error(
                "malformed_messages",
                "prompt",
                "renders differently alone than as the start of the conversation with this chat template",
                "Use a chat template whose rendering of a prefix is a prefix of the full rendering.",
            )
        return prompt_text, full_text[len(prompt_text) :]
    prompt_text = "".join(f"{m['role']}: {m['content']}\n" for m in prompt) + "assistant: "
    rest = "".join(f"\n{m['role']}: {m['content']}" for m in completion[1:])
    return prompt_text, completion[0]["content"] + rest


def _common_prefix_messages(chosen: Messages, rejected: Messages) -> int:
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    return n


def _split_implicit_text(chosen: str, rejected: str) -> tuple[str, str, str]:
    """Implicit prompt for plain texts: the shared prefix, cut back to a whitespace boundary."""
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    if n < min(len(chosen), len(rejected)):  # do not split a word the two completions share a start of
        while n > 0 and not chosen[n - 1].isspace():
            n -= 1
    return chosen[:n], chosen[n:], rejected[n:]


def _normalise_texts(record: dict[str, Any], tokenizer: Any) -> dict[str, Any]:
    """Turn the three text fields of any format into strings; keep messages of conversations."""
    prompt, chosen, rejected = (record.get(name) for name in TEXT_FIELDS)
    conversational = isinstance(chosen, list) or isinstance(rejected, list) or isinstance(prompt, list)
    if not conversational:
        if "prompt" not in record:  # implicit prompt in plain text
            chosen, rejected = _check_text("chosen", chosen), _check_text("rejected", rejected)
            prompt, chosen, rejected = _split_implicit_text(chosen, rejected)
            if not prompt.strip():
                raise _row_error(
                    "missing_field",
                    "prompt",
                    "is missing and chosen/rejected share no leading text to take it from",
                    "Add a prompt column or map one with column_map={'prompt': '<column>'}.",
                )
        return {"prompt": _check_text("prompt", prompt), "chosen": _check_text("chosen", chosen),
                "rejected": _check_text("rejected", rejected)}  # fmt: skip
    return _normalise_conversation(prompt, chosen, rejected, "prompt" in record, tokenizer)


def _normalise_conversation(prompt: Any, chosen: Any, rejected: Any, explicit: bool, tokenizer: Any) -> dict:
    for name, value in (("prompt", prompt), ("chosen", chosen), ("rejected", rejected)):
        if (explicit or name != "prompt") and not isinstance(value, list):
            if value is None:
                raise _row_error("null_field", name, "is None (null)", f"Give every row a {name}.")
            raise _row_error(
                "mixed_formats",
                name,
                f"is a {type(value).__name__} while other fields are message lists",
                "Use one format per row: all strings, or all lists of {role, content} messages.",
            )
    chosen, rejected = _check_messages("chosen", chosen), _check_messages("rejected", rejected)
    if explicit:
        prompt = _check_messages("prompt", prompt)
    else:  # implicit prompt: the shared leading messages
        n = _common_prefix_messages(chosen, rejected)
        if n == 0:
            raise _row_error(
                "missing_field",
                "prompt",
                "is missing and chosen/rejected share no leading messages to take it from",
                "Add a prompt column or map one with column_map={'prompt': '<column>'}.",
            )
        prompt, chosen, rejected = chosen[:n], chosen[n:], rejected[n:]
        for name, part in (("chosen", chosen), ("rejected", rejected)):
            if not part:
                raise _row_error(
                    "identical_pair", name, "has nothing after the shared prompt", "Drop the row."
                )
    _check_role_order(prompt, chosen, "chosen")
    _check_role_order(prompt, rejected, "rejected")
    prompt_text, chosen_text = render_conversation(prompt, chosen, tokenizer)
    _, rejected_text = render_conversation(prompt, rejected, tokenizer)
    return {"prompt": prompt_text, "chosen": chosen_text, "rejected": rejected_text,
            "prompt_messages": prompt, "chosen_messages": chosen, "rejected_messages": rejected}  # fmt: skip


def _normalise_record(record: dict[str, Any], language: str | None, tokenizer: Any) -> dict[str, Any]:
    """One raw row (already column-mapped) -> a validated record; raises PreferenceDataError."""
    for name in ("chosen", "rejected"):
        if name not in record:
            raise _row_error(
                "missing_field",
                name,
                "is missing",
                f"Add it, or map an existing column to it with column_map={{'{name}': '<column>'}}.",
            )
    out = _normalise_texts(record, tokenizer)
    if out["chosen"] == out["rejected"]:
        raise _row_error(
            "identical_pair", "rejected", "is identical to chosen", "A pair needs two different completions."
        )
    if language is not None:
        out["language"] = language
    elif "language" not in record:
        raise _row_error(
            "missing_field", "language", "is missing", "Pass language='xx' or map a column to it."
        )
    else:
        out["language"] = normalize_language(record["language"])
    if "strength" in record:
        out["strength"] = _check_strength(record["strength"])
    return out


# ----------------------------------------------------------------------------------------------
# Reading sources into raw rows
# ----------------------------------------------------------------------------------------------


@dataclass
class _RawRow:
    """One row as read: its data, or the error that reading it gave (invalid JSON, bad bytes)."""

    row: int
    line: int | None
    data: dict[str, Any] | None
    error: PreferenceDataError | None = None
    config: str | None = None


def _file_error(
    what: str, fix: str, source: str, reason: str, line: int | None = None
) -> PreferenceDataError:
    return PreferenceDataError(what, reason=reason, fix=fix, source=source, line=line)


def _read_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    if not data.strip():
        raise _file_error(
            "the file is empty", "Point to a file with at least one row.", str(path), "empty_file"
        )
    return data


def _decode_lines(data: bytes, path: Path) -> Iterator[tuple[int, str | PreferenceDataError]]:
    """(1-based line number, text or decoding error) for each non-blank line of a UTF-8 file."""
    if data.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte-order mark, as some editors write
        data = data[3:]
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            yield number, raw.decode("utf-8")
        except UnicodeDecodeError as error:
            yield (
                number,
                PreferenceDataError(
                    f"is not valid UTF-8 (byte {raw[error.start]:#04x} at column {error.start + 1})",
                    reason="undecodable_bytes",
                    fix="Re-save the file as UTF-8." + _SKIP_HINT,
                ),
            )


def _parse_json_line(text: str) -> dict[str, Any] | PreferenceDataError:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        return PreferenceDataError(
            f"is not valid JSON ({error.msg} at column {error.colno})",
            reason="invalid_json",
            fix="Write one JSON object per line." + _SKIP_HINT,
        )
    if not isinstance(value, dict):
        return PreferenceDataError(
            f"is a JSON {type(value).__name__}, not an object",
            reason="invalid_json",
            fix="Write one JSON object per line." + _SKIP_HINT,
        )
    return value


def _read_json_lines(path: Path, data: bytes | None = None) -> list[_RawRow]:
    """JSON lines: a bad line (bytes or syntax) becomes that row's error, so on_error='skip' can drop it."""
    rows = []
    for number, item in _decode_lines(_read_bytes(path) if data is None else data, path):
        parsed = item if isinstance(item, PreferenceDataError) else _parse_json_line(item)
        if isinstance(parsed, PreferenceDataError):
            rows.append(_RawRow(len(rows), number, None, parsed))
        else:
            rows.append(_RawRow(len(rows), number, parsed))
    return rows


def _decode_whole(data: bytes, path: Path) -> str:
    """The file as text, or an error naming the line of the first undecodable byte."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise _file_error(
            f"is not valid UTF-8 (byte {data[error.start]:#04x})", "Re-save the file as UTF-8.", str(path),
            "undecodable_bytes", line,
        ) from None  # fmt: skip


def _read_json(path: Path) -> list[_RawRow]:
    """A .json file: an array of objects, {"<key>": [objects]}, one object, or JSON lines.

    A whole-file JSON document cannot be read row by row: a syntax error in it stops the load
    (with its line). Anything that is not one JSON document is read as JSON lines.
    """
    data = _read_bytes(path)
    try:
        document = json.loads(_decode_whole(data, path))
    except (json.JSONDecodeError, PreferenceDataError) as error:
        if data.lstrip(b"\xef\xbb\xbf \t\r\n")[:1] == b"[" and isinstance(error, json.JSONDecodeError):
            what = f"is not valid JSON ({error.msg})"
            raise _file_error(what, "Fix the JSON.", str(path), "invalid_json", error.lineno) from None
        return _read_json_lines(path, data)
    if isinstance(document, dict):
        lists = [v for v in document.values() if isinstance(v, list)]
        single_table = len(document) == 1 and lists and all(isinstance(x, dict) for x in lists[0])
        document = lists[0] if single_table else [document]
    if not document:
        raise _file_error("the file holds an empty list", "Add rows.", str(path), "empty_file")
    return [_RawRow(i, None, x) if isinstance(x, dict) else _not_a_dict(i, x) for i, x in enumerate(document)]


def _read_csv(path: Path) -> list[_RawRow]:
    """A CSV file with a header; line numbers are where each record ends (records may span lines).

    Undecodable bytes stop the load (with their line): a CSV cannot be re-synchronised row by row.
    """
    reader = csv.DictReader(io.StringIO(_decode_whole(_read_bytes(path), path), newline=""))
    rows = []
    for record in reader:
        # Extra cells beyond the header come under the key None: they are not a field.
        rows.append(_RawRow(len(rows), reader.line_num, {k: v for k, v in record.items() if k is not None}))
    if not rows:
        raise _file_error("has a header but no rows", "Add rows.", str(path), "empty_file")
    return rows


def _not_a_dict(row: int, value: Any) -> _RawRow:
    what = f"is a {type(value).__name__}, not a dict of fields"
    return _RawRow(row, None, None, _row_error("not_a_dict", None, what, "Pass a list of dicts."))


def _dataset_rows(dataset: datasets.Dataset, config: str | None = None) -> list[_RawRow]:
    return [_RawRow(i, None, record, None, config) for i, record in enumerate(dataset.to_list())]


def _looks_like_path(source: str) -> bool:
    """Hub ids are "name" or "owner/name"; anything with a file suffix or path syntax is a path."""
    return (
        source.lower().endswith(_FILE_SUFFIXES)
        or source.startswith(("/", ".", "~"))
        or source.count("/") > 1
        or "\\" in source
    )


def _load_hub(source: str, split: str, config: str | None, hub_kwargs: Mapping[str, Any]) -> datasets.Dataset:
    """datasets.load_dataset for a hub id or a local folder laid out as a hub repository."""
    if Path(source).is_dir():
        # datasets 5.2 caches a folder whose README declares configs by config name alone, so an
        # edited file would be served stale from the cache; re-reading local files is cheap.
        hub_kwargs = {"download_mode": "force_redownload", **hub_kwargs}
    try:
        loaded = datasets.load_dataset(source, name=config, split=split, **hub_kwargs)
    except (FileNotFoundError, ConnectionError) as error:
        offline = datasets.config.HF_HUB_OFFLINE
        hint = " HF_HUB_OFFLINE is set: only data sets already in the local cache load." if offline else ""
        raise PreferenceDataError(
            f"could not be loaded ({error})", reason="not_found", source=source,
            fix="Check the path or hub id, config and split." + hint,
        ) from error  # fmt: skip
    except ValueError as error:  # unknown split or config: datasets lists the available ones
        raise PreferenceDataError(
            f"could not be loaded with config={config!r}, split={split!r} ({error})",
            reason="bad_split_or_config",
            source=source,
            fix="Pass one of the configs/splits listed.",
        ) from error
    if len(loaded) == 0:
        raise PreferenceDataError(f"split {split!r} is empty", reason="empty_file", source=source, fix="")
    return loaded


def _read_source(
    source: Any, split: str, configs: list[str | None], hub_kwargs: Mapping[str, Any]
) -> tuple[list[_RawRow], str]:
    """Rows of any supported source, and a name for messages."""
    if isinstance(source, datasets.DatasetDict):
        if split not in source:
            raise PreferenceDataError(
                f"has no split {split!r}", reason="bad_split_or_config", source="DatasetDict",
                fix=f"Pass split= one of {list(source)}.",
            )  # fmt: skip
        source = source[split]
    if isinstance(source, datasets.Dataset):
        return _dataset_rows(source), "Dataset"
    if isinstance(source, Sequence) and not isinstance(source, str | bytes):
        return [
            _RawRow(i, None, dict(r)) if isinstance(r, Mapping) else _not_a_dict(i, r)
            for i, r in enumerate(source)
        ], "list"
    name = os.fspath(source)
    path = Path(name).expanduser()
    if path.is_file():
        readers = {".jsonl": _read_json_lines, ".json": _read_json, ".csv": _read_csv}
        if path.suffix.lower() in readers:
            return readers[path.suffix.lower()](path), str(path)
        if path.suffix.lower() == ".parquet":
            # Read directly: no cache copy of a local file (and nothing stale to reuse).
            records = pq.read_table(path).to_pylist()
            return [_RawRow(i, None, record) for i, record in enumerate(records)], str(path)
        raise PreferenceDataError(
            f"has an unsupported file type {path.suffix!r}", reason="unsupported_file", source=name,
            fix=f"Use one of {', '.join(_FILE_SUFFIXES)}, or load it into a datasets.Dataset first.",
        )  # fmt: skip
    if not path.exists() and _looks_like_path(name):
        raise PreferenceDataError(
            "does not exist", reason="not_found", source=name,
            fix=f"Check the path (relative paths start at {Path.cwd()}).",
        )  # fmt: skip
    if path.is_dir() and not any(path.iterdir()):
        raise PreferenceDataError(
            "is an empty folder", reason="empty_file", source=name, fix="Add data files."
        )
    rows: list[_RawRow] = []
    for config in configs:  # a hub id, or a folder laid out like a hub repository
        for raw in _dataset_rows(
            _load_hub(str(path) if path.exists() else name, split, config, hub_kwargs), config
        ):
            raw.row = len(rows)
            rows.append(raw)
    return rows, name


# ----------------------------------------------------------------------------------------------
# load_preferences
# ----------------------------------------------------------------------------------------------


def _apply_column_map(data: Mapping[str, Any], column_map: Mapping[str, ColumnSource]) -> dict[str, Any]:
    """Rename/compute fields: ``{target: source_column or callable(row)}``; sources are consumed."""
    out = {k: v for k, v in data.items() if k not in column_map.values() and k not in column_map}
    for target, src in column_map.items():
        if not callable(src):
            if src in data:
                out[target] = data[src]
            continue
        try:
            out[target] = src(data)
        except Exception as error:  # a user's function: any failure is this row's problem
            what = f"could not be computed by column_map: {type(error).__name__}: {error}"
            raise _row_error("column_map_failed", target, what, "Fix the function or the row.") from error
    return out


def _check_columns(rows: list[_RawRow], column_map: Mapping[str, ColumnSource], name: str) -> None:
    """Fail once, before the row loop, when column_map names a column the data does not have."""
    columns = set().union(*(r.data.keys() for r in rows if r.data is not None))
    missing = {t: s for t, s in column_map.items() if isinstance(s, str) and s not in columns}
    if missing and columns:
        raise PreferenceDataError(
            f"column_map refers to columns the data does not have: {missing}",
            reason="missing_field",
            field=next(iter(missing)),
            source=name,
            fix=f"The columns are {sorted(columns)}.",
        )


def _config_language(config: str | None) -> str | None:
    """A per-language config name ("deu_Latn", "fr") as a language, when it is one."""
    if not config:
        return None
    try:
        return normalize_language(config)
    except PreferenceDataError:
        return None


def _default_language(
    rows: list[_RawRow], column_map: Mapping[str, ColumnSource], language: str | None, name: str
) -> str | None:
    """Normalise the language argument; fail early when no row could have a language at all."""
    if language is not None:
        try:
            return normalize_language(language)
        except PreferenceDataError as error:
            raise PreferenceDataError(error.what, reason=error.reason, field="language", source=name,
                                      fix="Fix the language= argument.") from None  # fmt: skip
    has_column = "language" in column_map or any(r.data is not None and "language" in r.data for r in rows)
    if not has_column and not any(_config_language(r.config) for r in rows):
        raise PreferenceDataError(
            "is missing: the data has no language column",
            reason="missing_field",
            field="language",
            source=name,
            fix="Pass language='xx' (BCP-47) or map a column with column_map={'language': '<column>'}.",
        )
    return None


def _validate_rows(
    rows: list[_RawRow],
    *,
    column_map: Mapping[str, ColumnSource],
    language: str | None,
    tokenizer: Any,
    on_error: str,
    report: ValidationReport,
    limit: int | None = None,
    metadata: Sequence[str] | None = None,
) -> tuple[list[dict[str, Any]], list[int]]:
    """Validated records and their source row numbers; bad rows raise or go to the report.

    Stops after ``limit`` valid records; keeps only the ``metadata`` columns beside the record
    fields (all of them when None).
    """
    records, kept_rows = [], []
    for raw in rows:
        if limit is not None and len(records) >= limit:
            break
        try:
            if raw.error is not None:
                raise raw.error
            data = _apply_column_map(raw.data, column_map)
            row_language = language or (None if "language" in data else _config_language(raw.config))
            record = _normalise_record(data, row_language, tokenizer)
        except PreferenceDataError as error:
            where = report.source + (f" [config {raw.config}]" if raw.config else "")
            located = error.located(row=raw.row, line=raw.line, source=where)
            if on_error == "raise":
                raise located from None
            report.add_skip(located)
            continue
        extras = {
            k: v
            for k, v in data.items()
            if k not in RECORD_FIELDS and k not in record and (metadata is None or k in metadata)
        }
        records.append({**extras, **record})
        kept_rows.append(raw.row)
    return records, kept_rows


def _warn_duplicates(records: list[dict[str, Any]], rows: list[int], report: ValidationReport) -> None:
    """Duplicated pairs are kept (they may be deliberate) but counted and warned about."""
    first_seen: dict[tuple, int] = {}
    pairs = []
    for record, row in zip(records, rows, strict=True):
        key = (record["prompt"], record["chosen"], record["rejected"], record["language"])
        if key in first_seen:
            pairs.append((row, first_seen[key]))
        else:
            first_seen[key] = row
    if pairs:
        report.duplicates = len(pairs)
        report.duplicate_rows = [row for row, _ in pairs[:5]]
        shown = ", ".join(f"row {row} repeats row {first}" for row, first in pairs[:5])
        warnings.warn(
            f"{report.source}: {len(pairs)} duplicated pairs (same prompt, chosen, rejected, language): "
            f"{shown}. They are kept; drop them if they are not deliberate.",
            stacklevel=3,
        )


def _records_to_dataset(records: list[dict[str, Any]]) -> datasets.Dataset:
    """Columns in a fixed order: the record fields first, then messages, then metadata."""
    names = list(dict.fromkeys(name for record in records for name in record))
    first = [n for n in (*RECORD_FIELDS, *MESSAGE_FIELDS) if n in names]
    ordered = first + [n for n in names if n not in first]
    return datasets.Dataset.from_dict({n: [r.get(n) for r in records] for n in ordered})


def load_preferences(
    source: Any,
    *,
    split: str = "train",
    config: str | Sequence[str] | None = None,
    column_map: Mapping[str, ColumnSource] | None = None,
    language: str | None = None,
    on_error: Literal["raise", "skip"] = "raise",
    tokenizer: Any = None,
    limit: int | None = None,
    seed: int = 0,
    metadata: Sequence[str] | None = None,
    return_report: bool = False,
    **hub_kwargs: Any,
) -> datasets.Dataset | tuple[datasets.Dataset, ValidationReport]:
    """Load preference pairs from any source and format, validated, as one ``datasets.Dataset``.

    Args:
        source: a hub id ("owner/name"); a local .jsonl / .json / .csv / .parquet file; a local
            folder laid out like a hub repository (data files, or a README with ``configs``); a
            list of dicts; a ``datasets.Dataset`` or ``DatasetDict``.
        split: the split to read (hub ids, folders, DatasetDicts).
        config: a hub config name, or several (concatenated). When the data has no language
            column, a config named by a language ("deu_Latn", "fr") gives its rows' language,
            as in multilingual benchmarks with one config per language.
        column_map: ``{field: source column}`` or ``{field: callable(row) -> value}``, e.g.
            ``{"prompt": "question", "strength": lambda r: r["score_chosen"] - r["score_rejected"]}``.
            Mapped source columns are consumed; other unmapped columns are kept as metadata.
        language: the language of every row (overrides any language column).
        on_error: "raise" stops at the first bad row with a PreferenceDataError; "skip" drops bad
            rows, logs a summary and records them in the ValidationReport. Problems with the whole
            source (missing path, empty file, unknown column in column_map) always raise.
        tokenizer: renders conversational rows with its chat template (else a plain layout).
        limit: keep at most this many pairs, drawn at random (``seed``) *before* validation: the
            rows are shuffled and validated in that order until ``limit`` are valid, so a subset of
            a large data set costs the subset's validation, not the whole set's.
        seed: the shuffle of ``limit``.
        metadata: the unmapped source columns to keep as metadata (default: all of them); e.g.
            ``[]`` keeps only the record fields.
        **hub_kwargs: passed to ``datasets.load_dataset`` for hub ids and folders, e.g.
            ``revision``, ``cache_dir``, ``data_dir``, ``token``.
        return_report: also return the :class:`ValidationReport`.

    Returns:
        A Dataset with columns prompt, chosen, rejected, language (+ strength when the data has
        it; + prompt_messages, chosen_messages, rejected_messages for conversational data; + every
        other source column as metadata), or ``(dataset, report)`` with ``return_report=True``.
        Duplicated pairs are kept, counted in the report, and warned about (UserWarning).
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error={on_error!r}: use 'raise' or 'skip'")
    configs = [config] if config is None or isinstance(config, str) else list(config)
    rows, name = _read_source(source, split, configs, hub_kwargs)
    if not rows:
        raise PreferenceDataError("holds no rows", reason="empty_file", source=name, fix="Add rows.")
    column_map = dict(column_map or {})
    _check_columns(rows, column_map, name)
    language = _default_language(rows, column_map, language, name)
    if limit is not None:
        if limit < 1:
            raise ValueError(f"limit={limit}: keep at least one pair, or pass limit=None for all")
        rows = [rows[i] for i in np.random.default_rng(seed).permutation(len(rows))]
    report = ValidationReport(source=name, n_read=len(rows))
    records, kept_rows = _validate_rows(
        rows,
        column_map=column_map,
        language=language,
        tokenizer=tokenizer,
        on_error=on_error,
        report=report,
        limit=limit,
        metadata=metadata,
    )
    if not records:
        raise PreferenceDataError(
            f"has no valid rows ({report})", reason="no_valid_rows", source=name, fix=str(report.messages)
        )
    _warn_duplicates(records, kept_rows, report)
    if limit is not None:  # only the rows examined until the limit was reached
        report.n_read = len(records) + report.n_skipped
    report.n_kept = len(records)
    if report.skipped or report.duplicates:
        logger.warning("load_preferences: %s", report)
    dataset = _records_to_dataset(records)
    return (dataset, report) if return_report else dataset


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
    return {"prompt_input_ids": p, "chosen_input_ids": c, "rejected_input_ids": r,
            "prompt_truncated": prompt_cut, "completion_truncated": completion_cut}  # fmt: skip


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
            report.rows_truncated, report.n_rows, report.prompt_truncated, report.completion_truncated,
            report.truncated_rows,
        )  # fmt: skip
    dropped = set() if keep_text else {*TEXT_FIELDS, *MESSAGE_FIELDS}
    kept = dataset.remove_columns([c for c in dataset.column_names if c in dropped or c in TOKEN_FIELDS])
    token_feature = datasets.Sequence(datasets.Value("int32"))
    for name, column in zip(TOKEN_FIELDS, (prompt_ids, chosen_ids, rejected_ids), strict=True):
        kept = kept.add_column(name, column, feature=token_feature)
    kept = kept.select_columns([*TOKEN_FIELDS, *[c for c in kept.column_names if c not in TOKEN_FIELDS]])
    return (kept, report) if return_report else kept


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


# ----------------------------------------------------------------------------------------------
# Per-language statistics
# ----------------------------------------------------------------------------------------------


def language_statistics(dataset: datasets.Dataset, tokenizer: Any) -> pd.DataFrame:
    """Per language: rows, mean characters and tokens per pair, and tokens per character.

    A pair's text is prompt + chosen + rejected; characters are Unicode code points; tokens are
    counted without special tokens. ``tokens_per_char`` (tokenizer fertility) is total tokens over
    total characters: the same content costs more tokens in some scripts. ``bytes_per_char`` is the
    UTF-8 size, which a byte-level tokenizer starts from (1 for ASCII, 2 for Cyrillic, 3 for Thai).

    Returns:
        DataFrame with columns language, [script], rows, mean_chars, mean_tokens, tokens_per_char,
        bytes_per_char; one row per language, sorted by language.
    """
    columns = ["language", *TEXT_FIELDS] + (["script"] if "script" in dataset.column_names else [])
    frame = dataset.select_columns(columns).to_pandas()
    texts = [t for name in TEXT_FIELDS for t in frame[name].tolist()]
    counts = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    n = len(frame)
    frame["tokens"] = np.add.reduce([np.asarray(counts[k * n : (k + 1) * n]) for k in range(3)])
    frame["chars"] = sum(frame[name].str.len() for name in TEXT_FIELDS)
    frame["bytes"] = sum(frame[name].map(lambda s: len(s.encode("utf-8"))) for name in TEXT_FIELDS)
    keys = ["language", "script"] if "script" in columns else ["language"]
    stats = frame.groupby(keys, sort=True).agg(
        rows=("tokens", "size"),
        mean_chars=("chars", "mean"),
        mean_tokens=("tokens", "mean"),
        tokens=("tokens", "sum"),
        chars=("chars", "sum"),
        bytes=("bytes", "sum"),
    )
    stats["tokens_per_char"] = stats["tokens"] / stats["chars"]
    stats["bytes_per_char"] = stats["bytes"] / stats["chars"]
    return stats.drop(columns=["tokens", "chars", "bytes"]).reset_index()
