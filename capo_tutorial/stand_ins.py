"""Local stand-ins for the gpu profile's hub model, for tests and benchmarks that cannot download it.

:func:`save_qwen2_stand_in` writes a folder that :func:`capo_tutorial.models.load_pretrained` reads
like ``Qwen/Qwen2.5-0.5B-Instruct``: a Qwen2 decoder of any width built from a config (random
weights), and a byte-level BPE tokenizer trained on the given texts with Qwen's chat format
(``<|im_start|>role ... <|im_end|>`` turns and a default system prompt). At the real width it has
the real model's activation sizes; at a small width it runs the gpu profile's code on a CPU.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from capo_tutorial.models import train_tokenizer

__all__ = ["QWEN_CHAT_TEMPLATE", "save_qwen2_stand_in"]

# Qwen2.5's turn format: a default system prompt when the conversation has none.
QWEN_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def save_qwen2_stand_in(
    folder: str | Path,
    texts: Iterable[str],
    *,
    hidden_size: int = 64,
    intermediate_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    vocab_size: int | None = None,
    tokenizer_vocab_size: int = 512,
    max_position_embeddings: int = 2048,
    seed: int = 0,
) -> Path:
    """Write a random-init Qwen2 and a Qwen-style tokenizer to ``folder``; returns the folder.

    Args:
        texts: the corpus the tokenizer is trained on.
        vocab_size: rows of the embedding and LM head (default: the tokenizer's size); e.g. 151936
            for the real model's LM head, whatever the tokenizer's size.
    """
    folder = Path(folder)
    tokenizer = train_tokenizer(list(texts), vocab_size=tokenizer_vocab_size, add_bos=False)
    tokenizer.add_special_tokens(
        {"additional_special_tokens": ["<|im_start|>", "<|im_end|>"], "pad_token": "<|endoftext|>"}
    )
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.chat_template = QWEN_CHAT_TEMPLATE
    tokenizer.model_max_length = max_position_embeddings
    config = Qwen2Config(
        vocab_size=max(vocab_size or 0, len(tokenizer)),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
