"""The `capo` command and RunConfig: every flag documented, bad input ends in one clear line."""

import dataclasses
import json
import subprocess
import sys

import pytest

from capo_tutorial.cli import build_parser, main
from capo_tutorial.config import PROFILES, RunConfig, profile_config, select_profile


def run_capo(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "capo_tutorial.cli", *arguments], capture_output=True, text=True
    )


def test_help_documents_every_config_field():
    text = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    for field in dataclasses.fields(RunConfig):
        flag = "--" + field.name.replace("_", "-")
        assert flag in text, flag
        assert field.metadata["help"], f"{field.name} has no help text"


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["train", "--beta", "-1"], "RunConfig.beta must be > 0"),
        (["train", "--beta", "x"], "argument --beta: expected float, got 'x'"),
        (["train", "--precision", "fp8"], "RunConfig.precision must be one of"),
        (["train", "--loss", "dppo"], "unknown loss 'dppo'"),
        (["train", "--loss", "capo", "--loss-params", '{"gama": 1}'], "has no parameter 'gama'"),
        (["train", "--loss-params", "{bad"], "expected JSON (dict)"),
        (["train", "--resume", "maybe"], "expected true or false"),
        (["train", "--bogus", "1"], "unrecognized arguments: --bogus"),
        (["eval", "/nonexistent/run"], "holds no config.json"),
        (
            ["testbed", "--out", "/tmp/x", "--noise", "0.9"],
            "noise rate for 'en' is 0.9; it must be in [0, 0.5]",
        ),
    ],
)
def test_bad_input_is_one_line_with_exit_status_2(arguments, message, capsys):
    """In process (a subprocess per case would import torch ten times); the next test runs one for real."""
    try:
        status = main(arguments)
    except SystemExit as exit:  # argparse's own errors
        status = exit.code
    stderr = capsys.readouterr().err
    assert status == 2
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert message in lines[0]


def test_the_console_script_exits_with_status_2_and_no_traceback():
    completed = run_capo("train", "--beta", "-1")
    assert completed.returncode == 2
    lines = [line for line in completed.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("capo train: error: RunConfig.beta must be > 0"), (
        completed.stderr
    )


def test_testbed_command_writes_files(tmp_path):
    assert (
        main(["testbed", "--out", str(tmp_path), "--n-train", "40", "--n-validation", "10", "--n-test", "10"])
        == 0
    )
    assert json.loads((tmp_path / "card.json").read_text())["splits"]["train"] == 40
    assert sum(1 for _ in open(tmp_path / "train.jsonl")) == 40


def test_profiles_are_valid_configs():
    for name in PROFILES:
        config = profile_config(name)
        assert isinstance(config, RunConfig)
    assert profile_config("smoke", beta=0.3).beta == 0.3


def test_profile_selection_follows_environment_then_hardware(monkeypatch):
    assert select_profile({"CAPO_PROFILE": "cpu"}) == "cpu"
    assert select_profile({"CAPO_PROFILE": " GPU "}) == "gpu"
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    assert select_profile({}) == "gpu"
    assert select_profile({"CAPO_PROFILE": "smoke"}) == "smoke", "the environment wins over the hardware"
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert select_profile({}) == "smoke"
    assert select_profile({"CAPO_PROFILE": ""}) == "smoke", "an empty variable counts as unset"
    with pytest.raises(ValueError, match="not a profile"):
        select_profile({"CAPO_PROFILE": "huge"})


def test_config_round_trips_and_rejects_unknown_fields(tmp_path):
    config = profile_config("smoke", loss="capo", loss_params={"gamma": 2.0, "confidence": "reference"})
    config.save(tmp_path / "config.json")
    assert RunConfig.load(tmp_path / "config.json") == config
    with pytest.raises(ValueError, match="RunConfig has no field 'learning_rat'"):
        config.replace(learning_rat=1.0)
    with pytest.raises(ValueError, match="warmup_ratio must be in"):
        config.replace(warmup_ratio=1.5)
