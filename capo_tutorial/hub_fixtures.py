"""Small local folders laid out like the gpu profile's hub data sets, for tests and offline builds.

Nothing here downloads. Each writer produces a folder that ``datasets.load_dataset(folder, config)``
reads exactly as it reads the hub repository: a README whose YAML header declares the configs and
their data files, and the files in the hub's own format and schema. So the hub code path
(``load_preferences(name, **HUB_LAYOUTS[name])``) runs unchanged on the folder.

- :func:`write_helpsteer3`: ``nvidia/HelpSteer3``, config ``preference``, gzipped JSONL per split
  (``preference/train.jsonl.gz``, ``preference/validation.jsonl.gz``), columns ``domain``,
  ``language``, ``context`` (a list of ``{"role", "content"}`` turns, possibly several), ``response1``,
  ``response2``, ``overall_preference`` (-3..3; negative: response1 is better; 0: a tie) and
  ``individual_preference`` (a list of ``{"score", "reasoning", "feedback1", "feedback2"}``, one per
  annotator). :data:`HELPSTEER3_ROWS` covers every case a layout must handle: multi-turn contexts,
  ties, the code domain (whose ``language`` names a programming language), strong and weak
  preferences in both directions, and several natural languages.
- :func:`write_mrewardbench`: ``C4AI-Community/multilingual-reward-bench`` (M-RewardBench), one config
  per language (``deu_Latn``, ...), split ``test``, one parquet file each
  (``{config}/test-00000-of-00001.parquet``), columns ``id``, ``language`` (the config's code),
  ``prompt``, ``chosen``, ``rejected``, ``chosen_model``, ``rejected_model``, ``source``.
- :func:`write_hub_repository`: the generic writer both use, for any other layout.

Example::

    from capo_tutorial.hub_data import HUB_LAYOUTS
    from capo_tutorial.data import load_preferences
    folder = write_helpsteer3(tmp_path / "HelpSteer3")
    pairs = load_preferences(str(folder), config="preference", split="train",
                             **HUB_LAYOUTS["nvidia/HelpSteer3"])
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "HELPSTEER3_ROWS",
    "MREWARDBENCH_CONFIGS",
    "helpsteer3_row",
    "mrewardbench_rows",
    "write_helpsteer3",
    "write_hub_repository",
    "write_mrewardbench",
]

FORMATS = ("jsonl", "jsonl.gz", "parquet")


def write_hub_repository(
    root: str | Path,
    files: Mapping[tuple[str, str], Sequence[Mapping[str, Any]]],
    fmt: str = "parquet",
    *,
    file_name: str = "{split}",
) -> Path:
    """Write a folder laid out like a hub data set repository.

    Args:
        root: the folder to write (created; existing files with the same names are overwritten).
        files: ``{(config, split): rows}``; each row a dict of column values (all rows of one file
            share their columns).
        fmt: "parquet", "jsonl" or "jsonl.gz": the files' format.
        file_name: the file's name before the extension, formatted with ``split`` (the hub names
            parquet shards like ``"{split}-00000-of-00001"``).

    Returns:
        ``root`` as a Path: pass ``str(root)`` where a hub id would go.
    """
    if fmt not in FORMATS:
        raise ValueError(f"fmt={fmt!r} is not a format this writer knows; use one of {FORMATS}.")
    root = Path(root)
    header = ["---", "configs:"]
    by_config: dict[str, list[str]] = {}
    for (config, split), rows in files.items():
        relative = f"{config}/{file_name.format(split=split)}.{fmt}"
        _write_rows(root / relative, rows, fmt)
        by_config.setdefault(config, []).append(f"  - split: {split}\n    path: {relative}")
    for config, entries in by_config.items():
        header += [f"- config_name: {config}", "  data_files:", *entries]
    (root / "README.md").write_text("\n".join([*header, "---", ""]), encoding="utf-8")
    return root


def _write_rows(path: Path, rows: Sequence[Mapping[str, Any]], fmt: str) -> None:
    """One data file: JSON lines (optionally gzipped) or parquet."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "parquet":
        import datasets  # imported here: the JSONL writers need nothing beyond the standard library

        datasets.Dataset.from_list([dict(row) for row in rows]).to_parquet(str(path))
        return
    lines = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    if fmt == "jsonl.gz":
        with gzip.open(path, "wt", encoding="utf-8") as handle:
            handle.write(lines)
    else:
        path.write_text(lines, encoding="utf-8")


def helpsteer3_row(
    domain: str,
    language: str,
    context: Iterable[tuple[str, str]],
    response1: str,
    response2: str,
    overall_preference: int,
    annotator_scores: Sequence[int] | None = None,
) -> dict[str, Any]:
    """One row of HelpSteer3's ``preference`` config.

    Args:
        domain: "general", "stem", "code" or "multilingual".
        language: a natural language's name ("chinese"), or a programming language's in the code
            domain ("python").
        context: the conversation so far as (role, content) turns, ending with a user turn.
        response1, response2: the two candidate responses.
        overall_preference: -3..3; negative: response1 is better; 0: a tie.
        annotator_scores: each annotator's score (same scale); defaults to ``[overall_preference]``.
    """
    if not -3 <= overall_preference <= 3:
        raise ValueError(f"overall_preference={overall_preference} is outside HelpSteer3's -3..3.")
    scores = [overall_preference] if annotator_scores is None else list(annotator_scores)
    return {
        "domain": domain,
        "language": language,
        "context": [{"role": role, "content": content} for role, content in context],
        "response1": response1,
        "response2": response2,
        "overall_preference": overall_preference,
        "individual_preference": [
            {"score": score, "reasoning": f"annotator {i + 1}", "feedback1": "", "feedback2": ""}
            for i, score in enumerate(scores)
        ],
    }


#: A handful of HelpSteer3 rows: 10 in all, 2 of them ties (0), 1 in the code domain, 2 multi-turn.
HELPSTEER3_ROWS: list[dict[str, Any]] = [
    helpsteer3_row(
        "general",
        "english",
        [("user", "In one line: what is a preference pair?")],
        "A prompt with two answers, one marked better than the other.",
        "It is a pair.",
        -2,
        [-2, -1, -3],
    ),
    helpsteer3_row(
        "multilingual",
        "chinese",
        [("user", "用一句话解释什么是偏好数据。")],
        "偏好数据由成对的回答组成，其中一个被标为更好。",
        "偏好数据就是数据。",
        -3,
    ),
    helpsteer3_row(
        "multilingual",
        "japanese",
        [("user", "東京の人口は？"), ("assistant", "約1400万人です。"), ("user", "大阪市は？")],
        "約280万人です。",
        "約1400万人です。",
        -1,
        [-1, 0, -2],
    ),
    helpsteer3_row(
        "multilingual",
        "russian",
        [("user", "Как сказать «спасибо» по-французски?")],
        "Merci.",
        "«Merci».",
        0,
        [0, 1, -1],
    ),
    helpsteer3_row(
        "code",
        "python",
        [("user", "How do I reverse a list in Python?")],
        "Use xs[::-1].",
        "xs.reverse() reverses in place; xs[::-1] returns a reversed copy.",
        2,
    ),
    helpsteer3_row("stem", "english", [("user", "Is 91 prime?")], "Yes.", "No: 91 = 7 × 13.", 3),
    helpsteer3_row(
        "multilingual",
        "korean",
        [("user", "'감사합니다'는 무슨 뜻인가요?")],
        "'고맙습니다'와 같은 뜻의 감사 인사입니다.",
        "'안녕히 가세요'라는 뜻입니다.",
        -3,
    ),
    helpsteer3_row(
        "multilingual", "german", [("user", "Was ist der Plural von „Baum“?")], "Baums.", "Bäume.", 3
    ),
    helpsteer3_row(
        "multilingual",
        "spanish",
        [
            ("system", "Responde en una frase."),
            ("user", "¿Qué es un modelo de recompensa?"),
            ("assistant", "Un modelo que puntúa respuestas."),
            ("user", "¿Y para qué sirve?"),
        ],
        "Para entrenar a otro modelo con sus puntuaciones.",
        "Para nada.",
        -2,
    ),
    helpsteer3_row("multilingual", "french", [("user", "Bonjour !")], "Bonjour !", "Salut !", 0),
]


def write_helpsteer3(
    root: str | Path,
    rows: Sequence[Mapping[str, Any]] | None = None,
    splits: Sequence[str] = ("train", "validation"),
) -> Path:
    """A folder laid out like ``nvidia/HelpSteer3``'s ``preference`` config (gzipped JSONL).

    Args:
        root: the folder to write.
        rows: the rows of every split (default :data:`HELPSTEER3_ROWS`; build more with
            :func:`helpsteer3_row`).
        splits: the splits to write, each with the same rows.
    """
    rows = HELPSTEER3_ROWS if rows is None else rows
    return write_hub_repository(root, {("preference", split): rows for split in splits}, "jsonl.gz")


_BENCH_ITEMS: dict[str, list[tuple[str, str, str]]] = {
    "arb_Arab": [
        ("ما درجة غليان الماء عند مستوى سطح البحر بالدرجات المئوية؟", "100 درجة مئوية.", "90 درجة مئوية."),
        ("كيف أختار كلمة مرور قوية؟", "استخدم عبارة مرور طويلة ومختلفة لكل حساب.", "استخدم تاريخ ميلادك."),
    ],
    "deu_Latn": [
        ("Bei wie viel Grad Celsius siedet Wasser auf Meereshöhe?", "Bei 100 °C.", "Bei 90 °C."),
        (
            "Wie wähle ich ein sicheres Passwort?",
            "Nimm eine lange, für jedes Konto eigene Passphrase.",
            "Nimm dein Geburtsdatum.",
        ),
    ],
    "hin_Deva": [
        ("समुद्र तल पर पानी कितने डिग्री सेल्सियस पर उबलता है?", "100 °C पर।", "90 °C पर।"),
        ("मैं मज़बूत पासवर्ड कैसे चुनूँ?", "हर खाते के लिए एक लंबा, अलग पासफ़्रेज़ इस्तेमाल करें।", "अपनी जन्मतिथि इस्तेमाल करें।"),
    ],
    "jpn_Jpan": [
        ("海抜0メートルで水は摂氏何度で沸騰しますか？", "100℃です。", "90℃です。"),
        (
            "強いパスワードはどう選べばよいですか？",
            "アカウントごとに長く固有のパスフレーズを使ってください。",
            "誕生日を使ってください。",
        ),
    ],
    "rus_Cyrl": [
        ("При какой температуре по Цельсию кипит вода на уровне моря?", "При 100 °C.", "При 90 °C."),
        (
            "Как выбрать надёжный пароль?",
            "Используйте длинную уникальную парольную фразу для каждого аккаунта.",
            "Используйте дату своего рождения.",
        ),
    ],
    "spa_Latn": [
        ("¿A qué temperatura en grados Celsius hierve el agua al nivel del mar?", "A 100 °C.", "A 90 °C."),
        (
            "¿Cómo elijo una contraseña segura?",
            "Usa una frase de contraseña larga y distinta para cada cuenta.",
            "Usa tu fecha de nacimiento.",
        ),
    ],
    "zho_Hans": [
        ("在海平面上，水在多少摄氏度沸腾？", "100 摄氏度。", "90 摄氏度。"),
        ("如何选择一个安全的密码？", "为每个账户使用一个很长且不同的密码短语。", "使用你的生日。"),
    ],
}

#: The per-language configs :func:`write_mrewardbench` can write (M-RewardBench's names).
MREWARDBENCH_CONFIGS: tuple[str, ...] = tuple(_BENCH_ITEMS)
_SOURCES = ("alpacaeval-easy", "refusals-dangerous")


def mrewardbench_rows(config: str) -> list[dict[str, Any]]:
    """The rows of one M-RewardBench config (one language), in its test split's schema."""
    if config not in _BENCH_ITEMS:
        raise ValueError(
            f"config={config!r}: no fake M-RewardBench rows for it; use one of {MREWARDBENCH_CONFIGS}."
        )
    return [
        {
            "id": index,
            "language": config,
            "prompt": prompt,
            "chosen": chosen,
            "rejected": rejected,
            "chosen_model": "model-a",
            "rejected_model": "model-b",
            "source": source,
        }
        for index, ((prompt, chosen, rejected), source) in enumerate(zip(_BENCH_ITEMS[config], _SOURCES))
    ]


def write_mrewardbench(root: str | Path, configs: Iterable[str] = MREWARDBENCH_CONFIGS) -> Path:
    """A folder laid out like ``C4AI-Community/multilingual-reward-bench``: one parquet per language.

    Args:
        root: the folder to write.
        configs: the per-language configs to write (a subset of :data:`MREWARDBENCH_CONFIGS`).
    """
    files = {(config, "test"): mrewardbench_rows(config) for config in configs}
    return write_hub_repository(root, files, "parquet", file_name="{split}-00000-of-00001")
