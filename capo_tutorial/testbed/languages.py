"""The testbed's languages: codes, resource tiers, prompt templates, and the language data answers
are made of: number words (``num2words``), month and weekday names and long dates (Unicode CLDR,
through ``babel``), each language's usual script (``langcodes``). ``SOURCES`` names them and their
licences (the data card repeats it).
"""

from __future__ import annotations

import datetime as dt
import functools

import langcodes
from babel.dates import format_date, get_day_names, get_month_names
from num2words import num2words

__all__ = ["ALL_LANGUAGES", "DEFAULT_LANGUAGES", "RESOURCE_TIERS", "SOURCES", "script_of"]

# Every language has number words in num2words and dates/months/weekdays in CLDR (via babel).
ALL_LANGUAGES: tuple[str, ...] = (
    "en",
    "es",
    "de",
    "fr",
    "tr",
    "vi",
    "id",  # Latin
    "ru",
    "uk",  # Cyrillic
    "ar",
    "fa",  # Arabic
    "he",  # Hebrew
    "th",  # Thai
    "ja",  # Han + Kana
    "ko",  # Hangul
    "bn",  # Bengali
    "te",  # Telugu
    "am",  # Ethiopic
)
DEFAULT_LANGUAGES: tuple[str, ...] = ALL_LANGUAGES

# Resource level, roughly after the classes of Joshi et al. (2020), "The State and Fate of Linguistic
# Diversity": 1 = high (many annotators and tools), 2 = mid, 3 = low. Translated or crowd-sourced
# preference labels are noisier where fewer fluent annotators exist; the default schedule follows it.
RESOURCE_TIERS: dict[str, int] = {
    "en": 1,
    "es": 1,
    "de": 1,
    "fr": 1,
    "ja": 1,
    "ru": 1,
    "ar": 2,
    "ko": 2,
    "tr": 2,
    "vi": 2,
    "fa": 2,
    "id": 2,
    "uk": 2,
    "he": 2,
    "th": 2,
    "bn": 3,
    "te": 3,
    "am": 3,
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
