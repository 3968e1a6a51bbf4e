"""Run a named experiment grid and write tidy results + a manifest under experiments/results/<grid>/.

    python experiments/run_grid.py sweep          # CAPO's defaults, chosen on the validation split
    python experiments/run_grid.py scale1         # smoke model: 7 methods x 3 seeds x 5 noise rates
    python experiments/run_grid.py systematic     # one language pair's near misses flipped consistently
    python experiments/run_grid.py scale2         # Gemma 3 270M + LoRA (cpu profile; needs [cpu-model])
    python experiments/run_grid.py scale1 --methods dpo capo --seeds 0 --noises 0.2   # a slice

A grid resumes where it stopped: cells already in results.csv are skipped. See experiments/README.md.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from capo_tutorial.experiments import METHODS, Method, run_grid

RESULTS = Path(__file__).resolve().parent / "results"


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


# How the experiment regime was chosen (validation split, sweep seed 100, never a reported seed):
# fewer pairs and more epochs, so that preference learning moves the policy well past the warmed-up
# reference and flipped pairs can be memorised. 3k-4ep came first: its 375 SFT steps left the reference
# at chance (0.49 on validation) and clean DPO at 0.60, so it ran clean only and the later candidates
# keep 12,000 pairs. 12k-2ep (the smoke warm-up, two preference epochs) reached 0.87 clean against the
# reference's 0.82: the next candidates shorten the warm-up instead of lengthening preference training.
REGIME_CANDIDATES = {
    "3k-4ep": dict(testbed_train=3000, sft_steps=375, max_steps=750),
    "12k-2ep": dict(testbed_train=12000, sft_steps=1500, max_steps=1500),
    "12k-2ep-sft750": dict(testbed_train=12000, sft_steps=750, max_steps=1500),
    "12k-2ep-sft500": dict(testbed_train=12000, sft_steps=500, max_steps=1500),
}
REGIME_NOISES = {"3k-4ep": [0.0]}  # the others: clean and 40% flipped
SWEEP_SEEDS = [100, 101]  # disjoint from the reported seeds 0-4

GRIDS = {
    "sweep": dict(
        methods=_sweep_methods,
        seeds=[0],
        noises=[0.2, 0.4],
        profile="smoke",
        overrides={"eval_split": "validation"},
    ),
    "scale1": dict(
        methods=lambda: [m for m in METHODS if m != "capo-sigmoid"],
        seeds=[0, 1, 2],
        noises=[0.0, 0.1, 0.2, 0.3, 0.4],
        profile="smoke",
        overrides={},
    ),
    "systematic": dict(
        methods=lambda: ["dpo", "capo", "rdpo"],
        seeds=[0, 1, 2],
        noises=[0.0],
        profile="smoke",
        overrides={"systematic_noise": ["ru", "ar"]},
    ),
    # A small grid made to be recomputed: tests/test_experiments.py trains its cells again (about a
    # minute each on one core) to check that a change left the numerics alone.
    "slice": dict(
        methods=lambda: ["dpo", "capo"],
        seeds=[0],
        noises=[0.2],
        profile="smoke",
        overrides=dict(testbed_train=3000, sft_steps=375, max_steps=200),
    ),
    # scale2: robust DPO (built for flipped labels) and SimPO (scale 1's strongest baseline at 30%)
    "scale2": dict(
        methods=lambda: ["dpo", "capo", "rdpo", "simpo"],
        seeds=[0, 1, 2],
        noises=[0.3],
        profile="cpu",
        overrides={},
    ),
}
for _name, _changes in REGIME_CANDIDATES.items():
    GRIDS[f"regime/{_name}"] = dict(
        methods=lambda: ["dpo"],
        seeds=SWEEP_SEEDS[:1],
        noises=REGIME_NOISES.get(_name, [0.0, 0.4]),
        profile="smoke",
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
    methods = [METHODS[m] if isinstance(m, str) else m for m in grid["methods"]()]
    if arguments.methods:
        methods = [m for m in methods if m.name in arguments.methods]
    run_grid(
        arguments.out or RESULTS / arguments.grid,
        methods=methods,
        seeds=arguments.seeds or grid["seeds"],
        noises=arguments.noises or grid["noises"],
        profile=grid["profile"],
        command="python " + " ".join(shlex.quote(a) for a in sys.argv),
        **grid["overrides"],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
