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

The package, by concept (everything public is importable from ``capo_tutorial.testbed``):

- ``languages``: language codes, resource tiers, prompt templates, number words, CLDR names, scripts;
- ``tasks``: the task families (prompt keys, right answers, near and far wrong answers);
- ``generate``: splits, pairs and label noise: :func:`make_testbed`;
- ``card``: the data card, the files on disk, the command line.
"""

from capo_tutorial.testbed.card import (
    add_testbed_arguments,
    main,
    run_testbed_command,
    testbed_card,
    write_testbed,
)
from capo_tutorial.testbed.generate import (
    COLUMNS,
    FEATURES,
    NOISE_PATTERNS,
    SPLITS,
    TIER_NOISE_FACTORS,
    make_testbed,
    resource_noise,
    tiered_noise,
)
from capo_tutorial.testbed.languages import (
    ALL_LANGUAGES,
    DEFAULT_LANGUAGES,
    RESOURCE_TIERS,
    SOURCES,
    script_of,
)
from capo_tutorial.testbed.tasks import TASK_WEIGHTS

__all__ = [
    "ALL_LANGUAGES",
    "COLUMNS",
    "DEFAULT_LANGUAGES",
    "FEATURES",
    "NOISE_PATTERNS",
    "RESOURCE_TIERS",
    "SOURCES",
    "SPLITS",
    "TASK_WEIGHTS",
    "TIER_NOISE_FACTORS",
    "add_testbed_arguments",
    "main",
    "make_testbed",
    "resource_noise",
    "run_testbed_command",
    "script_of",
    "testbed_card",
    "tiered_noise",
    "write_testbed",
]
