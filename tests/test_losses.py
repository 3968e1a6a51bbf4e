"""The losses' math: DPO limits, the GCE bridge, stability, validation."""

import math

import pytest
import torch
import torch.nn.functional as F

from capo_tutorial.losses import (
    LOSSES,
    ConfidenceSignals,
    capo_weights,
    pair_confidence,
    preference_loss,
)

SOURCES = ["sigmoid", "implicit", "batch", "reference", "policy"]


def random_logps(batch_size: int = 16, seed: int = 0, scale: float = 5.0, requires_grad: bool = True):
    """Four (B,) log-prob tensors (negative, like real sums) and two length tensors."""
    generator = torch.Generator().manual_seed(seed)
    logps = [-(torch.rand(batch_size, generator=generator) * scale * 4 + 1) for _ in range(4)]
    policy_chosen, policy_rejected = (t.clone().requires_grad_(requires_grad) for t in logps[:2])
    lengths = [torch.randint(1, 20, (batch_size,), generator=generator).float() for _ in range(2)]
    return policy_chosen, policy_rejected, logps[2], logps[3], lengths[0], lengths[1]


def loss_and_grads(name, tensors, **params):
    policy_chosen, policy_rejected, ref_chosen, ref_rejected, len_chosen, len_rejected = tensors
    output = preference_loss(
        name,
        policy_chosen,
        policy_rejected,
        ref_chosen,
        ref_rejected,
        chosen_lengths=len_chosen,
        rejected_lengths=len_rejected,
        **params,
    )
    inputs = [policy_chosen, policy_rejected]
    grads = torch.autograd.grad(output.losses.sum(), inputs, allow_unused=True, materialize_grads=True)
    return output, grads


def test_registry_lists_every_loss():
    assert set(LOSSES) == {"dpo", "cdpo", "rdpo", "ipo", "hinge", "simpo", "sft", "capo"}


def test_dpo_matches_its_closed_form():
    tensors = random_logps()
    output, _ = loss_and_grads("dpo", tensors, beta=0.25)
    pc, pr, rc, rr, _, _ = tensors
    margin = 0.25 * ((pc - rc) - (pr - rr))
    torch.testing.assert_close(output.losses, -torch.log(torch.sigmoid(margin)))
    torch.testing.assert_close(output.chosen_rewards, 0.25 * (pc - rc).detach())
    assert not output.chosen_rewards.requires_grad and not output.weights.requires_grad
    assert torch.equal(output.weights, torch.ones(16))


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("normalize", [True, False])
def test_capo_with_gamma_zero_is_dpo(source, normalize):
    tensors = random_logps(seed=3)
    dpo, dpo_grads = loss_and_grads("dpo", tensors, beta=0.1)
    capo, capo_grads = loss_and_grads(
        "capo", tensors, beta=0.1, gamma=0.0, tau=0.7, confidence=source, normalize=normalize
    )
    torch.testing.assert_close(capo.losses, dpo.losses, rtol=0, atol=1e-7)
    for capo_grad, dpo_grad in zip(capo_grads, dpo_grads):
        torch.testing.assert_close(capo_grad, dpo_grad, rtol=0, atol=1e-7)


def test_capo_with_gamma_zero_is_dpo_for_a_callable_that_returns_zeros():
    tensors = random_logps(seed=4)
    dpo, _ = loss_and_grads("dpo", tensors)
    capo, _ = loss_and_grads("capo", tensors, gamma=0.0, confidence=lambda s: torch.zeros_like(s.margin))
    torch.testing.assert_close(capo.losses, dpo.losses)


@pytest.mark.parametrize("gamma", [0.5, 1.0, 2.0, 3.0])
def test_capo_sigmoid_gradient_is_generalized_cross_entropy(gamma):
    """Stop-gradient sigmoid(m)**gamma weighting has the gradient of (1 - sigmoid(m)**gamma) / gamma."""
    tensors = random_logps(seed=5, scale=20)
    _, capo_grads = loss_and_grads(
        "capo", tensors, gamma=gamma, tau=1.0, confidence="sigmoid", normalize=False
    )
    pc, pr, rc, rr, _, _ = tensors
    margin = 0.1 * ((pc - rc) - (pr - rr))
    gce = (1 - torch.sigmoid(margin) ** gamma) / gamma
    gce_grads = torch.autograd.grad(gce.sum(), [pc, pr])
    for capo_grad, gce_grad in zip(capo_grads, gce_grads):
        torch.testing.assert_close(capo_grad, gce_grad, rtol=1e-5, atol=1e-7)


def test_capo_at_gamma_one_has_the_gradient_of_a_symmetric_loss():
    """CAPO at gamma 1 (sigmoid source, tau 1, unnormalised) has the gradient of l(m) = 1 - sigmoid(m),
    a symmetric loss (l(m) + l(-m) = 1): a pair and its flipped twin are pushed equally hard."""

    def capo_gradient(margin: torch.Tensor) -> torch.Tensor:
        """d(CAPO loss)/dm for pairs of margin m (beta 1, reference log-probs equal)."""
        policy_chosen = (margin - 20.0).requires_grad_(True)
        equal = torch.full_like(margin, -20.0)
        output = preference_loss(
            "capo",
            policy_chosen,
            equal,
            equal,
            equal,
            beta=1.0,
            gamma=1.0,
            tau=1.0,
            confidence="sigmoid",
            normalize=False,
        )
        return torch.autograd.grad(output.losses.sum(), policy_chosen)[0]

    margin = torch.linspace(-8, 8, 33, dtype=torch.float64).requires_grad_(True)
    symmetric_gradient = torch.autograd.grad((1 - torch.sigmoid(margin)).sum(), margin)[0]
    gradient = capo_gradient(margin.detach())
    torch.testing.assert_close(gradient, symmetric_gradient)
    torch.testing.assert_close(capo_gradient(-margin.detach()), gradient)  # the flipped pair: same push
    dpo_gradient = -torch.sigmoid(-margin.detach())  # DPO's push grows where the label looks wrong
    assert (gradient.abs() < dpo_gradient.abs()).all()


def test_capo_weights_follow_confidence_and_strength():
    margin = torch.tensor([-2.0, 0.0, 2.0, 4.0])
    signals = ConfidenceSignals(margin, None, None, None, None)
    raw = capo_weights(signals, gamma=2.0, tau=1.0, source="sigmoid", normalize=False)
    torch.testing.assert_close(raw, torch.sigmoid(margin) ** 2)
    normalized = capo_weights(signals, gamma=2.0, tau=1.0, source="sigmoid", normalize=True)
    torch.testing.assert_close(normalized.mean(), torch.tensor(1.0))
    torch.testing.assert_close(normalized / normalized[0], raw / raw[0])
    strength = torch.tensor([1.0, 0.0, 2.0, 1.0])
    weighted = capo_weights(signals, gamma=2.0, tau=1.0, source="sigmoid", normalize=False, strength=strength)
    torch.testing.assert_close(weighted, raw * strength)


def test_reference_source_uses_per_token_reference_margin():
    tensors = random_logps(seed=6)
    _, _, rc, rr, lc, lr = tensors
    output, _ = loss_and_grads("capo", tensors, gamma=1.0, tau=0.5, confidence="reference", normalize=False)
    expected = torch.sigmoid((rc / lc - rr / lr) / 0.5)
    torch.testing.assert_close(output.weights, expected)


def test_policy_source_is_detached_per_token_policy_margin():
    tensors = random_logps(seed=7)
    pc, pr, rc, rr, lc, lr = tensors
    output, grads = loss_and_grads("capo", tensors, gamma=1.0, tau=2.0, confidence="policy", normalize=False)
    torch.testing.assert_close(output.weights, torch.sigmoid((pc / lc - pr / lr).detach() / 2.0))
    # The weight is a constant: the gradient is the weighted DPO gradient.
    margin = 0.1 * ((pc - rc) - (pr - rr))
    torch.testing.assert_close(grads[0], -output.weights * torch.sigmoid(-margin).detach() * 0.1)


def test_batch_source_standardises_the_margin():
    margin = torch.tensor([1.0, 2.0, 3.0])
    signals = ConfidenceSignals(margin, None, None, None, None)
    confidence = pair_confidence(signals, "batch", tau=1.0)
    torch.testing.assert_close(confidence, torch.sigmoid(torch.tensor([-1.0, 0.0, 1.0])))
    single = ConfidenceSignals(torch.tensor([5.0]), None, None, None, None)
    assert pair_confidence(single, "batch").item() == 0.5


def test_callable_confidence_receives_all_signals():
    seen = {}

    def my_confidence(signals: ConfidenceSignals) -> torch.Tensor:
        seen["signals"] = signals
        return torch.full_like(signals.margin, 0.25)

    output, _ = loss_and_grads(
        "capo", random_logps(seed=8), gamma=1.0, confidence=my_confidence, normalize=False
    )
    torch.testing.assert_close(output.weights, torch.full((16,), 0.25))
    assert seen["signals"].reference_margin is not None and seen["signals"].policy_margin is not None
    assert not seen["signals"].margin.requires_grad


def test_callable_confidence_out_of_range_is_an_error():
    pc, pr, rc, rr, _, _ = random_logps(seed=9)
    with pytest.raises(ValueError, match=r"values in \[0, 1\]"):
        preference_loss("capo", pc, pr, rc, rr, confidence=lambda s: s.margin + 2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("source", ["sigmoid", "batch", "reference", "policy"])
@pytest.mark.parametrize("normalize", [True, False])
def test_capo_weights_are_finite_and_non_negative_at_extreme_margins(dtype, source, normalize):
    big = torch.tensor([1e4, -1e4, 0.0, 5e3, -5e3, 1e4], dtype=dtype)
    lengths = torch.ones(6, dtype=dtype)
    zeros = torch.zeros(6, dtype=dtype)
    for gamma in (0.0, 0.5, 1.0, 4.0):
        output = preference_loss(
            "capo",
            big,
            -big,
            zeros,
            zeros,
            beta=1.0,
            chosen_lengths=lengths,
            rejected_lengths=lengths,
            gamma=gamma,
            tau=0.25,
            confidence=source,
            normalize=normalize,
        )
        assert output.weights.dtype == dtype
        assert bool(torch.isfinite(output.weights).all()), (gamma, output.weights)
        assert bool((output.weights >= 0).all())
        assert bool(torch.isfinite(output.losses).all())
        if normalize:
            assert output.weights.float().mean().item() == pytest.approx(1.0, rel=1e-2)


def test_all_zero_strength_gives_zero_weights_not_nan():
    pc, pr, rc, rr, _, _ = random_logps(batch_size=4, seed=10)
    output = preference_loss("capo", pc, pr, rc, rr, confidence="sigmoid", strength=torch.zeros(4))
    assert torch.equal(output.weights, torch.zeros(4))
    assert torch.equal(output.losses.detach(), torch.zeros(4))


def test_baselines_closed_forms():
    tensors = random_logps(seed=11)
    pc, pr, rc, rr, lc, lr = tensors
    margin = 0.1 * ((pc - rc) - (pr - rr))
    eps = 0.2
    cdpo, _ = loss_and_grads("cdpo", tensors, label_smoothing=eps)
    torch.testing.assert_close(cdpo.losses, -(1 - eps) * F.logsigmoid(margin) - eps * F.logsigmoid(-margin))
    rdpo, _ = loss_and_grads("rdpo", tensors, label_smoothing=eps)
    torch.testing.assert_close(
        rdpo.losses, (-(1 - eps) * F.logsigmoid(margin) + eps * F.logsigmoid(-margin)) / (1 - 2 * eps)
    )
    hinge, _ = loss_and_grads("hinge", tensors)
    torch.testing.assert_close(hinge.losses, torch.relu(1 - margin))
    ipo, _ = loss_and_grads("ipo", tensors, beta=0.5)
    torch.testing.assert_close(ipo.losses, ((pc - rc) / lc - (pr - rr) / lr - 1.0) ** 2)
    simpo, _ = loss_and_grads("simpo", tensors, beta=2.0, target_margin=0.3)
    torch.testing.assert_close(simpo.losses, -F.logsigmoid(2.0 * (pc / lc - pr / lr) - 0.3))
    torch.testing.assert_close(simpo.chosen_rewards, (2.0 * pc / lc).detach())
    sft, grads = loss_and_grads("sft", tensors)
    torch.testing.assert_close(sft.losses, -pc / lc)
    assert torch.equal(grads[1], torch.zeros(16)), "sft must not train on the rejected response"


def test_robust_dpo_is_unbiased_under_its_flip_rate():
    """E over a flip with probability eps of rdpo(flipped margin) equals DPO on the clean margin."""
    margin = torch.linspace(-5, 5, 41)
    zeros = torch.zeros_like(margin)
    eps = 0.3

    def rdpo(m):
        return preference_loss("rdpo", m, zeros, zeros, zeros, beta=1.0, label_smoothing=eps).losses

    def dpo(m):
        return preference_loss("dpo", m, zeros, zeros, zeros, beta=1.0).losses

    expected = (1 - eps) * rdpo(margin) + eps * rdpo(-margin)
    torch.testing.assert_close(expected, dpo(margin), rtol=1e-5, atol=1e-5)


def test_cdpo_with_zero_smoothing_is_dpo():
    tensors = random_logps(seed=12)
    cdpo, _ = loss_and_grads("cdpo", tensors, label_smoothing=0.0)
    dpo, _ = loss_and_grads("dpo", tensors)
    torch.testing.assert_close(cdpo.losses, dpo.losses)


def test_reference_free_losses_accept_none_reference():
    pc, pr, _, _, lc, lr = random_logps(seed=13)
    for name in ("simpo", "sft"):
        output = preference_loss(name, pc, pr, None, None, chosen_lengths=lc, rejected_lengths=lr)
        assert output.losses.shape == (16,)


# -------------------------------------------------------------------------------------------------
# Bad input: a ValueError that names the argument and says why
# -------------------------------------------------------------------------------------------------


def _good():
    pc, pr, rc, rr, lc, lr = random_logps(batch_size=4, seed=14, requires_grad=False)
    return dict(
        policy_chosen_logps=pc,
        policy_rejected_logps=pr,
        reference_chosen_logps=rc,
        reference_rejected_logps=rr,
        chosen_lengths=lc,
        rejected_lengths=lr,
    )


@pytest.mark.parametrize(
    ("name", "change", "params", "message"),
    [
        ("dpo", {"policy_rejected_logps": torch.zeros(3)}, {}, r"policy_rejected_logps has shape \(3,\)"),
        ("dpo", {"reference_chosen_logps": torch.zeros(4, 2)}, {}, r"reference_chosen_logps must have shape"),
        ("dpo", {"policy_chosen_logps": torch.tensor([0.0, math.nan, 1, 1])}, {}, r"chosen_logps .*NaN"),
        ("dpo", {"reference_rejected_logps": torch.tensor([0.0, 1, math.inf, 1])}, {}, r"index \[2\]"),
        ("dpo", {"policy_chosen_logps": [1.0, 2.0]}, {}, r"policy_chosen_logps must be a torch.Tensor"),
        ("dpo", {"reference_chosen_logps": None}, {}, r"needs reference_chosen_logps"),
        ("ipo", {"chosen_lengths": None}, {}, r"'ipo' needs chosen_lengths"),
        ("simpo", {"rejected_lengths": None}, {}, r"'simpo' needs rejected_lengths"),
        ("sft", {"chosen_lengths": torch.tensor([1.0, 0, 2, 2])}, {}, r"chosen_lengths must be > 0"),
        ("capo", {"chosen_lengths": None}, {"confidence": "reference"}, r"'reference' needs chosen_lengths"),
        ("dpo", {}, {"beta": 0.0}, r"beta must be a number > 0"),
        ("dpo", {}, {"beta": math.nan}, r"beta must be"),
        ("dpo", {}, {"beta": math.inf}, r"beta must be finite"),
        ("capo", {}, {"gamma": -1.0}, r"gamma must be a number >= 0"),
        ("capo", {}, {"tau": 0.0}, r"tau must be a number > 0"),
        ("capo", {}, {"confidence": "vibes"}, r"unknown confidence source 'vibes'"),
        ("capo", {}, {"strength": torch.tensor([1.0, -1, 1, 1])}, r"strength must be >= 0"),
        ("capo", {}, {"strength": torch.ones(5)}, r"strength has shape \(5,\)"),
        ("rdpo", {}, {"label_smoothing": 0.5}, r"label_smoothing must be in \[0, 0.5\)"),
        ("cdpo", {}, {"label_smoothing": 0.7}, r"label_smoothing must be in \[0, 0.5\]"),
        ("dpo", {}, {"gamma": 1.0}, r"loss 'dpo' has no parameter 'gamma'; it accepts"),
        ("dppo", {}, {}, r"unknown loss 'dppo'; known losses: \['capo', 'cdpo'"),
    ],
)
def test_bad_input_names_the_argument(name, change, params, message):
    arguments = {**_good(), **change}
    with pytest.raises(ValueError, match=message):
        preference_loss(name, **arguments, **params)
