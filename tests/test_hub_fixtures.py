"""The local hub folders of capo_tutorial.hub_fixtures read as the hub repositories would."""

import gzip
import json

import datasets
import pytest

from capo_tutorial.data import load_preferences
from capo_tutorial.hub_data import HUB_LAYOUTS
from capo_tutorial.hub_fixtures import (
    HELPSTEER3_ROWS,
    MREWARDBENCH_CONFIGS,
    helpsteer3_row,
    mrewardbench_rows,
    write_helpsteer3,
    write_hub_repository,
    write_mrewardbench,
)


def test_helpsteer3_folder_has_the_hub_schema_and_every_case(tmp_path):
    root = write_helpsteer3(tmp_path / "HelpSteer3")
    with gzip.open(root / "preference" / "train.jsonl.gz", "rt", encoding="utf-8") as handle:
        first = json.loads(handle.readline())
    assert set(first) == {
        "domain",
        "language",
        "context",
        "response1",
        "response2",
        "overall_preference",
        "individual_preference",
    }
    assert set(first["individual_preference"][0]) == {"score", "reasoning", "feedback1", "feedback2"}
    preferences = [row["overall_preference"] for row in HELPSTEER3_ROWS]
    assert 0 in preferences and min(preferences) < 0 < max(preferences)
    assert any(row["domain"] == "code" for row in HELPSTEER3_ROWS)
    assert any(len(row["context"]) > 1 for row in HELPSTEER3_ROWS), "a multi-turn context"
    loaded = datasets.load_dataset(str(root), "preference", split="validation")
    assert len(loaded) == len(HELPSTEER3_ROWS)


def test_helpsteer3_folder_through_the_hub_layout(tmp_path):
    root = write_helpsteer3(tmp_path / "HelpSteer3")
    dataset, report = load_preferences(
        str(root), config="preference", split="train", return_report=True, **HUB_LAYOUTS["nvidia/HelpSteer3"]
    )
    ties = sum(row["overall_preference"] == 0 for row in HELPSTEER3_ROWS)
    assert report.n_skipped == ties and len(dataset) == len(HELPSTEER3_ROWS) - ties
    kept = [row for row in HELPSTEER3_ROWS if row["overall_preference"] != 0]
    for record, row in zip(dataset.to_list(), kept):
        better, worse = (
            ("response1", "response2") if row["overall_preference"] < 0 else ("response2", "response1")
        )
        assert row[better] in record["chosen"] and row[worse] in record["rejected"]
        assert record["strength"] == abs(row["overall_preference"])
    code = next(r for r, row in zip(dataset.to_list(), kept) if row["domain"] == "code")
    assert code["language"] == "en", "the code domain's language column names a programming language"
    assert {"zh", "ja", "ko", "de", "es"} <= set(dataset["language"][:])


def test_mrewardbench_folder_gives_one_language_per_config(tmp_path):
    root = write_mrewardbench(tmp_path / "m-rewardbench", configs=["deu_Latn", "jpn_Jpan", "arb_Arab"])
    assert (root / "deu_Latn" / "test-00000-of-00001.parquet").is_file()
    dataset = load_preferences(str(root), config=["deu_Latn", "jpn_Jpan", "arb_Arab"], split="test")
    assert dataset["language"][:] == ["de", "de", "ja", "ja", "ar", "ar"]
    assert set(mrewardbench_rows("deu_Latn")[0]) == {
        "id",
        "language",
        "prompt",
        "chosen",
        "rejected",
        "chosen_model",
        "rejected_model",
        "source",
    }
    assert dataset[0]["chosen"] == mrewardbench_rows("deu_Latn")[0]["chosen"]
    assert len(MREWARDBENCH_CONFIGS) >= 6


def test_generic_writer_formats_and_bad_input(tmp_path):
    rows = [{"prompt": "p", "chosen": "a", "rejected": "b", "language": "fr"}]
    for fmt in ("jsonl", "jsonl.gz", "parquet"):
        root = write_hub_repository(tmp_path / fmt, {("default", "train"): rows}, fmt)
        assert load_preferences(str(root), config="default", split="train")[0]["chosen"] == "a"
    with pytest.raises(ValueError, match="csv"):
        write_hub_repository(tmp_path / "x", {("default", "train"): rows}, "csv")
    with pytest.raises(ValueError, match=r"-3\.\.3"):
        helpsteer3_row("general", "english", [("user", "hi")], "a", "b", 4)
    with pytest.raises(ValueError, match="xxx_Latn"):
        mrewardbench_rows("xxx_Latn")
