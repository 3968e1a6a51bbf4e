"""Committed experiment results: schema, manifests, and a slice recomputed now."""

import importlib.util
import json
import re
import time
from pathlib import Path

import pandas as pd
import pytest
from tiny_run import TINY

from capo_tutorial.analysis import Grid, load_grid, select
from capo_tutorial.config import profile_config
from capo_tutorial.cpu_kernels import kernels_in_use
from capo_tutorial.experiments import (
    BASELINE_FAMILIES,
    EXPERIMENT_REGIME,
    METHODS,
    RECOMPUTE_TOLERANCE,
    REGIME_CANDIDATES,
    REGIME_GOALS,
    RESULT_COLUMNS,
    SCALE2_REGIME,
    SCALE2_REGIME_CANDIDATES,
    SYSTEMATIC_CANDIDATES,
    TRUE_NOISE_RATE,
    TUNING,
    chosen_variants,
    headline_baselines,
    picks_at_an_end,
    recompute_cell,
    run_grid,
    run_one,
    strongest_baseline,
    tuned_methods,
)
from capo_tutorial.losses import CAPO_DEFAULTS, LOSSES

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "experiments" / "results"


def _written_by_run_grid(folder: Path) -> bool:
    """A grid of experiments/run_grid.py (the audit's grid, experiments/run_audit.py, has its own schema)."""
    return "run_grid.py" in json.loads((folder / "manifest.json").read_text())["command"]


GRIDS = sorted(p.parent.name for p in RESULTS.glob("*/results.csv") if _written_by_run_grid(p.parent))

# Grids computed before the policy's own likelihood ranking was recorded lack that last column.
COLUMNS_BEFORE_LIKELIHOOD = [c for c in RESULT_COLUMNS if c != "likelihood_accuracy"]


def _grids_the_book_reads() -> set[str]:
    """The grid names quoted on the chapters' ``load_grid`` lines (book/*.ipynb)."""
    lines = (
        line
        for notebook in (ROOT / "book").glob("*.ipynb")
        for cell in json.loads(notebook.read_text())["cells"]
        for line in "".join(cell["source"]).splitlines()
        if "load_grid(" in line
    )
    return {name for line in lines for name in re.findall(r'"([\w/-]+)"', line)}


# They must have run to their end; a grid still running may be committed cell by cell.
GRIDS_THE_BOOK_READS = _grids_the_book_reads()


@pytest.mark.parametrize("grid", GRIDS)
def test_committed_results_match_their_schema(grid):
    frame = pd.read_csv(RESULTS / grid / "results.csv")
    assert list(frame.columns) in (RESULT_COLUMNS, COLUMNS_BEFORE_LIKELIHOOD)
    if "likelihood_accuracy" in frame:
        assert frame.likelihood_accuracy.between(0, 1).all()
    assert frame.accuracy.between(0, 1).all()
    reference_free = frame.loss.map(lambda loss: not LOSSES[loss].needs_reference)  # SimPO: NaN there
    assert frame[~reference_free].reference_accuracy.between(0, 1).all()
    assert frame[reference_free].reference_accuracy.isna().all()
    assert (frame.n > 0).all()
    assert set(frame.margin_class) >= {"all", "low", "high"}
    overall = select(frame)
    assert not overall.duplicated(["method", "seed", "noise"]).any()
    manifest = json.loads((RESULTS / grid / "manifest.json").read_text())
    for key in ("command", "commit", "profile", "versions", "grid"):
        assert key in manifest, key
    if not load_grid(grid, RESULTS).finished:  # still running, committed cell by cell: nothing reads it
        assert grid not in GRIDS_THE_BOOK_READS, f"{grid} is read by the book but has not finished"
        return
    planned = manifest["grid"]
    assert set(overall.method) == set(planned["methods"])
    assert set(overall.noise) == set(planned["noises"])
    seeds = overall.groupby(["method", "noise"]).seed.agg(lambda s: sorted(s.unique()))
    assert all(done == sorted(planned["seeds"]) for done in seeds), "every cell has every planned seed"
    if grid in ("scale1", "systematic", "scale2"):  # the comparisons the book draws: at least three seeds
        assert len(planned["seeds"]) >= 3


@pytest.mark.parametrize("grid", GRIDS)
def test_languages_add_up_to_all(grid):
    frame = pd.read_csv(RESULTS / grid / "results.csv")
    cells = frame[frame.margin_class == "all"]
    for _, run in cells.groupby(["method", "seed", "noise"]):
        per_language = run[run.language != "all"]
        total = run[run.language == "all"].iloc[0]
        assert per_language.n.sum() == total.n
        weighted = (per_language.accuracy * per_language.n).sum() / per_language.n.sum()
        assert weighted == pytest.approx(total.accuracy)


def test_run_grid_writes_rows_manifest_and_resumes(tmp_path, monkeypatch):
    tiny = {
        **TINY,
        "testbed_train": 96,
        "testbed_eval": 32,
        "sft_steps": 4,
        "max_steps": 4,
        "progress": "none",
    }
    run_grid(tmp_path, methods=["dpo"], seeds=[0], noises=[0.25], whole_grid=False, **tiny)  # two slices
    first_started = json.loads((tmp_path / "manifest.json").read_text())["started"]
    time.sleep(1.1)  # the stamps have whole seconds: a later slice would show a later one
    frame = run_grid(tmp_path, methods=["capo", "simpo"], seeds=[0], noises=[0.25], whole_grid=False, **tiny)
    overall = select(frame)
    assert list(overall.method) == ["dpo", "capo", "simpo"]
    assert overall.reference_accuracy.isna().tolist() == [False, False, True], "SimPO has no reference"
    assert overall.flipped_memorised.between(0, 1).all()
    assert list(frame.columns) == RESULT_COLUMNS, "the header is written once"
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["grid"]["methods"] == ["capo", "simpo"] and "finished" not in manifest, "a slice"
    assert manifest["machine"]["kernels"]["cpu_capability"] == kernels_in_use()["cpu_capability"]
    assert manifest["started"] == first_started, "started: the first slice's start, not the last's"
    calls = []
    monkeypatch.setattr("capo_tutorial.experiments.run_one", lambda *a, **k: calls.append(a))
    run_grid(tmp_path, methods=["dpo", "capo", "simpo"], seeds=[0], noises=[0.25], **tiny)
    assert calls == [], "cells already in results.csv must not run again"
    final = json.loads((tmp_path / "manifest.json").read_text())
    assert final["grid"]["methods"] == ["dpo", "capo", "simpo"], "the whole-grid call records the whole grid"
    assert final["commit"] == manifest["commit"] and final["started"] == manifest["started"]
    assert "finished" in final
    with pytest.raises(ValueError, match="fresh folder"):  # other settings: its cells are not ours
        run_grid(tmp_path, methods=["dpo"], seeds=[0], noises=[0.25], **{**tiny, "max_steps": 5})
    assert calls == []


def test_a_recomputed_cell_runs_as_its_manifest_recorded(monkeypatch, tmp_path):
    """The method's settings, profile and overrides come from the manifest, not today's defaults."""
    recorded = dict(name="capo", loss="capo", params={"confidence": "reference", "tau": 0.9}, config={})
    manifest = {"profile": "smoke", "overrides": {"max_steps": 7}, "methods": {"capo": recorded}}
    manifest["grid"] = {"methods": ["capo"], "seeds": [3], "noises": [0.2]}
    grid = Grid(name="old", results=pd.DataFrame(), manifest=manifest)
    calls = []
    monkeypatch.setattr(
        "capo_tutorial.experiments.run_one", lambda method, **kw: calls.append((method, kw)) or (None, None)
    )
    recompute_cell(grid, "capo", seed=3, noise=0.2, output_dir=tmp_path, progress="none")
    ((method, kwargs),) = calls
    assert method.params["tau"] == 0.9 != METHODS["capo"].params["tau"]
    assert kwargs["max_steps"] == 7 and kwargs["profile"] == "smoke" and kwargs["progress"] == "none"
    assert (kwargs["seed"], kwargs["noise"]) == (3, 0.2)
    with pytest.raises(ValueError, match="not a method of the old grid"):
        recompute_cell(grid, "dpo", seed=3, noise=0.2, output_dir=tmp_path)  # in METHODS, not in the grid
    with pytest.raises(ValueError, match="not a cell"):
        recompute_cell(grid, "capo", seed=0, noise=0.2, output_dir=tmp_path)


@pytest.mark.slow
@pytest.mark.xdist_group("smoke-warm-up")  # first, one file on one worker (tests/conftest.py): one warm-up
@pytest.mark.skipif("slice" not in GRIDS, reason="the slice grid has not been committed yet")
@pytest.mark.skipif(
    kernels_in_use()["cpu_capability"] != "AVX2",
    reason="the slice was made with x86's AVX2 kernels, which this CPU does not run "
    "(capo_tutorial.cpu_kernels); tests/test_short_run_numbers.py guards the numerics here",
)
@pytest.mark.parametrize("method", ["dpo", "capo"])
def test_the_committed_slice_recomputes(tmp_path, method):
    """A cell of the committed slice grid (made for this), trained again now with the settings its
    manifest records: the guard that a change left the numerics alone. The first cell pays the smoke
    warm-up (about four minutes on one core), which chapter 8 then reuses; each cell is then under a
    minute. See RECOMPUTE_TOLERANCE for what a rerun may move, and why."""
    grid = load_grid("slice", RESULTS)
    row = select(grid.results, method=method).iloc[0]
    rows = recompute_cell(
        grid, method, seed=int(row.seed), noise=float(row.noise), output_dir=tmp_path, progress="none"
    )
    now = select(rows).iloc[0]
    assert now.n == row.n
    for column, tolerance in RECOMPUTE_TOLERANCE.items():
        assert now[column] == pytest.approx(row[column], abs=tolerance), (column, now[column], row[column])


def test_every_method_gets_the_same_tuning_budget():
    assert set(TUNING) == set(METHODS)
    assert {len(variants) for variants in TUNING.values()} == {4}
    for family, variants in TUNING.items():
        assert {m.family for m in variants} == {family}
        assert len({m.name for m in variants}) == 4
        settings = [profile_config("smoke", **m.config_changes(0.2)) for m in variants]
        runs_as = profile_config("smoke", **METHODS[family].config_changes(0.2))
        assert runs_as in settings, "a method runs as one of its four tuning settings"
        if family != "capo":  # CAPO's default follows the tuning (CAPO_DEFAULTS); the others' did not move
            assert settings[0] == runs_as, "the first setting is the one the method ran with untuned"
    assert TUNING["capo"][0].params["tau"] == 0.25, "CAPO's temperature before tuning comes first"


def test_picks_at_an_end_of_their_range_are_named():
    picks = {
        "dpo": TUNING["dpo"][1],  # beta 0.05 of 0.05-0.5
        "ipo": TUNING["ipo"][3],  # beta 1.0 of 0.1-1.0
        "simpo": TUNING["simpo"][0],  # margin 0.5 of 0-2
        "cdpo": TUNING["cdpo"][0],  # 0.1, but the settings include "true-noise": no ordered range
        "filter-dpo": TUNING["filter-dpo"][3],  # a fraction among thresholds: no one knob
    }
    assert picks_at_an_end(picks) == {"dpo": "lowest", "ipo": "highest"}


def test_capo_defaults_are_what_the_tuning_chose():
    """One CAPO default, the tuning's: once the tune grid has run to its end, CAPO_DEFAULTS (which
    METHODS["capo"], capo_loss, the CLI and the TRL integration read) must be its pick."""
    tune = load_grid("tune", RESULTS)
    if tune is None or not tune.finished:
        pytest.skip("the tune grid is still running: CAPO_DEFAULTS follows its pick once it has finished")
    assert chosen_variants(tune.results)["capo"].params == dict(CAPO_DEFAULTS)


def test_the_regime_is_one_of_its_candidates():
    chosen = [
        name for name, changes in REGIME_CANDIDATES.items() if changes.items() >= EXPERIMENT_REGIME.items()
    ]
    assert len(chosen) == 1, "EXPERIMENT_REGIME is the pick among REGIME_CANDIDATES (eval_every aside)"
    assert set(REGIME_CANDIDATES[chosen[0]]) - set(EXPERIMENT_REGIME) <= {"eval_every"}


def test_the_regime_met_its_goals_on_validation():
    """The committed regime grid of the chosen candidate shows what EXPERIMENT_REGIME is said to meet."""
    (chosen,) = [n for n, c in REGIME_CANDIDATES.items() if c.items() >= EXPERIMENT_REGIME.items()]
    runs = select(load_grid(f"regime/{chosen}", RESULTS).results, method="dpo").set_index("noise")
    clean, noisy = runs.loc[0.0], runs.loc[0.4]
    assert clean.eval_split == "validation"
    assert clean.accuracy >= REGIME_GOALS["clean DPO"]
    assert clean.accuracy - clean.reference_accuracy >= REGIME_GOALS["above the reference"]
    assert clean.accuracy - noisy.accuracy >= REGIME_GOALS["cost of the flips"]


def test_scale2_runs_a_candidate_where_clean_dpo_beat_its_reference():
    (chosen,) = [n for n, c in SCALE2_REGIME_CANDIDATES.items() if c.items() >= SCALE2_REGIME.items()]
    assert set(SCALE2_REGIME_CANDIDATES[chosen]) - set(SCALE2_REGIME) <= {"eval_every"}
    clean = select(load_grid(f"regime/{chosen}", RESULTS).results, method="dpo", noise=0.0).iloc[0]
    assert clean.eval_split == "validation" and clean.accuracy > clean.reference_accuracy


def test_the_true_noise_rate_becomes_the_cells_rate():
    told = next(m for m in TUNING["rdpo"] if TRUE_NOISE_RATE in m.params.values())
    assert told.config_changes(0.4)["loss_params"] == {"label_smoothing": 0.4}
    with pytest.raises(ValueError, match="noise"):
        told.config_changes()


def test_tuned_methods_pick_each_familys_best_mean_over_noise_levels():
    rows = []
    accuracies = {"dpo[beta=0.1]": (0.80, 0.60), "dpo[beta=0.05]": (0.82, 0.62), "dpo[beta=0.2]": (0.9, 0.4)}
    accuracies |= {"capo[tau=0.25]": (0.8, 0.7), "capo[tau=0.5]": (0.8, 0.7)}  # a tie: the first listed
    for method, by_noise in accuracies.items():
        for seed in (100, 101):
            for noise, accuracy in zip((0.2, 0.4), by_noise, strict=True):
                rows.append(
                    dict(method=method, seed=seed, noise=noise, accuracy=accuracy + 0.01 * (seed - 100))
                )
    frame = pd.DataFrame(rows).assign(language="all", margin_class="all", eval_split="validation")
    assert {f: m.name for f, m in chosen_variants(frame).items()} == {
        "dpo": "dpo[beta=0.05]",
        "capo": "capo[tau=0.25]",
    }
    chosen = tuned_methods(frame)
    assert set(chosen) == {"dpo", "capo"}
    assert chosen["dpo"].name == "dpo" and chosen["dpo"].beta == 0.05
    assert chosen["capo"].params["tau"] == 0.25
    with pytest.raises(ValueError, match="validation"):
        tuned_methods(frame.assign(eval_split="test"))


def test_a_systematic_run_scores_the_candidate_pairs_alone(tmp_path):
    tiny = {
        **TINY,
        "testbed_train": 96,
        "testbed_eval": 64,
        "sft_steps": 2,
        "max_steps": 2,
        "progress": "none",
    }
    tiny["systematic_noise"] = ["ru"]
    rows, result = run_one(METHODS["dpo"], profile="smoke", seed=0, noise=0.0, output_dir=tmp_path, **tiny)
    candidates = rows[rows.margin_class == SYSTEMATIC_CANDIDATES]
    assert list(candidates.language) == ["all", "ru"]  # the systematic language only, and pooled
    test = result.predictions
    expected = test[test.systematic_candidate & (test.language == "ru")]
    assert candidates.n.tolist() == [len(expected)] * 2 and len(expected) > 0
    assert candidates.accuracy.iloc[0] == pytest.approx(expected.correct.mean())


def _grid_script():
    """experiments/run_grid.py, imported as a module."""
    spec = importlib.util.spec_from_file_location("run_grid", RESULTS.parent / "run_grid.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_grid_script_defines_every_grid_it_documents():
    """experiments/run_grid.py imports, and the grids that need no earlier results resolve their methods."""
    grids = _grid_script().GRIDS
    assert {"tune", "scale1", "systematic", "noise-near-miss", "noise-by-tier", "slice"} <= set(grids)
    tune = grids["tune"]["methods"]()
    assert (
        len(tune) == sum(len(v) for v in TUNING.values())
        and grids["tune"]["overrides"]["eval_split"] == "validation"
    )
    assert set(grids["tune"]["seeds"]).isdisjoint(grids["scale1"]["seeds"]), "sweep seeds are never reported"
    regimes = [name for name in grids if name.startswith("regime/")]
    for name in ("tune", "scale1", "systematic", "noise-near-miss", "noise-by-tier", "scale2", *regimes):
        profile_config(grids[name]["profile"], **grids[name]["overrides"])  # a valid RunConfig
    documented = set(
        re.findall(r"`python experiments/run_grid.py ([\w/-]+)", (RESULTS.parent / "README.md").read_text())
    )
    assert documented <= set(grids), documented - set(grids)


def _overall_rows(accuracy: dict[str, float], seeds: list[int], noise: float, split: str) -> pd.DataFrame:
    """One "all"-language, "all"-margin row per (method, seed) at ``noise``, with the method's accuracy."""
    cells = [(method, seed) for method in accuracy for seed in seeds]
    return pd.DataFrame(
        {
            "method": [method for method, _ in cells],
            "seed": [seed for _, seed in cells],
            "accuracy": [accuracy[method] for method, _ in cells],
            **{
                "noise": noise,
                "systematic": "",
                "eval_split": split,
                "language": "all",
                "margin_class": "all",
            },
        }
    )


def test_later_grids_read_the_tuning_only_when_complete(tmp_path, monkeypatch):
    """scale1 runs a method as tuned only once all its tune cells ran; the noise grids add the strongest
    baseline only once every baseline's tuning is in."""
    script = _grid_script()
    monkeypatch.setattr(script, "RESULTS", tmp_path)
    seeds, noises = script.SWEEP_SEEDS, script.TUNE_NOISES
    families = ["dpo", "cdpo", "capo", "filter-dpo", *BASELINE_FAMILIES]
    settings = {v.name: 0.6 + 0.001 * i for i, v in enumerate(v for f in families for v in TUNING[f])}
    settings[TUNING["hinge"][2].name] = 0.9  # hinge's third setting is the best baseline setting
    tune = pd.concat(_overall_rows(settings, seeds, n, "validation") for n in noises)
    short = (tune.method == TUNING["dpo"][1].name) & (tune.noise == noises[-1])  # one cell short
    (tmp_path / "tune").mkdir()
    tune[~short].to_csv(tmp_path / "tune" / "results.csv", index=False)
    with pytest.raises(SystemExit, match=re.escape(TUNING["dpo"][1].name)):
        script._tuned("dpo")
    with pytest.raises(SystemExit, match=re.escape(TUNING["dpo"][1].name)):
        script._four_methods()
    (cdpo,) = script._tuned("cdpo")
    assert cdpo.name == "cdpo" and cdpo.params == TUNING["cdpo"][-1].params, "the best setting, renamed"
    with pytest.raises(SystemExit, match="no tuned methods"):
        script._tuned("cdpo", "dpo-typo")
    started = {}
    monkeypatch.setattr(script, "run_grid", lambda folder, **settings: started.update(settings))
    script.main(["scale1", "--methods", "cdpo", "--out", str(tmp_path / "part")])  # cdpo's tuning is done
    assert [m.name for m in started["methods"]] == ["cdpo"] and started["whole_grid"] is False
    with pytest.raises(SystemExit, match=re.escape(TUNING["dpo"][1].name)):
        script.main(["scale1", "--out", str(tmp_path / "whole")])

    tune.to_csv(tmp_path / "tune" / "results.csv", index=False)  # every cell in
    four = script._four_methods()
    assert [m.name for m in four] == ["dpo", "capo", "filter-dpo", "hinge"]
    assert four[-1].beta == TUNING["hinge"][2].beta


def test_a_tie_in_the_tuning_goes_to_the_setting_listed_first_whatever_the_float_rounding():
    first, second = (v.name for v in TUNING["cdpo"][:2])
    # 0.7675 + 0.5375 and 0.755 + 0.55 are both 1.305 of a pair share, but not in floating point
    at_20 = _overall_rows({first: 0.7675, second: 0.755}, [100], 0.2, "validation")
    at_40 = _overall_rows({first: 0.5375, second: 0.55}, [100], 0.4, "validation")
    assert chosen_variants(pd.concat([at_20, at_40]))["cdpo"].name == first


def test_the_strongest_baseline_is_the_best_tuned_baseline_on_validation():
    settings = {v.name: 0.5 for f in BASELINE_FAMILIES for v in TUNING[f]}
    settings |= {TUNING["simpo"][1].name: 0.7, TUNING["rdpo"][0].name: 0.8, TUNING["dpo"][0].name: 0.9}
    noises = [0.2, 0.4]
    tune = pd.concat(_overall_rows(settings, [100], n, "validation") for n in noises)
    assert strongest_baseline(tune) == "rdpo", "DPO is no baseline of its own"
    assert headline_baselines(tune) == ["dpo", "reference", "filter-dpo", "capo-sigmoid", "rdpo"]
    assert strongest_baseline(tune[tune.method != TUNING["rdpo"][0].name]) == "simpo"
    with pytest.raises(ValueError, match="hinge"):
        strongest_baseline(tune[~tune.method.str.startswith("hinge")])
    assert set(BASELINE_FAMILIES) == set(TUNING) - {"dpo", "capo", "capo-sigmoid", "filter-dpo"}


def _summariser(monkeypatch):
    """experiments/summarise_grid.py, imported as a module (it imports run_grid.py beside it)."""
    monkeypatch.syspath_prepend(str(RESULTS.parent))
    return importlib.import_module("summarise_grid")


def test_summarise_grid_reports_a_finished_grids_runs_and_cost(monkeypatch, capsys):
    summarise = _summariser(monkeypatch)
    assert summarise.main(["tune"]) == 0
    out = capsys.readouterr().out
    runs = select(load_grid("tune", RESULTS).results)
    assert f"runs {len(runs)} of {len(runs)} planned" in out and "NOT FINISHED" not in out
    assert f"cost {runs.seconds.sum() / 3600:.2f} core-hours over {len(runs)} runs" in out
    assert "where runs are to go" not in out
    first = runs.iloc[0]  # its accuracy, one seed: the table prints the mean alone
    assert re.search(rf"{re.escape(first.method)}\s+1\s+{first.accuracy:.3f}\s", out), "the accuracy column"


def test_summarise_grid_plans_a_grid_run_in_slices_from_its_definition(monkeypatch, capsys, tmp_path):
    """A slice's manifest names only the slice: the plan is the whole grid's, from run_grid.py."""
    summarise = _summariser(monkeypatch)
    tune = load_grid("tune", RESULTS)
    first = select(tune.results).drop_duplicates("method").method.iloc[:3]
    part = tmp_path / "tune-part"
    part.mkdir()
    tune.results[tune.results.method.isin(first) & (tune.results.noise == 0.2)].to_csv(
        part / "results.csv", index=False
    )
    manifest = {k: v for k, v in tune.manifest.items() if k != "finished"}
    manifest["command"] = "python experiments/run_grid.py tune --out /tmp/x --noises 0.2"
    manifest["grid"] = {**manifest["grid"], "methods": list(first), "noises": [0.2]}  # as a slice records it
    (part / "manifest.json").write_text(json.dumps(manifest))
    assert summarise.main(["tune-part", "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    planned = len(tune.manifest["grid"]["methods"]) * 2  # every setting at 20% and 40% flipped
    assert f"runs 3 of {planned} planned" in out and "NOT FINISHED" in out
    assert f"    {first.iloc[0]}: 0.2: 1/1, 0.4: 0/1" in out


def test_summarise_grid_pairs_the_method_with_each_other_method_by_seed(monkeypatch):
    summarise = _summariser(monkeypatch)
    accuracy = {"capo": [0.80, 0.70, 0.75], "dpo": [0.78, 0.66, 0.74]}
    runs = pd.concat(
        [
            _overall_rows({method: values[seed]}, [seed], 0.2, "test")
            for method, values in accuracy.items()
            for seed in range(3)
        ]
    ).assign(reference_accuracy=0.6, likelihood_accuracy=0.7, loss="dpo")
    table = summarise.headline(runs, "capo").set_index("baseline")
    assert table.loc["dpo", "points [95%]"].startswith("+2.3 [")  # (2 + 4 + 1) / 3 points, paired by seed
    assert table.loc["dpo", "verdict"] in {"ahead", "inconclusive"}  # three seeds: a verdict
    assert table.loc["reference", "value"] == "likelihood_accuracy"  # one rule on both sides
    two = summarise.headline(runs[runs.seed < 2], "capo").set_index("baseline")
    assert two.loc["dpo", "verdict"] == "" and two.loc["dpo", "points [95%]"].startswith("+3.0 [")
    assert summarise.headline(runs[runs.seed == 0], "capo") is None  # one seed cannot be paired
