"""Build what a run needs from its RunConfig: data, tokenizer, model (+ LoRA), batching, reference.

- ``build_components(config)`` gives ``Components`` (model, tokenizer, train and eval data sets,
  collator, sampler);
- ``freeze_reference(...)``, after the SFT warm-up, turns the policy into pi_ref (a copy, an adapter
  or precomputed log-probs), saved once so that a resumed run finds it.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import torch
from safetensors.torch import load_file, save_file
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
from capo_tutorial.hub_data import HUB_LAYOUTS
from capo_tutorial.models import (
    apply_lora,
    cache_root,
    enable_gradient_checkpointing,
    gemma3_270m,
    load_pretrained,
    tiny_model_and_tokenizer,
)
from capo_tutorial.reference import REFERENCE_COLUMNS, Reference, precompute_reference_logps
from capo_tutorial.testbed import make_testbed
from capo_tutorial.warmup import hash_tokens, reference_weights_path, warmup_key

__all__ = [
    "Components",
    "build_components",
    "freeze_reference",
    "load_run_data",
    "reference_mode",
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


def reference_mode(config: RunConfig) -> str:
    """The reference mode a run uses ("auto": the adapter with LoRA, else precomputed log-probs)."""
    if config.reference != "auto":
        return config.reference
    return "adapter" if config.lora_r else "precomputed"


def load_run_data(config: RunConfig, split: str | None = None) -> tuple[datasets.Dataset, datasets.Dataset]:
    """(train, eval) preference data sets of the run, as records (not yet tokenized)."""
    eval_split = split or config.eval_split
    if config.data == "testbed":
        testbed = make_testbed(
            config.languages or None,
            n_train=config.testbed_train,
            n_validation=config.testbed_eval,
            n_test=config.testbed_eval,
            noise=config.noise,
            seed=config.seed,
            systematic=tuple(config.systematic_noise),
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


def freeze_reference(config: RunConfig, components: Components, accelerator, *, load: bool) -> None:
    """Make the warmed-up policy the reference model, and start preference training from it.

    With LoRA, the warm-up's adapter is merged into the base weights and a fresh adapter is
    added, so that "adapter" mode (adapter disabled) gives the warmed-up model. After an SFT
    warm-up the weights are saved to :func:`reference_weights_path`; with ``load=True`` (a cache
    hit, or a resumed run) they are loaded from there instead.
    """
    model = components.model
    if config.lora_r:
        model = model.merge_and_unload()
    path = reference_weights_path(config, components)
    if config.sft_steps and load:
        _load_full_state(model, path)
    elif config.sft_steps and accelerator.is_main_process:
        _save_full_state(model, path)
    accelerator.wait_for_everyone()
    if config.lora_r:
        model = apply_lora(
            model,
            r=config.lora_r,
            alpha=config.lora_alpha,
            dropout=config.lora_dropout,
            seed=config.seed,
            verbose=False,
        )
    if config.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    components.model = model
    mode = reference_mode(config)
    components.reference = Reference(mode, model)
    if mode == "precomputed":
        _precompute(config, components, accelerator.device)


def _save_full_state(model: nn.Module, path: Path) -> None:
    """Every weight (tied weights once) to safetensors, atomically: temp file, then rename."""
    seen, state = set(), {}
    for name, tensor in model.state_dict().items():
        if tensor.data_ptr() not in seen:  # safetensors refuses two names for one memory
            seen.add(tensor.data_ptr())
            state[name] = tensor.detach().cpu().contiguous()
    _save_atomically(state, path)


def _save_atomically(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """safetensors to a temporary name, then a rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file(tensors, str(temporary))
    os.replace(temporary, path)


def _load_full_state(model: nn.Module, path: Path) -> None:
    if not path.exists():
        raise FileNotFoundError(
            f"the warmed-up reference weights {path} are missing: rerun with resume=False"
        )
    missing, unexpected = model.load_state_dict(load_file(str(path)), strict=False)
    tied = {name for name in missing if "lm_head" in name or "embed" in name}
    if unexpected or set(missing) - tied:
        raise ValueError(f"{path} does not fit the model: missing {missing[:3]}, unexpected {unexpected[:3]}")


def _precompute(config: RunConfig, components: Components, device: torch.device) -> None:
    """Reference log-probs of the train and eval pairs; with the SFT cache on, they are cached too
    (every method trained from the same warm-up shares them)."""
    model = components.model.to(device)
    for name in ("train_dataset", "eval_dataset"):
        dataset = getattr(components, name)
        digest = hashlib.sha256(components.warmup_key.encode())
        hash_tokens(digest, dataset)
        cached = cache_root() / "reference-logps" / f"{digest.hexdigest()[:24]}.safetensors"
        if config.sft_cache and cached.exists():
            logps = load_file(str(cached))
            dataset = dataset.add_column(REFERENCE_COLUMNS[0], logps["chosen"].tolist())
            dataset = dataset.add_column(REFERENCE_COLUMNS[1], logps["rejected"].tolist())
        else:
            dataset = precompute_reference_logps(
                model, dataset, components.collator, batch_size=config.eval_batch_size, device=device
            )
            if config.sft_cache:
                _save_atomically(
                    {c.split("_")[1]: torch.tensor(dataset[c][:]) for c in REFERENCE_COLUMNS}, cached
                )
        setattr(components, name, dataset)
