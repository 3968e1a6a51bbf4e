"""The SFT warm-up: its training step, and the content-addressed cache of its result.

Before preference training, a run may fine-tune the policy on the chosen responses for
``RunConfig.sft_steps`` steps (:func:`sft_step` is one micro-batch of it); the warmed-up weights then
become the reference model (``capo_tutorial.reference.freeze_reference``). Every method of a grid
trained from the same settings, data and initial weights starts from the same warm-up, so the result
is cached under a hash of exactly those (:func:`warmup_key`): a second run finds
:func:`reference_weights_path` and skips the warm-up.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import datasets
import numpy as np
import pyarrow.compute as pc
from torch import Tensor, nn

from capo_tutorial._version import __version__
from capo_tutorial.config import RunConfig
from capo_tutorial.logprobs import sequence_logps
from capo_tutorial.models import cache_root

if TYPE_CHECKING:
    from capo_tutorial.components import Components

__all__ = ["SFT_FIELDS", "hash_tokens", "reference_weights_path", "sft_step", "warmup_key"]

_SFT_CACHE_FORMAT = 3  # bump when the SFT stage's computation changes (2: left padding, 3: fused AdamW)

# Fields that decide what the SFT warm-up produces: equal values give identical warmed-up weights.
SFT_FIELDS = (
    "model",
    "gguf_file",
    "tiny_hidden_size",
    "tiny_layers",
    "tiny_vocab_size",
    "data",
    "data_config",
    "train_split",
    "max_train_pairs",
    "languages",
    "testbed_train",
    "testbed_eval",
    "noise",
    "systematic_noise",
    "max_length",
    "sft_steps",
    "sft_learning_rate",
    "batch_size",
    "gradient_accumulation_steps",
    "lr_scheduler",
    "warmup_ratio",
    "weight_decay",
    "max_grad_norm",
    "precision",
    "lora_r",
    "lora_alpha",
    "lora_dropout",
    "seed",
)


def sft_step(model, batch, config, components, accelerator) -> dict[str, Tensor]:
    """Token-mean NLL of the chosen responses (the first B rows of the 2B batch); the rejected half is
    not run. Same signature as the preference step, so one stage loop runs both."""
    pairs = batch["input_ids"].shape[0] // 2
    with accelerator.autocast():
        logps, lengths = sequence_logps(
            model,
            batch["input_ids"][:pairs],
            batch["attention_mask"][:pairs],
            batch["completion_mask"][:pairs],
        )
    return {"loss": -logps.sum() / lengths.sum().clamp_min(1)}


def warmup_key(config: RunConfig, model: nn.Module, train: datasets.Dataset) -> str:
    """A hash of everything the SFT warm-up's result depends on: its settings, the exact training
    tokens, and the initial weights (so a change to the testbed, tokenizer or model code misses)."""
    # Data-parallel processes each see batch_size pairs per step: the world size changes the result.
    world_size = os.environ.get("WORLD_SIZE", "1")
    digest = hashlib.sha256(f"{__version__}:{_SFT_CACHE_FORMAT}:{world_size}".encode())
    digest.update(json.dumps({name: getattr(config, name) for name in SFT_FIELDS}, sort_keys=True).encode())
    hash_tokens(digest, train)
    for parameter in model.parameters():
        digest.update(parameter.detach().cpu().float().numpy().tobytes())
    return digest.hexdigest()[:24]


def hash_tokens(digest, dataset: datasets.Dataset) -> None:
    """Feed a tokenized data set's exact token ids (and row boundaries) to a hashlib digest."""
    for column in ("prompt_input_ids", "chosen_input_ids", "rejected_input_ids"):
        table = dataset.with_format("arrow")[column]
        digest.update(np.asarray(table.combine_chunks().flatten()).tobytes())
        digest.update(np.asarray(pc.list_value_length(table)).tobytes())


def reference_weights_path(config: RunConfig, components: Components) -> Path:
    """Where the warmed-up (reference) weights live: the shared SFT cache, or the run's own folder."""
    if not config.sft_cache:
        return Path(config.output_dir) / "reference" / "model.safetensors"
    return cache_root() / "sft" / f"{components.warmup_key}.safetensors"
