"""capo_tutorial.data: formats, validation errors, tokenization, collation, batching, statistics.

Everything is local: a byte-level BPE tokenizer trained here on a few hundred strings, files written
to tmp_path, and a folder laid out like a hub data set repository (one config per language).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from torch.utils.data import DataLoader
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from capo_tutorial.analysis import language_statistics
from capo_tutorial.data import (
    LengthGroupedBatchSampler,
    PreferenceCollator,
    PreferenceDataError,
    load_preferences,
    normalize_language,
    padding_fraction,
    pair_lengths,
    render_conversation,
    sequence_lengths,
    tokenize_pair,
    tokenize_preferences,
)
from capo_tutorial.hub_fixtures import write_hub_repository
from capo_tutorial.testbed import make_testbed

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def _tokenizer(
    texts: list[str], *, bos: bool = True, chat_template: str | None = None
) -> PreTrainedTokenizerFast:
    """A byte-level BPE with <pad>=0, <eos>=1, <bos>=2 (prepended when bos=True)."""
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=["<pad>", "<eos>", "<bos>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    if bos:
        backend.post_processor = processors.TemplateProcessing(
            single="<bos> $A", special_tokens=[("<bos>", 2)]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        chat_template=chat_template,
        clean_up_tokenization_spaces=False,
    )


@pytest.fixture(scope="module")
def testbed() -> datasets.DatasetDict:
    return make_testbed(n_train=360, n_validation=72, n_test=72, seed=0)


@pytest.fixture(scope="module")
def tokenizer(testbed) -> PreTrainedTokenizerFast:
    train = testbed["train"]
    return _tokenizer(train["prompt"][:] + train["chosen"][:] + ["user assistant system: hello"])


@pytest.fixture(scope="module")
def chat_tokenizer(testbed) -> PreTrainedTokenizerFast:
    return _tokenizer(testbed["train"]["prompt"][:], chat_template=CHAT_TEMPLATE)


def _pairs(n: int = 3) -> list[dict]:
    return [
        {"prompt": f"What is {i} + 1?", "chosen": str(i + 1), "rejected": str(i + 2), "language": "en"}
        for i in range(n)
    ]


def _error(source, **kwargs) -> PreferenceDataError:
    with pytest.raises(PreferenceDataError) as info:
        load_preferences(source, **kwargs)
    return info.value


# ----------------------------------------------------------------------------------------------
# Formats
# ----------------------------------------------------------------------------------------------


def test_standard_rows_become_records_with_normalised_language_and_strength():
    rows = _pairs(2)
    rows[0] |= {"language": "EN", "strength": 2, "source": "a"}
    rows[1] |= {"language": "pt_BR", "strength": 0.25, "source": "b"}
    ds = load_preferences(rows)
    assert ds.column_names == ["prompt", "chosen", "rejected", "language", "strength", "source"]
    assert ds["language"][:] == ["en", "pt-BR"]
    assert ds["strength"][:] == [2.0, 0.25]
    assert ds["source"][:] == ["a", "b"]


@pytest.mark.parametrize(("code", "expected"), [("iw", "he"), ("arb_Arab", "ar"), ("zh-hans", "zh-Hans")])
def test_normalize_language_canonical_forms(code, expected):
    assert normalize_language(code) == expected


def test_language_argument_applies_to_every_row():
    rows = [{k: v for k, v in r.items() if k != "language"} for r in _pairs(2)]
    assert load_preferences(rows, language="de")["language"][:] == ["de", "de"]


def test_conversational_rows_render_with_chat_template(chat_tokenizer):
    row = {
        "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}],
        "chosen": [{"role": "assistant", "content": "4"}],
        "rejected": [{"role": "assistant", "content": "5"}],
        "language": "en",
    }
    ds = load_preferences([row], tokenizer=chat_tokenizer)
    record = ds[0]
    assert record["prompt"] == "<bos><|system|>Be brief.<|end|><|user|>2+2?<|end|><|assistant|>"
    assert record["chosen"] == "4<|end|>" and record["rejected"] == "5<|end|>"
    assert record["prompt_messages"] == row["prompt"]
    # Without a template the plain layout keeps the data usable.
    plain = load_preferences([row])[0]
    assert plain["prompt"] == "system: Be brief.\nuser: 2+2?\nassistant: "
    assert plain["chosen"] == "4"


def test_conversations_are_rerendered_at_tokenization_time(chat_tokenizer):
    row = {
        "prompt": [{"role": "user", "content": "2+2?"}],
        "chosen": [{"role": "assistant", "content": "4"}],
        "rejected": [{"role": "assistant", "content": "5"}],
        "language": "en",
    }
    plain = load_preferences([row])  # loaded without a tokenizer: plain layout
    tokenized = tokenize_preferences(plain, chat_tokenizer)[0]
    prompt = chat_tokenizer.decode(tokenized["prompt_input_ids"])
    assert prompt == "<bos><|user|>2+2?<|end|><|assistant|>"  # one BOS: the template wrote it
    assert chat_tokenizer.decode(tokenized["chosen_input_ids"]) == "4<|end|><eos>"
    assert render_conversation(row["prompt"], row["chosen"], chat_tokenizer) == (prompt, "4<|end|>")


def test_implicit_prompt_conversations_split_at_the_shared_prefix():
    shared = [{"role": "user", "content": "Capital of France?"}]
    row = {
        "chosen": [*shared, {"role": "assistant", "content": "Paris"}],
        "rejected": [*shared, {"role": "assistant", "content": "Lyon"}],
        "language": "en",
    }
    record = load_preferences([row])[0]
    assert record["prompt_messages"] == shared
    assert record["chosen_messages"] == [{"role": "assistant", "content": "Paris"}]
    assert (record["chosen"], record["rejected"]) == ("Paris", "Lyon")


def test_implicit_prompt_texts_split_at_a_word_boundary():
    row = {"chosen": "The sky is blue.", "rejected": "The sky is bright green.", "language": "en"}
    record = load_preferences([row])[0]
    assert (record["prompt"], record["chosen"], record["rejected"]) == (
        "The sky is ",
        "blue.",
        "bright green.",
    )


def test_column_map_renames_and_computes_strength():
    rows = [{"question": "Q1", "good": "a", "bad": "b", "s_good": 8.0, "s_bad": 5.0, "lang": "fr"}]
    ds = load_preferences(
        rows,
        column_map={
            "prompt": "question",
            "chosen": "good",
            "rejected": "bad",
            "language": "lang",
            "strength": lambda r: r["s_good"] - r["s_bad"],
        },
    )
    assert ds[0] == {
        "prompt": "Q1",
        "chosen": "a",
        "rejected": "b",
        "language": "fr",
        "strength": 3.0,
        "s_good": 8.0,
        "s_bad": 5.0,
    }


def _write_hub_layout(root: Path) -> Path:
    """A multilingual reward-benchmark layout: one config per language (FLORES-style names),
    parquet files, no language column, a README whose YAML header declares the configs."""
    rows = {
        "deu_Latn": [("Wie viel ist 2+2?", "Vier", "Fünf", 0.9), ("Hauptstadt?", "Berlin", "Bonn", 0.4)],
        "arb_Arab": [("كم يساوي ٢+٢؟", "أربعة", "خمسة", 0.8)],
        "jpn_Jpan": [("二足す二は?", "四", "五", 0.7)],
    }
    columns = ["prompt", "chosen", "rejected", "agree"]
    files = {(config, "test"): [dict(zip(columns, item)) for item in items] for config, items in rows.items()}
    return write_hub_repository(root, files, "parquet")


def test_hub_layout_folder_with_per_language_configs(tmp_path):
    root = _write_hub_layout(tmp_path / "m-bench")
    ds = load_preferences(
        str(root), config=["deu_Latn", "arb_Arab", "jpn_Jpan"], split="test", column_map={"strength": "agree"}
    )
    assert ds["language"][:] == ["de", "de", "ar", "ja"]
    assert ds["strength"][:] == pytest.approx([0.9, 0.4, 0.8, 0.7])
    assert ds["chosen"][:] == ["Vier", "Berlin", "أربعة", "四"]


def test_hub_layout_folder_edits_are_not_served_from_a_stale_cache(tmp_path):
    root = _write_hub_layout(tmp_path / "bench")
    assert load_preferences(str(root), config="jpn_Jpan", split="test")["chosen"][:] == ["四"]
    table = {"prompt": ["三足す三は?"], "chosen": ["六"], "rejected": ["七"], "agree": [1.0]}
    datasets.Dataset.from_dict(table).to_parquet(str(root / "jpn_Jpan" / "test.parquet"))
    assert load_preferences(str(root), config="jpn_Jpan", split="test")["chosen"][:] == ["六"]


def test_hub_id_resolves_offline_from_the_datasets_cache(tmp_path):
    """The hub-id code path (datasets.load_dataset("owner/name")) with HF_HUB_OFFLINE=1: the cache is
    laid out as a previous online load leaves it ({owner}___{name}/{config}/..., {name}-{split}.arrow)."""
    assert datasets.config.HF_HUB_OFFLINE, "tests must run offline (tests/conftest.py)"
    root = _write_hub_layout(tmp_path / "repo")
    cache = tmp_path / "cache"
    for config in ("deu_Latn", "arb_Arab"):
        datasets.load_dataset_builder(str(root), config, cache_dir=str(cache)).download_and_prepare()
    snapshot = next(p for p in cache.iterdir() if p.is_dir())
    target = cache / "capo-test___m-bench"
    shutil.move(str(snapshot), str(target))
    for arrow in target.glob("*/*/*/*.arrow"):
        arrow.rename(arrow.with_name("m-bench-test.arrow"))
    ds = load_preferences("capo-test/m-bench", config="arb_Arab", split="test", cache_dir=str(cache))
    assert ds[0]["language"] == "ar" and ds[0]["chosen"] == "أربعة"
    missing = _error("capo-test/not-cached", split="test", cache_dir=str(cache))
    assert missing.reason == "not_found" and "HF_HUB_OFFLINE" in str(missing)


def test_local_files_jsonl_json_csv_parquet_give_the_same_records(tmp_path):
    rows = _pairs(3)
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (tmp_path / "a.json").write_text(json.dumps(rows))
    (tmp_path / "b.json").write_text(json.dumps({"data": rows}, indent=2))  # pretty-printed
    header = "prompt,chosen,rejected,language\n"
    (tmp_path / "a.csv").write_text(
        header + "".join(f'"{r["prompt"]}",{r["chosen"]},{r["rejected"]},en\n' for r in rows)
    )
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "a.parquet"))
    expected = load_preferences(rows).to_list()
    for name in ("a.jsonl", "a.json", "b.json", "a.csv", "a.parquet"):
        assert load_preferences(tmp_path / name).to_list() == expected, name
    (tmp_path / "one.json").write_text(json.dumps(rows[0], indent=2))  # a single pretty-printed record
    assert load_preferences(tmp_path / "one.json").to_list() == expected[:1]


def test_invalid_json_array_names_the_line(tmp_path):
    path = tmp_path / "pairs.json"
    path.write_text(
        '[\n  {"prompt": "p", "chosen": "a", "rejected": "b", "language": "en"},\n  {"prompt": }\n]'
    )
    error = _error(path)
    assert (error.reason, error.line) == ("invalid_json", 3) and str(error).startswith(f"{path}, line 3:")


def test_dataset_dict_split_and_testbed_round_trip(testbed):
    ds = load_preferences(testbed, split="validation")
    assert ds.num_rows == testbed["validation"].num_rows
    assert ds["pair_id"][:] == testbed["validation"]["pair_id"][:]  # metadata kept, order kept
    assert _error(testbed, split="dev").reason == "bad_split_or_config"


# ----------------------------------------------------------------------------------------------
# Validation: every bad input names the row and the field
# ----------------------------------------------------------------------------------------------


def _row(**fields) -> dict:
    return {"prompt": "p", "chosen": "c", "rejected": "r", "language": "en"} | fields


BAD_ROWS = {  # kind: (row, field named, words in the message)
    "missing_field": ({"prompt": "p", "rejected": "r", "language": "en"}, "chosen", "is missing"),
    "null_field": (_row(chosen=None), "chosen", "None"),
    "empty_text": (_row(rejected=" \n\t"), "rejected", "whitespace"),
    "not_a_string": (_row(prompt=42), "prompt", "got int"),
    "identical_pair": (_row(chosen="same", rejected="same"), "rejected", "identical"),
    "unknown_language": (_row(language="xx"), "language", "'xx'"),
    "invalid_strength": (_row(strength=-1), "strength", ">= 0"),
    "nan_strength": (_row(strength=math.nan), "strength", "nan"),
}


@pytest.mark.parametrize("kind", list(BAD_ROWS))
def test_bad_row_message_names_row_field_and_fix(kind):
    bad, field, what = BAD_ROWS[kind]
    rows = [*_pairs(2), bad]
    if kind in ("invalid_strength", "nan_strength"):
        rows = [r | {"strength": 1.0} for r in rows[:2]] + [bad]
    error = _error(rows)
    message = str(error)
    assert error.row == 2 and error.field == field
    assert "row 2" in message and f"field '{field}'" in message and what in message
    assert "on_error='skip'" in message  # says what to do


def _user(text: str) -> dict:
    return {"role": "user", "content": text}


def _assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


MESSAGE_CASES = {  # case: (prompt, chosen, field named, words in the message)
    "missing role": ([{"content": "hi"}], [_assistant("a")], "prompt", "has no 'role'"),
    "missing content": ([{"role": "user"}], [_assistant("a")], "prompt", "has no 'content'"),
    "unknown role": ([{"role": "human", "content": "hi"}], [_assistant("a")], "prompt", "unknown role"),
    "prompt ends with assistant": (
        [_user("hi"), _assistant("x")],
        [_assistant("a")],
        "chosen",
        "bad role order",
    ),
    "completion starts with user": ([_user("hi")], [_user("a")], "chosen", "not 'assistant'"),
    "system not first": (
        [_user("hi"), {"role": "system", "content": "s"}, _user("u")],
        [_assistant("a")],
        "chosen",
        "'system' message at position 1",
    ),
    "two user turns": (
        [_user("hi"), _user("again")],
        [_assistant("a")],
        "chosen",
        "two 'user' messages in a row",
    ),
    "mixed formats": ("plain prompt", [_assistant("a")], "prompt", "while other fields are message lists"),
}


@pytest.mark.parametrize("case", list(MESSAGE_CASES))
def test_malformed_messages_name_row_and_field(case):
    prompt, chosen, field, what = MESSAGE_CASES[case]
    good = {
        "prompt": [{"role": "user", "content": "q"}],
        "chosen": [{"role": "assistant", "content": "y"}],
        "rejected": [{"role": "assistant", "content": "n"}],
        "language": "en",
    }
    bad = {
        "prompt": prompt,
        "chosen": chosen,
        "rejected": [{"role": "assistant", "content": "b"}],
        "language": "en",
    }
    error = _error([good, bad])
    assert (error.row, error.field) == (1, field)
    assert "row 1" in str(error) and f"field '{field}'" in str(error) and what in str(error)


def test_failing_column_map_function_names_row_and_field():
    rows = [{"q": "a", "good": "x", "bad": "y", "score": 1.0}, {"q": "b", "good": "x", "bad": "y"}]
    column_map = {"prompt": "q", "chosen": "good", "rejected": "bad", "strength": lambda r: r["score"]}
    error = _error(rows, column_map=column_map, language="en")
    assert (error.row, error.field, error.reason) == (1, "strength", "column_map_failed")
    assert "KeyError" in str(error) and "row 1" in str(error)
    ds = load_preferences(rows, column_map=column_map, language="en", on_error="skip")
    assert ds["strength"][:] == [1.0]


def test_unsupported_file_type(tmp_path):
    (tmp_path / "pairs.txt").write_text("prompt chosen rejected")
    error = _error(tmp_path / "pairs.txt")
    assert error.reason == "unsupported_file" and ".jsonl" in str(error)


def test_invalid_json_line_names_file_line_and_row(tmp_path):
    path = tmp_path / "pairs.jsonl"
    lines = [json.dumps(r) for r in _pairs(2)]
    path.write_text(lines[0] + "\n\n" + '{"prompt": "p", "chosen": "c",\n' + lines[1] + "\n")
    error = _error(path)
    assert error.reason == "invalid_json" and (error.line, error.row) == (3, 1)
    assert str(error).startswith(f"{path}, line 3, row 1: is not valid JSON")


def test_undecodable_bytes_name_line_and_row(tmp_path):
    path = tmp_path / "pairs.jsonl"
    good = [json.dumps(r, ensure_ascii=False).encode() for r in _pairs(2)]
    path.write_bytes(
        good[0]
        + b"\n"
        + b'{"prompt": "caf\xe9", "chosen": "a", "rejected": "b", "language": "fr"}\n'
        + good[1]
    )
    error = _error(path)
    assert error.reason == "undecodable_bytes" and (error.line, error.row) == (2, 1)
    assert "line 2, row 1" in str(error) and "byte 0xe9" in str(error) and "UTF-8" in str(error)
    csv_path = tmp_path / "pairs.csv"
    csv_path.write_bytes(b"prompt,chosen,rejected,language\np,a,b,en\np2,\xff,b,en\n")
    assert _error(csv_path).line == 3


def test_csv_errors_name_the_line(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text('prompt,chosen,rejected,language\n"What is\n2+2?",4,5,en\nq,same,same,en\n')
    error = _error(path)
    assert (error.line, error.row, error.field, error.reason) == (4, 1, "rejected", "identical_pair")


def test_duplicated_pairs_are_kept_with_a_warning():
    rows = [*_pairs(3), _pairs(1)[0], _pairs(3)[2]]
    with pytest.warns(UserWarning, match=r"2 duplicated pairs.*row 3 repeats row 0, row 4 repeats row 2"):
        ds, report = load_preferences(rows, return_report=True)
    assert ds.num_rows == 5 and report.duplicates == 2 and report.duplicate_rows == [3, 4]


def test_missing_path_and_empty_files(tmp_path):
    error = _error(tmp_path / "nope.jsonl")
    assert error.reason == "not_found" and "nope.jsonl: does not exist" in str(error)
    assert _error("./data/missing-folder").reason == "not_found"
    for name, content in (
        ("e.jsonl", ""),
        ("w.jsonl", "\n  \n"),
        ("e.csv", "prompt,chosen,rejected\n"),
        ("e.json", "[]"),
    ):
        (tmp_path / name).write_text(content)
        error = _error(tmp_path / name)
        assert error.reason == "empty_file" and str(tmp_path / name) in str(error), name
    (tmp_path / "empty-dir").mkdir()
    assert _error(tmp_path / "empty-dir").reason == "empty_file"
    assert _error([]).reason == "empty_file"


def test_source_level_mistakes_fail_early():
    rows = [{k: v for k, v in r.items() if k != "language"} for r in _pairs(2)]
    error = _error(rows, on_error="skip")  # no row could be valid: not a skip
    assert error.field == "language" and "language='xx'" in str(error)
    error = _error(_pairs(2), column_map={"prompt": "question"})
    assert error.field == "prompt" and "'question'" in str(error) and "The columns are" in str(error)
    with pytest.raises(ValueError, match="on_error"):
        load_preferences(_pairs(1), on_error="ignore")


def test_skip_drops_bad_rows_and_reports_counts_and_first_rows(tmp_path, caplog):
    path = tmp_path / "mixed.jsonl"
    good = [json.dumps(r) for r in _pairs(4)]
    bad = [
        '{"prompt": "p", "chosen": "", "rejected": "r", "language": "en"}',  # row 1
        "not json",  # row 3
        '{"prompt": "p", "chosen": "c", "rejected": "r", "language": "qq"}',  # row 5
        '{"prompt": "p", "chosen": "   ", "rejected": "r", "language": "en"}',  # row 6
    ]
    path.write_text("\n".join([good[0], bad[0], good[1], bad[1], good[2], bad[2], bad[3], good[3]]))
    with caplog.at_level(logging.WARNING, logger="capo_tutorial.data"):
        ds, report = load_preferences(path, on_error="skip", return_report=True)
    assert ds.num_rows == 4 and ds["prompt"][:] == [r["prompt"] for r in _pairs(4)]
    assert (report.n_read, report.n_kept, report.n_skipped) == (8, 4, 4)
    assert report.skipped == {"empty_text": 2, "invalid_json": 1, "unknown_language": 1}
    assert report.first_rows == {"empty_text": [1, 6], "invalid_json": [3], "unknown_language": [5]}
    assert "line 2, row 1: field 'chosen'" in report.messages["empty_text"]
    assert "kept 4 of 8 rows" in caplog.text and "empty_text 2 (rows [1, 6])" in caplog.text


def test_all_rows_bad_raises_even_when_skipping():
    bad = [r | {"rejected": r["chosen"]} for r in _pairs(2)]
    error = _error(bad, on_error="skip")
    assert error.reason == "no_valid_rows" and "identical_pair 2" in str(error)


# ----------------------------------------------------------------------------------------------
# Tokenization
# ----------------------------------------------------------------------------------------------


def test_tokenize_pair_bos_prompt_and_eos_completions(tokenizer):
    out = tokenize_pair("Write 7 in words.", "seven", "eight", tokenizer)
    body = tokenizer("Write 7 in words.", add_special_tokens=False)["input_ids"]
    assert out["prompt_input_ids"] == [tokenizer.bos_token_id, *body]
    assert out["chosen_input_ids"] == [
        *tokenizer("seven", add_special_tokens=False)["input_ids"],
        tokenizer.eos_token_id,
    ]
    assert tokenizer.decode(out["rejected_input_ids"]) == "eight<eos>"
    assert not out["prompt_truncated"] and not out["completion_truncated"]


def test_tokenizer_without_bos_adds_nothing_before_the_prompt(testbed):
    no_bos = _tokenizer(testbed["train"]["prompt"][:100], bos=False)
    out = tokenize_pair("hello", "a", "b", no_bos)
    assert out["prompt_input_ids"] == no_bos("hello", add_special_tokens=False)["input_ids"]


def test_truncation_keeps_prompt_end_and_bos_and_cuts_completion_end(tokenizer):
    prompt, chosen = "one two three four five six seven eight nine ten", "eleven twelve thirteen fourteen"
    full = tokenize_pair(prompt, chosen, "x", tokenizer)
    cut = tokenize_pair(prompt, chosen, "x", tokenizer, max_prompt_length=6, max_completion_length=3)
    assert cut["prompt_input_ids"] == [tokenizer.bos_token_id, *full["prompt_input_ids"][-5:]]
    assert cut["chosen_input_ids"] == full["chosen_input_ids"][:3]  # the end (and its EOS) is cut
    assert cut["rejected_input_ids"] == full["rejected_input_ids"]  # "x" + EOS fits
    assert cut["prompt_truncated"] and cut["completion_truncated"]
    both = tokenize_pair(prompt, chosen, "x", tokenizer, max_length=20)
    n_prompt = len(both["prompt_input_ids"])
    assert n_prompt + max(len(both["chosen_input_ids"]), len(both["rejected_input_ids"])) <= 20
    assert n_prompt >= 10  # the prompt is cut first, but not below half of max_length
    with pytest.raises(ValueError, match="max_length"):
        tokenize_pair(prompt, chosen, "x", tokenizer, max_length=2)


def test_tokenize_preferences_reports_truncation_and_drops_nothing(testbed, tokenizer, caplog):
    ds = load_preferences(testbed["test"])
    full = tokenize_preferences(ds, tokenizer)
    limit = 40
    expected = sum(
        len(p) + max(len(c), len(r)) > limit
        for p, c, r in zip(
            full["prompt_input_ids"], full["chosen_input_ids"], full["rejected_input_ids"], strict=True
        )
    )
    assert expected > 0
    with caplog.at_level(logging.WARNING, logger="capo_tutorial.data"):
        cut, report = tokenize_preferences(ds, tokenizer, max_length=limit, return_report=True)
    assert cut.num_rows == ds.num_rows and report.n_rows == ds.num_rows
    assert report.rows_truncated == expected and f"truncated {expected} of {ds.num_rows} rows" in caplog.text
    assert int(pair_lengths(cut).max()) <= limit


def test_tokenize_preferences_columns(testbed, tokenizer):
    ds = load_preferences(testbed["test"]).add_column("strength", [0.5] * testbed["test"].num_rows)
    tokenized = tokenize_preferences(ds, tokenizer)
    assert tokenized.column_names[:3] == ["prompt_input_ids", "chosen_input_ids", "rejected_input_ids"]
    for name in ("language", "strength", "margin_class", "flipped", "pair_id", "task", "script"):
        assert name in tokenized.column_names
    assert "prompt" not in tokenized.column_names
    assert tokenized.features["chosen_input_ids"].feature.dtype == "int32"
    row = tokenized[5]
    assert tokenizer.decode(row["chosen_input_ids"]) == ds[5]["chosen"] + "<eos>"
    assert tokenizer.decode(row["prompt_input_ids"]) == "<bos>" + ds[5]["prompt"]
    assert "prompt" in tokenize_preferences(ds, tokenizer, keep_text=True).column_names
    with pytest.raises(ValueError, match="load_preferences first"):
        tokenize_preferences(datasets.Dataset.from_dict({"question": ["q"]}), tokenizer)


# ----------------------------------------------------------------------------------------------
# Collation
# ----------------------------------------------------------------------------------------------


def _features():
    return [
        {
            "prompt_input_ids": [2, 10, 11],
            "chosen_input_ids": [20, 1],
            "rejected_input_ids": [30, 31, 32, 1],
            "language": "en",
            "strength": 0.5,
            "margin_class": "low",
            "flipped": False,
            "pair_id": "a",
        },
        {
            "prompt_input_ids": [2, 12],
            "chosen_input_ids": [21, 22, 1],
            "rejected_input_ids": [33, 1],
            "language": "ja",
            "strength": 2.0,
            "margin_class": "high",
            "flipped": True,
            "pair_id": "b",
        },
    ]


def test_collator_right_padding_exact_tensors():
    batch = PreferenceCollator(0)(_features())
    assert batch["input_ids"].tolist() == [
        [2, 10, 11, 20, 1, 0, 0],
        [2, 12, 21, 22, 1, 0, 0],
        [2, 10, 11, 30, 31, 32, 1],
        [2, 12, 33, 1, 0, 0, 0],
    ]
    assert batch["attention_mask"].tolist() == [
        [1, 1, 1, 1, 1, 0, 0],
        [1, 1, 1, 1, 1, 0, 0],
        [1, 1, 1, 1, 1, 1, 1],
        [1, 1, 1, 1, 0, 0, 0],
    ]
    assert batch["completion_mask"].tolist() == [
        [0, 0, 0, 1, 1, 0, 0],
        [0, 0, 1, 1, 1, 0, 0],
        [0, 0, 0, 1, 1, 1, 1],
        [0, 0, 1, 1, 0, 0, 0],
    ]
    assert all(batch[k].dtype == torch.long for k in ("input_ids", "attention_mask", "completion_mask"))
    assert batch["strength"].dtype == torch.float32 and batch["strength"].tolist() == [0.5, 2.0]
    assert (
        batch["language"] == ["en", "ja"]
        and batch["flipped"] == [False, True]
        and batch["pair_id"] == ["a", "b"]
    )
    assert set(batch) == {
        "input_ids",
        "attention_mask",
        "completion_mask",
        "strength",
        "language",
        "margin_class",
        "flipped",
        "pair_id",
    }


def test_collator_left_padding_and_multiple_of(tokenizer):
    collator = PreferenceCollator(tokenizer, padding_side="left", pad_to_multiple_of=8)
    batch = collator(_features())
    assert batch["input_ids"].shape == (4, 8)
    assert batch["input_ids"][1].tolist() == [0, 0, 0, 2, 12, 21, 22, 1]
    assert batch["completion_mask"][1].tolist() == [0, 0, 0, 0, 0, 1, 1, 1]
    assert batch["attention_mask"][3].tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    right = PreferenceCollator(tokenizer)(_features())
    for row in range(4):  # same tokens and masks, only the padding moved
        keep_left, keep_right = batch["attention_mask"][row].bool(), right["attention_mask"][row].bool()
        assert batch["input_ids"][row][keep_left].tolist() == right["input_ids"][row][keep_right].tolist()
        assert (
            batch["completion_mask"][row][keep_left].tolist()
            == right["completion_mask"][row][keep_right].tolist()
        )


def test_collator_errors():
    with pytest.raises(ValueError, match="pad token"):
        PreferenceCollator(None)
    with pytest.raises(ValueError, match="padding_side"):
        PreferenceCollator(0, padding_side="middle")
    with pytest.raises(ValueError, match="tokenize_preferences"):
        PreferenceCollator(0)([{"prompt": "x"}])


def test_collated_batch_feeds_concatenated_logps(testbed, tokenizer):
    """The contract with capo_tutorial.logprobs: completion lengths and padding-side invariance."""
    from capo_tutorial.logprobs import concatenated_logps

    tokenized = tokenize_preferences(load_preferences(testbed["test"].select(range(4))), tokenizer)
    rows = [tokenized[i] for i in range(4)]
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        right = concatenated_logps(model, PreferenceCollator(tokenizer)(rows))
        left = concatenated_logps(model, PreferenceCollator(tokenizer, padding_side="left")(rows))
    assert right.chosen_lengths.tolist() == [len(r["chosen_input_ids"]) for r in rows]
    assert right.rejected_lengths.tolist() == [len(r["rejected_input_ids"]) for r in rows]
    torch.testing.assert_close(right.chosen_logps, left.chosen_logps, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(right.rejected_logps, left.rejected_logps, atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------------------------
# Length-grouped batching
# ----------------------------------------------------------------------------------------------


def test_padding_fraction_exact():
    # One batch of 2 pairs -> 4 rows of width 5; 3+5+4+2 = 14 real tokens of 20 slots.
    assert padding_fraction([[0, 1]], [3, 5], [4, 2]) == pytest.approx(0.3)
    assert padding_fraction([[0, 1]], [3, 5], [4, 2], pad_to_multiple_of=8) == pytest.approx(1 - 14 / 32)
    assert padding_fraction([[0], [1]], [3, 5]) == 0.0


def test_sampler_covers_every_pair_once_and_is_deterministic():
    lengths = np.random.default_rng(0).integers(5, 120, size=1003)
    sampler = LengthGroupedBatchSampler(lengths, 16, seed=3, group_size=160)
    epoch0 = list(sampler)
    assert sorted(i for b in epoch0 for i in b) == list(range(1003))
    assert len(sampler) == len(epoch0) == 6 * (160 // 16) + math.ceil(43 / 16)  # 1003 = 6 * 160 + 43
    assert max(lengths[epoch0[0]]) == lengths.max()  # the longest batch first
    assert list(LengthGroupedBatchSampler(lengths, 16, seed=3, group_size=160)) == epoch0
    sampler.set_epoch(1)
    epoch1 = list(sampler)
    assert epoch1 != epoch0 and sorted(i for b in epoch1 for i in b) == list(range(1003))
    assert sampler.batches(0) == epoch0
    # Resuming mid-epoch: a fresh sampler at the same (seed, epoch) gives the remaining batches.
    resumed = LengthGroupedBatchSampler(lengths, 16, seed=3, group_size=160)
    resumed.set_epoch(1)
    assert list(resumed)[7:] == epoch1[7:]
    assert list(LengthGroupedBatchSampler(lengths, 16, seed=4, group_size=160)) != epoch0


def test_sampler_drop_last_and_no_shuffle():
    lengths = [5, 9, 1, 7, 3, 8, 2]
    ordered = LengthGroupedBatchSampler(lengths, 3, shuffle=False)
    assert list(ordered) == [[1, 5, 3], [0, 4, 6], [2]]
    dropped = LengthGroupedBatchSampler(lengths, 3, shuffle=False, drop_last=True)
    assert list(dropped) == [[1, 5, 3], [0, 4, 6]] and len(dropped) == 2
    shuffled = LengthGroupedBatchSampler(lengths, 3, drop_last=True, seed=1)
    assert all(len(b) == 3 for b in shuffled) and len(shuffled) == len(list(shuffled)) == 2


def test_sampler_under_accelerate_epochs_and_resume():
    """How training must drive it: accelerate's prepared loader calls set_epoch(its own epoch) on the
    batch sampler at every pass, so the epoch is set on the LOADER; skip_first_batches resumes."""
    from accelerate import Accelerator, skip_first_batches

    lengths = np.random.default_rng(1).integers(1, 60, size=203)
    sampler = LengthGroupedBatchSampler(lengths, 8, seed=5)
    loader = Accelerator(cpu=True).prepare(
        DataLoader(list(range(203)), batch_sampler=sampler, collate_fn=lambda items: items)
    )
    sampler.set_epoch(3)
    assert list(loader) == sampler.batches(0)  # the loader reset the sampler to ITS epoch (0)
    loader.set_epoch(3)
    assert list(loader) == sampler.batches(3)
    loader.set_epoch(3)
    assert list(skip_first_batches(loader, 10)) == sampler.batches(3)[10:]


def test_grouping_cuts_padding_on_the_testbed(testbed, tokenizer):
    tokenized = tokenize_preferences(load_preferences(testbed["train"]), tokenizer)
    chosen, rejected = sequence_lengths(tokenized)
    n, batch = tokenized.num_rows, 8
    perm = np.random.default_rng(0).permutation(n)
    random_batches = [perm[i : i + batch].tolist() for i in range(0, n, batch)]
    grouped = list(LengthGroupedBatchSampler(pair_lengths(tokenized), batch, seed=0))
    random_padding = padding_fraction(random_batches, chosen, rejected)
    grouped_padding = padding_fraction(grouped, chosen, rejected)
    assert grouped_padding < 0.5 * random_padding and grouped_padding < 0.1
    loader = DataLoader(tokenized, batch_sampler=grouped, collate_fn=PreferenceCollator(tokenizer))
    first = next(iter(loader))
    assert first["input_ids"].shape[0] == 2 * len(grouped[0])


# ----------------------------------------------------------------------------------------------
# Per-language statistics
# ----------------------------------------------------------------------------------------------


def test_language_statistics_exact_numbers(tokenizer):
    rows = [
        {"prompt": "ab", "chosen": "c", "rejected": "d", "language": "en"},
        {"prompt": "abcd", "chosen": "e", "rejected": "f", "language": "en"},
        {"prompt": "привет", "chosen": "да", "rejected": "нет", "language": "ru"},
    ]
    stats = language_statistics(load_preferences(rows), tokenizer).set_index("language")
    assert stats.loc["en", "rows"] == 2 and stats.loc["ru", "rows"] == 1
    assert stats.loc["en", "mean_chars"] == 5.0 and stats.loc["ru", "mean_chars"] == 11.0
    n_ru = sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in ("привет", "да", "нет"))
    assert stats.loc["ru", "mean_tokens"] == n_ru and stats.loc["ru", "tokens_per_char"] == pytest.approx(
        n_ru / 11
    )
    assert stats.loc["en", "bytes_per_char"] == 1.0 and stats.loc["ru", "bytes_per_char"] == 2.0


def test_language_statistics_on_the_testbed_show_script_costs(testbed, tokenizer):
    stats = language_statistics(testbed["test"], tokenizer).set_index("language")
    assert list(stats.columns) == [
        "script",
        "rows",
        "mean_chars",
        "mean_tokens",
        "tokens_per_char",
        "bytes_per_char",
    ]
    assert stats["rows"].sum() == testbed["test"].num_rows
    # A byte-level tokenizer pays more per character for multi-byte scripts.
    assert stats.loc["th", "tokens_per_char"] > stats.loc["en", "tokens_per_char"]
    assert stats.loc["th", "bytes_per_char"] > 2.5 and stats.loc["en", "bytes_per_char"] < 1.05
