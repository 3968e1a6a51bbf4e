"""The gpu profile's hub layouts, read from local folders written in each hub repository's schema."""

import gzip
import json

import pandas as pd
import pytest

from capo_tutorial.components import load_run_data
from capo_tutorial.config import profile_config
from capo_tutorial.data import load_preferences
from capo_tutorial.hub_data import HUB_LAYOUTS


@pytest.fixture
def helpsteer3(tmp_path):
    """nvidia/HelpSteer3 as the hub lays it out: a README with configs, gzipped JSONL per split."""
    rows = [
        {"domain": "general", "language": "english", "context": [{"role": "user", "content": "Hi?"}],
         "response1": "Hello!", "response2": "Go away.", "overall_preference": -2},
        {"domain": "multilingual", "language": "chinese", "context": [{"role": "user", "content": "你好"}],
         "response1": "滚", "response2": "你好！", "overall_preference": 3},
        {"domain": "multilingual", "language": "german", "context": [{"role": "user", "content": "Hallo"}],
         "response1": "Hallo!", "response2": "Servus!", "overall_preference": 0},
        {"domain": "code", "language": "python", "context": [{"role": "user", "content": "sort a list"}],
         "response1": "sorted(xs)", "response2": "xs.sort", "overall_preference": -1},
    ]  # fmt: skip
    tmp_path = tmp_path / "HelpSteer3"
    (tmp_path / "preference").mkdir(parents=True)
    for split in ("train", "validation"):
        with gzip.open(tmp_path / "preference" / f"{split}.jsonl.gz", "wt", encoding="utf-8") as handle:
            handle.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    (tmp_path / "README.md").write_text(
        "---\nconfigs:\n- config_name: preference\n  data_files:\n"
        "  - split: train\n    path: preference/train.jsonl.gz\n"
        "  - split: validation\n    path: preference/validation.jsonl.gz\n---\n"
    )
    return tmp_path


@pytest.fixture
def m_rewardbench(tmp_path):
    """M-RewardBench's layout: one config per language (deu_Latn, ...), a parquet test split each."""
    tmp_path = tmp_path / "multilingual-reward-bench"
    readme = ["---", "configs:"]
    for config, prompt in (("deu_Latn", "Wie spät ist es?"), ("jpn_Jpan", "今何時ですか？")):
        (tmp_path / config).mkdir(parents=True)
        frame = pd.DataFrame(
            {"id": [1, 2], "prompt": [prompt, prompt + "!"], "chosen": ["A", "B"], "rejected": ["C", "D"],
             "chosen_model": ["m1", "m1"], "rejected_model": ["m2", "m2"], "source": ["chat", "chat"]}
        )  # fmt: skip
        frame.to_parquet(tmp_path / config / "test-00000-of-00001.parquet")
        readme += [
            f"- config_name: {config}",
            "  data_files:",
            "  - split: test",
            f"    path: {config}/test-*",
        ]
    (tmp_path / "README.md").write_text("\n".join([*readme, "---", ""]))
    return tmp_path


def test_helpsteer3_layout_orders_pairs_and_skips_ties(helpsteer3):
    dataset, report = load_preferences(
        str(helpsteer3), split="train", config="preference", return_report=True,
        **HUB_LAYOUTS["nvidia/HelpSteer3"],
    )  # fmt: skip
    rows = dataset.to_list()
    assert len(rows) == 3 and report.n_skipped == 1, "the tie (overall_preference 0) carries no preference"
    english, chinese, code = rows
    assert "Hello!" in english["chosen"] and "Go away." in english["rejected"]
    assert "你好！" in chinese["chosen"] and chinese["language"] == "zh"
    assert [r["strength"] for r in rows] == [2.0, 3.0, 1.0]
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
    assert len(train) == 3 and "strength" in train.column_names
    assert len(evaluation) == 4 and set(evaluation["language"][:]) == {"de", "ja"}
