"""The preference record: its schema (``RECORD_FIELDS``), the located errors and validation report,
the checks of each field, and conversations (chat messages) rendered to the text a record holds."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import langcodes
import numpy as np

__all__ = [
    "RECORD_FIELDS",
    "PreferenceDataError",
    "ValidationReport",
    "normalize_language",
    "render_conversation",
]

TEXT_FIELDS: tuple[str, ...] = ("prompt", "chosen", "rejected")
RECORD_FIELDS: tuple[str, ...] = (*TEXT_FIELDS, "language", "strength")
MESSAGE_FIELDS: tuple[str, ...] = tuple(f"{name}_messages" for name in TEXT_FIELDS)
TOKEN_FIELDS: tuple[str, ...] = tuple(f"{name}_input_ids" for name in TEXT_FIELDS)
ROLES: frozenset[str] = frozenset({"system", "user", "assistant", "tool"})
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
        return {
            "prompt": _check_text("prompt", prompt),
            "chosen": _check_text("chosen", chosen),
            "rejected": _check_text("rejected", rejected),
        }
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
    return {
        "prompt": prompt_text,
        "chosen": chosen_text,
        "rejected": rejected_text,
        "prompt_messages": prompt,
        "chosen_messages": chosen,
        "rejected_messages": rejected,
    }


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
