"""Run a named experiment grid and write tidy results + a manifest under experiments/results/<grid>/.

    python experiments/run_grid.py tune           # every method's four settings, validation split
    python experiments/run_grid.py scale1         # the tuned methods x seeds 0-4 x 0/20/40% flipped
    python experiments/run_grid.py noise-by-tier  # flips by resource tier (also noise-near-miss, systematic)
    python experiments/run_grid.py scale2         # Gemma 3 270M + LoRA (cpu profile; needs [cpu-model])
    python experiments/run_grid.py scale1 --methods dpo capo --seeds 0 --noises 0.2   # a slice

A grid resumes where it stopped: cells already in results.csv are skipped. See experiments/README.md.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import pandas as pd

from capo_tutorial.cpu_kernels import select_committed_kernels

select_committed_kernels()  # before torch loads: the CPU kernels the committed grids were made with

from capo_tutorial.experiments import (  # noqa: E402
    BASELINE_FAMILIES,
    EXPERIMENT_REGIME,
    METHODS,
    REGIME_CANDIDATES,
    SCALE2_REGIME,
    SCALE2_REGIME_CANDIDATES,
    TUNING,
    Method,
    cells_done,
    run_grid,
    strongest_baseline,
    tuned_methods,
)

RESULTS = Path(__file__).resolve().parent / "results"
REPORTED_SEEDS = [0, 1, 2, 3, 4]


def _sweep_methods() -> list[Method]:
    """CAPO variants compared on the validation split: every confidence source, a few temperatures."""
    variants = [("sigmoid", 1.0), ("batch", 1.0), ("policy", 1.0), ("policy", 2.0)]
    variants += [("reference", tau) for tau in (0.25, 0.5, 1.0)]
    methods = [METHODS["dpo"]]
    for source, tau in variants:
        methods.append(
            Method(f"capo-{source}-tau{tau}", "capo", {"confidence": source, "tau": tau, "gamma": 1.0})
        )
    methods.append(
        Method("capo-reference-tau0.5-gamma2", "capo", {"confidence": "reference", "tau": 0.5, "gamma": 2.0})
    )
    return methods


# How the experiment regime was chosen (validation split, sweep seed 100, never a reported seed), among
# capo_tutorial.experiments.REGIME_CANDIDATES:
# fewer pairs and more epochs, so that preference learning moves the policy well past the warmed-up
# reference and flipped pairs can be memorised. 3k-4ep came first: its 375 SFT steps left the reference
# at chance (0.49 on validation) and clean DPO at 0.60, so it ran clean only and the later candidates
# keep 12,000 pairs. 12k-2ep (the smoke warm-up, two preference epochs) reached 0.87 clean against the
# reference's 0.82; with a third of the warm-up (12k-2ep-sft500) the reference was at chance (0.51) and
# DPO reached only 0.70. 12k-3ep-sft1000 sits between them, with a third epoch; it evaluates after each
# epoch (eval_every: the history in its run folder has the accuracy at one, two and three epochs): the
# reference ranked 0.64 and DPO reached 0.72 / 0.75 / 0.79 after one / two / three epochs, 15 points
# above the reference but under 0.85. Twice the learning rate (12k-2ep-sft1000-lr2e-3) did worse:
# 0.70 / 0.73 after one / two epochs, so it ran clean only. A longer warm-up (12k-3ep-sft1250) left the
# reference at 0.63 and DPO at 0.61 / 0.77 / 0.77: the reference's ranking appears only between 1,250
# and 1,500 warm-up steps. 12k-5ep-sft1000 follows the 1,000-step warm-up for five epochs: 0.71 / 0.75
# / 0.80 / 0.85 / 0.85 after each, 21 points above its reference (0.64), and 0.55 at 40% flipped (30
# points below): every goal met, so it is the regime (capo_tutorial.experiments.EXPERIMENT_REGIME).
# Half the pairs for the same five epochs (6k-5ep-sft1000) would halve the cost but reached only 0.76.
# Candidates that failed on clean data ran clean only; the others: clean and 40% flipped.
REGIME_NOISES = {
    "3k-4ep": [0.0],
    "12k-2ep": [0.0],  # five points above its reference: it fails on clean data too
    "12k-2ep-sft500": [0.0],
    "12k-2ep-sft1000-lr2e-3": [0.0],
    "12k-3ep-sft1250": [0.0],
    "6k-5ep-sft1000": [0.0],
}
SWEEP_SEEDS = [100]  # disjoint from the reported seeds 0-4; one, to fit the budget
TUNE_NOISES = [0.2, 0.4]  # the tuning rule reads the mean validation accuracy over these


def _tuning_variants() -> list[Method]:
    return [variant for variants in TUNING.values() for variant in variants]


def _missing_cells(results: pd.DataFrame, methods: list[str], seeds: list[int], noises: list[float]) -> list:
    """The (method, seed, noise) cells of a grid's results that have not run yet."""
    done = cells_done(results)
    return [(m, s, n) for m in methods for s in seeds for n in noises if (m, s, n) not in done]


def _tune_results(*families: str) -> pd.DataFrame:
    """The tune grid's results, once every setting of ``families`` has run on every tune cell: a pick
    never rests on part of the budget."""
    unknown = sorted(set(families) - set(TUNING))
    if unknown:
        raise SystemExit(f"no tuned methods {unknown}: the tuned methods are {sorted(TUNING)}")
    path = RESULTS / "tune" / "results.csv"
    if not path.is_file():
        raise SystemExit(f"{path} is missing: run `python experiments/run_grid.py tune` first")
    results = pd.read_csv(path)
    settings = [variant.name for family in families for variant in TUNING[family]]
    missing = _missing_cells(results, settings, SWEEP_SEEDS, TUNE_NOISES)
    if missing:
        raise SystemExit(f"the tune grid has not run {missing}: finish it first")
    return results


def _tuned(*families: str) -> list[Method]:
    """The methods as the tune grid chose them (all of them, or ``families``)."""
    families = families or tuple(TUNING)
    chosen = tuned_methods(_tune_results(*families))
    return [chosen[family] for family in families]


# The noise grids' average flip rate: scale1 has uniform flips at this rate on the same seeds (a paired
# comparison of where the flips fall), near misses stay majority-clean (half the pairs are near misses:
# 40% of them flipped) and every tier's rate stays below one half.
NOISE_TYPE_RATE = 0.2


def _four_methods() -> list[Method]:
    """DPO, CAPO, filtering and the strongest baseline by the tuning (validation), each as tuned."""
    results = _tune_results("dpo", "capo", "filter-dpo", *BASELINE_FAMILIES)
    chosen = tuned_methods(results)
    return [chosen[family] for family in ("dpo", "capo", "filter-dpo", strongest_baseline(results))]


def _in_regime(methods, seeds: list[int], noises: list[float], **changes) -> dict:
    """A grid of the experiment regime: the smoke profile with EXPERIMENT_REGIME and ``changes``."""
    overrides = {**EXPERIMENT_REGIME, **changes}
    return dict(methods=methods, seeds=seeds, noises=noises, profile="smoke", overrides=overrides)


GRIDS = {
    # One tuning budget for every method (capo_tutorial.experiments.TUNING), on the validation split,
    # with seeds never reported; scale1 and the noise grids run each method as it chose.
    "tune": _in_regime(_tuning_variants, SWEEP_SEEDS, TUNE_NOISES, eval_split="validation"),
    "scale1": _in_regime(_tuned, REPORTED_SEEDS, [0.0, 0.2, 0.4]),
    # The regime's clean goal on the test split with the beta it was chosen with (the profile's, not
    # DPO's tuned one, which the tuning picked at 20% and 40% flipped): clean DPO on the reported seeds,
    # paired by seed with scale1's clean DPO. It tells a regime that misses on test from a tuned beta
    # that costs clean accuracy; nothing is picked from it.
    "regime-check": _in_regime(lambda: [TUNING["dpo"][0]], REPORTED_SEEDS, [0.0]),  # dpo[beta=0.1]
    # Noise as multilingual data has it, NOISE_TYPE_RATE flipped on average: DPO, CAPO, filtering and
    # the strongest baseline (picked by the tuning, on validation data, before any test run).
    "noise-near-miss": _in_regime(
        _four_methods, REPORTED_SEEDS, [NOISE_TYPE_RATE], noise_pattern="near-miss"
    ),
    "noise-by-tier": _in_regime(_four_methods, REPORTED_SEEDS, [NOISE_TYPE_RATE], noise_pattern="by-tier"),
    # Russian and Arabic near misses ending in 7 answered with n+1 in every training pair: a consistent,
    # learnable error, scored on the test pairs the rule would flip (margin_class systematic-candidate).
    # Three seeds, not five: a run has eight such test pairs, and at seeds 0-2 three of the four methods
    # learn all eight in every run. More seeds cannot lift that ceiling; a larger candidate subset could.
    "systematic": _in_regime(_four_methods, REPORTED_SEEDS[:3], [0.0], systematic_noise=["ru", "ar"]),
    "sweep": dict(
        methods=_sweep_methods,
        seeds=[0],
        noises=[0.2, 0.4],
        profile="smoke",
        overrides={"eval_split": "validation"},
    ),
    # A small grid made to be recomputed: tests/test_experiments.py trains its cells again to check
    # that a change left the numerics alone. Its warm-up is the smoke profile's at seed 0 and 20%
    # flipped, the one chapter 8 audits (made once per test run, in the shared cache); 100 preference
    # steps on top. A shorter warm-up would be cheaper but leaves the tiny model at chance (375 SFT
    # steps on 3,000 pairs: reference accuracy 0.49), where a broken change could hide.
    "slice": dict(
        methods=lambda: ["dpo", "capo"],
        seeds=[0],
        noises=[0.2],
        profile="smoke",
        overrides=dict(max_steps=100),
    ),
    # Scale 2: a pretrained multilingual model (Gemma 3 270M + LoRA, the cpu profile) in a regime of its
    # own where clean DPO beats the reference (SCALE2_REGIME): DPO, CAPO, filtering and the strongest
    # baseline, clean and with 30% of the labels flipped.
    "scale2": dict(
        methods=_four_methods,
        seeds=REPORTED_SEEDS[:3],
        noises=[0.0, 0.3],
        profile="cpu",
        overrides=dict(SCALE2_REGIME),
    ),
}
# Each regime candidate as a grid of its own: DPO on the validation split with the first sweep seed.
for _profile, _candidates in (("smoke", REGIME_CANDIDATES), ("cpu", SCALE2_REGIME_CANDIDATES)):
    for _name, _changes in _candidates.items():
        GRIDS[f"regime/{_name}"] = dict(
            methods=lambda: ["dpo"],
            seeds=SWEEP_SEEDS[:1],
            noises=REGIME_NOISES.get(_name, [0.0, 0.4] if _profile == "smoke" else [0.0]),
            profile=_profile,
            overrides={"eval_split": "validation", **_changes},
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("grid", choices=sorted(GRIDS))
    parser.add_argument(
        "--out", type=Path, default=None, help="results folder (default: experiments/results/GRID)"
    )
    parser.add_argument("--methods", nargs="+", default=None, help="only these methods (names in the grid)")
    parser.add_argument("--seeds", nargs="+", type=int, default=None)
    parser.add_argument("--noises", nargs="+", type=float, default=None)
    arguments = parser.parse_args(argv)
    grid = GRIDS[arguments.grid]
    if grid["methods"] is _tuned and arguments.methods:  # a slice needs only its own methods' tuning done
        listed = _tuned(*arguments.methods)
    else:
        listed = grid["methods"]()
    methods = [METHODS[m] if isinstance(m, str) else m for m in listed]
    if arguments.methods:
        methods = [m for m in methods if m.name in arguments.methods]
    run_grid(
        arguments.out or RESULTS / arguments.grid,
        methods=methods,
        seeds=arguments.seeds or grid["seeds"],
        noises=arguments.noises or grid["noises"],
        profile=grid["profile"],
        command="python " + " ".join(shlex.quote(a) for a in sys.argv),
        whole_grid=not (arguments.methods or arguments.seeds or arguments.noises),
        **grid["overrides"],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
