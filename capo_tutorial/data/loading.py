"""Reading preference data: a hub id, a JSON Lines, JSON, CSV or Parquet file, a list of records or a
Dataset, read into validated records, with ``column_map`` for any layout (:func:`load_preferences`)."""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import datasets
import numpy as np
import pyarrow.parquet as pq

from capo_tutorial.data.records import (
    _SKIP_HINT,
    MESSAGE_FIELDS,
    RECORD_FIELDS,
    ColumnSource,
    PreferenceDataError,
    ValidationReport,
    _normalise_record,
    _row_error,
    normalize_language,
)

__all__ = ["load_preferences"]

logger = logging.getLogger(__name__)

_FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")

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
            f"is not valid UTF-8 (byte {data[error.start]:#04x})",
            "Re-save the file as UTF-8.",
            str(path),
            "undecodable_bytes",
            line,
        ) from None


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
            f"could not be loaded ({error})",
            reason="not_found",
            source=source,
            fix="Check the path or hub id, config and split." + hint,
        ) from error
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
                f"has no split {split!r}",
                reason="bad_split_or_config",
                source="DatasetDict",
                fix=f"Pass split= one of {list(source)}.",
            )
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
            f"has an unsupported file type {path.suffix!r}",
            reason="unsupported_file",
            source=name,
            fix=f"Use one of {', '.join(_FILE_SUFFIXES)}, or load it into a datasets.Dataset first.",
        )
    if not path.exists() and _looks_like_path(name):
        raise PreferenceDataError(
            "does not exist",
            reason="not_found",
            source=name,
            fix=f"Check the path (relative paths start at {Path.cwd()}).",
        )
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
            raise PreferenceDataError(
                error.what,
                reason=error.reason,
                field="language",
                source=name,
                fix="Fix the language= argument.",
            ) from None
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
    # Over 60 lines with its docstring (every format and option): read, map columns, draw the row
    # limit, validate, report; each step is a function above.
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
