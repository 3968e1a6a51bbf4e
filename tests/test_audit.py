"""The pre-training audit: AUROC and ROC with ties, the suspect flag, the CLI, bad rows, filter-dpo."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pandas as pd
import pytest
import torch

from capo_tutorial.audit import (
    audit_frame,
    audit_preferences,
    auroc,
    check_drop_rule,
    confidence_of,
    describe_drop_rule,
    flag_suspects,
    rank_within_language,
    reference_logps,
    roc_curve,
)
from capo_tutorial.cli import main
from capo_tutorial.config import profile_config
from capo_tutorial.data import PreferenceCollator
from capo_tutorial.experiments import FILTER_TAU, METHODS, _flipped_memorised
from capo_tutorial.losses import CAPO_DEFAULTS, capo_loss

# A smoke profile small enough to warm up in seconds (the real one takes minutes).
TINY = {
    "testbed_train": 240,
    "testbed_eval": 40,
    "sft_steps": 30,
    "tiny_layers": 1,
    "tiny_hidden_size": 32,
    "tiny_vocab_size": 300,
    "eval_batch_size": 64,
}


@pytest.fixture(autouse=True)
def _own_cache(tmp_path_factory, monkeypatch):
    """Warm-ups go to one cache per test session, never the user's."""
    monkeypatch.setenv("CAPO_CACHE", str(tmp_path_factory.getbasetemp() / "capo-cache"))


# --------------------------------------------------------------------------------------------------
# AUROC, ROC, flag, rank
# --------------------------------------------------------------------------------------------------


def _brute_force_auroc(scores, labels) -> float:
    positives = [s for s, y in zip(scores, labels) if y]
    negatives = [s for s, y in zip(scores, labels) if not y]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(positives, negatives))
    return wins / (len(positives) * len(negatives))


def test_auroc_hand_cases_with_ties():
    assert auroc([1, 2, 3, 4], [0, 0, 1, 1]) == 1.0
    assert auroc([4, 3, 2, 1], [0, 0, 1, 1]) == 0.0
    assert auroc([5, 5, 5, 5], [0, 1, 0, 1]) == 0.5, "all tied: each pair counts one half"
    # positives {2, 3}, negatives {1, 2}: (2>1) + (2=2)/2 + (3>1) + (3>2) = 3.5 of 4
    assert auroc([1, 2, 2, 3], [0, 1, 0, 1]) == 0.875
    assert np.isnan(auroc([1, 2], [1, 1])) and np.isnan(auroc([1, 2], [0, 0]))


def test_auroc_equals_the_pairwise_count_and_the_roc_area():
    rng = np.random.default_rng(0)
    for _ in range(20):
        scores = rng.integers(0, 4, size=30)  # few values: many ties
        labels = rng.random(30) < 0.4
        if labels.all() or not labels.any():
            continue
        expected = _brute_force_auroc(scores, labels)
        assert auroc(scores, labels) == pytest.approx(expected, abs=1e-12)
        fpr, tpr = roc_curve(scores, labels)
        assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0, 0, 1, 1)
        area = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))  # ties: a diagonal segment
        assert area == pytest.approx(expected, abs=1e-12)


def test_flag_by_threshold_and_by_fraction_per_language():
    confidence = np.array([0.1, 0.9, 0.4, 0.6, 0.2, 0.3, 0.8, 0.05, 0.7, 0.5, 0.45, 0.95])
    languages = ["a"] * 10 + ["b"] * 2
    assert flag_suspects(confidence, languages).tolist() == (confidence < 0.5).tolist()
    assert flag_suspects(confidence, languages, threshold=0.3).sum() == 3
    flagged = flag_suspects(confidence, languages, fraction=0.2)
    # 20% of 10 "a" pairs: its two least confident (0.05, 0.1); 20% of 2 "b" pairs rounds to 0
    assert np.flatnonzero(flagged).tolist() == [0, 7]
    assert flag_suspects(confidence, languages, fraction=0.5)[10:].tolist() == [True, False]
    ranks = rank_within_language(confidence, languages)
    assert ranks[7] == 1 and ranks[0] == 2 and ranks[10] == 1 and ranks[11] == 2
    with pytest.raises(ValueError, match="not both"):
        flag_suspects(confidence, languages, threshold=0.5, fraction=0.1)
    with pytest.raises(ValueError, match="fraction"):
        flag_suspects(confidence, languages, fraction=1.5)


def test_confidence_is_the_losses_own_reference_confidence():
    """c of the audit equals CAPO's un-normalised weight at gamma 1 (same function, same numbers)."""
    chosen, rejected = torch.tensor([-3.0, -8.0, -2.0]), torch.tensor([-6.0, -4.0, -2.5])
    lengths_w, lengths_l = torch.tensor([3.0, 4.0, 1.0]), torch.tensor([2.0, 4.0, 5.0])
    margin, confidence = confidence_of(chosen, rejected, lengths_w, lengths_l, tau=0.5)
    assert margin == pytest.approx([-1 + 3, -2 + 1, -2 + 0.5])
    assert confidence == pytest.approx(1 / (1 + np.exp(-margin / 0.5)), rel=1e-6)
    weights = capo_loss(
        chosen,
        rejected,
        chosen,
        rejected,
        chosen_lengths=lengths_w,
        rejected_lengths=lengths_l,
        confidence="reference",
        tau=0.5,
        gamma=1.0,
        normalize=False,
    ).weights
    assert confidence == pytest.approx(weights.numpy(), rel=1e-6)
    with pytest.raises(ValueError, match="trained policy"):
        confidence_of(chosen, rejected, lengths_w, lengths_l, source="sigmoid")


def test_a_reference_that_separates_flips_gives_a_high_auroc_per_language():
    """Synthetic reference log-probs whose margins we control: d = +1 on clean pairs, -1 on flipped
    ones, plus noise of sd 0.5; AUROC per language must then be that of two normals 2 sd apart."""
    rng = np.random.default_rng(1)
    n = 400
    languages = np.repeat(["en", "ja"], n // 2)
    flipped = rng.random(n) < 0.25
    margin = np.where(flipped, -1.0, 1.0) + rng.normal(0, 0.5, n)
    records = pd.DataFrame({"language": languages, "flipped": flipped, "script": "x"})
    scores = pd.DataFrame(
        {
            "ref_chosen_logps": margin * 5,
            "ref_rejected_logps": 0.0,
            "chosen_length": 5.0,
            "rejected_length": 7.0,
        }
    )
    pairs = audit_frame(records, scores, truth="flipped")
    assert pairs.reference_margin.to_numpy() == pytest.approx(margin)
    for language in ("en", "ja"):
        rows = pairs[pairs.language == language]
        assert auroc(-rows.reference_margin, rows.truth) > 0.95  # analytic: Phi(2 / (0.5 sqrt 2)) = 0.998


# --------------------------------------------------------------------------------------------------
# The CLI and the profile's reference
# --------------------------------------------------------------------------------------------------


def _tiny_flags() -> list[str]:
    return ["--profile", "smoke", "--overrides", json.dumps(TINY), "--no-progress"]


def test_cli_audits_the_profile_testbed_and_writes_tables(tmp_path, capsys):
    out = tmp_path / "audit"
    assert main(["audit", *_tiny_flags(), "--noise", "0.2", "--out", str(out)]) == 0
    pairs = pd.read_csv(out / "pairs.csv")
    languages = pd.read_csv(out / "languages.csv").set_index("language")
    assert (out / "audit.png").stat().st_size > 0
    config = profile_config("smoke", **TINY)
    assert len(pairs) == config.testbed_train
    assert set(languages.index) == {*config.languages, "all"}
    assert {"auroc", "precision", "recall", "flagged_share", "confidence_q50"} <= set(languages.columns)
    assert languages.loc["all", "noisy"] == pytest.approx(
        0.2 * config.testbed_train, abs=len(config.languages)
    )
    assert languages.auroc.between(0, 1).all()
    assert pairs.suspect.tolist() == (pairs.confidence < 0.5).tolist()
    ranks = pairs.groupby("language")["rank"].max()
    assert ranks.to_dict() == pairs.language.value_counts().to_dict(), "ranks 1..n within each language"
    assert "least confident pairs" in capsys.readouterr().out
    settings = json.loads((out / "audit.json").read_text())
    assert (settings["source"], settings["tau"]) == (CAPO_DEFAULTS["confidence"], CAPO_DEFAULTS["tau"])


def test_cli_help_documents_every_flag(capsys):
    with pytest.raises(SystemExit):
        main(["audit", "--help"])
    text = capsys.readouterr().out
    for flag in (
        "--profile",
        "--noise",
        "--systematic-noise",
        "--data",
        "--column-map",
        "--split",
        "--model",
        "--truth",
        "--threshold",
        "--fraction",
        "--source",
        "--tau",
        "--batch-size",
        "--skip-invalid",
        "--out",
    ):
        assert flag in text, flag


def test_bad_rows_stop_with_row_and_field_or_are_skipped(tmp_path, capsys):
    rows = [
        {"prompt": "two plus two?", "chosen": "four", "rejected": "five", "language": "en", "bad": False},
        {"prompt": "¿dos más dos?", "chosen": "", "rejected": "cinco", "language": "es", "bad": True},
        {"prompt": "два плюс два?", "chosen": "пять", "rejected": "четыре", "language": "ru", "bad": True},
    ]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    flags = [*_tiny_flags(), "--data", str(data), "--truth", "bad"]
    assert main(["audit", *flags, "--out", str(tmp_path / "a")]) == 2
    error = capsys.readouterr().err
    assert "row 1" in error and "'chosen'" in error
    assert main(["audit", *flags, "--skip-invalid", "--out", str(tmp_path / "b")]) == 0
    pairs = pd.read_csv(tmp_path / "b" / "pairs.csv")
    assert pairs.language.tolist() == ["en", "ru"] and pairs.script.tolist() == ["Latn", "Cyrl"]
    assert pairs.truth.tolist() == [False, True]
    assert json.loads((tmp_path / "b" / "audit.json").read_text())["skipped"] == 1


def test_any_data_with_a_local_model_folder(tmp_path):
    """`capo audit --data FILE --model FOLDER`: a model saved with save_pretrained, a column map, a
    truth column; the reference log-probs are the model's own (checked against logprobs directly)."""
    from capo_tutorial.data import load_preferences, tokenize_preferences
    from capo_tutorial.logprobs import concatenated_logps
    from capo_tutorial.models import tiny_model_and_tokenizer

    rows = [
        {"q": f"{a} + {b} =", "good": str(a + b), "bad": str(a + b + 1), "lang": "en", "wrong": a % 3 == 0}
        for a, b in itertools.product(range(6), range(2))
    ]
    data = tmp_path / "sums.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    texts = [r["q"] + " " + r["good"] for r in rows]
    model, tokenizer = tiny_model_and_tokenizer(texts, vocab_size=300, hidden_size=32, num_layers=1)
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    column_map = {"prompt": "q", "chosen": "good", "rejected": "bad", "language": "lang"}
    flags = ["--data", str(data), "--column-map", json.dumps(column_map), "--truth", "wrong"]
    out = tmp_path / "audit"
    assert (
        main(["audit", *flags, "--model", str(tmp_path / "model"), "--out", str(out), "--no-progress"]) == 0
    )
    pairs = pd.read_csv(out / "pairs.csv")
    assert len(pairs) == len(rows) and pairs.truth.tolist() == [r["wrong"] for r in rows]
    records = load_preferences(str(data), column_map=column_map)
    batch = PreferenceCollator(tokenizer)(list(tokenize_preferences(records, tokenizer, max_length=1024)))
    with torch.no_grad():
        expected = concatenated_logps(model.eval(), batch)
    assert pairs.ref_chosen_logps.to_numpy() == pytest.approx(expected.chosen_logps.numpy(), abs=1e-4)
    assert pairs.chosen_length.tolist() == expected.chosen_lengths.tolist()
    assert "auroc" in pd.read_csv(out / "languages.csv").columns


def test_a_truth_column_that_is_not_boolean_is_named(tmp_path):
    scores = pd.DataFrame(
        {
            "ref_chosen_logps": [-1.0, -2.0],
            "ref_rejected_logps": -3.0,
            "chosen_length": 1.0,
            "rejected_length": 1.0,
        }
    )
    records = pd.DataFrame({"language": ["en", "en"], "label": [True, "maybe"]})
    with pytest.raises(ValueError, match=r"'label', row 1: 'maybe'"):
        audit_frame(records, scores, truth="label")
    with pytest.raises(ValueError, match="no truth column 'nope'"):
        audit_frame(records, scores, truth="nope")


# --------------------------------------------------------------------------------------------------
# Filter-DPO: the audit's flag before training
# --------------------------------------------------------------------------------------------------


def test_drop_rule_is_validated_by_the_run_config():
    check_drop_rule({})
    check_drop_rule({"fraction": 0.1, "tau": 0.5})
    with pytest.raises(ValueError, match="drop_suspect_pairs"):
        profile_config("smoke", drop_suspect_pairs={"fraction": 0.2, "threshold": 0.5})
    with pytest.raises(ValueError, match="unknown keys"):
        profile_config("smoke", drop_suspect_pairs={"share": 0.2})
    assert METHODS["filter-dpo"].config_changes()["drop_suspect_pairs"] == {
        "threshold": 0.5,
        "tau": FILTER_TAU,
    }
    assert METHODS["filter-dpo"].config_changes()["loss"] == "dpo"


def test_a_drop_rule_is_described_in_words():
    assert describe_drop_rule({}) == "drops nothing"
    text = describe_drop_rule({"threshold": 0.3, "tau": 0.25})
    assert "below 0.3" in text and "d below -0.21 nats" in text  # 0.25 * ln(0.3 / 0.7) = -0.212
    assert "d below +0.00 nats" in describe_drop_rule({"threshold": 0.5, "tau": 0.25})
    assert "20% least confident pairs of each language" in describe_drop_rule({"fraction": 0.2})
    with pytest.raises(ValueError, match="unknown keys"):
        describe_drop_rule({"share": 0.2})


def test_filter_dpo_trains_on_exactly_the_pairs_the_audit_keeps(tmp_path):
    from capo_tutorial.training import train

    audit = audit_preferences(profile="smoke", overrides={**TINY, "noise": 0.3}, progress=False)
    config = profile_config(
        "smoke",
        **TINY,
        noise=0.3,
        max_steps=2,
        output_dir=str(tmp_path / "run"),
        progress="none",
        **METHODS["filter-dpo"].config_changes(),
    )
    result = train(config)
    kept = result.components.train_dataset["pair_id"][:]
    # the cached, precomputed reference columns are what scoring the pairs afresh gives
    scorer = audit.scorer
    collator = PreferenceCollator(scorer.tokenizer, padding_side="left")
    fresh = reference_logps(scorer.model, scorer.components.train_dataset, collator, progress=False)
    columns = ["ref_chosen_logps", "ref_rejected_logps", "chosen_length", "rejected_length"]
    assert fresh[columns].to_numpy() == pytest.approx(audit.pairs[columns].to_numpy(), abs=1e-4)
    assert 0 < audit.pairs.suspect.sum() < len(audit.pairs)
    assert kept == audit.pairs.pair_id[~audit.pairs.suspect].tolist()
    assert sorted(result.components.dropped_pairs["pair_id"][:]) == sorted(
        audit.pairs.pair_id[audit.pairs.suspect]
    )
    # memorisation is scored over every flipped training pair, the dropped ones included
    scored = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            "capo_tutorial.experiments.score_pairs",
            lambda model, reference, dataset, *a, **k: (
                scored.append(len(dataset)) or pd.DataFrame({"correct": [True]})
            ),
        )
        _flipped_memorised(result)
    assert scored == [int(audit.pairs.truth.sum())] and 0 < audit.pairs.truth[audit.pairs.suspect].sum()
    assert max(i for batch in result.components.train_sampler for i in batch) == len(kept) - 1
    # `capo audit --model RUN` rebuilds that run's reference: the same confidences as the profile's
    assert (
        main(["audit", "--model", str(tmp_path / "run"), "--out", str(tmp_path / "a"), "--no-progress"]) == 0
    )
    from_run = pd.read_csv(tmp_path / "a" / "pairs.csv")
    assert from_run.pair_id.tolist() == audit.pairs.pair_id.tolist()
    assert from_run.confidence.to_numpy() == pytest.approx(audit.pairs.confidence.to_numpy(), abs=1e-6)


# --------------------------------------------------------------------------------------------------
# The claim: a trained reference finds the flipped pairs better than chance
# --------------------------------------------------------------------------------------------------

# A reference warmed up for 400 steps on 1200 pairs in 2 languages, 20% of them flipped. Over seeds 0-4
# the audit's AUROC for the flipped pairs measured 0.727, 0.637, 0.711, 0.801, 0.733 (mean 0.722, sd
# 0.058); seed 0's 0.727 minus 3 sd is 0.553, so the bound 0.55 still beats chance (0.5).
LEARNED = {
    **TINY,
    "languages": ["en", "ru"],
    "testbed_train": 1200,
    "sft_steps": 400,
    "tiny_layers": 2,
    "tiny_hidden_size": 64,
    "tiny_vocab_size": 400,
}
AUROC_BOUND = 0.55


@pytest.mark.slow  # trains a reference (400 SFT steps): the slowest test of make test-fast otherwise
def test_the_audit_beats_chance_with_a_trained_tiny_reference():
    result = audit_preferences(
        profile="smoke", overrides={**LEARNED, "noise": 0.2, "seed": 0}, progress=False
    )
    overall = result.languages.set_index("language").loc["all"]
    assert overall.noisy == 240
    assert overall.auroc > AUROC_BOUND


def test_a_cached_warm_up_audits_as_a_fresh_one_under_mixed_precision(tmp_path, monkeypatch):
    """A profile's audit scores its pairs under the run's autocast whether the warm-up was trained in
    this call (its forward then carries Accelerate's autocast) or read from the cache. bf16 autocast on
    the CPU stands in for a GPU's; a reference other than 'precomputed' is scored by the audit itself."""
    monkeypatch.setenv("CAPO_CACHE", str(tmp_path / "cache"))
    overrides = {**TINY, "noise": 0.3, "precision": "bf16", "reference": "copy", "sft_cache": True}
    fresh = audit_preferences(profile="smoke", overrides=overrides, progress=False)
    cached = audit_preferences(profile="smoke", overrides=overrides, progress=False)
    columns = ["ref_chosen_logps", "ref_rejected_logps"]
    assert not (tmp_path / "cache" / "reference-logps").exists(), "the audit scored the pairs itself"
    pd.testing.assert_frame_equal(fresh.pairs[columns], cached.pairs[columns])
