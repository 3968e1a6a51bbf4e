"""Preference losses as pure functions of log-prob tensors: DPO, CAPO and the baselines.

Every loss takes the same four tensors of shape (B,), the summed completion log-probs
``log pi(y|x)`` of the chosen (y_w) and rejected (y_l) responses under the policy and the
reference model, and returns a :class:`PreferenceLossOutput` of per-pair tensors. Nothing here
touches a model, a file or a device: the caller reduces ``losses`` (usually with a mean).

Notation (as in the book, chapters 1-2)::

    rho_w = log pi_theta(y_w|x) - log pi_ref(y_w|x)        (rho_l likewise)
    r_w = beta * rho_w,  r_l = beta * rho_l                 implicit rewards (reported detached)
    m = r_w - r_l                                           relative reward, the margin

Add a loss by writing one function with the common signature and decorating it with
``@register_loss("name", needs_reference=..., needs_lengths=...)``: its :class:`LossSpec` in
:data:`LOSSES` carries those facts, which validation, training and the TRL integration read, and
:func:`preference_loss` then validates inputs and parameters for it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "CAPO_DEFAULTS",
    "CONFIDENCE_SOURCES",
    "LOSSES",
    "ConfidenceSignals",
    "LossSpec",
    "PreferenceLossOutput",
    "capo_loss",
    "capo_weights",
    "cdpo_loss",
    "check_loss_parameters",
    "dpo_loss",
    "hinge_loss",
    "ipo_loss",
    "pair_confidence",
    "preference_loss",
    "register_loss",
    "robust_dpo_loss",
    "sft_loss",
    "simpo_loss",
]

CAPO_DEFAULTS: Mapping[str, Any] = MappingProxyType({"confidence": "reference", "tau": 1.0, "gamma": 1.0})
"""The CAPO this project recommends, and the defaults of :func:`capo_loss`: the reference model's
per-token likelihood margin as the confidence source, temperature 1, focusing exponent 1. The source
and exponent come from a first validation sweep over nine CAPO variants (``experiments/results/sweep``);
the temperature from the tuning grid (``experiments/results/tune``, book chapter 6), which gives every
method four settings of its own knob and picks the best mean validation reward accuracy at 20% and 40%
flipped labels. Everything that runs "CAPO" without saying how (``METHODS["capo"]``, ``capo train
--loss capo``, ``CAPOConfig``, the benchmark) reads it from here."""


class PreferenceLossOutput(NamedTuple):
    """Per-pair outputs of a preference loss; every tensor has shape (B,).

    Attributes:
        losses: the loss of each pair (differentiable; the caller reduces it).
        chosen_rewards: beta * rho_w, detached (SimPO: beta * mean token log-prob of y_w).
        rejected_rewards: beta * rho_l, detached.
        weights: the weight each pair's loss carries, detached (ones for unweighted losses).
    """

    losses: Tensor
    chosen_rewards: Tensor
    rejected_rewards: Tensor
    weights: Tensor


class ConfidenceSignals(NamedTuple):
    """What a confidence function may look at; all detached, shape (B,) (or None when unavailable).

    Attributes:
        margin: m = r_w - r_l, the implicit-reward margin (nats scaled by beta).
        reference_margin: log pi_ref(y_w)/len(y_w) - log pi_ref(y_l)/len(y_l) (nats per token).
        policy_margin: the same per-token likelihood margin under the current policy.
        chosen_lengths, rejected_lengths: completion token counts.
    """

    margin: Tensor
    reference_margin: Tensor | None
    policy_margin: Tensor | None
    chosen_lengths: Tensor | None
    rejected_lengths: Tensor | None


LossFunction = Callable[..., PreferenceLossOutput]
ConfidenceFunction = Callable[[ConfidenceSignals], Tensor]

# The arguments every loss takes; a loss's own parameters are its other keywords.
_LOGP_ARGUMENTS = (
    "policy_chosen_logps",
    "policy_rejected_logps",
    "reference_chosen_logps",
    "reference_rejected_logps",
)
_LENGTH_ARGUMENTS = ("chosen_lengths", "rejected_lengths")
_PER_BATCH = (*_LOGP_ARGUMENTS, *_LENGTH_ARGUMENTS, "beta", "strength")  # not parameters with defaults


@dataclass(frozen=True)
class LossSpec:
    """A registered loss: its function and the facts its callers need, in one place.

    Calling a spec calls the function with ``defaults`` filled in, so ``LOSSES["dpo"](...)`` works
    like ``dpo_loss(...)``.

    Attributes:
        name: the key in :data:`LOSSES` (what ``RunConfig.loss`` and ``CAPOConfig.capo_loss`` name).
        function: the loss, with the signature of :func:`dpo_loss` plus its own keywords.
        needs_reference: False when the loss runs without reference log-probs (they may be None;
            training then does not compute them, and evaluation scores by per-token likelihood).
        needs_lengths: the loss always reads ``chosen_lengths`` / ``rejected_lengths``.
        takes_strength: the loss accepts a per-pair prior ``strength`` (B,), which training and
            the TRL integration pass from the data's ``strength`` column.
        defaults: the loss's own parameters and the values used when the caller gives none.
    """

    name: str
    function: LossFunction
    needs_reference: bool
    needs_lengths: bool
    takes_strength: bool
    defaults: Mapping[str, Any]

    @property
    def parameters(self) -> tuple[str, ...]:
        """The keywords a caller may set (beta and the loss's own), in signature order."""
        names = inspect.signature(self.function).parameters
        return tuple(name for name in names if name not in _LOGP_ARGUMENTS)

    def __call__(self, *args: Any, **kwargs: Any) -> PreferenceLossOutput:
        return self.function(*args, **{**self.defaults, **kwargs})


LOSSES: dict[str, LossSpec] = {}
"""Every registered loss, by name: a :class:`LossSpec` (callable like the loss function itself)."""


def register_loss(
    name: str,
    function: LossFunction | None = None,
    *,
    needs_reference: bool = True,
    needs_lengths: bool = False,
    takes_strength: bool | None = None,
    defaults: Mapping[str, Any] | None = None,
) -> Any:
    """Add a loss to :data:`LOSSES` under ``name``: ``register_loss(name, fn, ...)``, or as a decorator
    ``@register_loss(name, ...)`` (which returns the function unchanged).

    Args:
        name: the registry key; an error if taken.
        function: the loss (signature of :func:`dpo_loss` plus its own keyword parameters).
        needs_reference: False for a loss that runs without reference log-probs (SimPO, SFT).
        needs_lengths: True for a loss that always needs completion token counts.
        takes_strength: whether it takes a per-pair ``strength``; default: whether its signature has one.
        defaults: values of its own parameters used when the caller gives none; default: the
            signature's defaults.
    """
    if function is None:
        return lambda f: register_loss(
            name,
            f,
            needs_reference=needs_reference,
            needs_lengths=needs_lengths,
            takes_strength=takes_strength,
            defaults=defaults,
        )
    if name in LOSSES:
        raise ValueError(f"a loss named {name!r} is already registered ({LOSSES[name].function.__name__})")
    signature = inspect.signature(function).parameters
    own = {
        key: parameter.default
        for key, parameter in signature.items()
        if key not in _PER_BATCH and parameter.default is not inspect.Parameter.empty
    }
    unknown = set(defaults or {}) - set(signature)
    if unknown:
        raise ValueError(f"register_loss({name!r}): defaults {sorted(unknown)} are not keywords of the loss")
    LOSSES[name] = LossSpec(
        name=name,
        function=function,
        needs_reference=needs_reference,
        needs_lengths=needs_lengths,
        takes_strength="strength" in signature if takes_strength is None else takes_strength,
        defaults=MappingProxyType({**own, **(defaults or {})}),
    )
    return function


# --------------------------------------------------------------------------------------------------
# DPO and its label-noise variants
# --------------------------------------------------------------------------------------------------


@register_loss("dpo")
def dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
    *,
    beta: float = 0.1,
    chosen_lengths: Tensor | None = None,
    rejected_lengths: Tensor | None = None,
) -> PreferenceLossOutput:
    """DPO (Rafailov et al. 2023, Eq. 7): l = -log sigmoid(m), m = beta * (rho_w - rho_l).

    Args:
        policy_chosen_logps: (B,) summed completion log-probs of y_w under the policy.
        policy_rejected_logps: (B,) the same for y_l.
        reference_chosen_logps: (B,) summed completion log-probs of y_w under the reference.
        reference_rejected_logps: (B,) the same for y_l.
        beta: KL-regularisation strength (> 0).
        chosen_lengths, rejected_lengths: (B,) completion token counts (unused by DPO).
    """
    chosen_rewards = beta * (policy_chosen_logps - reference_chosen_logps)  # r_w = beta * rho_w
    rejected_rewards = beta * (policy_rejected_logps - reference_rejected_logps)  # r_l = beta * rho_l
    losses = -F.logsigmoid(chosen_rewards - rejected_rewards)  # m = r_w - r_l
    return PreferenceLossOutput(
        losses, chosen_rewards.detach(), rejected_rewards.detach(), torch.ones_like(losses)
    )


def _implicit_rewards(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
    beta: float,
) -> tuple[Tensor, Tensor]:
    """(r_w, r_l) = beta * (rho_w, rho_l), shape (B,) each, with their graph (as in :func:`dpo_loss`)."""
    return (
        beta * (policy_chosen_logps - reference_chosen_logps),
        beta * (policy_rejected_logps - reference_rejected_logps),
    )


def _output(
    losses: Tensor, chosen_rewards: Tensor, rejected_rewards: Tensor, weights: Tensor | None = None
) -> PreferenceLossOutput:
    """Pack per-pair tensors, detaching everything but the losses."""
    if weights is None:
        weights = torch.ones_like(losses)
    return PreferenceLossOutput(losses, chosen_rewards.detach(), rejected_rewards.detach(), weights.detach())


def _label_noise_dpo(
    logps: tuple[Tensor, ...], beta: float, eps: float, *, unbiased: bool
) -> PreferenceLossOutput:
    """The body of cDPO and robust DPO, which differ in one sign and one scale (eps = flip rate):

    cDPO:        l = -(1 - eps) log sigmoid(m) - eps log sigmoid(-m)
    robust DPO:  l = (-(1 - eps) log sigmoid(m) + eps log sigmoid(-m)) / (1 - 2 eps)
    """
    chosen_rewards, rejected_rewards = _implicit_rewards(*logps, beta)
    margin = chosen_rewards - rejected_rewards
    sign, scale = (1, 1 - 2 * eps) if unbiased else (-1, 1)
    losses = (-(1 - eps) * F.logsigmoid(margin) + sign * eps * F.logsigmoid(-margin)) / scale
    return _output(losses, chosen_rewards, rejected_rewards)


@register_loss("cdpo")
def cdpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
    *,
    beta: float = 0.1,
    chosen_lengths: Tensor | None = None,
    rejected_lengths: Tensor | None = None,
    label_smoothing: float = 0.1,
) -> PreferenceLossOutput:
    """Conservative DPO (Mitchell 2023): the label is right with probability 1 - eps.

    l = -(1 - eps) log sigmoid(m) - eps log sigmoid(-m), eps = ``label_smoothing`` in [0, 0.5].
    (TRL <= 0.24 wrote it as its "sigmoid" loss with label_smoothing.)
    """
    logps = (policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps)
    return _label_noise_dpo(logps, beta, label_smoothing, unbiased=False)


@register_loss("rdpo")
def robust_dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
    *,
    beta: float = 0.1,
    chosen_lengths: Tensor | None = None,
    rejected_lengths: Tensor | None = None,
    label_smoothing: float = 0.1,
) -> PreferenceLossOutput:
    """Robust DPO (Chowdhury et al. 2024, Eq. 8): an unbiased DPO loss under flip rate eps.

    l = (-(1 - eps) log sigmoid(m) + eps log sigmoid(-m)) / (1 - 2 eps), eps in [0, 0.5).
    """
    logps = (policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps)
    return _label_noise_dpo(logps, beta, label_smoothing, unbiased=True)


@register_loss("ipo", needs_lengths=True)
def ipo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
    *,
    beta: float = 0.1,
    chosen_lengths: Tensor | None = None,
    rejected_lengths: Tensor | None = None,
) -> PreferenceLossOutput:
    """IPO (Azar et al. 2024, Eq. 17) on length-normalised log-ratios, as TRL computes it.

    l = (rho_w / len(y_w) - rho_l / len(y_l) - 1 / (2 beta))^2; here beta is the paper's tau.
    Rewards are beta * rho (not normalised), as for DPO.
    """
    rho_w = policy_chosen_logps - reference_chosen_logps
    rho_l = policy_rejected_logps - reference_rejected_logps
    per_token_delta = rho_w / chosen_lengths - rho_l / rejected_lengths
    losses = (per_token_delta - 1 / (2 * beta)) ** 2
    return _output(losses, beta * rho_w, beta * rho_l)


@register_loss("hinge")
def hinge_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
    *,
    beta: float = 0.1,
    chosen_lengths: Tensor | None = None,
    rejected_lengths: Tensor | None = None,
) -> PreferenceLossOutput:
    """Hinge loss of SLiC (Zhao et al. 2023) on the DPO margin: l = max(0, 1 - m)."""
    chosen_rewards, rejected_rewards = _implicit_rewards(
        policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta
    )
    return _output(torch.relu(1 - (chosen_rewards - rejected_rewards)), chosen_rewards, rejected_rewards)


@register_loss("simpo", needs_reference=False, needs_lengths=True)
def simpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor | None = None,
    reference_rejected_logps: Tensor | None = None,
    *,
    beta: float = 2.0,
    chosen_lengths: Tensor | None = None,
    rejected_lengths: Tensor | None = None,
    target_margin: float = 0.5,
) -> PreferenceLossOutput:
    """SimPO (Meng et al. 2024, Eq. 6): reference-free, length-normalised, with a target margin.

    r_w = beta * log pi(y_w|x) / len(y_w) (r_l likewise);  l = -log sigmoid(r_w - r_l - target_margin).
    The reference tensors are ignored and may be None. SimPO's beta is typically 2-10, not 0.1.
    """
    chosen_rewards = beta * policy_chosen_logps / chosen_lengths
    rejected_rewards = beta * policy_rejected_logps / rejected_lengths
    losses = -F.logsigmoid(chosen_rewards - rejected_rewards - target_margin)
    return _output(losses, chosen_rewards, rejected_rewards)


@register_loss("sft", needs_reference=False, needs_lengths=True)
def sft_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor | None = None,
    reference_rejected_logps: Tensor | None = None,
    *,
    beta: float = 0.1,
    chosen_lengths: Tensor | None = None,
    rejected_lengths: Tensor | None = None,
) -> PreferenceLossOutput:
    """Negative log-likelihood per chosen token: l = -log pi(y_w|x) / len(y_w) (the SFT warm-up loss).

    Rewards are beta * rho when reference tensors are given, else zeros; the rejected response is
    not trained on. Mix it into a preference loss (RPO-style) with the training config's
    ``sft_weight``.
    """
    losses = -policy_chosen_logps / chosen_lengths
    if reference_chosen_logps is None or reference_rejected_logps is None:
        zeros = torch.zeros_like(policy_chosen_logps)
        return _output(losses, zeros, zeros)
    chosen_rewards, rejected_rewards = _implicit_rewards(
        policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta
    )
    return _output(losses, chosen_rewards, rejected_rewards)


# --------------------------------------------------------------------------------------------------
# CAPO: DPO with a stop-gradient confidence weight per pair
# --------------------------------------------------------------------------------------------------


def _per_token_margin(chosen_logps: Tensor, rejected_logps: Tensor, chosen_lengths, rejected_lengths):
    """log p(y_w)/len(y_w) - log p(y_l)/len(y_l) in nats per token, shape (B,), or None without lengths."""
    if chosen_lengths is None or rejected_lengths is None:
        return None
    return chosen_logps / chosen_lengths - rejected_logps / rejected_lengths


def _standardised(values: Tensor) -> Tensor:
    """(values - mean) / std over the batch; zeros when the batch has one element or no spread."""
    if values.numel() < 2:
        return torch.zeros_like(values)
    return (values - values.mean()) / values.std().clamp_min(1e-6)


def _require(signal: Tensor | None, source: str) -> Tensor:
    if signal is None:
        raise ValueError(
            f"confidence={source!r} needs chosen_lengths and rejected_lengths (completion token counts) "
            "to compute per-token likelihood margins: pass them to preference_loss"
        )
    return signal


# Each source maps (signals, tau) to the logit of c, so that log c = logsigmoid(logit) stays exact
# when c underflows (|m| ~ 1e4); the callable source returns c itself.
CONFIDENCE_SOURCES: dict[str, Callable[[ConfidenceSignals, float], Tensor]] = {
    "sigmoid": lambda s, tau: s.margin / tau,
    "batch": lambda s, tau: _standardised(s.margin) / tau,
    "reference": lambda s, tau: _require(s.reference_margin, "reference") / tau,
    "policy": lambda s, tau: _require(s.policy_margin, "policy") / tau,
}
CONFIDENCE_SOURCES["implicit"] = CONFIDENCE_SOURCES["sigmoid"]


def _log_confidence(signals: ConfidenceSignals, source: str | ConfidenceFunction, tau: float) -> Tensor:
    """log c for each pair, float32, shape (B,); c = confidence that the pair's label is right."""
    if callable(source):
        values = torch.as_tensor(source(signals), device=signals.margin.device).float()
        if values.shape != signals.margin.shape or not bool(((values >= 0) & (values <= 1)).all()):
            raise ValueError(
                "a confidence callable must return a tensor of shape (B,) with values in [0, 1]; "
                f"got shape {tuple(values.shape)}, "
                f"range [{values.min().item():.3g}, {values.max().item():.3g}]"
            )
        return torch.log(values)
    return F.logsigmoid(CONFIDENCE_SOURCES[source](signals, tau).float())


def pair_confidence(
    signals: ConfidenceSignals,
    source: str | ConfidenceFunction = CAPO_DEFAULTS["confidence"],
    tau: float = CAPO_DEFAULTS["tau"],
) -> Tensor:
    """c in [0, 1], shape (B,), float32: the confidence that each pair's label is right (detached)."""
    return _log_confidence(signals, source, tau).exp()


def capo_weights(
    signals: ConfidenceSignals,
    *,
    gamma: float = CAPO_DEFAULTS["gamma"],
    tau: float = CAPO_DEFAULTS["tau"],
    source: str | ConfidenceFunction = CAPO_DEFAULTS["confidence"],
    normalize: bool = True,
    strength: Tensor | None = None,
) -> Tensor:
    """CAPO's per-pair weights w = c**gamma * s (optionally normalised to mean 1), shape (B,), float32.

    Computed in log space from detached signals, so the weights are finite and >= 0 for any finite
    input, in any dtype: normalisation is ``B * softmax(gamma * log c + log s)``, which keeps the
    relative weights exact even when every c**gamma underflows. A batch whose strengths are all 0
    gets all-zero weights.
    """
    log_confidence = _log_confidence(signals, source, tau)
    # gamma = 0 must give c**0 = 1 even where c = 0 (0 * -inf would be NaN).
    log_weights = gamma * log_confidence if gamma != 0 else torch.zeros_like(log_confidence)
    if strength is not None:
        log_weights = log_weights + torch.log(strength.detach().float())
    if not normalize:
        return log_weights.exp()
    if torch.isneginf(log_weights).all():
        return torch.zeros_like(log_weights)
    return log_weights.numel() * torch.softmax(log_weights, dim=0)


@register_loss("capo")
def capo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
    *,
    beta: float = 0.1,
    chosen_lengths: Tensor | None = None,
    rejected_lengths: Tensor | None = None,
    gamma: float = CAPO_DEFAULTS["gamma"],
    tau: float = CAPO_DEFAULTS["tau"],
    confidence: str | ConfidenceFunction = CAPO_DEFAULTS["confidence"],
    normalize: bool = True,
    strength: Tensor | None = None,
) -> PreferenceLossOutput:
    """CAPO as this project derives it (book, ch. 2): l_i = -w_i log sigmoid(m_i), w = stopgrad(c**gamma s).

    The defaults are :data:`CAPO_DEFAULTS` (the reference source, tau = 1, gamma = 1), which need
    ``chosen_lengths`` and ``rejected_lengths``; ``confidence="sigmoid", tau=1`` is the literal
    reading of the paper's relative-reward confidence, which the book (ch. 2) argues fails.

    Args:
        gamma: focusing exponent (>= 0); gamma = 0 with s = 1 is exactly DPO.
        tau: temperature (> 0) of the confidence logit.
        confidence: where c comes from: "sigmoid" (alias "implicit", sigmoid(m / tau)), "batch"
            (m standardised over the batch), "reference" (the reference model's per-token
            likelihood margin), "policy" (the same under the current policy), or a callable taking
            :class:`ConfidenceSignals` and returning c of shape (B,) in [0, 1].
        normalize: rescale the weights to mean 1 over the batch (keeps the loss scale of DPO).
        strength: (B,) prior strength s >= 0 from the data set (None: 1 for every pair).
    """
    chosen_rewards, rejected_rewards = _implicit_rewards(
        policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta
    )
    margin = chosen_rewards - rejected_rewards
    signals = ConfidenceSignals(
        margin=margin.detach(),
        reference_margin=_per_token_margin(
            reference_chosen_logps, reference_rejected_logps, chosen_lengths, rejected_lengths
        ),
        policy_margin=_per_token_margin(
            policy_chosen_logps.detach(), policy_rejected_logps.detach(), chosen_lengths, rejected_lengths
        ),
        chosen_lengths=chosen_lengths,
        rejected_lengths=rejected_lengths,
    )
    weights = capo_weights(
        signals, gamma=gamma, tau=tau, source=confidence, normalize=normalize, strength=strength
    ).to(margin.dtype)
    return _output(-weights * F.logsigmoid(margin), chosen_rewards, rejected_rewards, weights)


# --------------------------------------------------------------------------------------------------
# The front door: validation, then dispatch
# --------------------------------------------------------------------------------------------------

# name -> (check, what the parameter must be); only the parameters that each loss accepts are checked.
_PARAMETER_RULES: dict[str, tuple[Callable[[float], bool], str]] = {
    "beta": (lambda v: v > 0, "a number > 0"),
    "gamma": (lambda v: v >= 0, "a number >= 0"),
    "tau": (lambda v: v > 0, "a number > 0"),
    "target_margin": (lambda v: True, "a finite number"),
}
_LABEL_SMOOTHING_RULES = {
    "cdpo": (lambda v: 0 <= v <= 0.5, "in [0, 0.5]"),
    "rdpo": (lambda v: 0 <= v < 0.5, "in [0, 0.5) (robust DPO divides by 1 - 2 * label_smoothing)"),
}


def _check_tensor(name: str, value, batch_shape: torch.Size | None) -> torch.Size:
    if not isinstance(value, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape (B,), got {type(value).__name__}")
    if value.dim() != 1:
        raise ValueError(f"{name} must have shape (B,) (one value per pair), got shape {tuple(value.shape)}")
    if batch_shape is not None and value.shape != batch_shape:
        raise ValueError(
            f"{name} has shape {tuple(value.shape)} but the other inputs have shape {tuple(batch_shape)}: "
            "every tensor must hold one value per pair"
        )
    if not bool(torch.isfinite(value).all()):
        bad = torch.nonzero(~torch.isfinite(value)).flatten()[:5].tolist()
        raise ValueError(f"{name} holds non-finite values (NaN or inf) at pair index {bad}")
    return value.shape


def _check_logps(spec: LossSpec, arguments: dict[str, Tensor | None]) -> None:
    """Shape, finiteness and presence checks for the log-prob and length tensors."""
    batch_shape = None
    for argument in _LOGP_ARGUMENTS:
        value = arguments[argument]
        if value is None:
            if argument.startswith("reference") and not spec.needs_reference:
                continue
            raise ValueError(f"loss {spec.name!r} needs {argument}; got None")
        batch_shape = _check_tensor(argument, value, batch_shape)
    for argument in _LENGTH_ARGUMENTS:
        value = arguments[argument]
        if value is None:
            if spec.needs_lengths:
                raise ValueError(
                    f"loss {spec.name!r} needs {argument} (completion token counts, shape (B,)); got None"
                )
            continue
        _check_tensor(argument, value, batch_shape)
        if not bool((value > 0).all()):
            raise ValueError(f"{argument} must be > 0 (completion token counts); got {value.tolist()[:8]}")


def check_loss_parameters(name: str, **params) -> None:
    """Raise ValueError when ``name`` is not a loss or one of its scalar ``params`` is unknown or out of
    range (tensors such as ``strength`` are checked later, with the batch). Configs call this early."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; known losses: {sorted(LOSSES)}")
    accepted = list(LOSSES[name].parameters)
    for key, value in params.items():
        if key not in accepted:
            raise ValueError(f"loss {name!r} has no parameter {key!r}; it accepts {accepted}")
        rule = _LABEL_SMOOTHING_RULES.get(name) if key == "label_smoothing" else _PARAMETER_RULES.get(key)
        if rule is None:
            continue
        check, requirement = rule
        is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not is_number or value != value or not check(value):
            raise ValueError(f"loss {name!r}: {key} must be {requirement}, got {value!r}")
        if abs(value) == float("inf"):
            raise ValueError(f"loss {name!r}: {key} must be finite, got {value!r}")
    source = params.get("confidence")
    if source is not None and not callable(source) and source not in CONFIDENCE_SOURCES:
        raise ValueError(
            f"loss {name!r}: unknown confidence source {source!r}; "
            f"use one of {sorted(CONFIDENCE_SOURCES)} or a callable(ConfidenceSignals) -> Tensor"
        )


def _check_strength(params: dict, batch_shape: torch.Size) -> None:
    strength = params.get("strength")
    if strength is not None:
        _check_tensor("strength", strength, batch_shape)
        if not bool((strength >= 0).all()):
            raise ValueError(f"strength must be >= 0 for every pair; got {strength.tolist()[:8]}")


def preference_loss(
    name: str,
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor | None,
    reference_rejected_logps: Tensor | None,
    *,
    beta: float = 0.1,
    chosen_lengths: Tensor | None = None,
    rejected_lengths: Tensor | None = None,
    validate: bool = True,
    **params,
) -> PreferenceLossOutput:
    """Compute the registered loss ``name`` per pair, after checking every input.

    Args:
        name: a key of :data:`LOSSES` ("dpo", "cdpo", "rdpo", "ipo", "hinge", "simpo", "sft", "capo").
        policy_chosen_logps, policy_rejected_logps: (B,) summed completion log-probs under the policy.
        reference_chosen_logps, reference_rejected_logps: (B,) the same under the reference model
            (may be None for a loss whose spec says ``needs_reference=False``: "simpo", "sft").
        beta: the inverse temperature of the implicit reward (> 0).
        chosen_lengths, rejected_lengths: (B,) completion token counts (needed by a loss whose spec
            says ``needs_lengths``: "ipo", "simpo", "sft"; and by capo's "reference" and "policy"
            confidence sources, its default among them).
        validate: check shapes, finiteness and parameter ranges (one host sync); a training loop
            that guards its loss for NaN may pass False.
        **params: the loss's own parameters (e.g. ``gamma``, ``tau`` for "capo"); those not given
            take the spec's ``defaults``.

    Returns:
        PreferenceLossOutput(losses, chosen_rewards, rejected_rewards, weights), each (B,).

    Raises:
        ValueError: naming the argument and what is wrong with it.
    """
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; known losses: {sorted(LOSSES)}")
    spec = LOSSES[name]
    arguments = dict(
        policy_chosen_logps=policy_chosen_logps,
        policy_rejected_logps=policy_rejected_logps,
        reference_chosen_logps=reference_chosen_logps,
        reference_rejected_logps=reference_rejected_logps,
        chosen_lengths=chosen_lengths,
        rejected_lengths=rejected_lengths,
    )
    if validate:
        _check_logps(spec, arguments)
        check_loss_parameters(name, beta=beta, **params)
        _check_strength(params, policy_chosen_logps.shape)
    return spec(**arguments, beta=beta, **params)
