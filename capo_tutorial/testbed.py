"""An offline multilingual preference testbed with ground-truth labels.

Every pair is generated, deterministically, from language data that installed packages ship:
number words from ``num2words``, and month names, weekday names and long date formats from the
Unicode CLDR tables that ``babel`` carries. A prompt in the target language asks for something with
one right answer; ``chosen`` is that answer and ``rejected`` a wrong one, either a near miss
(``margin_class="low"``: 41 vs 42, March vs April) or clearly wrong (``"high"``). Because the
truth is known, label noise can be injected on the train split and measured exactly; the validation
and test splits stay clean, and no prompt appears in two splits.

The default tasks are compositional so that a tiny model can generalise from train prompts to
unseen test prompts: number words are built from shared parts (units, tens, hundreds), a long date
is a day, a month name and a year, and a date's month name follows from its MM digits (see
TASK_WEIGHTS for the optional weekday task, which is not).

Columns of every split (``COLUMNS``)::

    prompt, chosen, rejected   the request (target language), the preferred and dispreferred answer
    language                   BCP-47 code ("en", "ja", ...)
    script                     ISO 15924 code of the language's usual script ("Latn", "Jpan", ...)
    task                       task family, one of TASK_WEIGHTS
    margin_class               "low" (near miss) or "high" (clearly wrong)
    flipped                    True when noise swapped chosen and rejected (train rows only)
    noise_kind                 "none", "random" or "systematic"
    systematic_candidate       True where the systematic-noise rule applies (see make_testbed)
    pair_id                    stable id from the pair's clean content: the same pair keeps its id
                               whatever the noise

Sources and licences are in ``SOURCES`` and in the data card that ``write_testbed`` writes.
Run ``python -m capo_tutorial.testbed --out DIR`` to write the JSONL files and the card.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import hashlib
import json
import math
import random
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import langcodes
from babel import Locale
from babel.dates import format_date, get_day_names, get_month_names
from num2words import num2words

__all__ = [
    "ALL_LANGUAGES",
    "COLUMNS",
    "DEFAULT_LANGUAGES",
    "RESOURCE_TIERS",
    "SOURCES",
    "SPLITS",
    "TASK_WEIGHTS",
    "add_testbed_arguments",
    "main",
    "make_testbed",
    "resource_noise",
    "run_testbed_command",
    "script_of",
    "testbed_card",
    "write_testbed",
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

# Every language has number words in num2words and dates/months/weekdays in CLDR (via babel).
ALL_LANGUAGES: tuple[str, ...] = (
    "en", "es", "de", "fr", "tr", "vi", "id",  # Latin
    "ru", "uk",  # Cyrillic
    "ar", "fa",  # Arabic
    "he",  # Hebrew
    "th",  # Thai
    "ja",  # Han + Kana
    "ko",  # Hangul
    "bn",  # Bengali
    "te",  # Telugu
    "am",  # Ethiopic
)  # fmt: skip
DEFAULT_LANGUAGES: tuple[str, ...] = ALL_LANGUAGES

# Resource level, roughly after the classes of Joshi et al. (2020), "The State and Fate of Linguistic
# Diversity": 1 = high (many annotators and tools), 2 = mid, 3 = low. Translated or crowd-sourced
# preference labels are noisier where fewer fluent annotators exist; the default schedule follows it.
RESOURCE_TIERS: dict[str, int] = {
    "en": 1, "es": 1, "de": 1, "fr": 1, "ja": 1, "ru": 1,
    "ar": 2, "ko": 2, "tr": 2, "vi": 2, "fa": 2, "id": 2, "uk": 2, "he": 2, "th": 2,
    "bn": 3, "te": 3, "am": 3,
}  # fmt: skip

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

SOURCES: tuple[dict[str, str], ...] = (
    {
        "name": "num2words",
        "used_for": "number words (number_words, number_digits)",
        "licence": "LGPL-2.1",
        "url": "https://github.com/savoirfairelinux/num2words",
    },
    {
        "name": "Unicode CLDR (through babel)",
        "used_for": "month and weekday names, long date formats (month_name, weekday_name, date_long)",
        "licence": "Unicode License v3 (CLDR data); babel itself BSD-3-Clause",
        "url": "https://cldr.unicode.org/",
    },
    {
        "name": "langcodes",
        "used_for": "likely script of each language (CLDR likely-subtags data)",
        "licence": "MIT",
        "url": "https://github.com/georgkrause/langcodes",
    },
    {
        "name": "capo_tutorial prompt templates",
        "used_for": "the short instruction around each item, written for this project",
        "licence": "Apache-2.0",
        "url": "https://github.com/capo-tutorial/capo_tutorial",
    },
)

# Short prompt templates, one set per language. Weekday questions are phrased as "if today is X,
# what day is tomorrow?" so that X stays in the nominative case of CLDR's stand-alone names
# (Russian "после понедельника" would need a genitive that CLDR does not give for days).
_TEMPLATES: dict[str, dict[str, str]] = {
    "en": {
        "number_words": "Write the number {n} in words.",
        "number_digits": "Write “{words}” in digits.",
        "month_name": "In which month is the date {date}?",
        "weekday_tomorrow": "If today is {day}, what day is tomorrow?",
        "weekday_yesterday": "If today is {day}, what day was yesterday?",
        "date_long": "Write the date {date} in long form.",
    },
    "es": {
        "number_words": "Escribe el número {n} en palabras.",
        "number_digits": "Escribe «{words}» en cifras.",
        "month_name": "¿En qué mes cae la fecha {date}?",
        "weekday_tomorrow": "Si hoy es {day}, ¿qué día es mañana?",
        "weekday_yesterday": "Si hoy es {day}, ¿qué día fue ayer?",
        "date_long": "Escribe la fecha {date} en formato largo.",
    },
    "de": {
        "number_words": "Schreibe die Zahl {n} in Worten.",
        "number_digits": "Schreibe „{words}“ in Ziffern.",
        "month_name": "In welchem Monat liegt das Datum {date}?",
        "weekday_tomorrow": "Wenn heute {day} ist, welcher Tag ist morgen?",
        "weekday_yesterday": "Wenn heute {day} ist, welcher Tag war gestern?",
        "date_long": "Schreibe das Datum {date} in Langform.",
    },
    "fr": {
        "number_words": "Écris le nombre {n} en toutes lettres.",
        "number_digits": "Écris « {words} » en chiffres.",
        "month_name": "En quel mois tombe la date {date} ?",
        "weekday_tomorrow": "Si aujourd’hui c’est {day}, quel jour serons-nous demain ?",
        "weekday_yesterday": "Si aujourd’hui c’est {day}, quel jour étions-nous hier ?",
        "date_long": "Écris la date {date} au format long.",
    },
    "tr": {
        "number_words": "{n} sayısını yazıyla yaz.",
        "number_digits": "“{words}” sayısını rakamla yaz.",
        "month_name": "{date} tarihi hangi aydadır?",
        "weekday_tomorrow": "Bugün {day} ise, yarın hangi gün?",
        "weekday_yesterday": "Bugün {day} ise, dün hangi gündü?",
        "date_long": "{date} tarihini uzun biçimde yaz.",
    },
    "vi": {
        "number_words": "Viết số {n} bằng chữ.",
        "number_digits": "Viết “{words}” bằng chữ số.",
        "month_name": "Ngày {date} thuộc tháng nào?",
        "weekday_tomorrow": "Nếu hôm nay là {day}, ngày mai là thứ mấy?",
        "weekday_yesterday": "Nếu hôm nay là {day}, hôm qua là thứ mấy?",
        "date_long": "Viết ngày {date} ở dạng đầy đủ.",
    },
    "id": {
        "number_words": "Tuliskan angka {n} dengan kata-kata.",
        "number_digits": "Tuliskan “{words}” dengan angka.",
        "month_name": "Tanggal {date} jatuh pada bulan apa?",
        "weekday_tomorrow": "Jika hari ini {day}, besok hari apa?",
        "weekday_yesterday": "Jika hari ini {day}, kemarin hari apa?",
        "date_long": "Tuliskan tanggal {date} dalam format panjang.",
    },
    "ru": {
        "number_words": "Напишите число {n} словами.",
        "number_digits": "Напишите «{words}» цифрами.",
        "month_name": "На какой месяц приходится дата {date}?",
        "weekday_tomorrow": "Если сегодня {day}, какой день будет завтра?",
        "weekday_yesterday": "Если сегодня {day}, какой день был вчера?",
        "date_long": "Напишите дату {date} полностью.",
    },
    "uk": {
        "number_words": "Напишіть число {n} словами.",
        "number_digits": "Напишіть «{words}» цифрами.",
        "month_name": "На який місяць припадає дата {date}?",
        "weekday_tomorrow": "Якщо сьогодні {day}, який день буде завтра?",
        "weekday_yesterday": "Якщо сьогодні {day}, який день був учора?",
        "date_long": "Напишіть дату {date} повністю.",
    },
    "ar": {
        "number_words": "اكتب العدد {n} بالحروف.",
        "number_digits": "اكتب «{words}» بالأرقام.",
        "month_name": "في أي شهر يقع التاريخ {date}؟",
        "weekday_tomorrow": "إذا كان اليوم {day}، فما اليوم التالي؟",
        "weekday_yesterday": "إذا كان اليوم {day}، فما اليوم السابق؟",
        "date_long": "اكتب التاريخ {date} بالصيغة الطويلة.",
    },
    "fa": {
        "number_words": "عدد {n} را با حروف بنویسید.",
        "number_digits": "«{words}» را با رقم بنویسید.",
        "month_name": "تاریخ {date} در کدام ماه است؟",
        "weekday_tomorrow": "اگر امروز {day} باشد، فردا چه روزی است؟",
        "weekday_yesterday": "اگر امروز {day} باشد، دیروز چه روزی بود؟",
        "date_long": "تاریخ {date} را به شکل کامل بنویسید.",
    },
    "he": {
        "number_words": "כתבו את המספר {n} במילים.",
        "number_digits": "כתבו את „{words}” בספרות.",
        "month_name": "באיזה חודש חל התאריך {date}?",
        "weekday_tomorrow": "אם היום {day}, איזה יום יהיה מחר?",
        "weekday_yesterday": "אם היום {day}, איזה יום היה אתמול?",
        "date_long": "כתבו את התאריך {date} במלואו.",
    },
    "th": {
        "number_words": "จงเขียนจำนวน {n} เป็นตัวหนังสือ",
        "number_digits": "จงเขียน “{words}” เป็นตัวเลข",
        "month_name": "วันที่ {date} อยู่ในเดือนอะไร",
        "weekday_tomorrow": "ถ้าวันนี้คือ{day} พรุ่งนี้คือวันอะไร",
        "weekday_yesterday": "ถ้าวันนี้คือ{day} เมื่อวานคือวันอะไร",
        "date_long": "จงเขียนวันที่ {date} แบบเต็ม",
    },
    "ja": {
        "number_words": "{n}を漢数字で書いてください。",
        "number_digits": "「{words}」を算用数字で書いてください。",
        "month_name": "{date}は何月ですか。",
        "weekday_tomorrow": "今日が{day}なら、明日は何曜日ですか。",
        "weekday_yesterday": "今日が{day}なら、昨日は何曜日でしたか。",
        "date_long": "{date}を長い形式の日付で書いてください。",
    },
    "ko": {
        "number_words": "숫자 {n}을(를) 한글로 쓰세요.",
        "number_digits": "“{words}”을(를) 숫자로 쓰세요.",
        "month_name": "{date}은(는) 몇 월입니까?",
        "weekday_tomorrow": "오늘이 {day}이면 내일은 무슨 요일입니까?",
        "weekday_yesterday": "오늘이 {day}이면 어제는 무슨 요일이었습니까?",
        "date_long": "{date} 날짜를 긴 형식으로 쓰세요.",
    },
    "bn": {
        "number_words": "{n} সংখ্যাটি কথায় লিখুন।",
        "number_digits": "“{words}” অঙ্কে লিখুন।",
        "month_name": "{date} তারিখটি কোন মাসে পড়ে?",
        "weekday_tomorrow": "আজ যদি {day} হয়, তাহলে আগামীকাল কী বার?",
        "weekday_yesterday": "আজ যদি {day} হয়, তাহলে গতকাল কী বার ছিল?",
        "date_long": "{date} তারিখটি পূর্ণ রূপে লিখুন।",
    },
    "te": {
        "number_words": "{n} సంఖ్యను అక్షరాలలో రాయండి.",
        "number_digits": "“{words}”ను అంకెల్లో రాయండి.",
        "month_name": "{date} తేదీ ఏ నెలలో వస్తుంది?",
        "weekday_tomorrow": "ఈ రోజు {day} అయితే, రేపు ఏ రోజు?",
        "weekday_yesterday": "ఈ రోజు {day} అయితే, నిన్న ఏ రోజు?",
        "date_long": "{date} తేదీని పూర్తి రూపంలో రాయండి.",
    },
    "am": {
        "number_words": "ቁጥር {n}ን በቃላት ይጻፉ።",
        "number_digits": "“{words}”ን በአሃዝ ይጻፉ።",
        "month_name": "{date} ቀን በየትኛው ወር ውስጥ ነው?",
        "weekday_tomorrow": "ዛሬ {day} ከሆነ፣ ነገ ምን ቀን ነው?",
        "weekday_yesterday": "ዛሬ {day} ከሆነ፣ ትናንት ምን ቀን ነበር?",
        "date_long": "ቀኑን {date} ሙሉ በሙሉ ይጻፉ።",
    },
}

_FIRST_DAY = dt.date(1950, 1, 1)
_N_DAYS = (dt.date(2049, 12, 31) - _FIRST_DAY).days + 1


# ----------------------------------------------------------------------------------------------
# Language data (cached: the same few hundred words are looked up thousands of times)
# ----------------------------------------------------------------------------------------------


@functools.cache
def _number_words(language: str, n: int) -> str:
    return num2words(n, lang=language)


@functools.cache
def _month_names(language: str) -> tuple[str, ...]:
    """The 12 stand-alone wide month names (January first); stand-alone = nominative case."""
    names = get_month_names("wide", "stand-alone", locale=language)
    return tuple(names[k] for k in range(1, 13))


@functools.cache
def _day_names(language: str) -> tuple[str, ...]:
    """The 7 stand-alone wide weekday names, Monday first (CLDR/babel index 0)."""
    names = get_day_names("wide", "stand-alone", locale=language)
    return tuple(names[d] for d in range(7))


@functools.cache
def _long_date(language: str, ordinal: int) -> str:
    return format_date(_FIRST_DAY + dt.timedelta(days=ordinal), "long", locale=language)


@functools.cache
def script_of(language: str) -> str:
    """ISO 15924 code of the usual script of ``language`` (CLDR likely subtags), e.g. "ja" -> "Jpan"."""
    return langcodes.Language.get(language).maximize().script or "Zyyy"


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


def _inject_noise(rows: list[dict[str, Any]], rate: float, systematic: bool, rng: random.Random) -> None:
    """Flip one language's train rows in place: the systematic rule first, then exactly
    round(rate * len(rows)) random rows among the rest.

    The random rows are taken in one fixed random order, so the rows flipped at rate 0.2 are a
    subset of those flipped at 0.4 (paired comparisons across noise levels).
    """
    if systematic:
        for row in rows:
            if row["systematic_candidate"]:
                _flip(row, "systematic")
    n_random = math.floor(rate * len(rows) + 0.5)
    order = list(range(len(rows)))
    rng.shuffle(order)
    eligible = [i for i in order if not rows[i]["flipped"]]
    if n_random > len(eligible):
        raise ValueError(f"cannot flip {n_random} rows at random: only {len(eligible)} are left")
    for i in eligible[:n_random]:
        _flip(rows[i], "random")


# ----------------------------------------------------------------------------------------------
# Public API
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

    Returns:
        DatasetDict of ``COLUMNS``; validation and test are clean (``flipped`` all False), and no
        prompt appears in two splits.
    """
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
    rates = _noise_rates(noise, languages)
    weights = _task_weights(tasks)
    cfg = _Config(max_number, low_margin_fraction, frozenset(int(d) for d in systematic_digits))

    per_language = {s: _allocate(n, dict.fromkeys(languages, 1.0)) for s, n in sizes.items()}
    splits: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
    for language in languages:
        counts = {s: _allocate(per_language[s][language], weights) for s in SPLITS}
        rows = _language_rows(language, counts, cfg, seed)
        noise_rng = _rng(seed, "noise", language)
        _inject_noise(rows["train"], rates[language], language in systematic, noise_rng)
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


def testbed_card(testbed: datasets.DatasetDict, **arguments: Any) -> dict[str, Any]:
    """A machine-readable data card: languages, scripts, sizes, noise asked and realised, sources.

    ``arguments`` are the make_testbed arguments, recorded as given (they make the set reproducible).
    """
    frames = {s: testbed[s].select_columns(["language", "noise_kind"]).to_pandas() for s in SPLITS}
    present = set().union(*(set(f["language"]) for f in frames.values()))
    languages = [lang for lang in ALL_LANGUAGES if lang in present]
    asked = _noise_rates(arguments.get("noise", 0.0), languages)
    rows = {s: f["language"].value_counts() for s, f in frames.items()}
    train = frames["train"]
    per_language = []
    for lang in languages:
        kinds = train.loc[train["language"] == lang, "noise_kind"]
        n = max(len(kinds), 1)
        per_language.append(
            {
                "language": lang,
                "name": Locale.parse(lang).get_display_name("en"),
                "script": script_of(lang),
                "resource_tier": RESOURCE_TIERS.get(lang),
                "rows": {s: int(rows[s].get(lang, 0)) for s in SPLITS},
                "noise_asked": asked[lang],
                "noise_random_realised": round(float((kinds == "random").sum()) / n, 6),
                "noise_systematic_realised": round(float((kinds == "systematic").sum()) / n, 6),
            }
        )
    return {
        "name": "capo_tutorial multilingual preference testbed",
        "generator": "capo_tutorial.testbed.make_testbed",
        "arguments": arguments,
        "splits": {s: testbed[s].num_rows for s in SPLITS},
        "columns": list(COLUMNS),
        "languages": per_language,
        "scripts": sorted({script_of(lang) for lang in languages}),
        "tasks": dict(arguments.get("tasks") or TASK_WEIGHTS),
        "noise_tolerance": "exactly round(rate * n) of a language's n train rows are flipped at random: "
        "|realised - asked| <= 0.5 / n; validation and test are clean",
        "sources": list(SOURCES),
    }


def _card_markdown(card: Mapping[str, Any]) -> str:
    """README.md: hub metadata (languages, licence) in a YAML header, then the card.

    No ``configs:`` block: ``datasets`` finds the splits from the file names, and (datasets 5.2)
    a folder whose README declares configs is cached by config name alone, so loading a rewritten
    folder would silently return the previous rows.
    """
    header = ["---", "language:"] + [f"- {row['language']}" for row in card["languages"]]
    header += ["license: other", "---", ""]
    lines = [
        f"# {card['name']}",
        "",
        "Generated offline by `capo_tutorial.testbed` from language data that installed packages ship.",
        "Chosen is the correct answer, rejected a near miss (`margin_class=low`) or clearly wrong (`high`).",
        "Label noise is on the train split only; validation and test are clean and share no prompt.",
        "",
        f"Splits: {', '.join(f'{s} {n}' for s, n in card['splits'].items())}. "
        f"Scripts: {', '.join(card['scripts'])}.",
        f"Noise: {card['noise_tolerance']}.",
        "",
        "| language | script | train | validation | test | noise asked | random | systematic |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in card["languages"]:
        r = row["rows"]
        lines.append(
            f"| {row['language']} | {row['script']} | {r['train']} | {r['validation']} | {r['test']} | "
            f"{row['noise_asked']:.3f} | {row['noise_random_realised']:.3f} | "
            f"{row['noise_systematic_realised']:.3f} |"
        )
    lines += ["", "## Sources and licences", ""]
    lines += [f"- {s['name']} ({s['licence']}): {s['used_for']}. {s['url']}" for s in card["sources"]]
    lines += ["", "Exact arguments (reproduce with make_testbed(**arguments)):", ""]
    lines += ["```json", json.dumps(card["arguments"], ensure_ascii=False, sort_keys=True), "```", ""]
    return "\n".join(header + lines)


def write_testbed(out_dir: str | Path, **kwargs: Any) -> dict[str, Any]:
    """Generate the testbed and write ``{split}.jsonl``, ``card.json`` and ``README.md`` to out_dir.

    ``kwargs`` go to make_testbed. The same arguments give byte-identical files (no timestamps);
    ``datasets.load_dataset(str(out_dir))`` reads the folder back with its three splits.
    Returns the card (a dict).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    testbed = make_testbed(**kwargs)
    for split in SPLITS:
        with open(out / f"{split}.jsonl", "w", encoding="utf-8", newline="\n") as f:
            for row in testbed[split].to_list():
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    card = testbed_card(testbed, **_jsonable(kwargs))
    (out / "card.json").write_text(json.dumps(card, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    (out / "README.md").write_text(_card_markdown(card), encoding="utf-8")
    return card


def _jsonable(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else (dict(v) if isinstance(v, Mapping) else v)
            for k, v in sorted(kwargs.items())}  # fmt: skip


# ----------------------------------------------------------------------------------------------
# Command line: python -m capo_tutorial.testbed --out DIR (and `capo testbed`, which reuses this)
# ----------------------------------------------------------------------------------------------


def _parse_noise(text: str) -> float | dict[str, float] | str:
    """'0.2' -> 0.2; 'resource' -> 'resource'; 'en=0.1,tr=0.3' -> {'en': 0.1, 'tr': 0.3}."""
    if text == "resource":
        return text
    if "=" in text:
        pairs = (item.split("=", 1) for item in text.split(",") if item)
        return {lang.strip(): float(rate) for lang, rate in pairs}
    return float(text)


def _csv(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def add_testbed_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the testbed's flags to ``parser`` (used by this module's main and by ``capo testbed``)."""
    parser.add_argument("--out", required=True, help="output folder for {split}.jsonl, card.json, README.md")
    parser.add_argument(
        "--languages",
        type=_csv,
        default=None,
        help=f"comma-separated codes (default: {','.join(ALL_LANGUAGES)})",
    )
    parser.add_argument("--n-train", type=int, default=3000, help="train pairs (default 3000)")
    parser.add_argument("--n-validation", type=int, default=600, help="validation pairs (default 600)")
    parser.add_argument("--n-test", type=int, default=600, help="test pairs (default 600)")
    parser.add_argument(
        "--noise",
        type=_parse_noise,
        default=0.0,
        help="train label noise: a rate (0.2), 'resource' (lower-resource languages noisier), "
        "or per language (en=0.1,tr=0.3); default 0",
    )
    parser.add_argument(
        "--systematic", type=_csv, default=[], help="languages with a systematic (learnable) label bias"
    )
    parser.add_argument(
        "--systematic-digits", type=lambda s: [int(d) for d in _csv(s)], default=[7], help="default 7"
    )
    parser.add_argument("--max-number", type=int, default=999, help="numbers are drawn from 0..N (999)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    return parser


def run_testbed_command(args: argparse.Namespace) -> dict[str, Any]:
    """Write the testbed that parsed ``args`` describe and print a one-line summary."""
    start = time.perf_counter()
    card = write_testbed(
        args.out,
        languages=args.languages,
        n_train=args.n_train,
        n_validation=args.n_validation,
        n_test=args.n_test,
        noise=args.noise,
        seed=args.seed,
        systematic=args.systematic,
        systematic_digits=args.systematic_digits,
        max_number=args.max_number,
    )
    print(
        f"wrote {sum(card['splits'].values())} pairs ({card['splits']}) in {len(card['languages'])} "
        f"languages / {len(card['scripts'])} scripts to {args.out} in {time.perf_counter() - start:.2f}s"
    )
    return card


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m capo_tutorial.testbed``."""
    parser = add_testbed_arguments(
        argparse.ArgumentParser(prog="python -m capo_tutorial.testbed", description=__doc__.split("\n")[0])
    )
    args = parser.parse_args(argv)
    try:
        run_testbed_command(args)
    except ValueError as error:
        parser.exit(2, f"error: {error}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
