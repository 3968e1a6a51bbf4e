"""How the hub data sets of the gpu profile map onto preference records.

Each entry of :data:`HUB_LAYOUTS` gives ``load_preferences`` keyword arguments for one hub data
set, so ``load_preferences(name, **HUB_LAYOUTS[name])`` reads it as (prompt, chosen, rejected,
language[, strength]). The layouts are tested on local files written in each hub repository's
schema (no network in tests).

- ``nvidia/HelpSteer3`` (config "preference", CC-BY-4.0): a conversation ``context``, two
  responses, and ``overall_preference`` in -3..3 (negative: response1 is better). The better
  response is chosen, ``|overall_preference|`` becomes the pair's strength, and ties (0) carry
  no preference, so they are skipped. ``language`` names the natural language ("chinese") in
  the general, stem and multilingual domains, and the programming language in the code domain,
  whose conversations are in English.
- ``C4AI-Community/multilingual-reward-bench`` (M-RewardBench): one config per language
  ("deu_Latn"), split "test", prompt/chosen/rejected strings. They become a user turn and two
  assistant turns, so that evaluation pairs go through the model's chat template exactly as the
  HelpSteer3 training pairs do (a chat model scored on raw text would be scored off its format).
  Rows that fail validation (an empty or untranslated answer, chosen == rejected) are skipped and
  counted, not fatal.

Both keep only the metadata columns an analysis uses; the others (HelpSteer3's response1/2 and
individual_preference, the benchmark's model names) would otherwise travel through every batch.
"""

from __future__ import annotations

from typing import Any

import langcodes

__all__ = ["HUB_LAYOUTS", "helpsteer3_language"]


def helpsteer3_language(row: dict[str, Any]) -> str:
    """BCP-47 code of a HelpSteer3 row: its language name, or English for the code domain."""
    if row.get("domain") == "code":
        return "en"
    return langcodes.find(str(row["language"])).language


def _better(row: dict[str, Any], better: bool) -> list[dict[str, str]] | None:
    """The better (or worse) response as an assistant turn; None for a tie (the row is skipped)."""
    preference = row["overall_preference"]
    if preference == 0:
        return None
    first_is_better = preference < 0
    response = row["response1"] if first_is_better == better else row["response2"]
    return [{"role": "assistant", "content": response}]


def _turn(role: str, column: str):
    """A column_map entry turning a string column into a one-message conversation."""
    return lambda row: [{"role": role, "content": row[column]}]


HUB_LAYOUTS: dict[str, dict[str, Any]] = {
    "nvidia/HelpSteer3": {
        "column_map": {
            "prompt": "context",
            "chosen": lambda row: _better(row, True),
            "rejected": lambda row: _better(row, False),
            "strength": lambda row: float(abs(row["overall_preference"])),
            "language": helpsteer3_language,
        },
        "on_error": "skip",
        "metadata": ["domain"],
    },
    "C4AI-Community/multilingual-reward-bench": {
        "column_map": {
            "prompt": _turn("user", "prompt"),
            "chosen": _turn("assistant", "chosen"),
            "rejected": _turn("assistant", "rejected"),
        },
        "on_error": "skip",
        "metadata": ["id", "source"],
    },
}
