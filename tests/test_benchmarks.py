"""benchmarks/train_throughput.py runs end to end in --quick mode and writes the JSON its README documents.

Nothing here checks a timing: a quick run's rates mean nothing. What is checked is that every
configuration ran, the result has its fields, all configurations started from the same weights,
and the loop, TRL and the hand-written loop agree on the first steps' losses.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "train_throughput.py"
HAS_TRL = importlib.util.find_spec("trl") is not None


@pytest.mark.slow
def test_quick_run_writes_the_documented_json(tmp_path: Path) -> None:
    configs = ["loop-dpo-precomputed", "loop-capo-precomputed", "hand-precomputed"]
    if HAS_TRL:
        configs.append("trl-precomputed")
    out = tmp_path / "result.json"
    command = [sys.executable, str(SCRIPT), "--quick", "--no-idle", "--parity-steps", "2"]
    command += ["--configs", ",".join(configs), "--out", str(out)]
    completed = subprocess.run(
        command,
        capture_output=True,
        text=True,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    report = json.loads(out.read_text(encoding="utf-8"))

    for key in ("command", "git_commit", "versions", "threads_per_child", "machine", "settings", "data"):
        assert key in report, key
    assert {"torch", "transformers", "python"} <= set(report["versions"])
    assert ("trl" in report["versions"]) == HAS_TRL
    assert report["settings"]["batch_pairs"] == 8 and report["settings"]["max_length"] == 128
    assert set(report["summary"]) == set(configs)
    for name in configs:
        row = report["summary"][name]
        for metric in ("steps_per_s", "tokens_per_s", "steps_per_cpu_s"):
            assert set(row[metric]) >= {"median", "q1", "q3", "min", "max", "n"}
            assert row[metric]["n"] == report["settings"]["rounds"]
        assert row["peak_rss_mib"] > 0
        assert len(report["blocks"][name]) == report["settings"]["rounds"]
    assert report["same_initial_weights"] is True
    targets = {row["target"]: row for row in report["targets"]}
    assert any(name.startswith("padding") for name in targets)
    assert all({"required", "met", "distance"} <= set(row) for row in targets.values())

    padding = report["data"]["padding"]
    assert padding["length_grouped"]["mean"] < padding["random"]["mean"]
    parity = report["loss_parity"]
    assert parity["passed"], parity
    assert set(parity["losses"]) == ({"loop-dpo-copy", "hand-copy"} | ({"trl-copy"} if HAS_TRL else set()))
    if HAS_TRL:
        trl_child = report["children"]["trl-precomputed"]
        assert trl_child["rows_with_same_tokens"] == trl_child["rows"]  # TRL tokenized exactly as we do
