"""The testbed's task families: for each, a universe of prompt keys, the prompt of a key, its one right
answer, and wrong answers a slip away (near misses, ``margin_class="low"``) or clearly wrong
(``"high"``). ``TASK_WEIGHTS`` is the default mix.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from capo_tutorial.testbed.languages import (
    _FIRST_DAY,
    _N_DAYS,
    _TEMPLATES,
    _day_names,
    _long_date,
    _month_names,
    _number_words,
)

__all__ = ["TASK_WEIGHTS"]

# Number words dominate. Every default family is compositional, so a test prompt is answerable
# from what the train prompts teach: number words from their parts, a long date from its day, month
# name and year, a date's month from its MM digits. "weekday_name" ("if today is Monday, what day is
# tomorrow?") is a closed set of 14 facts per language: holding some out of train leaves nothing to
# generalise from, and a tiny SFT'd model scored below chance on it, so it is off by default.
TASK_WEIGHTS: dict[str, float] = {
    "number_words": 0.60,
    "number_digits": 0.15,
    "date_long": 0.15,
    "month_name": 0.10,
    "weekday_name": 0.0,
}


# ----------------------------------------------------------------------------------------------
# Task families: a universe of prompt keys, the true value of a key, near and far wrong values
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Config:
    max_number: int
    low_margin_fraction: float
    systematic_digits: frozenset[int]


@dataclass(frozen=True)
class _Task:
    """One task family. Keys index prompts; values are what answers render from."""

    name: str
    pool: str  # tasks sharing a pool share the per-split prompt keys (numbers: words and digits)
    universe: Callable[[_Config, random.Random, int], list[Any]]
    prompt: Callable[[str, Any], str]
    truth: Callable[[Any], Any]
    render: Callable[[str, Any], str]
    # (key, cfg, rng, pool) -> wrong values a slip away / clearly wrong; pool = the split's keys
    near: Callable[[Any, _Config, random.Random, Sequence[Any]], list[Any]]
    far: Callable[[Any, _Config, random.Random, Sequence[Any]], list[Any]]
    group: Callable[[Any], Any] = lambda key: key  # keys of one group always share a split


def _number_universe(cfg: _Config, rng: random.Random, need: int) -> list[int]:
    return list(range(cfg.max_number + 1))


def _decade(n: int) -> int:
    """Numbers are split between train/validation/test by decade (40-49 together), so that a near
    miss (n +- 1, same decade) is as unseen in training as the answer itself. Splitting single
    numbers would make every test answer a string the model never produced while its neighbours
    (the distractors) were train answers: a memorising model then prefers the distractor, and a
    tiny SFT'd model scored below chance on clean test pairs."""
    return n // 10


def _near_numbers(n: int, cfg: _Config, rng: random.Random, pool: Sequence[int]) -> list[int]:
    """Off by one in the units, within n's decade: the answer differs in one word."""
    near = [m for m in (n - 1, n + 1) if m // 10 == n // 10 and 0 <= m <= cfg.max_number]
    rng.shuffle(near)
    return near


def _far_numbers(n: int, cfg: _Config, rng: random.Random, pool: Sequence[int]) -> list[int]:
    """Numbers of the same split with as many digits as n but a different digit in every position:
    clearly wrong, not a slip, and not given away by length or by having been seen in training."""
    digits = str(n)

    def far(m: int) -> bool:
        text = str(m)
        return len(text) == len(digits) and abs(m - n) >= 3 and all(a != b for a, b in zip(text, digits))

    out = [m for m in (rng.choice(pool) for _ in range(24)) if far(m)][:4]
    return out or [m for m in pool if far(m)][:4]  # short numbers are rare in a pool: look them up


def _cyclic(values: Sequence[int], modulus: int, offset: int = 0) -> list[int]:
    return [(v - offset) % modulus + offset for v in values]


def _weekday_universe(cfg: _Config, rng: random.Random, need: int) -> list[tuple[str, int]]:
    return [(kind, d) for kind in ("weekday_tomorrow", "weekday_yesterday") for d in range(7)]


def _weekday_prompt(language: str, key: tuple[str, int]) -> str:
    kind, d = key
    return _TEMPLATES[language][kind].format(day=_day_names(language)[d])


# The step a weekday question asks for: "tomorrow" +1, "yesterday" -1.
_STEPS: dict[str, int] = {"weekday_tomorrow": 1, "weekday_yesterday": -1}


def _weekday_truth(key: tuple[str, int]) -> int:
    kind, d = key
    return (d + _STEPS[kind]) % 7


def _near_steps(key: tuple[str, int], answer: int) -> list[int]:
    """Near misses of a weekday question: one step too far, or a step the wrong way.

    Never the prompt's own day: a model that merely copies the prompt would otherwise be pushed
    below chance on clean pairs, and a reference model's likelihood would call them flipped.
    """
    step = _STEPS[key[0]]
    return [answer + step, answer - 2 * step]


def _date_universe(cfg: _Config, rng: random.Random, need: int) -> list[int]:
    # A random sample of days is enough (and far cheaper than shuffling 36,524 of them).
    return rng.sample(range(_N_DAYS), min(_N_DAYS, 4 * need + 64))


def _date_parts(ordinal: int) -> dt.date:
    return _FIRST_DAY + dt.timedelta(days=ordinal)


def _near_dates(ordinal: int, cfg: _Config, rng: random.Random, pool: Sequence[int]) -> list[int]:
    """The day before/after, or the same day in the previous/next month: one part of the answer."""
    day = _date_parts(ordinal)
    candidates = [ordinal - 1, ordinal + 1]
    for month_shift in (-1, 1):
        month = (day.month - 1 + month_shift) % 12 + 1
        year = day.year + (day.month - 1 + month_shift) // 12
        try:
            candidates.append((dt.date(year, month, day.day) - _FIRST_DAY).days)
        except ValueError:  # 31 March -> 31 April does not exist
            pass
    rng.shuffle(candidates)
    return [c for c in candidates if 0 <= c < _N_DAYS]


def _far_dates(ordinal: int, cfg: _Config, rng: random.Random, pool: Sequence[int]) -> list[int]:
    """A different year (5-40 away), month (3-6 away) and day (5+ away): nothing shared."""
    day = _date_parts(ordinal)
    out = []
    for _ in range(16):
        year = day.year + rng.choice((-1, 1)) * rng.randint(5, 40)
        month = (day.month - 1 + rng.choice((-1, 1)) * rng.randint(3, 6)) % 12 + 1
        new_day = (day.day - 1 + rng.randint(5, 23)) % 28 + 1
        if 1950 <= year <= 2049 and abs(new_day - day.day) >= 5:
            out.append((dt.date(year, month, new_day) - _FIRST_DAY).days)
    return out


_TASKS: dict[str, _Task] = {
    "number_words": _Task(
        name="number_words",
        pool="number",
        universe=_number_universe,
        prompt=lambda lang, n: _TEMPLATES[lang]["number_words"].format(n=n),
        truth=lambda n: n,
        render=_number_words,
        near=_near_numbers,
        far=_far_numbers,
        group=_decade,
    ),
    "number_digits": _Task(
        name="number_digits",
        pool="number",
        universe=_number_universe,
        prompt=lambda lang, n: _TEMPLATES[lang]["number_digits"].format(words=_number_words(lang, n)),
        truth=lambda n: n,
        render=lambda lang, n: str(n),
        near=_near_numbers,
        far=_far_numbers,
        group=_decade,
    ),
    "date_long": _Task(
        name="date_long",
        pool="date",
        universe=_date_universe,
        prompt=lambda lang, o: _TEMPLATES[lang]["date_long"].format(date=_date_parts(o).isoformat()),
        truth=lambda o: o,
        render=_long_date,
        near=_near_dates,
        far=_far_dates,
    ),
    "month_name": _Task(
        name="month_name",
        pool="date",  # a test date is never a train date, in either date task
        universe=_date_universe,
        prompt=lambda lang, o: _TEMPLATES[lang]["month_name"].format(date=_date_parts(o).isoformat()),
        truth=lambda o: _date_parts(o).month,
        render=lambda lang, k: _month_names(lang)[k - 1],
        near=lambda o, cfg, rng, pool: rng.sample(
            _cyclic([_date_parts(o).month + d for d in (-1, 1)], 12, 1), 2
        ),
        far=lambda o, cfg, rng, pool: rng.sample(
            _cyclic([_date_parts(o).month + d for d in (5, 6, 7)], 12, 1), 3
        ),
    ),
    "weekday_name": _Task(
        name="weekday_name",
        pool="weekday",
        universe=_weekday_universe,
        prompt=_weekday_prompt,
        truth=_weekday_truth,
        render=lambda lang, d: _day_names(lang)[d],
        near=lambda key, cfg, rng, pool: rng.sample(_cyclic(_near_steps(key, _weekday_truth(key)), 7), 2),
        far=lambda key, cfg, rng, pool: rng.sample(_cyclic([_weekday_truth(key) + d for d in (3, 4)], 7), 2),
    ),
}
