"""Completion log-probs: one 2B forward equals a naive per-example loop, whatever the padding."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from capo_tutorial.logprobs import concatenated_logps, sequence_logps, token_logps

VOCAB = 50
PAD = 0


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=PAD,
    )
    return LlamaForCausalLM(config).eval()


def make_pairs(batch_size=3, seed=0):
    """B pairs of (prompt, chosen, rejected) token lists of different lengths (ids >= 1, 0 is pad)."""
    generator = torch.Generator().manual_seed(seed)

    def tokens(low, high):
        length = int(torch.randint(low, high, (1,), generator=generator))
        return torch.randint(1, VOCAB, (length,), generator=generator).tolist()

    return [(tokens(2, 7), tokens(1, 6), tokens(1, 6)) for _ in range(batch_size)]


def collate(pairs, padding_side="right", extra_padding=0, pad_id=PAD):
    """A 2B batch: chosen rows then rejected rows (written here independently of data.py)."""
    rows = [(p, c) for p, c, _ in pairs] + [(p, r) for p, _, r in pairs]
    width = max(len(p) + len(c) for p, c in rows) + extra_padding
    input_ids, attention, completion = [], [], []
    for prompt, answer in rows:
        ids = prompt + answer
        pad = width - len(ids)
        masks = ([1] * len(ids), [0] * len(prompt) + [1] * len(answer))
        if padding_side == "right":
            input_ids.append(ids + [pad_id] * pad)
            attention.append(masks[0] + [0] * pad)
            completion.append(masks[1] + [0] * pad)
        else:
            input_ids.append([pad_id] * pad + ids)
            attention.append([0] * pad + masks[0])
            completion.append([0] * pad + masks[1])
    return {
        "input_ids": torch.tensor(input_ids),
        "attention_mask": torch.tensor(attention),
        "completion_mask": torch.tensor(completion),
    }


def naive_logp(model, prompt, answer):
    """Sum of log p(answer_t | prompt, answer_<t) from an unpadded forward pass of one sequence."""
    ids = torch.tensor([prompt + answer])
    with torch.no_grad():
        log_probs = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
    return sum(log_probs[len(prompt) + i - 1, token].item() for i, token in enumerate(answer))


def test_equals_naive_per_example_loop(model):
    pairs = make_pairs(4, seed=1)
    with torch.no_grad():
        out = concatenated_logps(model, collate(pairs))
    for i, (prompt, chosen, rejected) in enumerate(pairs):
        assert out.chosen_logps[i].item() == pytest.approx(naive_logp(model, prompt, chosen), abs=1e-4)
        assert out.rejected_logps[i].item() == pytest.approx(naive_logp(model, prompt, rejected), abs=1e-4)
        assert out.chosen_lengths[i].item() == len(chosen)
        assert out.rejected_lengths[i].item() == len(rejected)


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_padding_changes_nothing(model, padding_side):
    pairs = make_pairs(3, seed=2)
    with torch.no_grad():
        reference = concatenated_logps(model, collate(pairs, "right"))
        padded = concatenated_logps(model, collate(pairs, padding_side, extra_padding=5, pad_id=7))
    for expected, actual in zip(reference, padded):
        torch.testing.assert_close(actual, expected, atol=1e-4, rtol=1e-5)


def test_prompt_tokens_are_not_summed(model):
    """Moving the completion boundary right drops exactly the log-prob of the token it passes."""
    pairs = make_pairs(2, seed=3)
    batch = collate(pairs)
    with torch.no_grad():
        full, full_lengths = sequence_logps(model, **batch)
        first_completion = batch["completion_mask"].argmax(dim=1)
        shorter = batch["completion_mask"].clone()
        shorter[torch.arange(4), first_completion] = 0
        fewer, fewer_lengths = sequence_logps(model, batch["input_ids"], batch["attention_mask"], shorter)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    rows = torch.arange(4)
    log_probs = torch.log_softmax(logits, -1)
    dropped = log_probs[rows, first_completion - 1, batch["input_ids"][rows, first_completion]]
    torch.testing.assert_close(full - fewer, dropped, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(full_lengths - fewer_lengths, torch.ones(4))


def test_gradients_flow_to_the_model(model):
    batch = collate(make_pairs(2, seed=4))
    out = concatenated_logps(model, batch)
    (out.chosen_logps - out.rejected_logps).sum().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    model.zero_grad()


def test_token_logps_chunking_matches_log_softmax():
    logits = torch.randn(5, 7, 11, dtype=torch.bfloat16)
    targets = torch.randint(0, 11, (5, 7))
    expected = torch.log_softmax(logits.float(), -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(token_logps(logits, targets, rows_per_chunk=2), expected)


def test_odd_row_count_is_rejected(model):
    batch = collate(make_pairs(2, seed=5))
    odd = {key: value[:3] for key, value in batch.items()}
    with pytest.raises(ValueError, match="2B rows"):
        concatenated_logps(model, odd)
