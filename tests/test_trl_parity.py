"""Parity of capo_tutorial.losses with TRL's DPO losses: TRL itself computes the reference values.

Every loss that TRL also ships is checked on the same random tensors (16 pairs, float64):

    ours                    TRL
    dpo                     "sigmoid"
    capo (gamma=0)          "sigmoid"                 (CAPO with gamma = 0 is DPO)
    ipo                     "ipo"                     (length-normalised log-ratios)
    hinge                   "hinge"
    rdpo                    "robust"                  (label_smoothing = 0.2)
    cdpo                    "sigmoid" + label_smoothing, TRL <= 0.28 only (0.29 dropped it)

TRL is called, never copied; how depends on the installed version:

- TRL >= 0.29 has no loss function: the loss is inline in ``DPOTrainer._compute_loss``. A real
  DPOTrainer is built per loss type on a tiny model (precompute_ref_log_probs=True, so TRL takes the
  reference log-probs from the batch), and ``_compute_loss`` is called with a stand-in model whose
  per-token log-probs sum to the test's policy tensors. TRL 1.x's fused LM head reads
  ``outputs.log_probs``; 0.29 reads ``outputs.logits`` and applies a log-softmax, so the stand-in
  returns logits over a 2-token vocabulary, log_softmax([a, 0])[0] = logsigmoid(a), with ``a`` chosen
  to give each token's log-prob. Per-pair losses and rewards come from B=1 calls (the loss returned,
  the rewards TRL logs); the batch mean from one call over all pairs.
- TRL < 0.29: ``DPOTrainer.dpo_loss(...)`` returns per-pair losses and rewards. Its IPO expects
  log-probs already divided by the completion length (its concatenated_forward does that for the
  policy and the reference), so the test passes them so.

Tolerance: float64 end to end, |ours - TRL| <= 1e-12 + 1e-10 |TRL| (measured: at most 1.5e-14).
The environments for other TRL versions: ``.ci/trl_matrix.sh``.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from packaging.version import Version
from torch import Tensor, nn
from trl_helpers import (
    INSTALL_HINT,
    cpu_config_kwargs,
    installed_trl_version,
    preference_records,
    saved_tiny_model,
)

from capo_tutorial.losses import preference_loss

TRL_VERSION = installed_trl_version()
pytestmark = [
    pytest.mark.skipif(TRL_VERSION is None, reason=f"trl is not installed: {INSTALL_HINT}"),
    pytest.mark.xdist_group("trl_parity"),  # one worker builds the tiny model and trainers once
]
INLINE_LOSS = TRL_VERSION is not None and TRL_VERSION >= Version("0.29")  # else: DPOTrainer.dpo_loss

BETA = 0.2
LABEL_SMOOTHING = 0.2
RTOL, ATOL = 1e-10, 1e-12

# (our loss, its parameters, TRL's loss_type, TRL's label_smoothing)
CASES = [
    ("dpo", {}, "sigmoid", 0.0),
    ("capo", {"gamma": 0.0}, "sigmoid", 0.0),
    ("ipo", {}, "ipo", 0.0),
    ("hinge", {}, "hinge", 0.0),
    ("rdpo", {"label_smoothing": LABEL_SMOOTHING}, "robust", LABEL_SMOOTHING),
    ("cdpo", {"label_smoothing": LABEL_SMOOTHING}, "sigmoid", LABEL_SMOOTHING),
]


# --------------------------------------------------------------------------------------------------
# Inputs: random log-prob tensors, and a TRL batch whose tokens carry them
# --------------------------------------------------------------------------------------------------


def random_pairs(n: int = 16, seed: int = 0) -> dict[str, Tensor]:
    """Summed completion log-probs, (n,) float64, with lengths 1..6 and 0.05..8 nats per token.

    Margins beta * (rho_w - rho_l) span about -5..5 here: both sides of the hinge, saturated sigmoids.
    """
    g = torch.Generator().manual_seed(seed)
    lengths = {side: torch.randint(1, 7, (n,), generator=g).double() for side in ("chosen", "rejected")}

    def logps(side: str) -> Tensor:
        return -lengths[side] * (0.05 + 7.95 * torch.rand(n, generator=g, dtype=torch.float64))

    return {
        "policy_chosen_logps": logps("chosen"),
        "policy_rejected_logps": logps("rejected"),
        "reference_chosen_logps": logps("chosen"),
        "reference_rejected_logps": logps("rejected"),
        "chosen_lengths": lengths["chosen"],
        "rejected_lengths": lengths["rejected"],
    }


def trl_batch(pairs: dict[str, Tensor]) -> tuple[dict[str, Tensor], Tensor]:
    """TRL's collated batch for these pairs, and the per-token log-probs a model must produce.

    Row i (2B rows, chosen first) is one prompt token, then its completion tokens, then padding;
    every completion token of row i gets log-prob totals_i / length_i.

    Returns:
        (inputs, per_token_logps): inputs with input_ids, attention_mask, completion_mask (2B, T) and
        ref_chosen_logps, ref_rejected_logps (B,); per_token_logps (2B, T-1), entry t being the
        log-prob of token t+1 (zero outside completions).
    """
    totals = torch.cat([pairs["policy_chosen_logps"], pairs["policy_rejected_logps"]])
    lengths = torch.cat([pairs["chosen_lengths"], pairs["rejected_lengths"]]).long()
    positions = torch.arange(int(lengths.max()) + 1)
    completion_mask = ((positions >= 1) & (positions <= lengths[:, None])).long()
    inputs = {
        "input_ids": torch.zeros_like(completion_mask),
        "attention_mask": (positions <= lengths[:, None]).long(),
        "completion_mask": completion_mask,
        "ref_chosen_logps": pairs["reference_chosen_logps"],
        "ref_rejected_logps": pairs["reference_rejected_logps"],
    }
    per_token_logps = completion_mask[:, 1:] * (totals / lengths)[:, None]
    return inputs, per_token_logps


class PresetLogpsModel(nn.Module):
    """Stands in for a causal LM: whatever the input, the tokens get preset log-probs.

    Args:
        per_token_logps: (2B, T-1) float64; entry t is log p(token t+1), < 0 on completion tokens.
    """

    def __init__(self, per_token_logps: Tensor):
        super().__init__()
        self.per_token_logps = per_token_logps

    def forward(self, input_ids: Tensor, fused_lm_head: bool = False, **kwargs) -> SimpleNamespace:
        zeros = torch.zeros_like(self.per_token_logps)
        if fused_lm_head:  # TRL 1.x: the fused LM head returns per-token log-probs, zero where unlabelled
            return SimpleNamespace(
                log_probs=self.per_token_logps, entropy=zeros, mean_logits=zeros, is_top1=zeros.bool()
            )
        # TRL 0.29: logits over {0, 1}; every token is 0, and log_softmax([a, 0])[0] = logsigmoid(a).
        v = self.per_token_logps
        a = torch.where(v < 0, v - torch.log(-torch.expm1(v.clamp(max=-1e-300))), zeros)
        logits = torch.stack([a, zeros], dim=-1)  # (2B, T-1, 2): the logits at position t predict t+1
        return SimpleNamespace(logits=torch.cat([logits, torch.zeros_like(logits[:, :1])], dim=1))


# --------------------------------------------------------------------------------------------------
# TRL's side
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    folder, tokenizer = saved_tiny_model(tmp_path_factory.mktemp("tiny") / "model")
    return folder, tokenizer


@pytest.fixture(scope="module")
def trl_trainer(model_folder, tmp_path_factory):
    """trl_trainer(loss_type, label_smoothing) -> a DPOTrainer configured so, built once per pair."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    folder, tokenizer = model_folder
    dataset = Dataset.from_list(preference_records(4))
    built: dict[tuple[str, float], DPOTrainer] = {}

    def build(loss_type: str, label_smoothing: float) -> DPOTrainer:
        if (loss_type, label_smoothing) not in built:
            args = DPOConfig(
                **cpu_config_kwargs(
                    tmp_path_factory.mktemp("out"),
                    loss_type=loss_type,
                    label_smoothing=label_smoothing,
                    beta=BETA,
                    precompute_ref_log_probs=True,
                )
            )
            model = AutoModelForCausalLM.from_pretrained(folder)
            trainer = DPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
            trainer.model.train()  # TRL logs under "train" while the policy is in training mode
            built[loss_type, label_smoothing] = trainer
        return built[loss_type, label_smoothing]

    return build


def trl_inline(trainer, pairs: dict[str, Tensor]) -> tuple[float, float, float]:
    """TRL >= 0.29: (batch loss, mean chosen reward, mean rejected reward) from ``_compute_loss``."""
    inputs, per_token_logps = trl_batch(pairs)
    loss = trainer._compute_loss(PresetLogpsModel(per_token_logps), inputs, return_outputs=False)
    trainer.log({})  # TRL averages the batch's metrics into log_history
    logged = trainer.state.log_history[-1]
    return loss.item(), logged["rewards/chosen"], logged["rewards/rejected"]


def trl_per_pair(trainer, pairs: dict[str, Tensor], loss_type: str) -> tuple[Tensor, Tensor, Tensor]:
    """TRL's per-pair (losses, chosen rewards, rejected rewards), each (B,) float64."""
    if not INLINE_LOSS:
        return trl_legacy(trainer, pairs, loss_type)
    rows = []
    for i in range(len(pairs["chosen_lengths"])):
        rows.append(trl_inline(trainer, {key: value[i : i + 1] for key, value in pairs.items()}))
    return tuple(torch.tensor(column, dtype=torch.float64) for column in zip(*rows))


def trl_legacy(trainer, pairs: dict[str, Tensor], loss_type: str) -> tuple[Tensor, Tensor, Tensor]:
    """TRL < 0.29: its ``dpo_loss`` method; IPO gets length-normalised log-probs, as TRL feeds it."""
    logps = [
        pairs[key]
        for key in (
            "policy_chosen_logps",
            "policy_rejected_logps",
            "reference_chosen_logps",
            "reference_rejected_logps",
        )
    ]
    if loss_type == "ipo":
        chosen, rejected = pairs["chosen_lengths"], pairs["rejected_lengths"]
        logps = [logps[0] / chosen, logps[1] / rejected, logps[2] / chosen, logps[3] / rejected]
    losses, chosen_rewards, rejected_rewards = trainer.dpo_loss(*logps, loss_type=loss_type)
    return losses, chosen_rewards, rejected_rewards


# --------------------------------------------------------------------------------------------------
# The tests
# --------------------------------------------------------------------------------------------------


def test_stand_in_model_reproduces_the_pairs():
    """The TRL batch built from the tensors gives back their summed log-probs under either head."""
    pairs = random_pairs()
    inputs, per_token_logps = trl_batch(pairs)
    model = PresetLogpsModel(per_token_logps)
    fused = model(inputs["input_ids"], fused_lm_head=True).log_probs.sum(dim=1)
    logits = model(inputs["input_ids"]).logits[:, :-1]
    from_logits = (logits.log_softmax(-1)[..., 0] * inputs["completion_mask"][:, 1:]).sum(dim=1)
    expected = torch.cat([pairs["policy_chosen_logps"], pairs["policy_rejected_logps"]])
    torch.testing.assert_close(fused, expected, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(from_logits, expected, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize(("name", "params", "loss_type", "label_smoothing"), CASES, ids=[c[0] for c in CASES])
def test_loss_matches_trl(trl_trainer, name, params, loss_type, label_smoothing):
    if name == "cdpo" and INLINE_LOSS:
        pytest.skip(
            f"trl {TRL_VERSION} has no label smoothing in its sigmoid loss (dropped in 0.29); cDPO parity "
            "runs against trl 0.24 in .ci/trl_matrix.sh"
        )
    pairs = random_pairs()
    ours = preference_loss(name, **pairs, beta=BETA, **params)
    trainer = trl_trainer(loss_type, label_smoothing)
    losses, chosen_rewards, rejected_rewards = trl_per_pair(trainer, pairs, loss_type)

    torch.testing.assert_close(ours.losses, losses, rtol=RTOL, atol=ATOL)
    if not (name == "ipo" and not INLINE_LOSS):  # TRL < 0.29 reports IPO's length-normalised rewards
        torch.testing.assert_close(ours.chosen_rewards, chosen_rewards, rtol=RTOL, atol=ATOL)
        torch.testing.assert_close(ours.rejected_rewards, rejected_rewards, rtol=RTOL, atol=ATOL)
    if INLINE_LOSS:  # the batch: TRL's mean over pairs and its logged mean rewards
        batch_loss, mean_chosen, mean_rejected = trl_inline(trainer, pairs)
        assert math.isclose(ours.losses.mean().item(), batch_loss, rel_tol=RTOL, abs_tol=ATOL)
        assert math.isclose(ours.chosen_rewards.mean().item(), mean_chosen, rel_tol=RTOL, abs_tol=ATOL)
        assert math.isclose(ours.rejected_rewards.mean().item(), mean_rejected, rel_tol=RTOL, abs_tol=ATOL)


def test_random_pairs_cover_both_sides_of_the_losses():
    """The tensors are not all easy: hinge is active and inactive, the sigmoid saturates both ways."""
    pairs = random_pairs()
    margins = BETA * (
        (pairs["policy_chosen_logps"] - pairs["reference_chosen_logps"])
        - (pairs["policy_rejected_logps"] - pairs["reference_rejected_logps"])
    )
    assert (margins > 1).any() and (margins < 1).any()
    assert margins.min() < -3 and margins.max() > 3
