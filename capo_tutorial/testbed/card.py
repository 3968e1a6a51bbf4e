"""The testbed on disk: its data card (:func:`testbed_card`), the JSONL files and README that
:func:`write_testbed` writes, and the command line (``python -m capo_tutorial.testbed``, ``capo testbed``).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import datasets
from babel import Locale

from capo_tutorial.testbed.generate import COLUMNS, SPLITS, _noise_rates, make_testbed
from capo_tutorial.testbed.languages import ALL_LANGUAGES, RESOURCE_TIERS, SOURCES, script_of
from capo_tutorial.testbed.tasks import TASK_WEIGHTS

__all__ = ["add_testbed_arguments", "main", "run_testbed_command", "testbed_card", "write_testbed"]


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
    return {
        k: list(v) if isinstance(v, tuple) else (dict(v) if isinstance(v, Mapping) else v)
        for k, v in sorted(kwargs.items())
    }


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


def _description() -> str:
    """The first line of the package's docstring (the command's one-line help)."""
    import capo_tutorial.testbed as package

    return package.__doc__.split("\n")[0]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m capo_tutorial.testbed``."""
    parser = add_testbed_arguments(
        argparse.ArgumentParser(prog="python -m capo_tutorial.testbed", description=_description())
    )
    args = parser.parse_args(argv)
    try:
        run_testbed_command(args)
    except ValueError as error:
        parser.exit(2, f"error: {error}\n")
    return 0
