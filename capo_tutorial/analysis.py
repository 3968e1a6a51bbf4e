"""Reading experiment grids and summarising them over seeds: what chapters 5 and 6 compute.

A grid (``experiments/results/<grid>/``, written by :func:`capo_tutorial.experiments.run_grid`)
holds ``results.csv``, tidy rows with the columns of ``capo_tutorial.experiments.RESULT_COLUMNS``
(one row per run x language x margin class, "all" rows included), and ``manifest.json``. This
module loads a grid, selects rows, and reduces the seeds:

- :func:`summarise_seeds`: mean, standard deviation, min and max of a metric over seeds;
- :func:`paired_differences`: a method's metric minus the baseline's *on the same seed* (same
  data, noise draw, warm-up and batch order), the comparison that removes most of the seed's luck;
- :func:`paired_interval`: the mean of paired differences with its Student-t confidence interval
  (:func:`interval_half_width` is the formula);
- :func:`improvement_over_baseline`: the improvement over a baseline in absolute points with a
  paired interval (95% unless told another level, e.g. a Bonferroni one), and as the share of the
  baseline's errors removed (a relative figure that does not blow up near chance, as "relative to
  the baseline's accuracy" does);
- :func:`against_each_baseline`: either of the two for one method against every other in turn;
- :func:`headline_comparisons`: one method against a family of baselines at every noise rate, each
  pair scored by one rule (:func:`scoring_rule`), with intervals at 95% and Bonferroni-corrected for
  the family, and a :func:`verdict` for each (ahead, behind, equivalent within
  :data:`EQUIVALENCE_POINTS`, or inconclusive);
- :func:`with_reference_rows`: the warmed-up reference as a method of its own, so that "against the
  reference" is a paired comparison too (on the per-token likelihood scale);
- :func:`format_mean_spread`, :func:`format_interval`: the cells of the chapters' tables.

:func:`language_statistics` describes a preference data set before any run (characters and tokens
per language, chapter 3).

Accuracies are fractions in [0, 1]; "points" are differences of fractions times 100; "relative"
improvements are percentages of the baseline's value. Nothing here trains a model.
"""

from __future__ import annotations

import json
import math
import os
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

__all__ = [
    "EQUIVALENCE_POINTS",
    "REFERENCE",
    "RESULTS_ENV",
    "Grid",
    "against_each_baseline",
    "find_results_dir",
    "format_interval",
    "format_mean_spread",
    "headline_comparisons",
    "improvement_over_baseline",
    "interval_half_width",
    "language_statistics",
    "load_finished_grid",
    "load_grid",
    "paired_differences",
    "paired_interval",
    "rank_variants",
    "repository_results_url",
    "require_columns",
    "scoring_rule",
    "select",
    "summarise_seeds",
    "verdict",
    "with_reference_rows",
]

RESULTS_ENV = "CAPO_RESULTS_DIR"
"""Environment variable naming a results folder (or URL) to read instead of the repository's."""

RUN_KEYS = ("method", "seed", "noise", "systematic")
"""The columns that identify one run of a grid."""

PAIR_KEYS = ("seed", "noise", "systematic", "language", "margin_class")
"""The columns on which two methods' rows are paired: the same seed (data, flips, warm-up, batches) and
the same cell. Runs of one seed and noise rate also share the warm-up, hence the reference."""


SLICING_FLAGS = ("--methods", "--seeds", "--noises")
"""The options of ``experiments/run_grid.py`` that run a slice of a grid instead of all of it."""


@dataclass(frozen=True)
class Grid:
    """One experiment grid as committed: its tidy results and its manifest.

    Attributes:
        name: the grid's folder name ("sweep", "scale1", ...).
        results: the rows of ``results.csv`` (``systematic`` read as a string, "" for none).
        manifest: ``manifest.json`` (command, commit, grid, versions, started/finished times).
        source: where the files were read from (a folder or a URL).
    """

    name: str
    results: pd.DataFrame
    manifest: dict[str, Any] = field(default_factory=dict)
    source: str = ""

    @property
    def defined_as(self) -> str | None:
        """The grid name that the manifest's command passed to ``run_grid.py`` (a grid written with
        ``--out`` to another folder keeps its definition's name), None when the command names none."""
        command = str(self.manifest.get("command", "")).split()
        script = next((i for i, token in enumerate(command[:-1]) if Path(token).name == "run_grid.py"), None)
        return command[script + 1] if script is not None else None

    @property
    def sliced(self) -> bool:
        """True when the manifest's command ran only part of the grid (``--methods``, ``--seeds`` or
        ``--noises``): the manifest's grid then holds that slice, not the whole plan."""
        command = str(self.manifest.get("command", "")).split()
        return any(flag in command for flag in SLICING_FLAGS)

    @property
    def finished(self) -> bool:
        """True when the manifest records that the whole grid ran to its end (a slice's stamp does
        not count)."""
        return "finished" in self.manifest and not self.sliced

    def completeness(self, planned: dict[str, list] | None = None) -> pd.DataFrame:
        """Seeds done against seeds planned, per method and noise rate of the manifest's grid.

        Args:
            planned: the whole grid's ``{"methods", "seeds", "noises"}`` where the manifest holds less
                (a grid run in slices records only its last slice); default the manifest's grid.

        Returns:
            DataFrame with columns method, noise, seeds_done, seeds_planned, one row per planned cell
            (and per cell found in the results that the plan leaves out).
        """
        planned = self.manifest.get("grid", {}) if planned is None else planned
        methods = list(planned.get("methods", []))
        noises = [float(n) for n in planned.get("noises", [])]
        seeds = len(planned.get("seeds", []))
        overall = select(self.results)
        done = overall.groupby(["method", "noise"]).seed.nunique()
        cells = {(m, n) for m in methods for n in noises} | set(done.index)
        order = {m: i for i, m in enumerate(methods)}
        rows = [
            {
                "method": method,
                "noise": noise,
                "seeds_done": int(done.get((method, noise), 0)),
                "seeds_planned": seeds if method in order and noise in noises else 0,
            }
            for method, noise in sorted(cells, key=lambda c: (order.get(c[0], len(order)), c[0], c[1]))
        ]
        return pd.DataFrame(rows, columns=["method", "noise", "seeds_done", "seeds_planned"])


def repository_results_url(branch: str = "main") -> str | None:
    """The raw-file URL of the committed results in the package's repository (its Homepage).

    Used where no local copy exists (e.g. on Colab, where pip installs the package without the
    ``experiments/`` folder). None when the installed metadata names no GitHub homepage.
    """
    try:
        urls = metadata.metadata("capo-tutorial").get_all("Project-URL") or []
    except metadata.PackageNotFoundError:
        return None
    for entry in urls:
        label, _, url = entry.partition(",")
        url = url.strip()
        if label.strip().lower() == "homepage" and url.startswith("https://github.com/"):
            owner_repo = url.removeprefix("https://github.com/").strip("/")
            return f"https://raw.githubusercontent.com/{owner_repo}/{branch}/experiments/results"
    return None


def find_results_dir(start: str | Path | None = None) -> Path | None:
    """The ``experiments/results`` folder: ``$CAPO_RESULTS_DIR`` if set, else the first one found in
    ``start`` (default: the working directory) or a folder above it; None if there is none."""
    if os.environ.get(RESULTS_ENV):
        return Path(os.environ[RESULTS_ENV])
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        candidate = folder / "experiments" / "results"
        if candidate.is_dir():
            return candidate
    return None


def _is_url(location: str | Path) -> bool:
    return str(location).startswith(("http://", "https://", "file://"))


def _read_json(location: str) -> dict[str, Any]:
    if _is_url(location):
        with urllib.request.urlopen(location, timeout=30) as response:  # http(s) or file URLs only
            return json.loads(response.read().decode("utf-8"))
    return json.loads(Path(location).read_text(encoding="utf-8"))


def load_grid(name: str, root: str | Path | None = None) -> Grid | None:
    """Read ``<root>/<name>/results.csv`` and its ``manifest.json``; None if the grid has no results yet.

    Args:
        name: the grid's folder name.
        root: a results folder or a URL (``https://...``, ``file://...``) whose ``<name>/results.csv``
            can be fetched; default :func:`find_results_dir`.

    Returns:
        The :class:`Grid`, or None when no ``results.csv`` exists (a grid that has not run yet) or
        it holds no rows yet. A missing manifest gives an empty one.
    """
    root = find_results_dir() if root is None else root
    if root is None:
        return None
    if _is_url(root):
        base = str(root).rstrip("/") + f"/{name}"
        try:
            results = pd.read_csv(f"{base}/results.csv", dtype={"systematic": str})
        except (OSError, ValueError):  # HTTP 404 (urllib.error.URLError is an OSError), empty file
            return None
        try:
            manifest = _read_json(f"{base}/manifest.json")
        except (OSError, ValueError):
            manifest = {}
        source = base
    else:
        folder = Path(root) / name
        path = folder / "results.csv"
        if not path.is_file() or path.stat().st_size == 0:
            return None
        results = pd.read_csv(path, dtype={"systematic": str})
        manifest_path = folder / "manifest.json"
        manifest = _read_json(str(manifest_path)) if manifest_path.is_file() else {}
        source = str(folder)
    if results.empty:
        return None
    results["systematic"] = results["systematic"].fillna("")
    return Grid(name=name, results=results, manifest=manifest, source=source)


def load_finished_grid(name: str, root: str | Path | None = None, split: str = "test") -> Grid:
    """:func:`load_grid` for a grid a chapter reports: it must have run to its end (its manifest says
    finished) and be scored on ``split`` alone ("test" for reported grids, "validation" for tuning).

    Raises:
        FileNotFoundError: the grid has no results, or has not finished (with the command that runs it).
        ValueError: its rows are scored on another split.
    """
    grid = load_grid(name, root)
    if grid is None or not grid.finished:
        raise FileNotFoundError(
            f"no finished {name} grid under {root or find_results_dir()}: "
            f"python experiments/run_grid.py {name}"
        )
    splits = set(grid.results.eval_split)
    if splits != {split}:
        raise ValueError(f"the {name} grid must be scored on the {split} split only; it holds {splits}")
    return grid


def select(
    frame: pd.DataFrame, language: str | None = "all", margin_class: str | None = "all", **equals: Any
) -> pd.DataFrame:
    """Rows of one language and margin class (None: every value), and ``column=value`` filters.

    The default gives one row per run: the "all" language and "all" margin class. A filter value
    may be a list, meaning any of its values.
    """
    mask = pd.Series(True, index=frame.index)
    for column, value in {"language": language, "margin_class": margin_class, **equals}.items():
        if value is None:
            continue
        if column not in frame.columns:
            raise ValueError(f"no column {column!r} to filter on; the columns are {list(frame.columns)}")
        values = value if isinstance(value, (list, tuple, set)) else [value]
        mask &= frame[column].isin(values)
    return frame[mask].copy()


def require_columns(frame: pd.DataFrame, needed: Iterable[str], name: str = "the table") -> None:
    """Raise a ValueError naming the columns ``frame`` lacks (``name`` is how the message calls it).

    The message also lists the columns it has, so that a renamed column is easy to spot.
    """
    missing = sorted(set(needed) - set(frame.columns))
    if missing:
        raise ValueError(f"{name} lacks the columns {missing}; it has {list(frame.columns)}")


def summarise_seeds(
    frame: pd.DataFrame, value: str = "accuracy", by: Sequence[str] = ("method", "noise")
) -> pd.DataFrame:
    """Mean, standard deviation (ddof 1), min and max of ``value`` over seeds, per ``by`` group.

    Args:
        frame: one row per run and cell (e.g. ``select(results)``: one per run); rows with a
            missing ``value`` (e.g. ``flipped_memorised`` without flips) are left out.
        value: the metric column.
        by: the grouping columns; everything else is averaged over (normally only the seed).

    Returns:
        DataFrame with the ``by`` columns and mean, std (NaN for one seed), min, max, seeds; groups
        in order of first appearance.
    """
    require_columns(frame, [*by, value, "seed"])
    rows = frame.dropna(subset=[value])
    grouped = rows.groupby(list(by), sort=False)
    summary = grouped[value].agg(["mean", "std", "min", "max"])
    summary["seeds"] = grouped["seed"].nunique()
    return summary.reset_index()


def paired_differences(
    frame: pd.DataFrame,
    baseline: str = "dpo",
    value: str = "accuracy",
    keys: Sequence[str] = PAIR_KEYS,
    across: str = "method",
) -> pd.DataFrame:
    """Each method's ``value`` minus the baseline's on the same seed and cell.

    Runs of the same seed and noise share the training data, the noise draw, the SFT warm-up and
    the batch order, so their difference carries much less of the seed's luck than a difference
    of means.

    Args:
        frame: tidy results (any subset of rows); the ``keys`` present in it pair the rows.
        baseline: the level of ``across`` subtracted (a method, by default).
        value: the metric column.
        keys: the columns that must agree for two rows to be paired (those absent are ignored).
        across: the column whose levels are compared, "method" by default; e.g. "pattern" (with
            "method" among the keys) compares each noise placement with the baseline placement,
            method by method.

    Returns:
        DataFrame with ``across``, the keys, ``value``, ``baseline_value`` and ``difference``, one row
        per non-baseline row that has a baseline partner (the baseline's own rows are left out).
    """
    keys = [key for key in keys if key in frame.columns and key != across]
    require_columns(frame, [across, value, *keys])
    base = frame[frame[across] == baseline][[*keys, value]].rename(columns={value: "baseline_value"})
    if base.duplicated(keys).any():
        raise ValueError(f"the baseline {baseline!r} has several rows per {keys}; add a key to pair on")
    others = frame[frame[across] != baseline][[across, *keys, value]]
    paired = others.merge(base, on=keys, how="inner")
    paired["difference"] = paired[value] - paired["baseline_value"]
    return paired.reset_index(drop=True)


REFERENCE = "reference"
"""The method name :func:`with_reference_rows` gives the reference model's rows."""


def with_reference_rows(runs: pd.DataFrame) -> pd.DataFrame:
    """``runs`` plus one row per run's warm-up: the reference model as a method of its own.

    The reference has no implicit reward (it would be its own reference): its one ranking is by
    per-token likelihood (``reference_accuracy``), and its row carries that in ``accuracy`` and
    ``likelihood_accuracy`` alike. Compare a policy with it by ``value="likelihood_accuracy"`` for one
    scoring rule on both sides; ``value="accuracy"`` sets the policy's implicit-reward accuracy against
    the reference's likelihood ranking, two rules, which a table must then say. Runs of one seed and
    noise rate share a warm-up, so one reference row is kept per :data:`PAIR_KEYS` cell.

    Args:
        runs: tidy result rows with ``reference_accuracy`` (SimPO's NaN rows are skipped).

    Returns:
        ``runs`` with the reference rows appended (method :data:`REFERENCE`; the policy's own columns,
        such as margin and flipped_memorised, NaN there).
    """
    require_columns(runs, ["method", "seed", "reference_accuracy"])
    keys = [k for k in PAIR_KEYS if k in runs.columns]
    warm_ups = runs.dropna(subset=["reference_accuracy"]).drop_duplicates(keys)
    reference = warm_ups.assign(
        method=REFERENCE,
        accuracy=warm_ups.reference_accuracy,
        likelihood_accuracy=warm_ups.reference_accuracy,
    )
    policy_only = [
        c for c in ("loss", "params", "margin", "ece", "flipped_memorised", "steps", "seconds") if c in runs
    ]
    reference[policy_only] = np.nan  # what the policy's training measured, not the reference
    return pd.concat([runs, reference], ignore_index=True)


def _t_quantile(probability: float, dof: int) -> float:
    """Quantile of Student's t with ``dof`` degrees of freedom (probability in (0.5, 1)): bisection on
    its CDF, integrated numerically (no SciPy needed; accurate to ~1e-6 for dof >= 1)."""
    log_norm = math.lgamma((dof + 1) / 2) - math.lgamma(dof / 2) - 0.5 * math.log(dof * math.pi)

    def cdf(x: float) -> float:
        grid = np.linspace(0.0, x, 20001)
        density = np.exp(log_norm - (dof + 1) / 2 * np.log1p(grid**2 / dof))
        return 0.5 + float(np.sum((density[1:] + density[:-1]) * np.diff(grid)) / 2)

    low, high = 0.0, 1.0
    while cdf(high) < probability:
        high *= 2
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if cdf(middle) < probability else (low, middle)
    return (low + high) / 2


def paired_interval(differences: ArrayLike, level: float = 0.95) -> tuple[float, float, float]:
    """Mean of paired differences (e.g. one per seed) and its two-sided Student-t interval.

    Args:
        differences: (n,) paired differences; NaNs are dropped.
        level: coverage of the interval.

    Returns:
        (mean, low, high); low and high are NaN when fewer than two differences remain.
    """
    values = np.asarray(differences, dtype=float)
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return float("nan"), float("nan"), float("nan")
    mean = float(values.mean())
    half = interval_half_width(
        float(values.std(ddof=1)) if len(values) > 1 else float("nan"), len(values), level
    )
    return mean, mean - half, mean + half


def interval_half_width(std: float, n: int, level: float = 0.95) -> float:
    """Half the width of the two-sided Student-t interval of a mean of ``n`` values with sample
    standard deviation ``std`` (ddof 1); NaN for fewer than two values."""
    if n < 2 or math.isnan(std):
        return float("nan")
    return _t_quantile(0.5 + level / 2, n - 1) * std / math.sqrt(n)


def improvement_over_baseline(
    frame: pd.DataFrame,
    baseline: str = "dpo",
    value: str = "accuracy",
    by: Sequence[str] = ("method", "noise"),
    level: float = 0.95,
    keys: Sequence[str] = PAIR_KEYS,
) -> pd.DataFrame:
    """How much each method improves on the baseline, in absolute points and relative to the baseline.

    Args:
        frame: one row per run (and cell), as for :func:`paired_differences`; add the reference
            model as a method with :func:`with_reference_rows` to compare against it.
        baseline: the method compared against.
        value: the metric (a fraction, e.g. reward accuracy).
        by: the groups to report; must include "method".
        level: the intervals' coverage (e.g. ``1 - 0.05 / m`` for m comparisons, Bonferroni).
        keys: what pairs two rows (:func:`paired_differences`), e.g. ``("seed", "tier")`` for rows
            pooled by resource tier.

    Returns:
        DataFrame with the ``by`` columns and: mean (the method's mean over seeds), baseline_mean,
        absolute_points (100 x the mean paired difference: percentage points), difference_std
        (100 x the std of the paired differences over seeds, points), ci_low and ci_high (the paired
        Student-t interval of absolute_points at ``level``), relative_percent (100 x (mean -
        baseline_mean) / baseline_mean), error_reduction_percent (100 x the share of the
        baseline's errors, 1 - baseline_mean, that the method removes; negative when it adds
        errors), wins (seeds where the method beats the baseline strictly) and seeds.
    """
    if "method" not in by:
        raise ValueError("by must include 'method'")
    paired = paired_differences(frame, baseline=baseline, value=value, keys=keys)
    grouped = paired.groupby(list(by), sort=False)
    table = pd.DataFrame(
        {
            "mean": grouped[value].mean(),
            "baseline_mean": grouped["baseline_value"].mean(),
            "absolute_points": 100 * grouped["difference"].mean(),
            "difference_std": 100 * grouped["difference"].std(),
            "wins": grouped["difference"].apply(lambda d: int((d > 0).sum())),
            "seeds": grouped["difference"].size(),
        }
    )
    intervals = grouped["difference"].apply(lambda d: paired_interval(d.to_numpy(), level))
    table["ci_low"] = [100 * interval[1] for interval in intervals]
    table["ci_high"] = [100 * interval[2] for interval in intervals]
    table.insert(3, "relative_percent", 100 * (table["mean"] / table["baseline_mean"] - 1))
    table.insert(
        4,
        "error_reduction_percent",
        100 * (table["mean"] - table["baseline_mean"]) / (1 - table["baseline_mean"]),
    )
    return table.reset_index()


EQUIVALENCE_POINTS = 2.0
"""The margin, in points, within which two methods count as doing equally well (:func:`verdict`):
8 of 400 test pairs, a fifth of the smallest gap the experiments' regime is asked to show (10 points
between clean DPO and its reference)."""


def verdict(ci_low: float, ci_high: float, margin: float = EQUIVALENCE_POINTS) -> str:
    """What a paired interval of ``method - baseline`` (in points) says of the method.

    - "ahead": the interval lies above zero; "behind": it lies below zero;
    - "equivalent": it holds zero and lies within ``[-margin, margin]``: at the interval's level the
      two are within ``margin`` points of each other;
    - "inconclusive": it holds zero and reaches past the margin (or is missing, with one seed): the
      seeds cannot tell, and "no difference" would be absence of evidence.
    """
    if ci_low > 0:
        return "ahead"
    if ci_high < 0:
        return "behind"
    if -margin <= ci_low and ci_high <= margin:
        return "equivalent"
    return "inconclusive"


def scoring_rule(baseline: str, losses_of_runs: pd.Series | None = None) -> str:
    """The column that scores a method against ``baseline`` by one rule on both sides: the policy's
    per-token likelihood ranking (``likelihood_accuracy``) against :data:`REFERENCE` or a reference-free
    loss (SimPO, whose implicit reward is that ranking), else implicit-reward accuracy (``accuracy``).

    Args:
        baseline: a method name.
        losses_of_runs: the ``loss`` of each row of ``baseline``'s runs (to tell a reference-free loss).
    """
    from capo_tutorial.losses import LOSSES

    if baseline == REFERENCE:
        return "likelihood_accuracy"
    losses = set(losses_of_runs.dropna()) if losses_of_runs is not None else set()
    reference_free = any(name in LOSSES and not LOSSES[name].needs_reference for name in losses)
    return "likelihood_accuracy" if reference_free else "accuracy"


def headline_comparisons(
    runs: pd.DataFrame, baselines: Sequence[str], method: str = "capo", level: float = 0.95
) -> pd.DataFrame:
    """``method`` against each of ``baselines`` at each noise rate, paired by seed, in points: one
    family of comparisons, each with its interval at ``level`` and at the family's Bonferroni level
    (``1 - (1 - level) / m`` for its m rows), and each pair scored by one rule (:func:`scoring_rule`).

    Args:
        runs: one row per run (:func:`select`); with :func:`with_reference_rows` to include
            :data:`REFERENCE` among ``baselines``.
        baselines: the methods compared against, in the order to report.
        method: the method compared.
        level: the coverage of each interval on its own.

    Returns:
        One row per (baseline, noise): :func:`improvement_over_baseline`'s columns and ``baseline``,
        ``value`` (the rule), ``verdict`` (:func:`verdict` of the interval at ``level``), and
        ``family_low``, ``family_high``, ``family_verdict`` at the family's level.
    """
    missing = sorted({method, *baselines} - set(runs.method))
    if missing:
        raise ValueError(f"no runs of {missing}; the runs hold {sorted(set(runs.method))}")
    rules = {
        b: scoring_rule(b, runs.loc[runs.method == b, "loss"] if "loss" in runs else None) for b in baselines
    }
    comparisons = len(baselines) * runs.noise.nunique()
    family_level = 1 - (1 - level) / comparisons
    tables = []
    for baseline in baselines:
        pair = runs[runs.method.isin([method, baseline])]
        usual = improvement_over_baseline(pair, baseline=baseline, value=rules[baseline], level=level)
        wide = improvement_over_baseline(pair, baseline=baseline, value=rules[baseline], level=family_level)
        usual = usual[usual.method == method].assign(baseline=baseline, value=rules[baseline])
        usual[["family_low", "family_high"]] = wide.loc[
            wide.method == method, ["ci_low", "ci_high"]
        ].to_numpy()
        tables.append(usual)
    table = pd.concat(tables, ignore_index=True)
    table["verdict"] = [verdict(low, high) for low, high in zip(table.ci_low, table.ci_high)]
    table["family_verdict"] = [verdict(low, high) for low, high in zip(table.family_low, table.family_high)]
    return table


def against_each_baseline(
    frame: pd.DataFrame,
    measure: Callable[..., pd.DataFrame] = paired_differences,
    method: str = "capo",
    **options: Any,
) -> pd.DataFrame:
    """``measure`` of ``method`` against every other method in ``frame``, one baseline at a time.

    Args:
        frame: tidy results holding ``method`` and its baselines (e.g. one row per run).
        measure: :func:`paired_differences` or :func:`improvement_over_baseline`; it is called with
            the rows of ``method`` and one baseline, ``baseline=`` that baseline, and ``options``.
        method: the method compared against the others.
        **options: passed on to ``measure`` (e.g. ``value="margin"``).

    Returns:
        ``measure``'s rows for every baseline stacked, with a ``baseline`` column; baselines in
        order of first appearance in ``frame``.
    """
    require_columns(frame, ["method"])
    methods = list(dict.fromkeys(frame.method))
    baselines = [m for m in methods if m != method]
    if method not in methods or not baselines:
        raise ValueError(f"need {method!r} and at least one other method; the table has {methods}")
    return pd.concat(
        [
            measure(frame[frame.method.isin([method, baseline])], baseline=baseline, **options).assign(
                baseline=baseline
            )
            for baseline in baselines
        ],
        ignore_index=True,
    )


def rank_variants(
    frame: pd.DataFrame, value: str = "accuracy", across: str = "noise", method: str = "method"
) -> pd.DataFrame:
    """Variants ranked by their mean ``value`` across the levels of ``across`` (e.g. noise rates).

    The rule the sweep uses to choose CAPO's default: the best mean validation reward accuracy over
    the sweep's noise levels (each level weighted equally, seeds averaged first).

    Returns:
        DataFrame indexed by method (best first) with one column per level of ``across``, ``mean``
        (their average) and ``rank`` (1 = best).
    """
    require_columns(frame, [method, across, value])
    table = frame.groupby([method, across])[value].mean().unstack(across)
    table.columns = [
        f"{across} {level:g}" if isinstance(level, float) else str(level) for level in table.columns
    ]
    table["mean"] = table.mean(axis=1)
    table = table.sort_values("mean", ascending=False)
    table["rank"] = np.arange(1, len(table) + 1)
    return table


def format_mean_spread(mean: float, spread: float | None = None, digits: int = 3) -> str:
    """'0.812 ± 0.013' (or '0.812' when the spread is missing, e.g. one seed)."""
    if spread is None or not np.isfinite(spread):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {spread:.{digits}f}"


def format_interval(mean: float, low: float, high: float, digits: int = 1) -> str:
    """'+4.2 [+1.0, +7.4]': a signed difference with its interval (e.g. points, from
    :func:`improvement_over_baseline`); '+4.2' alone when the interval is missing (one seed)."""
    if not (np.isfinite(low) and np.isfinite(high)):
        return f"{mean:+.{digits}f}"
    return f"{mean:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}]"


# ----------------------------------------------------------------------------------------------
# Per-language statistics of a preference data set (before any run: tokens per script)
# ----------------------------------------------------------------------------------------------


def language_statistics(dataset: Any, tokenizer: Any) -> pd.DataFrame:
    """Per language of a preference data set (a ``datasets.Dataset`` with prompt, chosen, rejected and
    language columns): rows, mean characters and tokens per pair, and tokens per character.

    A pair's text is prompt + chosen + rejected; characters are Unicode code points; tokens are
    counted without special tokens. ``tokens_per_char`` (tokenizer fertility) is total tokens over
    total characters: the same content costs more tokens in some scripts. ``bytes_per_char`` is the
    UTF-8 size, which a byte-level tokenizer starts from (1 for ASCII, 2 for Cyrillic, 3 for Thai).

    Returns:
        DataFrame with columns language, [script], rows, mean_chars, mean_tokens, tokens_per_char,
        bytes_per_char; one row per language, sorted by language.
    """
    from capo_tutorial.data import TEXT_FIELDS  # here, not above: reading grids needs no torch

    columns = ["language", *TEXT_FIELDS] + (["script"] if "script" in dataset.column_names else [])
    frame = dataset.select_columns(columns).to_pandas()
    texts = [t for name in TEXT_FIELDS for t in frame[name].tolist()]
    counts = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    n = len(frame)
    frame["tokens"] = np.add.reduce([np.asarray(counts[k * n : (k + 1) * n]) for k in range(3)])
    frame["chars"] = sum(frame[name].str.len() for name in TEXT_FIELDS)
    frame["bytes"] = sum(frame[name].map(lambda s: len(s.encode("utf-8"))) for name in TEXT_FIELDS)
    keys = ["language", "script"] if "script" in columns else ["language"]
    stats = frame.groupby(keys, sort=True).agg(
        rows=("tokens", "size"),
        mean_chars=("chars", "mean"),
        mean_tokens=("tokens", "mean"),
        tokens=("tokens", "sum"),
        chars=("chars", "sum"),
        bytes=("bytes", "sum"),
    )
    stats["tokens_per_char"] = stats["tokens"] / stats["chars"]
    stats["bytes_per_char"] = stats["bytes"] / stats["chars"]
    return stats.drop(columns=["tokens", "chars", "bytes"]).reset_index()
