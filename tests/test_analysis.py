"""Loading experiment grids and reducing seeds: the numbers chapters 5 and 6 print."""

import json

import numpy as np
import pandas as pd
import pytest

from capo_tutorial import analysis
from capo_tutorial.experiments import RESULT_COLUMNS


def fake_results(accuracy=None, methods=("dpo", "capo"), seeds=(0, 1, 2), noises=(0.0, 0.2)):
    """Tidy rows in the grid's schema: per run, two languages and an "all" row (margin class "all")."""
    accuracy = accuracy or (lambda method, seed, noise, language: 0.8 - noise / 2 + 0.01 * seed)
    rows = []
    for seed in seeds:
        for noise in noises:
            for method in methods:
                per_language = {lang: accuracy(method, seed, noise, lang) for lang in ("en", "ru")}
                per_language["all"] = np.mean(list(per_language.values()))
                for language, value in per_language.items():
                    rows.append(
                        {
                            "method": method,
                            "loss": method.split("-")[0],
                            "params": "{}",
                            "seed": seed,
                            "noise": noise,
                            "systematic": "",
                            "profile": "smoke",
                            "eval_split": "test",
                            "language": language,
                            "margin_class": "all",
                            "n": 200 if language == "all" else 100,
                            "accuracy": value,
                            "margin": 2 * value,
                            "ece": 0.1,
                            "flipped_memorised": np.nan if noise == 0 else 0.5,
                            "reference_accuracy": 0.7,
                            "steps": 300,
                            "seconds": 10.0,
                            "likelihood_accuracy": value - 0.05,
                        }
                    )
    return pd.DataFrame(rows)[RESULT_COLUMNS]


def write_grid(folder, frame, manifest=None):
    folder.mkdir(parents=True)
    frame.to_csv(folder / "results.csv", index=False)
    if manifest is not None:
        (folder / "manifest.json").write_text(json.dumps(manifest))


def test_load_grid_reads_results_and_manifest(tmp_path):
    manifest = {
        "grid": {"methods": ["dpo", "capo"], "seeds": [0, 1, 2], "noises": [0.0, 0.2]},
        "finished": "x",
    }
    write_grid(tmp_path / "scale1", fake_results(), manifest)
    grid = analysis.load_grid("scale1", tmp_path)
    assert grid.finished and grid.name == "scale1"
    assert list(grid.results.columns) == RESULT_COLUMNS
    assert (grid.results.systematic == "").all(), "an empty 'systematic' is read as '', not NaN"
    assert (grid.completeness().seeds_done == 3).all()


def test_load_grid_is_none_for_a_grid_not_run_yet(tmp_path):
    assert analysis.load_grid("scale2", tmp_path) is None
    (tmp_path / "scale2").mkdir()
    (tmp_path / "scale2" / "results.csv").write_text("")
    assert analysis.load_grid("scale2", tmp_path) is None


def test_load_grid_reads_a_url(tmp_path):
    write_grid(tmp_path / "sweep", fake_results(), {"grid": {}})
    grid = analysis.load_grid("sweep", tmp_path.as_uri())
    assert len(grid.results) == len(fake_results()) and not grid.finished
    assert analysis.load_grid("missing", tmp_path.as_uri()) is None


def test_completeness_counts_a_partial_grid(tmp_path):
    frame = fake_results()
    partial = frame[~((frame.method == "capo") & (frame.noise == 0.2) & (frame.seed > 0))]
    manifest = {"grid": {"methods": ["dpo", "capo", "ipo"], "seeds": [0, 1, 2], "noises": [0.0, 0.2]}}
    write_grid(tmp_path / "g", partial, manifest)
    table = analysis.load_grid("g", tmp_path).completeness().set_index(["method", "noise"])
    assert table.loc[("capo", 0.2), "seeds_done"] == 1
    assert table.loc[("ipo", 0.0), "seeds_done"] == 0 and table.loc[("ipo", 0.0), "seeds_planned"] == 3
    assert list(table.index.get_level_values("method").unique()) == ["dpo", "capo", "ipo"]


def test_only_a_whole_grid_call_finishes_a_grid():
    def grid(**manifest):
        return analysis.Grid(name="g", results=pd.DataFrame(), manifest=manifest)

    assert grid(command="python experiments/run_grid.py tune", finished="t").finished
    assert not grid(command="python experiments/run_grid.py tune").finished
    assert not grid(command="python experiments/run_grid.py tune --noises 0.2", finished="t").finished


def test_a_grid_written_elsewhere_keeps_its_definitions_name():
    command = "/venv/bin/python experiments/run_grid.py scale1 --seeds 3 --out experiments/results/scale1-new"
    grid = analysis.Grid(name="scale1-new", results=pd.DataFrame(), manifest={"command": command})
    assert grid.defined_as == "scale1" and grid.sliced
    by_hand = analysis.Grid(name="g", results=pd.DataFrame(), manifest={"command": "make book"})
    assert by_hand.defined_as is None and not by_hand.sliced


def test_a_reported_grid_must_be_finished_and_scored_on_one_split(tmp_path):
    whole = {"command": "python experiments/run_grid.py g", "finished": "t"}
    write_grid(tmp_path / "g", fake_results(), whole)
    assert analysis.load_finished_grid("g", tmp_path).name == "g"
    with pytest.raises(ValueError, match="validation"):
        analysis.load_finished_grid("g", tmp_path, split="validation")
    write_grid(tmp_path / "running", fake_results(), {"command": whole["command"]})
    with pytest.raises(FileNotFoundError, match=r"run_grid\.py running"):
        analysis.load_finished_grid("running", tmp_path)
    with pytest.raises(FileNotFoundError, match="absent"):
        analysis.load_finished_grid("absent", tmp_path)


def test_find_results_dir_walks_up_and_honours_the_environment(tmp_path, monkeypatch):
    (tmp_path / "experiments" / "results").mkdir(parents=True)
    (tmp_path / "book").mkdir()
    monkeypatch.delenv(analysis.RESULTS_ENV, raising=False)
    assert analysis.find_results_dir(tmp_path / "book") == tmp_path / "experiments" / "results"
    monkeypatch.setenv(analysis.RESULTS_ENV, str(tmp_path / "elsewhere"))
    assert analysis.find_results_dir(tmp_path / "book") == tmp_path / "elsewhere"


def test_repository_results_url_points_at_raw_files():
    url = analysis.repository_results_url()
    assert url is None or (url.startswith("https://raw.githubusercontent.com/") and url.endswith("/results"))


def test_select_defaults_to_one_row_per_run_and_takes_filters():
    frame = fake_results()
    runs = analysis.select(frame)
    assert len(runs) == 2 * 3 * 2 and set(runs.language) == {"all"}
    assert set(analysis.select(frame, language=None, method="capo").language) == {"all", "en", "ru"}
    assert set(analysis.select(frame, noise=[0.2]).noise) == {0.2}
    with pytest.raises(ValueError, match="no column 'colour'"):
        analysis.select(frame, colour="red")


def test_summarise_seeds_gives_mean_std_and_range():
    runs = analysis.select(fake_results())
    summary = analysis.summarise_seeds(runs).set_index(["method", "noise"])
    values = 0.8 - 0.2 / 2 + 0.01 * np.array([0, 1, 2])
    row = summary.loc[("dpo", 0.2)]
    assert row["mean"] == pytest.approx(values.mean())
    assert row["std"] == pytest.approx(values.std(ddof=1))
    assert (row["min"], row["max"], row["seeds"]) == pytest.approx((values.min(), values.max(), 3))


def test_summarise_seeds_skips_missing_values():
    summary = analysis.summarise_seeds(analysis.select(fake_results()), value="flipped_memorised")
    assert set(summary.noise) == {0.2}, "no flips at noise 0: nothing to summarise there"


def test_paired_differences_pair_the_same_seed_and_cell():
    def accuracy(method, seed, noise, language):
        return 0.7 + 0.05 * seed + (0.02 if method == "capo" and language == "ru" else 0.0)

    frame = fake_results(accuracy)
    paired = analysis.paired_differences(analysis.select(frame, language=None))
    assert set(paired.method) == {"capo"}
    by_language = paired.groupby("language").difference.agg(["mean", "std"])
    assert by_language.loc["ru", "mean"] == pytest.approx(0.02)
    assert by_language.loc["en", "mean"] == pytest.approx(0.0)
    # the seed effect (0.05 per seed) cancels out of a paired difference
    assert by_language["std"].max() == pytest.approx(0.0, abs=1e-12)


def test_paired_differences_across_another_column_pair_within_each_method():
    runs = analysis.select(fake_results(noises=(0.2,)))
    near_miss = runs.assign(pattern="near-miss", accuracy=runs.accuracy - 0.03 * (runs.method == "capo"))
    both = pd.concat([runs.assign(pattern="uniform"), near_miss])
    shift = analysis.paired_differences(both, baseline="uniform", across="pattern", keys=("seed", "method"))
    assert set(shift.pattern) == {"near-miss"} and len(shift) == 2 * 3  # two methods x three seeds
    by_method = shift.groupby("method").difference.mean()
    assert by_method["capo"] == pytest.approx(-0.03) and by_method["dpo"] == pytest.approx(0.0)
    tiers = runs.assign(tier="high").rename(columns={"language": "lang"})
    table = analysis.improvement_over_baseline(tiers, by=("method", "tier"), keys=("seed", "tier"))
    assert table.set_index("method").loc["capo", "tier"] == "high"


def test_paired_differences_refuse_ambiguous_pairs():
    frame = fake_results()
    with pytest.raises(ValueError, match="several rows"):
        analysis.paired_differences(frame, keys=("seed",))


def test_improvement_over_baseline_reads_both_ways():
    def accuracy(method, seed, noise, language):
        return {"dpo": 0.5, "capo": 0.6}[method] + 0.01 * seed

    table = analysis.improvement_over_baseline(analysis.select(fake_results(accuracy)))
    row = table[(table.method == "capo") & (table.noise == 0.2)].iloc[0]
    assert row["absolute_points"] == pytest.approx(10.0)
    assert row["relative_percent"] == pytest.approx(100 * (0.61 / 0.51 - 1))
    assert (row["wins"], row["seeds"]) == (3, 3)
    assert row["difference_std"] == pytest.approx(0.0, abs=1e-9)
    assert row["ci_low"] == pytest.approx(10.0) and row["ci_high"] == pytest.approx(10.0)  # no spread
    assert row["error_reduction_percent"] == pytest.approx(100 * (0.61 - 0.51) / (1 - 0.51))
    with pytest.raises(ValueError, match="method"):
        analysis.improvement_over_baseline(fake_results(), by=("noise",))


def test_the_reference_becomes_a_method_compared_on_its_own_scale():
    runs = analysis.select(fake_results(methods=("dpo", "capo", "simpo")))
    runs["reference_accuracy"] = np.where(runs.method == "simpo", np.nan, 0.6 + 0.01 * runs.seed)
    runs["likelihood_accuracy"] = runs.accuracy - 0.05
    both = analysis.with_reference_rows(runs)
    reference = both[both.method == analysis.REFERENCE]
    assert len(reference) == 6, "one row per warm-up (seed x noise), whichever methods shared it"
    assert (reference.likelihood_accuracy == reference.reference_accuracy).all()
    assert reference.flipped_memorised.isna().all() and reference.margin.isna().all()
    table = analysis.improvement_over_baseline(both, baseline=analysis.REFERENCE, value="likelihood_accuracy")
    capo = table[(table.method == "capo") & (table.noise == 0.0)].iloc[0]
    assert capo["absolute_points"] == pytest.approx(
        100 * (0.8 - 0.05 - 0.6)
    )  # fake_results: 0.8 - noise/2 + 0.01 seed
    assert capo["baseline_mean"] == pytest.approx(0.61)


def test_a_wider_level_gives_a_wider_interval():
    def accuracy(method, seed, noise, language):
        return 0.5 + (0.02 * seed**2 if method == "capo" else 0.0)

    frame = analysis.select(fake_results(accuracy))
    usual, corrected = (
        analysis.improvement_over_baseline(frame, level=level)
        .set_index(["method", "noise"])
        .loc[("capo", 0.2)]
        for level in (0.95, 1 - 0.05 / 6)
    )
    assert corrected.ci_low < usual.ci_low < usual.absolute_points < usual.ci_high < corrected.ci_high


@pytest.mark.parametrize(
    "dof, quantile",  # t_{0.975} from printed tables
    [(1, 12.7062), (2, 4.3027), (4, 2.7764), (9, 2.2622), (30, 2.0423)],
)
def test_t_quantile_matches_the_tables(dof, quantile):
    assert analysis._t_quantile(0.975, dof) == pytest.approx(quantile, abs=1e-4)


def test_paired_interval_is_the_student_t_interval():
    differences = np.array([0.01, 0.03, 0.02, 0.05, 0.04, np.nan])  # the NaN is dropped
    mean, low, high = analysis.paired_interval(differences)
    half = 2.7764 * np.std(differences[:5], ddof=1) / np.sqrt(5)
    assert mean == pytest.approx(0.03)
    assert (low, high) == (pytest.approx(0.03 - half, abs=1e-5), pytest.approx(0.03 + half, abs=1e-5))
    assert np.isnan(analysis.paired_interval([0.02])[1])  # one seed: no interval


def test_rank_variants_averages_noise_levels_equally():
    frame = pd.DataFrame(
        {
            "method": ["a", "a", "b", "b"],
            "noise": [0.2, 0.4, 0.2, 0.4],
            "seed": 0,
            "accuracy": [0.9, 0.5, 0.8, 0.7],
        }
    )
    ranked = analysis.rank_variants(frame)
    assert list(ranked.index) == ["b", "a"] and list(ranked["rank"]) == [1, 2]
    assert ranked.loc["a", "mean"] == pytest.approx(0.7) and "noise 0.2" in ranked.columns


def test_format_interval():
    assert analysis.format_interval(4.21, 1.04, 7.38) == "+4.2 [+1.0, +7.4]"
    assert analysis.format_interval(-0.5, -2.0, 1.0, digits=2) == "-0.50 [-2.00, +1.00]"
    assert analysis.format_interval(3.0, float("nan"), float("nan")) == "+3.0"


def test_format_mean_spread():
    assert analysis.format_mean_spread(0.81234, 0.0129) == "0.812 ± 0.013"
    assert analysis.format_mean_spread(0.81234, float("nan")) == "0.812"
    assert analysis.format_mean_spread(81.2, 1.5, digits=1) == "81.2 ± 1.5"


def test_require_columns_names_what_is_missing_and_what_is_there():
    frame = pd.DataFrame({"method": ["dpo"], "acuracy": [0.7]})
    analysis.require_columns(frame, ["method"])  # nothing missing: no error
    expected = r"results lacks the columns \['accuracy', 'seed'\]; it has.*'acuracy'"
    with pytest.raises(ValueError, match=expected):
        analysis.require_columns(frame, ["seed", "accuracy", "method"], "results")
    with pytest.raises(ValueError, match=r"the table lacks the columns \['noise', 'seed'\]"):
        analysis.summarise_seeds(frame.rename(columns={"acuracy": "accuracy"}))


def test_against_each_baseline_stacks_one_comparison_per_baseline():
    def accuracy(method, seed, noise, language):
        return {"dpo": 0.5, "rdpo": 0.55, "capo": 0.6}[method] + 0.01 * seed

    runs = analysis.select(fake_results(accuracy, methods=("dpo", "rdpo", "capo")))
    paired = analysis.against_each_baseline(runs)
    assert list(dict.fromkeys(paired.baseline)) == ["dpo", "rdpo"]
    assert set(paired.method) == {"capo"}
    by_baseline = paired.groupby("baseline").difference.mean()
    assert by_baseline["dpo"] == pytest.approx(0.10) and by_baseline["rdpo"] == pytest.approx(0.05)
    improvement = analysis.against_each_baseline(runs, analysis.improvement_over_baseline, value="margin")
    row = improvement[(improvement.baseline == "rdpo") & (improvement.noise == 0.2)].iloc[0]
    assert row["absolute_points"] == pytest.approx(10.0)  # margins are twice the accuracies here
    with pytest.raises(ValueError, match="at least one other method"):
        analysis.against_each_baseline(runs[runs.method == "capo"])
    with pytest.raises(ValueError, match="need 'simpo'"):
        analysis.against_each_baseline(runs, method="simpo")


@pytest.mark.parametrize(
    ("low", "high", "expected"),
    [
        (0.1, 3.0, "ahead"),
        (-5.0, -0.2, "behind"),
        (-1.5, 1.9, "equivalent"),
        (-2.5, 1.0, "inconclusive"),
        (float("nan"), float("nan"), "inconclusive"),  # one seed: no interval
    ],
)
def test_verdict_tells_a_tie_from_too_few_seeds(low, high, expected):
    assert analysis.verdict(low, high) == expected
    assert analysis.verdict(-1.5, 1.9, margin=1.0) == "inconclusive"


def test_headline_comparisons_score_each_pair_by_one_rule_and_correct_for_the_family():
    def accuracy(method, seed, noise, language):
        return {"dpo": 0.60, "capo": 0.64, "simpo": 0.70}[method] + 0.01 * seed**2 * (method == "capo")

    runs = analysis.select(fake_results(accuracy, methods=("dpo", "capo", "simpo")))
    runs["likelihood_accuracy"] = np.where(runs.method == "simpo", runs.accuracy, runs.accuracy - 0.10)
    runs["reference_accuracy"] = np.where(runs.method == "simpo", np.nan, 0.5)
    both = analysis.with_reference_rows(runs)
    table = analysis.headline_comparisons(both, ["dpo", analysis.REFERENCE, "simpo"])

    assert len(table) == 3 * 2 and set(table.method) == {"capo"}
    rules = table.drop_duplicates("baseline").set_index("baseline").value
    assert rules.to_dict() == {
        "dpo": "accuracy",
        analysis.REFERENCE: "likelihood_accuracy",
        "simpo": "likelihood_accuracy",
    }
    against = table[table.noise == 0.0].set_index("baseline")
    capo_mean = 0.64 + 0.01 * (0 + 1 + 4) / 3
    assert against.loc["dpo", "absolute_points"] == pytest.approx(100 * (capo_mean - 0.60))
    assert against.loc["simpo", "absolute_points"] == pytest.approx(100 * (capo_mean - 0.10 - 0.70))
    assert against.loc[analysis.REFERENCE, "absolute_points"] == pytest.approx(100 * (capo_mean - 0.10 - 0.5))
    assert (table.family_low < table.ci_low).all() and (table.family_high > table.ci_high).all()
    assert against.loc["simpo", "verdict"] == "behind" and against.loc["dpo", "verdict"] == "ahead"
    with pytest.raises(ValueError, match="ipo"):
        analysis.headline_comparisons(both, ["dpo", "ipo"])


def test_scoring_rule_of_a_baseline():
    assert analysis.scoring_rule(analysis.REFERENCE) == "likelihood_accuracy"
    assert analysis.scoring_rule("simpo", pd.Series(["simpo"])) == "likelihood_accuracy"
    assert analysis.scoring_rule("filter-dpo", pd.Series(["dpo", "dpo"])) == "accuracy"
