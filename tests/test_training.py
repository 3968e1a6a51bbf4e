"""The training loop: what a run writes, resume after a kill, NaN guard, two processes, reference modes.

That a warmed-up model learns to rank held-out pairs is checked once, end to end, by
tests/test_experiments.py, which recomputes a committed cell of the scale-1 grid.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from tiny_run import TINY

from capo_tutorial.checkpoint import latest_checkpoint
from capo_tutorial.cli import main
from capo_tutorial.components import build_components
from capo_tutorial.config import profile_config
from capo_tutorial.logprobs import concatenated_logps
from capo_tutorial.reference import Reference, precompute_reference_logps
from capo_tutorial.training import TrainingDivergedError, train


def tiny_config(tmp_path: Path, **changes):
    return profile_config("smoke", output_dir=str(tmp_path / "run"), **{**TINY, **changes})


def cli(*arguments: str, **environment: str) -> list[str]:
    return [sys.executable, "-m", "capo_tutorial.cli", *arguments]


def flags(config_changes: dict) -> list[str]:
    out = []
    for key, value in config_changes.items():
        text = json.dumps(value) if isinstance(value, (list, dict, bool)) else str(value)
        out += ["--" + key.replace("_", "-"), text]
    return out


def test_train_writes_history_evaluation_and_checkpoint(tmp_path):
    result = train(tiny_config(tmp_path, loss="capo", loss_params={"gamma": 1.0, "confidence": "reference"}))
    run = Path(result.output_dir)
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    stages = {row["stage"] for row in history}
    assert stages == {"sft", "preference"}
    preference = [row for row in history if row["stage"] == "preference"]
    for name in ("loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins"):
        assert name in preference[-1]
    assert preference[-1]["step"] == 16 and preference[-1]["weights/mean"] == pytest.approx(1.0, abs=1e-5)
    evaluation = pd.read_csv(run / "evaluation.csv", index_col="language")
    assert evaluation.loc["all", "n"] == 48
    assert set(evaluation.index) == {"en", "ru", "all"}
    predictions = pd.read_csv(run / "predictions.csv")
    assert len(predictions) == 48 and predictions.pair_id.is_unique
    checkpoint = latest_checkpoint(run)
    assert checkpoint.name == "checkpoint-000028"
    assert {p.name for p in checkpoint.iterdir()} >= {"model.safetensors", "optimizer.pt", "state.json"}
    assert (run / "reference" / "model.safetensors").exists()


# Runs `capo train` in a child that SIGKILLs itself when asked to write the checkpoint at step KILL_AT:
# the kill lands at a known point (no race with a poll), after history rows the last checkpoint lacks.
KILL_ON_CHECKPOINT = """
import os, signal, sys
import capo_tutorial.training as training
from capo_tutorial.cli import main

kill_at, save = int(sys.argv[1]), training.save_checkpoint

def save_or_die(output_dir, *, step, **kwargs):
    if step >= kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    return save(output_dir, step=step, **kwargs)

training.save_checkpoint = save_or_die
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.slow
def test_resume_after_kill_ends_like_an_uninterrupted_run(tmp_path):
    """SIGKILL mid-run, resume: the same evaluation and history as a run never interrupted."""
    changes = {**TINY, "max_steps": 40, "save_every": 10, "log_every": 5}
    uninterrupted, interrupted = tmp_path / "uninterrupted", tmp_path / "interrupted"
    arguments = ["train", "--profile", "smoke", *flags(changes)]
    assert main([*arguments, "--output-dir", str(uninterrupted)]) == 0

    arguments += ["--output-dir", str(interrupted)]
    kill_at = TINY["sft_steps"] + 30  # global step: the SFT warm-up's steps, then 30 preference steps
    killed = subprocess.run([sys.executable, "-c", KILL_ON_CHECKPOINT, str(kill_at), *arguments])
    assert killed.returncode == -signal.SIGKILL
    assert not (interrupted / "evaluation.csv").exists()
    assert latest_checkpoint(interrupted).name == f"checkpoint-{kill_at - 10:06d}"
    written = pd.read_json(interrupted / "history.jsonl", lines=True)
    assert written[written.stage == "preference"].step.max() == 30, "rows past the checkpoint, to drop"

    assert main([*arguments, "--resume", "true"]) == 0
    expected = pd.read_csv(uninterrupted / "evaluation.csv", index_col="language")
    actual = pd.read_csv(interrupted / "evaluation.csv", index_col="language")
    pd.testing.assert_frame_equal(actual, expected, rtol=1e-5, atol=1e-6)
    history = pd.read_json(interrupted / "history.jsonl", lines=True)
    assert history.groupby(["stage", "step"]).size().max() == 1, "duplicated history rows after the resume"
    assert history[history.stage == "preference"].step.max() == 40
    pd.testing.assert_frame_equal(
        history, pd.read_json(uninterrupted / "history.jsonl", lines=True), rtol=1e-5, atol=1e-6
    )


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_checkpoint(tmp_path):
    config = tiny_config(
        tmp_path, sft_steps=0, max_steps=200, learning_rate=1e4, save_every=1, max_grad_norm=0
    )
    with pytest.raises(
        TrainingDivergedError,
        match=r"(loss|gradient norm) became (nan|inf) at step \d+; the last good checkpoint",
    ):
        train(config)
    checkpoint = latest_checkpoint(config.output_dir)
    assert checkpoint is not None
    weights = load_file(str(checkpoint / "model.safetensors"))
    assert all(bool(torch.isfinite(w).all()) for w in weights.values())
    assert not list(Path(config.output_dir).glob(".checkpoint-*.tmp"))


@pytest.mark.slow
def test_two_processes_train_data_parallel(tmp_path):
    output = tmp_path / "ddp"
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "-m",
        "capo_tutorial.cli",
        "train",
        "--profile",
        "smoke",
        *flags(TINY),
        "--output-dir",
        str(output),
    ]
    # Two processes on the CPU (gloo) on any machine: with a single GPU visible, both would claim it.
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    completed = subprocess.run(command, env=environment, capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr[-3000:]
    history = pd.read_json(output / "history.jsonl", lines=True)
    assert (history.num_processes.dropna() == 2).all()
    evaluation = pd.read_csv(output / "evaluation.csv", index_col="language")
    assert evaluation.loc["all", "n"] == TINY["testbed_eval"], "evaluation must gather every pair once"
    predictions = pd.read_csv(output / "predictions.csv")
    assert predictions.pair_id.is_unique


def test_reference_modes_give_the_same_log_probs(tmp_path):
    config = tiny_config(tmp_path, lora_r=4, lora_alpha=8)
    components = build_components(config)
    batch = components.collator([components.eval_dataset[i] for i in range(6)])
    # A fresh adapter is a no-op: the policy is still the reference when the three are built.
    adapter = Reference("adapter", components.model)
    copy = Reference("copy", components.model)
    with_columns = precompute_reference_logps(
        components.model, components.eval_dataset.select(range(6)), components.collator
    )
    with torch.no_grad():  # now train the adapter off zero: the policy moves, the reference must not
        for name, parameter in components.model.named_parameters():
            if "lora_B" in name:
                parameter.add_(0.1)
    policy = concatenated_logps(components.model, batch)
    expected = adapter.logps(batch)
    assert not torch.allclose(policy.chosen_logps, expected[0], atol=1e-3)
    precomputed = Reference("precomputed", components.model).logps(components.collator(list(with_columns)))
    for other in (copy.logps(batch), precomputed):
        torch.testing.assert_close(other[0], expected[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(other[1], expected[1], atol=1e-5, rtol=1e-5)


def test_precomputed_reference_needs_its_columns(tmp_path):
    components = build_components(tiny_config(tmp_path))
    batch = components.collator([components.eval_dataset[i] for i in range(2)])
    with pytest.raises(KeyError, match="precompute_reference_logps"):
        Reference("precomputed", components.model).logps(batch)
    with pytest.raises(ValueError, match="needs a LoRA"):
        Reference("adapter", components.model)


def test_a_second_run_reuses_the_cached_warm_up_and_gets_the_same_result(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CAPO_CACHE", str(tmp_path / "cache"))
    first = train(tiny_config(tmp_path / "a", sft_cache=True))
    second = train(tiny_config(tmp_path / "b", sft_cache=True))
    assert "reusing the SFT warm-up" in capsys.readouterr().out
    assert "sft" not in second.seconds
    assert len(list((tmp_path / "cache" / "sft").glob("*.safetensors"))) == 1
    assert len(list((tmp_path / "cache" / "reference-logps").glob("*.safetensors"))) == 2  # train + eval
    pd.testing.assert_frame_equal(first.evaluation, second.evaluation)
    other_seed = train(tiny_config(tmp_path / "c", sft_cache=True, seed=1))
    assert "sft" in other_seed.seconds, "another seed is another warm-up"


def test_a_loaded_warm_up_gives_the_same_reference_log_probs_under_mixed_precision(tmp_path, monkeypatch):
    """The precomputed reference runs under the run's autocast whether the warm-up was trained in this
    process (its forward then carries Accelerate's autocast) or loaded (a cache hit, a resumed run).
    bf16 autocast on the CPU stands in for a GPU's; without it the two runs' log-probs differ."""
    monkeypatch.setenv("CAPO_CACHE", str(tmp_path / "cache"))
    first = train(tiny_config(tmp_path / "a", sft_cache=True, precision="bf16"))
    shutil.rmtree(tmp_path / "cache" / "reference-logps")  # the next run loads the warm-up, not these
    second = train(tiny_config(tmp_path / "b", sft_cache=True, precision="bf16"))
    assert "sft" not in second.seconds

    def preference_losses(result) -> list[float]:
        return result.history.query("stage == 'preference'").loss.dropna().tolist()

    assert preference_losses(first) == preference_losses(second)
    pd.testing.assert_frame_equal(first.evaluation, second.evaluation)


@pytest.mark.slow
def test_two_runs_that_need_one_warm_up_at_once_make_it_once(tmp_path):
    """Two processes start the same cached warm-up together: one makes it, the other waits and reads it."""
    arguments = ["train", "--profile", "smoke", *flags({**TINY, "sft_cache": True, "sft_steps": 60})]
    environment = {**os.environ, "CAPO_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    children = [
        subprocess.Popen(
            cli(*arguments, "--output-dir", str(tmp_path / name)),
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for name in ("a", "b")
    ]
    outputs = [child.communicate()[0] for child in children]
    assert [child.returncode for child in children] == [0, 0], outputs
    assert sum("reusing the SFT warm-up" in output for output in outputs) == 1, outputs
    assert sum("[sft] step 60/60" in output for output in outputs) == 1, outputs
    evaluations = [pd.read_csv(tmp_path / name / "evaluation.csv") for name in ("a", "b")]
    pd.testing.assert_frame_equal(*evaluations)
