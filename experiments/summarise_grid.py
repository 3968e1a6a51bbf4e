"""Where a grid stands and what it shows so far: progress, cost, accuracy per cell, CAPO's headline.

    python experiments/summarise_grid.py scale1
    python experiments/summarise_grid.py scale1-new --root experiments/results --method capo

Reads ``<root>/<grid>/results.csv`` and ``manifest.json`` (finished or still running) and prints:

- the manifest: command, commits, started and finished stamps;
- progress: runs done against the whole grid's plan (the manifest's once the grid has finished; while
  it runs in slices, run_grid.py's definition of the grid), and the seeds still to run per cell;
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

import numpy as np
import pandas as pd
import run_grid

from capo_tutorial import analysis

RESULTS = Path(__file__).resolve().parent / "results"


VERDICT_SEEDS = 3
"""Seeds below which no verdict is printed: two seeds' differences can agree by chance and give a
zero-width interval."""


def plan(grid: analysis.Grid) -> tuple[dict[str, list], str]:
    """The whole grid's {"methods", "seeds", "noises"}, and where they come from. A finished grid's
    manifest holds them; a grid still running in slices records only its last slice there, so its
    plan is run_grid.py's definition of the grid that the manifest's command names."""
    name = grid.defined_as
    if grid.finished or name not in run_grid.GRIDS:
        return grid.manifest.get("grid", {}), "the manifest"
    definition = run_grid.GRIDS[name]
    methods = [m if isinstance(m, str) else m.name for m in definition["methods"]()]
    planned = {"methods": methods, "seeds": definition["seeds"], "noises": definition["noises"]}
    return planned, f"run_grid.py's definition of {name}"


def progress(grid: analysis.Grid, planned: dict[str, list]) -> tuple[int, int, dict[str, str]]:
    """(planned runs done, runs planned, and per method with runs to go, each noise rate's "seeds
    done/planned")."""
    cells = grid.completeness(planned)
    cells = cells[cells.seeds_planned > 0]
    done = cells.seeds_done.clip(upper=cells.seeds_planned)
    todo = {
        method: ", ".join(f"{r.noise:g}: {r.seeds_done}/{r.seeds_planned}" for r in rows.itertuples())
        for method, rows in cells.groupby("method", sort=False)
        if (rows.seeds_done < rows.seeds_planned).any()
    }
    return int(done.sum()), int(cells.seeds_planned.sum()), todo


def cost(runs: pd.DataFrame) -> dict[str, float] | None:
    """Core-hours, and minutes per run (mean, median), of one row per run with its ``seconds``; None
    when no run recorded its time."""
    seconds = runs["seconds"].dropna() if "seconds" in runs else pd.Series(dtype=float)
    if seconds.empty:
        return None
    return {
        "runs": len(seconds),
        "core_hours": seconds.sum() / 3600,
        "mean_minutes": seconds.mean() / 60,
        "median_minutes": seconds.median() / 60,
    }


def accuracy_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per noise rate and method, over seeds: implicit-reward accuracy as 'mean [low, high]' (a 95%
    Student-t interval of the mean; the mean alone for one seed), the seeds, and the means of the
    policy's per-token likelihood ranking and of the reference's."""
    by = ["noise", "method"]
    summary = analysis.summarise_seeds(runs, "accuracy", by=by)
    summary = summary.sort_values("noise", kind="stable").set_index(by)
    half = [
        analysis.interval_half_width(std, n) if n > 1 else np.nan
        for std, n in zip(summary["std"], summary.seeds)
    ]
    summary["accuracy [95%]"] = [
        f"{mean:.3f} [{mean - h:.3f}, {mean + h:.3f}]" if np.isfinite(h) else f"{mean:.3f}"
        for mean, h in zip(summary["mean"], half)
    ]
    means = runs.groupby(by, sort=False)[["likelihood_accuracy", "reference_accuracy"]].mean()
    return (
        summary[["seeds", "accuracy [95%]"]]
        .join(means)
        .rename(columns={"likelihood_accuracy": "likelihood", "reference_accuracy": "reference"})
    )


def headline(runs: pd.DataFrame, method: str) -> pd.DataFrame | None:
    """``method`` against every other method and the reference, paired by seed, in points with the 95%
    interval and the family's Bonferroni-corrected one (analysis.headline_comparisons); verdicts only
    from VERDICT_SEEDS seeds. None when ``method`` has fewer than two seeds."""
    if runs[runs.method == method].seed.nunique() < 2:
        return None
    both = analysis.with_reference_rows(runs)
    baselines = [m for m in both.method.unique() if m != method]
    table = analysis.headline_comparisons(both, baselines, method=method)
    table = table[table.seeds >= 2].copy()
    enough = table.seeds >= VERDICT_SEEDS
    table["points [95%]"] = [
        analysis.format_interval(r.absolute_points, r.ci_low, r.ci_high) for r in table.itertuples()
    ]
    table["corrected"] = [
        analysis.format_interval(r.absolute_points, r.family_low, r.family_high) for r in table.itertuples()
    ]
    table["verdict"] = table.verdict.where(enough, "")
    table["corrected verdict"] = table.family_verdict.where(enough, "")
    return table[
        ["baseline", "noise", "value", "seeds", "points [95%]", "verdict", "corrected", "corrected verdict"]
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("grid", help="the grid's folder name under --root, e.g. scale1")
    parser.add_argument("--root", type=Path, default=RESULTS, help="results folder (default: %(default)s)")
    parser.add_argument("--method", default="capo", help="the method compared with the others")
    arguments = parser.parse_args(argv)
    grid = analysis.load_grid(arguments.grid, arguments.root)
    if grid is None:
        raise SystemExit(f"no results under {arguments.root / arguments.grid}")
    if "method" not in grid.results.columns:
        raise SystemExit(f"{grid.source} has no method column: experiments/run_grid.py did not write it")
    manifest = grid.manifest
    runs = analysis.select(grid.results)
    planned, planned_by = plan(grid)
    done, total, todo = progress(grid, planned)
    print(f"{grid.name}: {manifest.get('command', '?')}")
    commits = ", ".join(c[:9] for c in manifest.get("commits", [])) or "?"
    finished = f"finished {manifest['finished']}" if grid.finished else "NOT FINISHED"
    print(f"  commits {commits}; started {manifest.get('started', '?')}; {finished}")
    print(
        f"  runs {done} of {total} planned (the plan: {planned_by}); split(s) {sorted(set(runs.eval_split))}"
    )
    if todo:
        print("  seeds done/planned at each noise rate, where runs are to go:")
        print("\n".join(f"    {method}: {counts}" for method, counts in todo.items()))
    spent = cost(runs)
    print(
        f"  cost {spent['core_hours']:.2f} core-hours over {spent['runs']} runs: {spent['mean_minutes']:.1f} "
        f"minutes per run (median {spent['median_minutes']:.1f})\n"
        if spent
        else "  cost: no run recorded its time\n"
    )
    with pd.option_context("display.float_format", "{:.3f}".format):
        print(accuracy_table(runs).to_string(), "\n")
    comparisons = headline(runs, arguments.method)
    if comparisons is None:
        known = sorted(set(runs.method)) if arguments.method not in set(runs.method) else None
        print(
            f"no comparison: {arguments.method!r} has fewer than two seeds here"
            + (f"; the grid's methods are {known}" if known else "")
        )
    else:
        print(
            f"{arguments.method} minus each other method, paired by seed (points; one scoring rule per pair):"
        )
        print(comparisons.to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
