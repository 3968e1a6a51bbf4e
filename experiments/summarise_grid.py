"""Where a grid stands and what it shows so far: progress, cost, accuracy per cell, CAPO's headline.

    python experiments/summarise_grid.py scale1
    python experiments/summarise_grid.py scale1-new --root experiments/results --method capo

Reads ``<root>/<grid>/results.csv`` and ``manifest.json`` (finished or still running) and prints:

- the manifest: command, commits, started and finished stamps;
- progress: runs done against the runs the manifest's grid plans, and the cells still to run;
- cost: core-seconds summed over the runs (the ``seconds`` column: one run, one core), per run;
- per method and noise rate, over seeds: implicit-reward accuracy (mean and 95% interval),
  the policy's own per-token likelihood ranking and the warmed-up reference's;
- ``--method`` (CAPO by default) against every other method of the grid and the reference, paired by
  seed, in points with 95% intervals, each pair scored by one rule (``analysis.headline_comparisons``).

Nothing is trained and nothing is written; a grid that has not finished says so in its header.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd
import run_grid

from capo_tutorial import analysis
from capo_tutorial.experiments import cells_done

RESULTS = Path(__file__).resolve().parent / "results"


def plan(grid: analysis.Grid) -> tuple[list[str], list[int], list[float]]:
    """(methods, seeds, noises) of the whole grid. A finished grid's manifest holds them; a grid still
    running in slices records only its last slice there, so its plan is run_grid.py's definition of
    the grid that the manifest's command names."""
    command = str(grid.manifest.get("command", "")).split()
    script = "experiments/run_grid.py"
    name = command[command.index(script) + 1] if script in command[:-1] else None
    if grid.finished or name not in run_grid.GRIDS:
        planned = grid.manifest.get("grid", {})
        return [list(planned.get(key, [])) for key in ("methods", "seeds", "noises")]
    definition = run_grid.GRIDS[name]
    methods = [m if isinstance(m, str) else m.name for m in definition["methods"]()]
    return methods, list(definition["seeds"]), [float(n) for n in definition["noises"]]


def progress(grid: analysis.Grid) -> tuple[int, int, dict[str, str]]:
    """(runs done, runs planned, and per method with runs to go, its noise rates' "seeds done/planned")."""
    methods, seeds, noises = plan(grid)
    done = cells_done(grid.results)
    todo = {}
    for method in methods:
        counts = {noise: sum((method, seed, noise) in done for seed in seeds) for noise in noises}
        if any(count < len(seeds) for count in counts.values()):
            todo[method] = ", ".join(f"{noise:g}: {count}/{len(seeds)}" for noise, count in counts.items())
    return len(done), len(methods) * len(seeds) * len(noises), todo


def cost(runs: pd.DataFrame) -> dict[str, float]:
    """Core-hours, and minutes per run (mean, median), of one row per run with its ``seconds``."""
    seconds = runs.seconds.dropna()
    return {
        "runs": len(seconds),
        "core_hours": seconds.sum() / 3600,
        "mean_minutes": seconds.mean() / 60,
        "median_minutes": seconds.median() / 60,
    }


def accuracy_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per method and noise rate, over seeds: accuracy as 'mean [low, high]' (95%), the seeds, and
    the means of the likelihood ranking and of the reference's ranking."""
    rows = []
    for (noise, method), cell in runs.groupby(["noise", "method"], sort=False):
        mean, low, high = analysis.paired_interval(cell.accuracy.to_numpy())
        rows.append(
            {
                "method": method,
                "noise": noise,
                "seeds": cell.seed.nunique(),
                "accuracy [95%]": f"{mean:.3f} [{low:.3f}, {high:.3f}]" if len(cell) > 1 else f"{mean:.3f}",
                "likelihood": cell.likelihood_accuracy.mean(),
                "reference": cell.reference_accuracy.mean(),
            }
        )
    return pd.DataFrame(rows).set_index(["method", "noise"])


def headline(runs: pd.DataFrame, method: str) -> pd.DataFrame | None:
    """``method`` against every other method and the reference, on the seeds both ran (None when the
    grid has no run of ``method``, or no seed on which it can be paired twice)."""
    both = analysis.with_reference_rows(runs)
    baselines = [m for m in both.method.unique() if m != method]
    if method not in set(runs.method) or not baselines or runs[runs.method == method].seed.nunique() < 2:
        return None
    table = analysis.headline_comparisons(both, baselines, method=method)
    table = table[table.seeds >= 2]
    cells = [analysis.format_interval(r.absolute_points, r.ci_low, r.ci_high) for r in table.itertuples()]
    return table.assign(points=cells)[["baseline", "noise", "value", "seeds", "points", "verdict"]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("grid", help="the grid's folder name under --root, e.g. scale1")
    parser.add_argument(
        "--root", type=Path, default=RESULTS, help="the results folder (default: %(default)s)"
    )
    parser.add_argument("--method", default="capo", help="the method compared with the others")
    arguments = parser.parse_args(argv)
    grid = analysis.load_grid(arguments.grid, arguments.root)
    if grid is None:
        raise SystemExit(f"no results under {arguments.root / arguments.grid}")
    if "method" not in grid.results.columns:
        raise SystemExit(f"{grid.source} has no method column: experiments/run_grid.py did not write it")
    manifest = grid.manifest
    runs = analysis.select(grid.results)
    done, planned, todo = progress(grid)
    spent = cost(runs)
    print(f"{grid.name}: {manifest.get('command', '?')}")
    print(
        f"  commits {', '.join(c[:9] for c in manifest.get('commits', [])) or '?'}; started "
        f"{manifest.get('started', '?')}; "
        + (f"finished {manifest['finished']}" if grid.finished else "NOT FINISHED")
    )
    print(f"  runs {done} of {planned} planned; split(s) {sorted(set(runs.eval_split))}")
    if todo:
        print("  seeds done/planned at each noise rate, where runs are to go:")
        print("\n".join(f"    {method}: {counts}" for method, counts in todo.items()))
    print(
        f"  cost {spent['core_hours']:.2f} core-hours over {spent['runs']} runs: "
        f"{spent['mean_minutes']:.1f} minutes per run (median {spent['median_minutes']:.1f})\n"
    )
    with pd.option_context(
        "display.width", 160, "display.max_rows", 200, "display.float_format", "{:.3f}".format
    ):
        print(accuracy_table(runs), "\n")
        comparisons = headline(runs, arguments.method)
        if comparisons is not None:
            print(f"{arguments.method} minus each baseline, paired by seed (points, 95% interval, one rule):")
            print(comparisons.to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
