"""Build what a run needs from its RunConfig: data, tokenizer, model (+ LoRA), batching.

``build_components(config)`` gives ``Components`` (model, tokenizer, train and eval data sets,
collator, sampler, and the key of the SFT warm-up's cache); after the warm-up,
``capo_tutorial.reference.freeze_reference`` adds the reference model to it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import datasets
import torch
from torch import nn

from capo_tutorial.config import RunConfig
from capo_tutorial.data import (
    LengthGroupedBatchSampler,
    PreferenceCollator,
    TokenizationReport,
    load_preferences,
    pair_lengths,
    tokenize_preferences,
)
from capo_tutorial.gguf import gemma3_270m
from capo_tutorial.hub_data import HUB_LAYOUTS
from capo_tutorial.models import (
    apply_lora,
    enable_gradient_checkpointing,
    load_pretrained,
    tiny_model_and_tokenizer,
)
from capo_tutorial.reference import Reference
from capo_tutorial.testbed import DEFAULT_LANGUAGES, make_testbed, tiered_noise
from capo_tutorial.warmup import warmup_key

__all__ = [
    "Components",
    "build_components",
    "load_run_data",
]


@dataclass
class Components:
    """The objects a run trains and evaluates with (built by :func:`build_components`)."""

    model: nn.Module
    tokenizer: Any
    train_dataset: datasets.Dataset
    eval_dataset: datasets.Dataset
    collator: PreferenceCollator
    train_sampler: LengthGroupedBatchSampler
    reports: dict[str, TokenizationReport] = field(default_factory=dict)
    reference: Reference | None = None
    warmup_key: str = ""  # content hash of what the SFT warm-up starts from (see reference_weights_path)
    # the training pairs a filter removed before training (audit.drop_suspect_pairs)
    dropped_pairs: datasets.Dataset | None = None


def _testbed_noise(config: RunConfig) -> float | dict[str, float]:
    """The testbed's flip rate: one for every language, or by resource tier averaging config.noise."""
    if config.noise_pattern != "by-tier":
        return config.noise
    return tiered_noise(config.languages or DEFAULT_LANGUAGES, config.noise)


def load_run_data(config: RunConfig, split: str | None = None) -> tuple[datasets.Dataset, datasets.Dataset]:
    """(train, eval) preference data sets of the run, as records (not yet tokenized)."""
    eval_split = split or config.eval_split
    if config.data == "testbed":
        testbed = make_testbed(
            config.languages or None,
            n_train=config.testbed_train,
            n_validation=config.testbed_eval,
            n_test=config.testbed_eval,
            noise=_testbed_noise(config),
            seed=config.seed,
            systematic=tuple(config.systematic_noise),
            noise_pattern="uniform" if config.noise_pattern == "by-tier" else config.noise_pattern,
        )
        train, evaluation = testbed[config.train_split], testbed[eval_split]
        return _subset(train, config.max_train_pairs, config.seed), _subset(
            evaluation, config.max_eval_pairs, config.seed
        )
    train = _load_source(
        config.data, config.train_split, config.data_config, config.max_train_pairs, config.seed
    )
    evaluation = _load_source(
        config.eval_data or config.data,
        eval_split,
        config.eval_data_configs or config.data_config,
        config.max_eval_pairs,
        config.seed,
    )
    return train, evaluation


def _load_source(source: str, split: str, configs, limit: int | None, seed: int) -> datasets.Dataset:
    """A hub data set (read with its HUB_LAYOUTS entry) or a file: ``limit`` pairs drawn at random
    before validation, so that a subset of a large set validates only the subset."""
    layout = HUB_LAYOUTS.get(source, {})
    return load_preferences(source, split=split, config=configs or None, limit=limit, seed=seed, **layout)


def _subset(dataset: datasets.Dataset, limit: int | None, seed: int) -> datasets.Dataset:
    if limit is None or len(dataset) <= limit:
        return dataset
    return dataset.shuffle(seed=seed).select(range(limit))


def _model_and_tokenizer(config: RunConfig, train: datasets.Dataset) -> tuple[nn.Module, Any]:
    if config.model == "tiny":
        texts = [text for column in ("prompt", "chosen", "rejected") for text in train[column][:]]
        return tiny_model_and_tokenizer(
            texts,
            seed=config.seed,
            vocab_size=config.tiny_vocab_size,
            max_position_embeddings=max(config.max_length, 64),
            hidden_size=config.tiny_hidden_size,
            num_layers=config.tiny_layers,
            intermediate_size=4 * config.tiny_hidden_size,
        )
    if config.model == "gemma3-270m":
        return gemma3_270m(dtype=torch.float32)
    return load_pretrained(config.model, gguf_file=config.gguf_file, dtype=torch.float32)


def build_components(config: RunConfig) -> Components:
    """Data, tokenizer, model (with LoRA when lora_r > 0), tokenized splits, collator and sampler."""
    train_records, eval_records = load_run_data(config)
    model, tokenizer = _model_and_tokenizer(config, train_records)
    if config.lora_r:
        model = apply_lora(
            model, r=config.lora_r, alpha=config.lora_alpha, dropout=config.lora_dropout, seed=config.seed
        )
    if config.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    train, train_report = tokenize_preferences(
        train_records, tokenizer, max_length=config.max_length, return_report=True
    )
    evaluation, eval_report = tokenize_preferences(
        eval_records, tokenizer, max_length=config.max_length, return_report=True
    )
    sampler = LengthGroupedBatchSampler(pair_lengths(train), config.batch_size, seed=config.seed)
    return Components(
        warmup_key=warmup_key(config, model, train),
        model=model,
        tokenizer=tokenizer,
        train_dataset=train,
        eval_dataset=evaluation,
        # Left padding ends every row at the last column, so the completions share the final columns
        # and the LM head runs on ~max completion length positions instead of ~max row length.
        collator=PreferenceCollator(tokenizer, padding_side="left"),
        train_sampler=sampler,
        reports={"train": train_report, "eval": eval_report},
    )
