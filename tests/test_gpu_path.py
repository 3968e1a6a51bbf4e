"""The gpu profile's code path, on a CPU: only the model and the data sources are swapped.

The model is a narrow Qwen2 with Qwen's chat format (``capo_tutorial.stand_ins``) instead of
Qwen2.5-0.5B-Instruct; the data are local folders in the hub's schemas (``capo_tutorial.hub_fixtures``)
instead of HelpSteer3 and M-RewardBench. Everything else is ``profile_config("gpu")``: LoRA, the
adapter reference, bf16 autocast, gradient accumulation, evaluation and checkpoints every 2 steps,
strength-weighted CAPO, resume. Also: fp16 overflow handling and the chunked LM head.
"""

from __future__ import annotations

import shutil

import pandas as pd
import pytest
import torch

from capo_tutorial import logprobs
from capo_tutorial.cli import main
from capo_tutorial.components import build_components
from capo_tutorial.config import profile_config
from capo_tutorial.hub_data import HUB_LAYOUTS
from capo_tutorial.hub_fixtures import (
    HELPSTEER3_ROWS,
    mrewardbench_rows,
    write_helpsteer3,
    write_hub_repository,
)
from capo_tutorial.plan import CARDS
from capo_tutorial.stand_ins import save_qwen2_stand_in
from capo_tutorial.training import MAX_CONSECUTIVE_OVERFLOWS, TrainingDivergedError, train

EVAL_CONFIGS = ["deu_Latn", "jpn_Jpan"]


def _texts(rows) -> list[str]:
    """Every string in the fixture rows (what the stand-in's tokenizer is trained on)."""
    out = []
    for row in rows:
        for value in row.values():
            if isinstance(value, str):
                out.append(value)
            elif isinstance(value, list):
                out += [turn["content"] for turn in value if isinstance(turn, dict) and "content" in turn]
    return out


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """(HelpSteer3 folder, M-RewardBench folder, model folder); M-RewardBench holds two bad rows."""
    root = tmp_path_factory.mktemp("gpu-path")
    helpsteer3 = write_helpsteer3(root / "HelpSteer3")
    bench = {config: mrewardbench_rows(config) for config in EVAL_CONFIGS}
    good = bench["deu_Latn"][0]
    bench["deu_Latn"] += [
        {**good, "id": 100, "chosen": ""},  # an empty translation
        {**good, "id": 101, "rejected": good["chosen"]},  # chosen == rejected
    ]
    m_rewardbench = write_hub_repository(
        root / "m-rewardbench",
        {(config, "test"): rows for config, rows in bench.items()},
        "parquet",
        file_name="{split}-00000-of-00001",
    )
    texts = _texts(HELPSTEER3_ROWS) + _texts(row for rows in bench.values() for row in rows)
    model = save_qwen2_stand_in(
        root / "qwen2", texts, hidden_size=32, intermediate_size=64, tokenizer_vocab_size=400
    )
    return helpsteer3, m_rewardbench, model


@pytest.fixture
def gpu_config(sources, tmp_path, monkeypatch):
    """profile_config("gpu") with the stand-ins for the hub model and data sets."""
    helpsteer3, m_rewardbench, model = sources
    monkeypatch.setitem(HUB_LAYOUTS, str(helpsteer3), HUB_LAYOUTS["nvidia/HelpSteer3"])
    monkeypatch.setitem(
        HUB_LAYOUTS, str(m_rewardbench), HUB_LAYOUTS["C4AI-Community/multilingual-reward-bench"]
    )

    def make(**changes):
        stand_ins = dict(
            model=str(model),
            data=str(helpsteer3),
            eval_data=str(m_rewardbench),
            eval_data_configs=EVAL_CONFIGS,
            precision="bf16",
            max_length=96,
            max_steps=4,
            batch_size=2,
            gradient_accumulation_steps=2,
            eval_batch_size=4,
            eval_every=2,
            save_every=2,
            log_every=1,
            progress="none",
            output_dir=str(tmp_path / "run"),
        )
        return profile_config("gpu", card=CARDS["T4"], **{**stand_ins, **changes})

    return make


def test_gpu_profile_data_go_through_the_chat_template(gpu_config):
    """Training and evaluation pairs are rendered with the model's chat template, bad rows skipped."""
    components = build_components(gpu_config())
    decode = components.tokenizer.decode
    for dataset in (components.train_dataset, components.eval_dataset):
        prompt = decode(dataset[0]["prompt_input_ids"])
        assert "<|im_start|>user" in prompt and prompt.endswith("<|im_start|>assistant\n")
    assert len(components.train_dataset) == 8  # 10 rows, 2 ties
    assert len(components.eval_dataset) == sum(len(mrewardbench_rows(c)) for c in EVAL_CONFIGS)
    assert {"response1", "response2", "individual_preference"}.isdisjoint(
        components.train_dataset.column_names
    )


@pytest.mark.parametrize("loss", ["dpo", "capo"])
def test_gpu_profile_trains_end_to_end(gpu_config, loss):
    """LoRA + adapter reference + bf16 autocast + accumulation + eval and save every 2 steps."""
    config = gpu_config(loss=loss)
    assert (config.lora_r, config.reference, config.sft_steps) == (16, "adapter", 0)
    result = train(config)
    history = result.history
    steps = history[history.stage == "preference"].dropna(subset=["loss"])
    assert list(steps.step) == [1, 2, 3, 4] and steps.loss.map(pd.notna).all()
    assert steps.skipped.sum() == 0  # bf16 has no loss scaler: nothing to skip
    assert history["eval_rewards/accuracies"].notna().sum() == 1  # step 2 (the end has its own)
    assert sorted(p.name for p in result.output_dir.glob("checkpoint-*")) == [
        "checkpoint-000002",
        "checkpoint-000004",
    ]
    assert set(result.predictions.language) == {"de", "ja"}
    if loss == "capo":  # strength (|overall_preference|) multiplies the weights: they differ in a batch
        assert (steps["weights/max"] > steps["weights/min"]).any()


def test_gpu_profile_resumes_where_it_stopped(gpu_config):
    """Drop the last checkpoint, resume from the one before: the same end as the full run."""
    full = train(gpu_config(loss="capo"))
    shutil.rmtree(full.output_dir / "checkpoint-000004")
    resumed = train(gpu_config(loss="capo", resume=True))
    pd.testing.assert_frame_equal(resumed.predictions, full.predictions, rtol=1e-4, atol=1e-5)


def test_capo_train_runs_the_gpu_profile_and_names_a_missing_model(gpu_config, capsys):
    config = gpu_config(max_steps=2)
    flags = ["train", "--profile", "gpu", "--model", config.model, "--data", config.data]
    flags += ["--eval-data", config.eval_data, "--eval-data-configs", '["deu_Latn"]', "--max-length", "96"]
    flags += ["--max-steps", "2", "--batch-size", "2", "--gradient-accumulation-steps", "2"]
    flags += ["--precision", "bf16", "--output-dir", config.output_dir, "--progress", "none"]
    assert main(flags) == 0
    assert "wrote" in capsys.readouterr().out
    missing = flags.copy()
    missing[missing.index(config.model)] = "/nonexistent/model"
    assert main(missing) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "/nonexistent/model" in error[0]


def _overflowing_gradients(monkeypatch, overflows: int) -> None:
    """fp16 loss scaling on the CPU, and gradients that are inf for the first ``overflows`` steps."""
    import capo_tutorial.training as training

    made = training.make_accelerator

    def accelerator_with_scaler(config):
        accelerator = made(config)
        accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
        return accelerator

    monkeypatch.setattr(training, "make_accelerator", accelerator_with_scaler)
    step = training._preference_step
    calls = {"n": 0}

    def poison(gradient):
        return torch.full_like(gradient, float("inf")) if calls["n"] <= overflows else gradient

    def poisoned_step(model, batch, *arguments):
        if calls["n"] == 0:  # one trainable weight's gradient becomes inf while calls["n"] <= overflows
            next(p for p in model.parameters() if p.requires_grad).register_hook(poison)
        calls["n"] += 1
        return step(model, batch, *arguments)

    monkeypatch.setattr(training, "_preference_step", poisoned_step)


def test_fp16_overflow_skips_the_step_and_counts_it(gpu_config, monkeypatch):
    """An inf gradient under loss scaling is a skipped step (counted), not divergence."""
    _overflowing_gradients(monkeypatch, overflows=3)
    config = gpu_config(precision="fp16", max_steps=6, gradient_accumulation_steps=1, eval_every=0)
    steps = train(config).history.query("stage == 'preference'").dropna(subset=["loss"])
    assert steps.skipped.sum() == 3 and list(steps.skipped[:3]) == [1, 1, 1]
    assert steps["grad_norm"].iloc[3:].map(lambda v: 0 < v < float("inf")).all()


def test_fp16_overflow_without_end_stops_with_a_message(gpu_config, monkeypatch):
    _overflowing_gradients(monkeypatch, overflows=10**6)
    config = gpu_config(
        precision="fp16", max_steps=MAX_CONSECUTIVE_OVERFLOWS + 2, gradient_accumulation_steps=1
    )
    with pytest.raises(TrainingDivergedError, match=f"overflowed {MAX_CONSECUTIVE_OVERFLOWS} steps in a row"):
        train(config)


def test_chunked_lm_head_gives_the_same_log_probs_and_gradients(sources, monkeypatch):
    """The LM head applied a few rows at a time (checkpointed) equals applying it at once."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(sources[2]))
    generator = torch.Generator().manual_seed(0)
    batch = {
        "input_ids": torch.randint(1, 300, (6, 20), generator=generator),
        "attention_mask": torch.ones(6, 20, dtype=torch.long),
        "completion_mask": torch.cat([torch.zeros(6, 8), torch.ones(6, 12)], dim=1).long(),
    }

    def run():
        model.zero_grad()
        out = logprobs.concatenated_logps(model, batch)
        (out.chosen_logps - 0.5 * out.rejected_logps).sum().backward()
        return out, torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    whole, whole_grads = run()
    vocabulary = model.get_output_embeddings().weight.shape[0]
    monkeypatch.setattr(logprobs, "LOGITS_CHUNK_ELEMENTS", 2 * 12 * vocabulary)  # two rows a chunk
    chunked, chunked_grads = run()
    for expected, actual in zip(whole, chunked):
        torch.testing.assert_close(actual, expected)
    torch.testing.assert_close(chunked_grads, whole_grads, atol=1e-6, rtol=1e-5)


def test_training_runs_in_training_mode_and_checkpoints_every_layer(gpu_config, monkeypatch):
    """A model from from_pretrained starts in eval mode, and evaluation leaves it there; training must
    switch it back, or gradient checkpointing (and dropout) silently do nothing. With checkpointing,
    each layer's MLP runs twice per training forward: once, and once more in the backward pass."""
    from transformers.models.qwen2 import modeling_qwen2

    calls = []
    forward = modeling_qwen2.Qwen2MLP.forward  # inside the checkpointed layer (which must stay unpatched)

    def recording_forward(mlp, *args, **kwargs):
        if torch.is_grad_enabled():  # a training forward, or its recomputation in the backward pass
            calls.append(mlp.training)
        return forward(mlp, *args, **kwargs)

    monkeypatch.setattr(modeling_qwen2.Qwen2MLP, "forward", recording_forward)
    counts = {}
    for checkpointing in (False, True):
        calls.clear()
        train(gpu_config(gradient_checkpointing=checkpointing, save_every=0))  # evaluates at step 2
        assert calls and all(calls), "a training forward ran in eval mode"
        counts[checkpointing] = len(calls)
    assert counts[True] == 2 * counts[False]
