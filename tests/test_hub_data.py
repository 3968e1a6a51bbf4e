"""The gpu profile's hub layouts, read from local folders written in each hub repository's schema."""

import pytest

from capo_tutorial.components import load_run_data
from capo_tutorial.config import profile_config
from capo_tutorial.data import load_preferences
from capo_tutorial.hub_data import HUB_LAYOUTS
from capo_tutorial.hub_fixtures import write_helpsteer3, write_mrewardbench


@pytest.fixture
def helpsteer3(tmp_path):
    """nvidia/HelpSteer3 as the hub lays it out: a README with configs, gzipped JSONL per split."""
    return write_helpsteer3(tmp_path / "HelpSteer3")


@pytest.fixture
def m_rewardbench(tmp_path):
    """M-RewardBench's layout: one config per language (deu_Latn, ...), a parquet test split each."""
    return write_mrewardbench(tmp_path / "multilingual-reward-bench", configs=["deu_Latn", "jpn_Jpan"])


def test_helpsteer3_layout_orders_pairs_and_skips_ties(helpsteer3):
    dataset, report = load_preferences(
        str(helpsteer3),
        split="train",
        config="preference",
        return_report=True,
        **HUB_LAYOUTS["nvidia/HelpSteer3"],
    )
    rows = dataset.to_list()
    assert len(rows) == 8 and report.n_skipped == 2, "the ties (overall_preference 0) carry no preference"
    english, chinese, japanese, code = rows[:4]
    assert "one marked better" in english["chosen"] and "It is a pair." in english["rejected"]
    assert "其中一个被标为更好" in chinese["chosen"] and chinese["language"] == "zh"
    assert "大阪市は？" in japanese["prompt"] and "東京の人口は？" in japanese["prompt"], "multi-turn context"
    assert [r["strength"] for r in rows] == [2.0, 3.0, 1.0, 2.0, 3.0, 3.0, 3.0, 2.0]
    assert "reversed copy" in code["chosen"], "overall_preference > 0: response2 is better"
    assert code["language"] == "en", "the code domain's language column names a programming language"


def test_m_rewardbench_configs_give_languages(m_rewardbench):
    dataset = load_preferences(str(m_rewardbench), split="test", config=["deu_Latn", "jpn_Jpan"])
    assert sorted(set(dataset["language"][:])) == ["de", "ja"]
    assert len(dataset) == 4


def test_gpu_profile_reads_both_hub_data_sets(helpsteer3, m_rewardbench, monkeypatch):
    """The gpu profile's own data path, with the hub ids pointed at the local copies."""
    monkeypatch.setitem(HUB_LAYOUTS, str(helpsteer3), HUB_LAYOUTS["nvidia/HelpSteer3"])
    config = profile_config(
        "gpu", data=str(helpsteer3), eval_data=str(m_rewardbench), eval_data_configs=["deu_Latn", "jpn_Jpan"]
    )
    train, evaluation = load_run_data(config)
    assert len(train) == 8 and "strength" in train.column_names
    assert len(evaluation) == 4 and set(evaluation["language"][:]) == {"de", "ja"}
