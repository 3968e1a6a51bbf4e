"""How well does the pre-training audit find the flipped pairs of the testbed? Writes results/audit/.

    python experiments/run_audit.py                      # the whole grid (resumes where it stopped)
    python experiments/run_audit.py --seeds 0 --conditions 0.2 systematic   # a slice

Each cell (condition, seed) warms up the smoke profile's reference exactly as the experiment grids do
(the same SFT warm-up, read from the package's cache when a grid made it), audits its training pairs
with ``capo_tutorial.audit.audit_preferences`` and writes one row per language x margin class (and
"all" of each): pairs, flipped pairs, AUROC of 1 - c for the flips, precision and recall of the
default flag (c < 0.5), and the cell's seconds. Conditions: random flips at 10-40% of every
language, and "systematic" (Russian and Arabic near misses ending in 7 answered with n+1, as the
``systematic`` grid has them), which a reference trained on the same data can learn.

Cells already in results.csv are skipped; several processes may share the folder (locked appends).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from capo_tutorial.cpu_kernels import kernels_in_use, select_committed_kernels

select_committed_kernels()  # before torch loads: the CPU kernels the committed grids were made with

from capo_tutorial.audit import audit_preferences, auroc  # noqa: E402
from capo_tutorial.experiments import _append_rows, _git_commit, _version  # noqa: E402
from capo_tutorial.losses import CAPO_DEFAULTS  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "audit"
CONDITIONS = ("0.1", "0.2", "0.3", "0.4", "systematic")
SYSTEMATIC_LANGUAGES = ["ru", "ar"]  # as experiments/run_grid.py's "systematic" grid
COLUMNS = [
    "condition",
    "noise",
    "systematic",
    "seed",
    "language",
    "margin_class",
    "pairs",
    "flipped",
    "auroc",
    "precision",
    "recall",
    "flagged_share",
    "reference_accuracy",
    "seconds",
]


def overrides_of(condition: str, seed: int) -> dict:
    """The RunConfig changes of one cell (on top of the smoke profile)."""
    if condition == "systematic":
        return {"seed": seed, "noise": 0.0, "systematic_noise": SYSTEMATIC_LANGUAGES}
    return {"seed": seed, "noise": float(condition)}


def cell_rows(pairs: pd.DataFrame) -> list[dict]:
    """One row per language x margin class (and "all"), from an audit's pairs table."""
    rows = []
    languages = ["all", *sorted(pairs.language.unique())]
    for language, margin_class in itertools.product(languages, ["all", "low", "high"]):
        cell = pairs if language == "all" else pairs[pairs.language == language]
        cell = cell if margin_class == "all" else cell[cell.margin_class == margin_class]
        flipped, flagged = cell.truth.to_numpy(), cell.suspect.to_numpy()
        rows.append(
            {
                "language": language,
                "margin_class": margin_class,
                "pairs": len(cell),
                "flipped": int(flipped.sum()),
                "auroc": auroc(-cell.reference_margin.to_numpy(), flipped),
                "precision": (flipped & flagged).sum() / flagged.sum() if flagged.any() else float("nan"),
                "recall": (flipped & flagged).sum() / flipped.sum() if flipped.any() else float("nan"),
                "flagged_share": float(flagged.mean()),
                # the reference ranks the pair's TRUE order right (d_ref > 0 on clean, < 0 on flipped)
                "reference_accuracy": float(((cell.reference_margin > 0) != cell.truth).mean()),
            }
        )
    return rows


def run_cell(condition: str, seed: int) -> pd.DataFrame:
    start = time.perf_counter()
    result = audit_preferences(profile="smoke", overrides=overrides_of(condition, seed), progress=False)
    seconds = round(time.perf_counter() - start, 1)
    changes = overrides_of(condition, seed)
    shared = {
        "condition": condition,
        "noise": changes["noise"],
        "systematic": ",".join(changes.get("systematic_noise", [])),
        "seed": seed,
        "seconds": seconds,
    }
    return pd.DataFrame([{**shared, **row} for row in cell_rows(result.pairs)])[COLUMNS]


def write_manifest(out_dir: Path, command: str, conditions, seeds, *, started: bool) -> None:
    path = out_dir / "manifest.json"
    manifest = json.loads(path.read_text()) if path.exists() else {}
    if started:  # CAPO_COMMIT: the commit, where the code runs from a copy without git (another machine)
        manifest["commit"] = os.environ.get("CAPO_COMMIT") or _git_commit()
        commits = manifest.setdefault("commits", [])
        if manifest["commit"] not in commits:
            commits.append(manifest["commit"])
    packages = ["capo-tutorial", "torch", "transformers", "accelerate", "datasets", "tokenizers", "numpy"]
    manifest.update(
        {
            "command": command,
            "profile": "smoke",
            "grid": {"conditions": list(conditions), "seeds": list(seeds)},
            "systematic_languages": SYSTEMATIC_LANGUAGES,
            "audit": {"source": "reference", "tau": CAPO_DEFAULTS["tau"], "flag": "confidence < 0.5"},
            "versions": {name: _version(name) for name in packages},
            "python": sys.version.split()[0],
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "kernels": kernels_in_use()},
        }
    )
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    manifest.setdefault("started", stamp)
    if started:
        manifest.pop("finished", None)
    else:
        manifest["finished"] = stamp
    path.write_text(json.dumps(manifest, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder (default: results/audit)")
    parser.add_argument("--conditions", nargs="+", default=list(CONDITIONS), choices=CONDITIONS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    arguments = parser.parse_args(argv)
    out_dir = arguments.out
    out_dir.mkdir(parents=True, exist_ok=True)
    results = out_dir / "results.csv"
    done = set()
    if results.exists():
        frame = pd.read_csv(results, dtype={"condition": str})
        done = set(zip(frame.condition, frame.seed.astype(int), strict=True))
    todo = [(c, s) for s in arguments.seeds for c in arguments.conditions if (c, s) not in done]
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    write_manifest(out_dir, command, arguments.conditions, arguments.seeds, started=bool(todo))
    for condition, seed in todo:
        rows = run_cell(condition, seed)
        _append_rows(rows, results)
        overall = rows[(rows.language == "all") & (rows.margin_class == "all")].iloc[0]
        print(
            f"[audit] {condition} seed={seed}: AUROC {overall.auroc:.3f} ({overall.seconds:.0f} s)",
            flush=True,
        )
    write_manifest(out_dir, command, arguments.conditions, arguments.seeds, started=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
