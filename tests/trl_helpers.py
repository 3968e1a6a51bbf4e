"""Shared pieces of the TRL tests: TRL's version, a tiny offline model, tokenizer and preference data.

Nothing here downloads anything: the model and tokenizer are the package's tiny ones
(``capo_tutorial.models.tiny_model_and_tokenizer``), the tokenizer trained on the records below.
Used by test_trl_parity.py and test_trl_integration.py, which run in the main environment and in
each environment of ``.ci/trl_matrix.sh``.
"""

from __future__ import annotations

import importlib.metadata
import random
from pathlib import Path
from typing import Any

import torch
from packaging.version import Version

INSTALL_HINT = 'pip install "capo-tutorial[trl]"'


def installed_trl_version() -> Version | None:
    """The installed TRL's version, or None when TRL is not installed."""
    try:
        return Version(importlib.metadata.version("trl"))
    except importlib.metadata.PackageNotFoundError:
        return None


def preference_records(n: int = 12, seed: int = 0, with_strength: bool = False) -> list[dict[str, Any]]:
    """n records (prompt, chosen, rejected[, strength]) of sums written in digits: chosen is the right sum.

    Completions differ in length (1 to 3 digits) so that length-normalised losses see real lengths.
    """
    rng = random.Random(seed)
    records = []
    for index in range(n):
        a, b = rng.randint(0, 60), rng.randint(0, 60)
        wrong = a + b + rng.choice([-11, -1, 1, 10, 100])
        record = {"prompt": f"{a} + {b} =", "chosen": f" {a + b}", "rejected": f" {abs(wrong)}"}
        if with_strength:
            record["strength"] = [0.25, 1.0, 2.0][index % 3]
        records.append(record)
    return records


def tiny_model_and_tokenizer(seed: int = 0):
    """The package's tiny Llama (2 layers, hidden size 32, float32, eval mode) and a byte-level BPE
    tokenizer trained on the records' text: ``capo_tutorial.models.tiny_model_and_tokenizer``, sized down."""
    from capo_tutorial.models import tiny_model_and_tokenizer as build

    texts = [r["prompt"] + r["chosen"] + r["rejected"] for r in preference_records(200, seed=1)]
    model, tokenizer = build(
        texts,
        seed=seed,
        vocab_size=300,
        max_position_embeddings=64,
        hidden_size=32,
        intermediate_size=64,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
    )
    return model.float().eval(), tokenizer


def saved_tiny_model(folder: Path, seed: int = 0) -> tuple[Path, Any]:
    """Save a tiny model and its tokenizer to ``folder``; returns (folder, tokenizer).

    TRL loads its reference model from the policy's ``name_or_path`` when no ``ref_model`` is given, so
    the trainers in the tests load the policy from this folder too.
    """
    model, tokenizer = tiny_model_and_tokenizer(seed)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder, tokenizer


def load_model(folder: Path):
    """The model saved by :func:`saved_tiny_model`, in float32."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)


def cpu_config_kwargs(output_dir: Path, **overrides: Any) -> dict[str, Any]:
    """DPOConfig keywords for a deterministic CPU run.

    TRL's DPOConfig defaults to bf16, gradient checkpointing and lr 1e-6; each is set explicitly here.
    """
    kwargs: dict[str, Any] = dict(
        output_dir=str(output_dir),
        use_cpu=True,
        bf16=False,
        fp16=False,
        gradient_checkpointing=False,
        learning_rate=1e-3,
        lr_scheduler_type="constant",
        warmup_steps=0,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=4,
        gradient_accumulation_steps=1,
        max_steps=5,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
        data_seed=0,
        max_length=64,
        beta=0.1,
    )
    kwargs.update(overrides)
    return kwargs
