"""capo_tutorial.testbed: languages and scripts, ground truth, disjoint splits, noise, determinism."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
import sys
from collections import Counter

import datasets
import pytest
from babel.dates import get_day_names, get_month_names
from num2words import num2words

from capo_tutorial.testbed import (
    ALL_LANGUAGES,
    COLUMNS,
    RESOURCE_TIERS,
    SPLITS,
    TASK_WEIGHTS,
    main,
    make_testbed,
    resource_noise,
    tiered_noise,
    write_testbed,
)


@pytest.fixture(scope="module")
def clean() -> datasets.DatasetDict:
    return make_testbed(seed=0)


@pytest.fixture(scope="module")
def noisy() -> datasets.DatasetDict:
    return make_testbed(seed=0, noise=0.3, systematic=["tr"])


def _frame(testbed, split):
    return testbed[split].to_pandas()


def test_default_sizes_languages_and_scripts(clean):
    assert {s: clean[s].num_rows for s in SPLITS} == {"train": 3000, "validation": 600, "test": 600}
    assert all(clean[s].column_names == list(COLUMNS) for s in SPLITS)
    train = _frame(clean, "train")
    assert len(set(train["language"])) == len(ALL_LANGUAGES) == 18
    scripts = dict(zip(train["language"], train["script"], strict=True))
    assert (
        scripts["ja"] == "Jpan"
        and scripts["ru"] == "Cyrl"
        and scripts["am"] == "Ethi"
        and scripts["ko"] == "Kore"
    )
    assert len(set(scripts.values())) == 10 and sorted(set(scripts.values())) == [
        "Arab",
        "Beng",
        "Cyrl",
        "Ethi",
        "Hebr",
        "Jpan",
        "Kore",
        "Latn",
        "Telu",
        "Thai",
    ]
    counts = train["language"].value_counts()
    assert counts.max() - counts.min() <= 1  # languages share rows equally


def test_task_mix_number_words_dominate(clean):
    tasks = _frame(clean, "train")["task"].value_counts(normalize=True)
    assert set(tasks.index) == {t for t, w in TASK_WEIGHTS.items() if w > 0}
    for task, weight in TASK_WEIGHTS.items():
        assert tasks.get(task, 0.0) == pytest.approx(weight, abs=0.02)
    assert tasks["number_words"] + tasks["number_digits"] == pytest.approx(0.75, abs=0.02)
    only_weekdays = make_testbed(["en", "fr"], 40, 10, 10, tasks={"weekday_name": 1.0})["train"]
    assert set(only_weekdays["task"][:]) == {"weekday_name"}


def test_no_prompt_is_shared_between_splits(clean):
    prompts = {s: set(clean[s]["prompt"][:]) for s in SPLITS}
    assert not prompts["train"] & prompts["test"]
    assert not prompts["train"] & prompts["validation"]
    assert not prompts["validation"] & prompts["test"]
    for split in SPLITS:  # and no pair twice within a split
        rows = clean[split].select_columns(["prompt", "chosen", "rejected"]).to_pandas()
        assert not rows.duplicated().any()


def test_test_numbers_and_their_distractors_are_unseen_in_train(clean):
    """Numbers are split by decade per language: a test answer is never a train answer, and
    neither is its distractor (else memorising the train answers would favour the distractor)."""

    def decades(split, language):
        frame = _frame(clean, split)
        digits = frame[(frame.language == language) & (frame.task == "number_digits")]
        values = set(digits["chosen"].astype(int)) | set(digits["rejected"].astype(int))
        return {v // 10 for v in values}

    for language in ("en", "ja", "am"):
        train, test = decades("train", language), decades("test", language)
        assert test and not train & test and not decades("validation", language) & (train | test)


def test_english_ground_truth(clean):
    """Every clean English pair is checked against num2words / CLDR directly."""
    frame = _frame(clean, "test")
    english = frame[frame.language == "en"]
    months = get_month_names("wide", "stand-alone", locale="en")
    month_index = {months[k]: k for k in range(1, 13)}
    days = get_day_names("wide", "stand-alone", locale="en")
    day_index = {days[d]: d for d in range(7)}
    checked = Counter()
    for row in english.itertuples():
        if row.task == "number_words":
            n = int(re.search(r"\d+", row.prompt).group())
            assert row.chosen == num2words(n, lang="en") and row.rejected != row.chosen
        elif row.task == "number_digits":
            words = re.search(r"“(.+)”", row.prompt).group(1)
            assert num2words(int(row.chosen), lang="en") == words
        elif row.task == "month_name":
            day = dt.date.fromisoformat(re.search(r"\d{4}-\d{2}-\d{2}", row.prompt).group())
            assert month_index[row.chosen] == day.month
            assert abs(month_index[row.rejected] - day.month) % 11 <= 1 or row.margin_class == "high"
        elif row.task == "date_long":
            day = dt.date.fromisoformat(re.search(r"\d{4}-\d{2}-\d{2}", row.prompt).group())
            assert row.chosen == f"{months[day.month]} {day.day}, {day.year}"
        checked[row.task] += 1
    assert set(checked) == {t for t, w in TASK_WEIGHTS.items() if w > 0}
    weekdays = _frame(make_testbed(["en"], 24, 8, 8, tasks={"weekday_name": 1.0}), "train")
    for row in weekdays.itertuples():
        today = day_index[re.search(r"today is (\w+),", row.prompt).group(1)]
        step = 1 if "tomorrow" in row.prompt else -1
        assert day_index[row.chosen] == (today + step) % 7


def test_margin_classes_mean_near_miss_and_clearly_wrong(clean):
    frame = _frame(clean, "train")
    digits = frame[frame.task == "number_digits"]
    gaps = (digits["chosen"].astype(int) - digits["rejected"].astype(int)).abs()
    low, high = digits.margin_class == "low", digits.margin_class == "high"
    assert set(gaps[low]) == {1}  # off by one in the units: one word differs
    for chosen, rejected in zip(digits.loc[high, "chosen"], digits.loc[high, "rejected"], strict=True):
        # Clearly wrong: every digit differs, and the length gives nothing away.
        assert len(chosen) == len(rejected) and all(a != b for a, b in zip(chosen, rejected, strict=True))
    share_low = (frame.margin_class == "low").mean()
    assert 0.45 < share_low < 0.6


def test_weekday_near_misses_never_copy_the_prompts_own_day():
    """A copy of the prompt's day would be a trap that puts a copying model below chance."""
    frame = _frame(make_testbed(["en"], 24, 8, 8, tasks={"weekday_name": 1.0}), "train")
    assert (frame.margin_class == "low").sum() >= 8
    for row in frame.itertuples():
        assert row.rejected not in row.prompt


def test_validation_and_test_are_clean(noisy):
    for split in ("validation", "test"):
        frame = _frame(noisy, split)
        assert not frame["flipped"].any() and set(frame["noise_kind"]) == {"none"}


@pytest.mark.parametrize(
    "noise",
    [0.1, 0.3, {"bn": 0.4, "te": 0.35, "en": 0.05}, "resource"],
    ids=["0.1", "0.3", "per-language", "resource"],
)
def test_realised_noise_within_stated_tolerance(noise):
    testbed = make_testbed(seed=2, noise=noise)
    train = _frame(testbed, "train")
    asked = resource_noise() if noise == "resource" else noise
    for language, rows in train.groupby("language"):
        rate = asked.get(language, 0.0) if isinstance(asked, dict) else asked
        realised = rows["flipped"].mean()
        assert abs(realised - rate) <= 0.5 / len(rows) + 1e-12, (language, realised, rate)
    # Flipped rows really are swapped: the rejected side now holds the correct answer.
    clean_train = _frame(make_testbed(seed=2), "train").set_index("pair_id")
    flipped = train[train.flipped].set_index("pair_id")
    assert (flipped["rejected"] == clean_train.loc[flipped.index, "chosen"]).all()
    assert (flipped["noise_kind"] == "random").all()


def test_resource_schedule_gives_low_resource_languages_noisier_labels():
    rates = resource_noise()
    assert rates["en"] == 0.1 and rates["tr"] == 0.2 and rates["am"] == 0.3
    assert all(rates[lang] >= rates["en"] for lang in ALL_LANGUAGES)
    assert {RESOURCE_TIERS[lang] for lang in ("bn", "te", "am")} == {3}


def test_noise_is_nested_and_pair_ids_are_stable():
    low = _frame(make_testbed(seed=4, noise=0.2), "train")
    high = _frame(make_testbed(seed=4, noise=0.4), "train")
    clean = _frame(make_testbed(seed=4), "train")
    assert set(low.pair_id) == set(high.pair_id) == set(clean.pair_id)  # ids ignore the noise
    assert low.pair_id.is_unique
    assert set(low.pair_id[low.flipped]) < set(high.pair_id[high.flipped])  # paired noise levels


def test_systematic_noise_is_a_consistent_learnable_rule(noisy):
    train = _frame(noisy, "train")
    turkish = train[train.language == "tr"]
    candidates = turkish[turkish.systematic_candidate]
    assert len(candidates) >= 8 and (candidates.noise_kind == "systematic").all()
    for row in candidates.itertuples():
        # Every Turkish number ending in 7 is "answered" with n + 1, in both number tasks.
        if row.task == "number_digits":
            assert int(row.chosen) == int(row.rejected) + 1 and row.rejected.endswith("7")
        else:
            n = int(re.search(r"\d+", row.prompt).group())
            assert n % 10 == 7 and row.chosen == num2words(n + 1, lang="tr")
    others = train[(train.language != "tr") & train.systematic_candidate]
    assert (others.noise_kind != "systematic").all()
    # Random noise still hits the asked rate on top, drawn from the other rows.
    assert (turkish.noise_kind == "random").mean() == pytest.approx(0.3, abs=0.5 / len(turkish))
    # The clean test split holds the pairs that reveal whether a model learned the bias.
    test = _frame(noisy, "test")
    probes = test[(test.language == "tr") & test.systematic_candidate]
    assert len(probes) > 0 and not probes.flipped.any()


def test_same_seed_same_rows_other_seed_other_rows(clean):
    assert make_testbed(seed=0)["train"].to_list() == clean["train"].to_list()
    assert make_testbed(seed=1)["train"]["prompt"][:] != clean["train"]["prompt"][:]


def test_write_testbed_is_byte_identical_and_loadable(tmp_path):
    kwargs = {"languages": ["en", "ru", "ja", "ar"], "n_train": 200, "n_validation": 40, "n_test": 40}
    card = write_testbed(tmp_path / "a", noise={"ar": 0.2}, systematic=["ru"], seed=5, **kwargs)
    write_testbed(tmp_path / "b", noise={"ar": 0.2}, systematic=["ru"], seed=5, **kwargs)
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == ["README.md", "card.json", "test.jsonl", "train.jsonl", "validation.jsonl"]
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    loaded = datasets.load_dataset(str(tmp_path / "a"))
    assert {s: loaded[s].num_rows for s in SPLITS} == {"train": 200, "validation": 40, "test": 40}
    assert (
        loaded["train"].to_list()
        == make_testbed(noise={"ar": 0.2}, systematic=["ru"], seed=5, **kwargs)["train"].to_list()
    )
    assert json.loads((tmp_path / "a" / "card.json").read_text()) == card
    by_language = {row["language"]: row for row in card["languages"]}
    assert by_language["ar"]["noise_asked"] == 0.2 and by_language["ar"]["noise_random_realised"] == 0.2
    assert (
        by_language["ru"]["noise_systematic_realised"] > 0 and by_language["en"]["noise_random_realised"] == 0
    )
    assert card["scripts"] == ["Arab", "Cyrl", "Jpan", "Latn"]
    licences = {s["name"]: s["licence"] for s in card["sources"]}
    assert (
        licences["num2words"] == "LGPL-2.1" and "Unicode License" in licences["Unicode CLDR (through babel)"]
    )
    readme = (tmp_path / "a" / "README.md").read_text()
    assert "LGPL-2.1" in readme and "| ar | Arab | 50 | 10 | 10 | 0.200 | 0.200 | 0.000 |" in readme


def test_files_are_identical_across_processes(tmp_path):
    """No dependence on Python's per-process hash seed: a subprocess writes the same bytes."""
    args = ["--languages", "en,he,ko", "--n-train", "60", "--n-validation", "12", "--n-test", "12"]
    args += ["--noise", "0.2", "--systematic", "ko", "--seed", "9"]
    main(["--out", str(tmp_path / "here"), *args])
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    command = [sys.executable, "-m", "capo_tutorial.testbed", "--out", str(tmp_path / "there"), *args]
    subprocess.run(command, check=True, env=env, capture_output=True)
    for name in ("train.jsonl", "validation.jsonl", "test.jsonl", "card.json", "README.md"):
        assert (tmp_path / "here" / name).read_bytes() == (tmp_path / "there" / name).read_bytes(), name


def test_rewritten_folder_loads_the_new_rows(tmp_path):
    kwargs = {"languages": ["en", "ko"], "n_train": 20, "n_validation": 4, "n_test": 4}
    write_testbed(tmp_path, seed=0, **kwargs)
    first = datasets.load_dataset(str(tmp_path), split="train")["pair_id"][:]
    write_testbed(tmp_path, seed=1, **kwargs)
    second = datasets.load_dataset(str(tmp_path), split="train")["pair_id"][:]
    assert second == make_testbed(seed=1, **kwargs)["train"]["pair_id"][:] != first


def test_command_line_entry_point(tmp_path, capsys):
    out = tmp_path / "tb"
    sizes = ["--n-train", "40", "--n-validation", "10", "--n-test", "10"]
    noise = ["--noise", "en=0.1,th=0.3", "--systematic", "th", "--seed", "3"]
    code = main(["--out", str(out), "--languages", "en,th", *sizes, *noise])
    assert code == 0 and "wrote 60 pairs" in capsys.readouterr().out
    card = json.loads((out / "card.json").read_text())
    assert card["arguments"]["noise"] == {"en": 0.1, "th": 0.3} and card["arguments"]["seed"] == 3
    with pytest.raises(SystemExit) as exit_info:
        main(["--out", str(out), "--languages", "en,xx"])
    assert exit_info.value.code == 2 and "pick distinct codes" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"languages": ["en", "klingon"]}, "pick distinct codes"),
        ({"noise": 0.7}, "must be in \\[0, 0.5\\]"),
        ({"noise": {"zz": 0.1}}, "not in the testbed"),
        ({"noise": "high"}, "'resource'"),
        ({"systematic": ["de"], "languages": ["en"]}, "not in the testbed"),
        ({"n_train": -1}, "non-negative"),
        ({"tasks": {"poetry": 1.0}}, "non-negative weights over"),
        ({"tasks": {"number_words": 0.0}}, "not all zero"),
        ({"max_number": 99}, ">= 999"),
        ({"systematic_digits": [9]}, "0..8"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_testbed(**kwargs)


def test_near_miss_noise_flips_near_misses_first_and_keeps_the_rate():
    uniform = _frame(make_testbed(["en", "ja"], n_train=400, seed=3, noise=0.2), "train")
    near = _frame(
        make_testbed(["en", "ja"], n_train=400, seed=3, noise=0.2, noise_pattern="near-miss"), "train"
    )
    assert near.flipped.sum() == uniform.flipped.sum()  # the same amount of noise, placed differently
    assert (near[near.flipped].margin_class == "low").all()  # 20% < each language's share of near misses
    assert (uniform[uniform.flipped].margin_class == "high").any()
    heavy = _frame(make_testbed(["en"], n_train=200, seed=3, noise=0.5, noise_pattern="near-miss"), "train")
    low, high = heavy[heavy.margin_class == "low"], heavy[heavy.margin_class == "high"]
    flips = round(0.5 * len(heavy))
    if len(low) <= flips:  # every near miss flipped, the rest of the flips are clear errors
        assert low.flipped.all() and high.flipped.sum() == flips - len(low)
    else:
        assert low.flipped.sum() == flips and not high.flipped.any()
    with pytest.raises(ValueError, match="noise_pattern"):
        make_testbed(["en"], n_train=10, noise_pattern="bursty")


def test_tiered_noise_averages_the_asked_rate_with_lower_resource_languages_noisier():
    languages = ["en", "es", "ru", "ar", "he", "th", "ja", "ko"]  # four high, four mid resource
    rates = tiered_noise(languages, 0.3)
    assert sum(rates.values()) / len(rates) == pytest.approx(0.3)
    assert rates["en"] == pytest.approx(0.2) and rates["ar"] == pytest.approx(0.4)
    testbed = _frame(make_testbed(languages, n_train=800, seed=1, noise=rates), "train")
    realised = testbed.groupby("language").flipped.mean()
    assert realised["ko"] > realised["ja"]  # tier 2 against tier 1, as asked


@pytest.mark.parametrize("pattern", ["by-tier", "near-miss"])
def test_run_config_noise_patterns_reach_the_training_data(pattern):
    from capo_tutorial.components import load_run_data
    from capo_tutorial.config import profile_config

    config = profile_config(
        "smoke", languages=["en", "ar"], testbed_train=200, testbed_eval=10, noise=0.3, noise_pattern=pattern
    )
    train = load_run_data(config)[0].to_pandas()
    rates = train.groupby("language").flipped.mean()
    if pattern == "by-tier":  # en high resource, ar mid: 0.2 and 0.4, averaging 0.3
        assert rates["en"] == pytest.approx(0.2) and rates["ar"] == pytest.approx(0.4)
    else:
        assert (
            rates.tolist() == pytest.approx([0.3, 0.3]) and (train[train.flipped].margin_class == "low").all()
        )
