"""CAPO's weights are normalised over the whole optimizer step, not over each micro-batch."""

from __future__ import annotations

import torch

from capo_tutorial.config import RunConfig
from capo_tutorial.losses import preference_loss
from capo_tutorial.training import _StepWeights, normalises_over_step

PAIRS, MICRO = 16, 4


def _inputs(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    reference = -torch.rand(2, PAIRS, generator=generator, dtype=torch.float64) * 40
    lengths = torch.randint(5, 30, (2, PAIRS), generator=generator).double()
    # Suspect pairs (reference prefers the rejected answer) gathered in the first micro-batch.
    reference[1, :MICRO] = reference[0, :MICRO] + 10
    policy = torch.nn.Parameter(
        reference + 0.1 * torch.randn(2, PAIRS, generator=generator, dtype=torch.float64)
    )
    return policy, reference, lengths


def _loss(policy, reference, lengths, rows, normalize):
    return preference_loss(
        "capo",
        policy[0, rows],
        policy[1, rows],
        reference[0, rows],
        reference[1, rows],
        chosen_lengths=lengths[0, rows],
        rejected_lengths=lengths[1, rows],
        normalize=normalize,
    )


def test_four_micro_batches_of_four_give_the_gradient_of_one_batch_of_sixteen():
    policy, reference, lengths = _inputs()
    _loss(policy, reference, lengths, slice(None), normalize=True).losses.mean().backward()
    whole = policy.grad.clone()

    policy.grad = None
    step = _StepWeights()
    for start in range(0, PAIRS, MICRO):
        output = _loss(policy, reference, lengths, slice(start, start + MICRO), normalize=False)
        (output.losses.mean() / (PAIRS // MICRO)).backward()  # as Accelerate scales an accumulated loss
        step.add({"weights/sum": output.weights.sum(), "weights/pairs": output.weights.new_tensor(MICRO)})
    step.normalise([policy], _OneProcess())
    torch.testing.assert_close(policy.grad, whole)

    policy.grad = None  # per-micro-batch normalisation is not the same: the suspect batch counts fully
    for start in range(0, PAIRS, MICRO):
        rows = slice(start, start + MICRO)
        (_loss(policy, reference, lengths, rows, normalize=True).losses.mean() / (PAIRS // MICRO)).backward()
    assert not torch.allclose(policy.grad, whole)


class _OneProcess:
    num_processes = 1


def test_step_normalisation_applies_only_when_a_step_spans_micro_batches():
    config = RunConfig(loss="capo", gradient_accumulation_steps=4)
    assert normalises_over_step(config, {}, processes=1)
    assert normalises_over_step(config.replace(gradient_accumulation_steps=1), {}, processes=2)
    assert not normalises_over_step(config.replace(gradient_accumulation_steps=1), {}, processes=1)
    assert not normalises_over_step(config, {"normalize": False}, processes=1)
    assert not normalises_over_step(config.replace(loss="dpo"), {}, processes=1)
    assert not normalises_over_step(config.replace(sft_weight=0.5), {}, processes=1)
