"""Generating the testbed: prompts split by group between train, validation and test, one clean pair
per prompt, then label noise (random, by resource tier, or systematic) on the train split only.
:func:`make_testbed` is the entry point; ``COLUMNS`` and ``FEATURES`` are its schema.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import datasets

from capo_tutorial.testbed.languages import (
    _TEMPLATES,
    ALL_LANGUAGES,
    DEFAULT_LANGUAGES,
    RESOURCE_TIERS,
    script_of,
)
from capo_tutorial.testbed.tasks import _TASKS, TASK_WEIGHTS, _Config, _Task

__all__ = [
    "COLUMNS",
    "FEATURES",
    "NOISE_PATTERNS",
    "SPLITS",
    "TIER_NOISE_FACTORS",
    "make_testbed",
    "resource_noise",
    "tiered_noise",
]

SPLITS: tuple[str, ...] = ("train", "validation", "test")

COLUMNS: tuple[str, ...] = (
    "prompt",
    "chosen",
    "rejected",
    "language",
    "script",
    "task",
    "margin_class",
    "flipped",
    "noise_kind",
    "systematic_candidate",
    "pair_id",
)

FEATURES = datasets.Features(
    {
        name: datasets.Value("bool" if name in ("flipped", "systematic_candidate") else "string")
        for name in COLUMNS
    }
)


# ----------------------------------------------------------------------------------------------
# Generation
# ----------------------------------------------------------------------------------------------


def _rng(seed: int, *parts: object) -> random.Random:
    """An independent, reproducible stream per purpose (str seeds hash with SHA-512, not hash())."""
    return random.Random("/".join(map(str, (seed, *parts))))


def _allocate(total: int, weights: Mapping[str, float]) -> dict[str, int]:
    """Split ``total`` into integer parts proportional to ``weights`` (largest remainder, stable)."""
    norm = sum(weights.values())
    exact = {k: total * w / norm for k, w in weights.items()}
    counts = {k: math.floor(v) for k, v in exact.items()}
    by_remainder = sorted(weights, key=lambda k: -(exact[k] - counts[k]))  # stable: ties keep order
    for k in by_remainder[: total - sum(counts.values())]:
        counts[k] += 1
    return counts


def _split_pool(
    keys: list[Any], needs: Mapping[str, int], group: Callable[[Any], Any]
) -> dict[str, list[Any]]:
    """Cut a shuffled key universe into disjoint per-split pools sized like the splits' needs;
    keys of one group (a decade of numbers) always land in the same split."""
    groups: dict[Any, list[Any]] = {}
    for key in keys:  # groups in the shuffled order of their first key
        groups.setdefault(group(key), []).append(key)
    active = {s: n for s, n in needs.items() if n > 0}
    if len(groups) < len(active):
        raise ValueError(f"only {len(groups)} groups of prompts for {len(active)} splits")
    sizes = _allocate(len(groups), active)
    for s in active:  # every split that needs rows gets at least one group
        if sizes[s] == 0:
            sizes[max(sizes, key=sizes.get)] -= 1
            sizes[s] = 1
    ordered, pools, start = list(groups.values()), {s: [] for s in needs}, 0
    for s in active:
        pools[s] = [key for members in ordered[start : start + sizes[s]] for key in members]
        start += sizes[s]
    return pools


def _is_candidate(task: _Task, value: Any, cfg: _Config) -> bool:
    """The systematic rule's pattern: a number ending in one of the digits (0-8: n+1 stays in n's
    decade, hence in n's split), with n+1 in range."""
    return task.pool == "number" and value % 10 in cfg.systematic_digits and value < cfg.max_number


def _pair_id(language: str, task: str, prompt: str, answer: str, distractor: str) -> str:
    digest = hashlib.sha1("\x1f".join((language, task, prompt, answer, distractor)).encode()).hexdigest()
    return f"{language}-{task}-{digest[:12]}"


def _make_pair(
    task: _Task, language: str, key: Any, pool: Sequence[Any], cfg: _Config, rng: random.Random, used: set
) -> dict[str, Any] | None:
    """One clean pair for ``key``, or None when every distractor of it is already used."""
    value = task.truth(key)
    answer = task.render(language, value)
    if _is_candidate(task, value, cfg):
        # Candidates are always the near miss n+1, in every split, so that the clean test split
        # holds exactly the pairs on which a learned systematic bias would show.
        options = [("low", [value + 1])]
    else:
        first = "low" if rng.random() < cfg.low_margin_fraction else "high"
        second = "high" if first == "low" else "low"
        pick = {"low": task.near, "high": task.far}
        options = [(first, pick[first](key, cfg, rng, pool)), (second, pick[second](key, cfg, rng, pool))]
    for margin, wrong_values in options:
        for wrong in wrong_values:
            distractor = task.render(language, wrong)
            if distractor == answer or (key, wrong) in used:
                continue
            used.add((key, wrong))
            prompt = task.prompt(language, key)
            return {
                "prompt": prompt,
                "chosen": answer,
                "rejected": distractor,
                "language": language,
                "script": script_of(language),
                "task": task.name,
                "margin_class": margin,
                "flipped": False,
                "noise_kind": "none",
                "systematic_candidate": _is_candidate(task, value, cfg),
                "pair_id": _pair_id(language, task.name, prompt, answer, distractor),
            }
    return None


def _task_rows(
    task: _Task, language: str, pool: list[Any], n_rows: int, cfg: _Config, rng: random.Random
) -> list[dict[str, Any]]:
    """``n_rows`` distinct pairs whose prompts all come from ``pool`` (cycled when it is small)."""
    order = list(pool)
    rng.shuffle(order)
    rows: list[dict[str, Any]] = []
    used: set = set()
    index, misses = 0, 0
    while len(rows) < n_rows:
        if misses > len(order):
            raise ValueError(
                f"testbed: {language}/{task.name} ran out of distinct pairs after {len(rows)} rows; "
                "ask for fewer rows or more languages"
            )
        pair = _make_pair(task, language, order[index % len(order)], pool, cfg, rng, used)
        index += 1
        if pair is None:
            misses += 1
            continue
        misses = 0
        rows.append(pair)
    return rows


def _language_rows(
    language: str, counts: Mapping[str, Mapping[str, int]], cfg: _Config, seed: int
) -> dict[str, list[dict[str, Any]]]:
    """All clean rows of one language: ``counts[split][task]`` rows each, prompts disjoint by split."""
    rows: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
    for pool_name in dict.fromkeys(t.pool for t in _TASKS.values()):
        tasks = [t for t in _TASKS.values() if t.pool == pool_name]
        needs = {s: sum(counts[s][t.name] for t in tasks) for s in SPLITS}
        if sum(needs.values()) == 0:
            continue
        rng = _rng(seed, "pool", language, pool_name)
        keys = tasks[0].universe(cfg, rng, sum(needs.values()))
        rng.shuffle(keys)
        pools = _split_pool(keys, needs, tasks[0].group)
        for split in SPLITS:
            for task in tasks:
                task_rng = _rng(seed, "rows", split, language, task.name)
                rows[split] += _task_rows(
                    task, language, pools[split], counts[split][task.name], cfg, task_rng
                )
    return rows


# ----------------------------------------------------------------------------------------------
# Noise
# ----------------------------------------------------------------------------------------------


def resource_noise(
    languages: Sequence[str] = DEFAULT_LANGUAGES, high: float = 0.1, mid: float = 0.2, low: float = 0.3
) -> dict[str, float]:
    """Per-language flip rates by ``RESOURCE_TIERS``: lower-resource languages get noisier labels.

    The default (what ``noise="resource"`` uses) is 0.1 / 0.2 / 0.3 for high / mid / low resource;
    over all 18 languages that averages 0.183.
    """
    by_tier = {1: high, 2: mid, 3: low}
    return {lang: by_tier[RESOURCE_TIERS.get(lang, 2)] for lang in languages}


TIER_NOISE_FACTORS = {1: 0.5, 2: 1.0, 3: 1.5}
"""Relative flip rates of high / mid / low resource languages under ``tiered_noise``."""

NOISE_PATTERNS = ("uniform", "near-miss")
"""Which train rows random flips hit: any row, or near misses (``margin_class`` "low") first."""


def tiered_noise(languages: Sequence[str], mean: float) -> dict[str, float]:
    """Per-language flip rates proportional to :data:`TIER_NOISE_FACTORS` of their resource tier,
    scaled so that their mean over ``languages`` is ``mean``: the same amount of noise as a uniform
    rate, spread as multilingual annotation spreads it (e.g. 0.2 / 0.4 for high / mid at 0.3 over
    the smoke profile's languages, half of them high resource)."""
    factors = {lang: TIER_NOISE_FACTORS[RESOURCE_TIERS.get(lang, 2)] for lang in languages}
    scale = mean * len(factors) / sum(factors.values())
    return {lang: factor * scale for lang, factor in factors.items()}


def _noise_rates(noise: float | Mapping[str, float] | str, languages: Sequence[str]) -> dict[str, float]:
    """Normalise the ``noise`` argument of make_testbed to one flip rate per language."""
    if isinstance(noise, str):
        if noise != "resource":
            raise ValueError(f"noise={noise!r}: use a float, a {{language: rate}} dict, or 'resource'")
        return resource_noise(languages)
    if isinstance(noise, Mapping):
        unknown = sorted(set(noise) - set(languages))
        if unknown:
            raise ValueError(f"noise names languages not in the testbed: {unknown}")
        rates = {lang: float(noise.get(lang, 0.0)) for lang in languages}
    else:
        rates = dict.fromkeys(languages, float(noise))
    for lang, rate in rates.items():
        if not 0.0 <= rate <= 0.5:
            raise ValueError(f"noise rate for {lang!r} is {rate}; it must be in [0, 0.5]")
    return rates


def _flip(row: dict[str, Any], kind: str) -> None:
    row["chosen"], row["rejected"] = row["rejected"], row["chosen"]
    row["flipped"] = True
    row["noise_kind"] = kind


def _inject_noise(
    rows: list[dict[str, Any]], rate: float, systematic: bool, rng: random.Random, pattern: str = "uniform"
) -> None:
    """Flip one language's train rows in place: the systematic rule first, then exactly
    round(rate * len(rows)) random rows among the rest.

    The random rows are taken in one fixed random order, so the rows flipped at rate 0.2 are a
    subset of those flipped at 0.4 (paired comparisons across noise levels). With ``pattern``
    "near-miss" the near-miss rows come first in that order (the clear errors only once every near
    miss is flipped): annotators disagree where the two answers are close.
    """
    if systematic:
        for row in rows:
            if row["systematic_candidate"]:
                _flip(row, "systematic")
    n_random = math.floor(rate * len(rows) + 0.5)
    order = list(range(len(rows)))
    rng.shuffle(order)
    eligible = [i for i in order if not rows[i]["flipped"]]
    if pattern == "near-miss":
        eligible.sort(key=lambda i: rows[i]["margin_class"] != "low")  # stable: near misses first
    if n_random > len(eligible):
        raise ValueError(f"cannot flip {n_random} rows at random: only {len(eligible)} are left")
    for i in eligible[:n_random]:
        _flip(rows[i], "random")


# ----------------------------------------------------------------------------------------------
# make_testbed: check the arguments, generate every language, shuffle each split
# ----------------------------------------------------------------------------------------------


def _task_weights(tasks: Mapping[str, float] | None) -> dict[str, float]:
    weights = dict(TASK_WEIGHTS if tasks is None else tasks)
    unknown = sorted(set(weights) - set(_TASKS))
    if unknown or any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
        raise ValueError(f"tasks={weights}: give non-negative weights over {list(_TASKS)}, not all zero")
    return {name: weights.get(name, 0.0) for name in _TASKS}


def _check_languages(languages: Sequence[str] | None) -> tuple[str, ...]:
    languages = tuple(DEFAULT_LANGUAGES if languages is None else languages)
    unknown = [lang for lang in languages if lang not in _TEMPLATES]
    if unknown or not languages or len(set(languages)) != len(languages):
        raise ValueError(f"languages={list(languages)}: pick distinct codes from {list(ALL_LANGUAGES)}")
    return languages


def make_testbed(
    languages: Sequence[str] | None = None,
    n_train: int = 3000,
    n_validation: int = 600,
    n_test: int = 600,
    noise: float | Mapping[str, float] | str = 0.0,
    seed: int = 0,
    *,
    systematic: Sequence[str] = (),
    systematic_digits: Sequence[int] = (7,),
    max_number: int = 999,
    low_margin_fraction: float = 0.5,
    tasks: Mapping[str, float] | None = None,
    noise_pattern: str = "uniform",
) -> datasets.DatasetDict:
    """Generate the testbed: a DatasetDict with splits "train", "validation" and "test".

    Args:
        languages: codes from ``ALL_LANGUAGES`` (default: all 18, 10 scripts). Rows are shared
            equally between languages, and within a language between tasks by ``TASK_WEIGHTS``.
        n_train, n_validation, n_test: rows (pairs) per split.
        noise: random label noise on the train split: one rate for every language, a
            ``{language: rate}`` dict (others 0), or "resource" for ``resource_noise(languages)``
            (lower-resource languages noisier). Rates in [0, 0.5]. Exactly
            ``round(rate * n)`` of a language's n train rows are flipped, so the realised rate is
            within ``0.5 / n`` of the asked one (at most 0.003 at the default sizes).
        seed: the same seed (and arguments) gives identical rows, and identical bytes on disk.
        systematic: languages whose train labels carry a consistent, learnable bias, as a bad
            translation would: every "systematic candidate" pair (a number task whose answer n ends
            in one of ``systematic_digits``; its near miss is always n+1) is flipped, so that in
            this language's train data numbers ending in 7 are "answered" with n+1. Random noise
            is then drawn from the other rows. Candidates exist in every split and language
            (``systematic_candidate`` column); on the clean test split they reveal whether a model
            learned the bias. With the defaults about 7% of a language's rows are candidates.
        systematic_digits: the last digits the systematic rule applies to (0..8; more digits,
            more affected rows: (5, 6, 7, 8) affects about 28% of a language's rows).
        max_number: numbers are drawn from 0..max_number (>= 999). Numbers are split between
            train, validation and test by decade, so near misses (n +- 1) are unseen too.
        low_margin_fraction: share of near-miss pairs (candidates are always near misses).
        tasks: ``{task: weight}`` over the families of ``TASK_WEIGHTS`` (default), e.g.
            ``{"number_words": 1.0}`` for number words only, or adding ``"weekday_name"``.
        noise_pattern: which train rows the random flips hit (``NOISE_PATTERNS``): "uniform" (any
            row) or "near-miss" (a language's near-miss pairs first; at rates above its share of
            near misses, clear errors too).

    Returns:
        DatasetDict of ``COLUMNS``; validation and test are clean (``flipped`` all False), and no
        prompt appears in two splits.
    """
    # Over 60 lines with its docstring (every argument explained): check the arguments, then one loop
    # over languages and one over splits; the parts are the functions above.
    languages = _check_languages(languages)
    sizes = {"train": n_train, "validation": n_validation, "test": n_test}
    if any(not isinstance(n, int) or n < 0 for n in sizes.values()):
        raise ValueError(f"split sizes must be non-negative integers, got {sizes}")
    if not 0.0 <= low_margin_fraction <= 1.0:
        raise ValueError(f"low_margin_fraction={low_margin_fraction} must be in [0, 1]")
    if max_number < 999:
        # Decades are split between splits: with fewer hundreds, every decade holding a tens word
        # ("forty") could be held out of train for some language, and nothing would teach it.
        raise ValueError(f"max_number={max_number} must be >= 999")
    if any(not 0 <= int(d) <= 8 for d in systematic_digits):
        raise ValueError(f"systematic_digits={list(systematic_digits)} must be in 0..8 (n+1 in n's decade)")
    unknown_systematic = sorted(set(systematic) - set(languages))
    if unknown_systematic:
        raise ValueError(f"systematic names languages not in the testbed: {unknown_systematic}")
    if noise_pattern not in NOISE_PATTERNS:
        raise ValueError(f"noise_pattern={noise_pattern!r}: use one of {NOISE_PATTERNS}")
    rates = _noise_rates(noise, languages)
    weights = _task_weights(tasks)
    cfg = _Config(max_number, low_margin_fraction, frozenset(int(d) for d in systematic_digits))

    per_language = {s: _allocate(n, dict.fromkeys(languages, 1.0)) for s, n in sizes.items()}
    splits: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
    for language in languages:
        counts = {s: _allocate(per_language[s][language], weights) for s in SPLITS}
        rows = _language_rows(language, counts, cfg, seed)
        noise_rng = _rng(seed, "noise", language)
        _inject_noise(rows["train"], rates[language], language in systematic, noise_rng, noise_pattern)
        for split in SPLITS:
            splits[split] += rows[split]
    for split, rows in splits.items():
        _rng(seed, "order", split).shuffle(rows)
    return datasets.DatasetDict(
        {
            split: datasets.Dataset.from_dict(
                {c: [row[c] for row in rows] for c in COLUMNS}, features=FEATURES, split=split
            )
            for split, rows in splits.items()
        }
    )
