"""The training loop: learning, resume after a kill, NaN guard, two processes, reference modes."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from capo_tutorial.checkpoint import latest_checkpoint
from capo_tutorial.components import build_components
from capo_tutorial.config import profile_config
from capo_tutorial.logprobs import concatenated_logps
from capo_tutorial.reference import Reference, precompute_reference_logps
from capo_tutorial.training import TrainingDivergedError, train

# A run small enough for a unit test: 2 languages, a 1-layer model, a few steps of each stage.
TINY = dict(
    languages=["en", "ru"],
    testbed_train=160,
    testbed_eval=48,
    max_length=48,
    batch_size=8,
    sft_steps=12,
    max_steps=16,
    tiny_hidden_size=32,
    tiny_layers=1,
    tiny_vocab_size=320,
    eval_batch_size=48,
    log_every=4,
    progress="lines",
    sft_cache=False,
)


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


@pytest.mark.slow
def test_smoke_training_raises_reward_accuracy(tmp_path):
    """DPO after an SFT warm-up ranks held-out pairs well above chance (the smoke profile's promise)."""
    config = tiny_config(
        tmp_path,
        languages=["en", "es", "ru"],
        testbed_train=900,
        testbed_eval=150,
        tiny_hidden_size=128,
        tiny_layers=2,
        tiny_vocab_size=600,
        sft_steps=500,
        max_steps=150,
        batch_size=16,
        learning_rate=1e-3,
        log_every=50,
    )
    result = train(config)
    accuracy = result.evaluation.loc["all", "accuracy"]
    assert accuracy > 0.65, result.evaluation


def test_resume_after_kill_ends_like_an_uninterrupted_run(tmp_path):
    changes = {**TINY, "max_steps": 150, "save_every": 10, "log_every": 10}
    uninterrupted = tmp_path / "uninterrupted"
    subprocess.run(
        cli("train", "--profile", "smoke", *flags(changes), "--output-dir", str(uninterrupted)), check=True
    )

    interrupted = tmp_path / "interrupted"
    process = subprocess.Popen(
        cli("train", "--profile", "smoke", *flags(changes), "--output-dir", str(interrupted))
    )
    deadline = time.time() + 120
    while time.time() < deadline:
        checkpoint = latest_checkpoint(interrupted)
        if checkpoint is not None and int(checkpoint.name.split("-")[1]) >= TINY["sft_steps"] + 20:
            break
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (interrupted / "evaluation.csv").exists(), "the run finished before it could be killed"
    killed_at = latest_checkpoint(interrupted).name

    subprocess.run(
        cli(
            "train",
            "--profile",
            "smoke",
            *flags(changes),
            "--output-dir",
            str(interrupted),
            "--resume",
            "true",
        ),
        check=True,
    )
    expected = pd.read_csv(uninterrupted / "evaluation.csv", index_col="language")
    actual = pd.read_csv(interrupted / "evaluation.csv", index_col="language")
    pd.testing.assert_frame_equal(actual, expected, rtol=1e-5, atol=1e-6)
    history = pd.read_json(interrupted / "history.jsonl", lines=True)
    assert history.groupby(["stage", "step"]).size().max() == 1, f"duplicated history rows after {killed_at}"
    assert history[history.stage == "preference"].step.max() == 150


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


def test_two_processes_train_data_parallel(tmp_path):
    output = tmp_path / "ddp"
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "-m", "capo_tutorial.cli", "train", "--profile", "smoke", *flags(TINY), "--output-dir", str(output),
    ]  # fmt: skip
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=600)
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
