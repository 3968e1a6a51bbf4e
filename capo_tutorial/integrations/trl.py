"""CAPO inside TRL: :class:`CAPOTrainer`, a ``trl.DPOTrainer`` whose loss is any loss of capo_tutorial.

One line changes in a TRL DPO script: the config and the trainer class::

    from capo_tutorial.integrations.trl import CAPOConfig, CAPOTrainer

    args = CAPOConfig(output_dir="out", beta=0.1, capo_loss="capo")  # CAPO_DEFAULTS
    trainer = CAPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    trainer.train()

What stays TRL's: the data pipeline (prompt extraction, tokenization, the collator's 2B batch of
chosen rows then rejected rows with a completion mask), the reference model (a ``ref_model``, the
frozen copy TRL loads from the policy's name_or_path, the disabled PEFT adapter, or log-probs that
TRL precomputes into the columns ``ref_chosen_logps`` / ``ref_rejected_logps``; not run for a loss
registered with ``needs_reference=False``), optimisation,
logging and checkpoints. What changes is :meth:`CAPOTrainer.compute_loss`: summed completion
log-probs from :func:`capo_tutorial.logprobs.concatenated_logps`, then the per-pair loss from
:func:`capo_tutorial.losses.preference_loss`, averaged over the batch.

Metrics, under TRL's names: rewards/chosen, rewards/rejected, rewards/accuracies, rewards/margins,
logps/chosen, logps/rejected, num_tokens; and weights/mean, weights/std, weights/min, weights/max,
the per-pair weights of the loss (CAPO's w_i; ones for unweighted losses), each a per-batch value
averaged over the logging interval as TRL does. TRL's entropy, logits/* and mean_token_accuracy
need the full logits, which this trainer does not keep, and are not logged.

A dataset column ``strength`` (a float >= 0 per row: CAPO's prior strength s_i, see the book's
chapter 2, e.g. the annotators' agreement) travels through TRL's pipeline into every loss that
takes ``strength``.

A known difference from ``capo_tutorial.training``: a weighted loss's weights (CAPO's, normalised to
mean 1) are normalised here within each micro-batch on each device, because TRL computes the loss
one micro-batch at a time. The package's own loop normalises them over the whole optimizer step
(every micro-batch of an accumulation, every process), so that a micro-batch of suspect pairs keeps
its small weight. With ``gradient_accumulation_steps`` > 1 or several processes the two differ; to
match, put the step's pairs in one micro-batch (``per_device_train_batch_size``) on one device.

Supported TRL versions: :data:`SUPPORTED_TRL`. TRL rewrote DPOTrainer in 0.29 (the loss moved
inline into ``_compute_loss`` and the collator's batch became the 2B layout used here), so older
versions are refused at import.
"""

from __future__ import annotations

import contextlib
import json
import numbers
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from packaging.version import Version
from torch import Tensor, nn

from capo_tutorial.logprobs import PairLogps, concatenated_logps
from capo_tutorial.losses import CAPO_DEFAULTS, LOSSES, PreferenceLossOutput, preference_loss

__all__ = ["STRENGTH_COLUMN", "SUPPORTED_TRL", "CAPOConfig", "CAPOTrainer", "StrengthCollator"]

SUPPORTED_TRL = ">=0.29,<2"
"""The TRL versions this integration supports and is tested against (0.29.1 and the newest 1.x)."""

STRENGTH_COLUMN = "strength"
"""The dataset column (and batch key) holding each pair's prior strength s_i >= 0."""

_INSTALL_HINT = 'pip install "capo-tutorial[trl]"'
_OLDEST, _NEWEST_EXCLUDED = Version("0.29"), Version("2")


def _import_trl():
    """Import TRL, or raise an ImportError that says how to install a supported version."""
    try:
        import trl
    except ImportError as error:
        raise ImportError(
            f"capo_tutorial.integrations.trl needs TRL ({SUPPORTED_TRL}), which is not installed: "
            f"{_INSTALL_HINT}"
        ) from error
    version = Version(trl.__version__)
    if version < _OLDEST:
        raise ImportError(
            f"capo_tutorial.integrations.trl supports trl{SUPPORTED_TRL}, found trl {trl.__version__} "
            f"(TRL rewrote DPOTrainer in 0.29): {_INSTALL_HINT} installs a supported version"
        )
    if version >= _NEWEST_EXCLUDED:
        warnings.warn(
            f"capo_tutorial.integrations.trl is tested with trl{SUPPORTED_TRL}; found trl {trl.__version__}. "
            "If CAPOTrainer fails, pin a supported version: " + _INSTALL_HINT,
            stacklevel=3,
        )
    return trl


_import_trl()

from accelerate.utils import is_peft_model  # noqa: E402  (after the TRL check, which explains a missing TRL)
from trl import DPOConfig, DPOTrainer  # noqa: E402
from trl.models.utils import disable_gradient_checkpointing  # noqa: E402
from trl.trainer.utils import use_adapter  # noqa: E402

# --------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------

# DPOConfig fields that select TRL's own loss computation; CAPOTrainer replaces it, so each must keep
# its default. name -> (default, what to do instead).
_TRL_LOSS_FIELDS: dict[str, tuple[Any, str]] = {
    "loss_type": (["sigmoid"], "choose the loss with capo_loss (e.g. 'dpo', 'ipo', 'hinge', 'rdpo', 'capo')"),
    "loss_weights": (None, "combine losses in a loss of your own, registered with register_loss"),
    "label_smoothing": (0.0, "put it into capo_params, e.g. capo_params={'label_smoothing': 0.1}"),
    "ld_alpha": (None, "leave it unset: CAPOTrainer sums log-probs over every completion token"),
    "f_divergence_type": ("reverse_kl", "leave it at 'reverse_kl'"),
    "use_weighting": (False, "use capo_loss='capo' for per-pair weights"),
    "use_liger_kernel": (False, "leave it False: the loss is computed from the model's logits"),
}


def _default_of(value: Any) -> Any:
    """A comparable form of a config value (TRL turns a str loss_type into a one-element list)."""
    return list(value) if isinstance(value, tuple) else value


def _validate_loss_params(name: str, params: Mapping[str, Any], beta: float) -> None:
    """Run the loss once on two dummy pairs so that a bad name or parameter fails at configuration."""
    if name not in LOSSES:
        raise ValueError(f"CAPOConfig.capo_loss: unknown loss {name!r}; known losses: {sorted(LOSSES)}")
    for reserved, where in (
        ("beta", "it is DPOConfig's beta: set CAPOConfig(beta=...)"),
        (STRENGTH_COLUMN, f"it comes per row from the dataset column {STRENGTH_COLUMN!r}"),
    ):
        if reserved in params:
            raise ValueError(f"CAPOConfig.capo_params must not contain {reserved!r}: {where}")
    logps = torch.tensor([-4.0, -6.0])
    lengths = torch.tensor([2.0, 3.0])
    reference = (logps - 1, logps.flip(0) - 1) if LOSSES[name].needs_reference else (None, None)
    try:
        preference_loss(
            name,
            logps,
            logps.flip(0),
            *reference,
            beta=beta,
            chosen_lengths=lengths,
            rejected_lengths=lengths.flip(0),
            **params,
        )
    except (ValueError, TypeError) as error:
        raise ValueError(f"CAPOConfig.capo_params for loss {name!r}: {error}") from error


@dataclass
class CAPOConfig(DPOConfig):
    """TRL's DPOConfig plus the loss of capo_tutorial that :class:`CAPOTrainer` trains with.

    Every DPOConfig field keeps its meaning (beta included: it is the loss's beta). The fields of
    DPOConfig that choose TRL's own loss (loss_type, loss_weights, label_smoothing, ld_alpha,
    f_divergence_type, use_weighting, use_liger_kernel) must stay at their defaults: the loss is
    ``capo_loss`` with ``capo_params``.

    Note TRL's CPU-unfriendly defaults: bf16=True, gradient_checkpointing=True, learning_rate=1e-6.
    """

    capo_loss: str = field(
        default="capo",
        metadata={
            "help": "Name of the loss in capo_tutorial.losses.LOSSES: 'capo', 'dpo', 'cdpo', 'rdpo', "
            "'ipo', 'hinge', 'simpo', 'sft', or one registered with register_loss."
        },
    )
    capo_params: dict[str, Any] | str | None = field(
        default=None,
        metadata={
            "help": "Keyword parameters of the loss besides beta; those left out take the loss's "
            f"registered defaults (for 'capo': {dict(CAPO_DEFAULTS)}). A JSON string is accepted "
            "(command line). A callable confidence must be a module-level function, so that "
            "checkpoints can pickle it."
        },
    )

    _VALID_DICT_FIELDS: ClassVar[list[str]] = [*DPOConfig._VALID_DICT_FIELDS, "capo_params"]

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.capo_params, str):
            self.capo_params = json.loads(self.capo_params)
        self.capo_params = dict(self.capo_params or {})
        problems = [
            f"{name}={getattr(self, name)!r}: {advice}"
            for name, (default, advice) in _TRL_LOSS_FIELDS.items()
            if hasattr(self, name) and _default_of(getattr(self, name)) != default
        ]
        if problems:
            raise ValueError(
                "CAPOConfig: CAPOTrainer computes the loss named by capo_loss, so these DPOConfig fields of "
                "TRL's own loss must keep their defaults:\n  " + "\n  ".join(problems)
            )
        _validate_loss_params(self.capo_loss, self.capo_params, self.beta)


# --------------------------------------------------------------------------------------------------
# The strength column, through TRL's collator
# --------------------------------------------------------------------------------------------------


def _strength_tensor(values: Sequence[Any], column: str) -> Tensor:
    """(B,) float32 tensor of the batch rows' strengths, or a ValueError naming the bad value."""
    for position, value in enumerate(values):
        is_number = isinstance(value, numbers.Real) and not isinstance(value, bool)
        if not is_number or value != value or value < 0:
            raise ValueError(
                f"column {column!r}: row {position} of this batch holds {value!r}; every row needs a number "
                ">= 0 (1.0 means no prior, 0.0 drops the pair from the loss): fix or fill the column"
            )
    return torch.tensor(values, dtype=torch.float32)


@dataclass
class StrengthCollator:
    """Wraps a preference collator: adds the rows' ``strength`` values as a (B,) float32 tensor.

    TRL's collators build the 2B batch from prompt/chosen/rejected ids and drop every other column;
    this wrapper reads the strength column first and puts it back under the same key.
    """

    collator: Callable[[list[dict[str, Any]]], dict[str, Any]]
    column: str = STRENGTH_COLUMN

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        strengths = [example[self.column] for example in examples] if self._present(examples) else None
        batch = self.collator(examples)
        if strengths is not None:
            batch[self.column] = _strength_tensor(strengths, self.column)
        return batch

    def _present(self, examples: list[dict[str, Any]]) -> bool:
        return bool(examples) and isinstance(examples[0], Mapping) and self.column in examples[0]


# --------------------------------------------------------------------------------------------------
# The trainer
# --------------------------------------------------------------------------------------------------


class CAPOTrainer(DPOTrainer):
    """TRL's DPOTrainer with the loss computed by :func:`capo_tutorial.losses.preference_loss`.

    Takes DPOTrainer's arguments (model, ref_model, args, train_dataset, eval_dataset,
    processing_class, peft_config, ...), with ``args`` a :class:`CAPOConfig`. The reference is TRL's:
    precomputed columns when ``precompute_ref_log_probs=True``, else ``ref_model`` (given, or loaded by
    TRL from the policy's name_or_path), else the policy with its PEFT adapter disabled.
    """

    _tag_names: ClassVar[list[str]] = ["trl", "dpo", "capo"]
    _name = "CAPO"

    def __init__(
        self, model: Any, ref_model: nn.Module | None = None, args: CAPOConfig | None = None, **kwargs
    ):
        if args is None:
            args = CAPOConfig(output_dir="capo-trainer-output")
        if not isinstance(args, CAPOConfig):
            raise TypeError(
                f"CAPOTrainer takes args=CAPOConfig(...), got {type(args).__name__}: CAPOConfig accepts "
                "every DPOConfig field plus capo_loss and capo_params"
            )
        super().__init__(model, ref_model=ref_model, args=args, **kwargs)
        if getattr(self, "_is_vision_dataset", False):
            raise ValueError("CAPOTrainer supports text preference data only; this dataset has images")
        if getattr(self, "aux_loss_enabled", False):
            raise ValueError(
                "CAPOTrainer does not add a Mixture-of-Experts router loss: "
                "set CAPOConfig(router_aux_loss_coef=0.0)"
            )
        self.capo_loss: str = args.capo_loss
        self.capo_params: dict[str, Any] = dict(args.capo_params)
        self._loss_takes_strength = LOSSES[args.capo_loss].takes_strength
        self.data_collator = StrengthCollator(self.data_collator)
        self._warn_if_strength_unused()

    def _warn_if_strength_unused(self) -> None:
        columns = getattr(self.train_dataset, "column_names", None) or []
        if STRENGTH_COLUMN in columns and not self._loss_takes_strength:
            warnings.warn(
                f"the training data has a {STRENGTH_COLUMN!r} column but loss {self.capo_loss!r} takes no "
                "strength, so it is ignored (capo_loss='capo' uses it)",
                stacklevel=3,
            )

    # -- data: keep the strength column, and keep it away from the model --------------------------

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        if STRENGTH_COLUMN not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, STRENGTH_COLUMN]

    def compute_ref_log_probs(self, *args: Any) -> tuple[Tensor, Tensor]:
        """TRL's reference precompute (its signature varies by version), without the strength key."""
        *leading, inputs = args
        inputs = {key: value for key, value in inputs.items() if key != STRENGTH_COLUMN}
        return super().compute_ref_log_probs(*leading, inputs)

    # -- the loss -----------------------------------------------------------------------------------

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Tensor],
        return_outputs: bool = False,
        num_items_in_batch: Tensor | None = None,
    ) -> Tensor | tuple[Tensor, Any]:
        """Mean over the batch of the per-pair loss ``capo_loss``; logs TRL's metrics and the weights.

        Args:
            model: the policy (possibly wrapped by Accelerate or PEFT).
            inputs: TRL's collated batch: input_ids, attention_mask, completion_mask, each (2B, T),
                chosen rows first; optionally ref_chosen_logps, ref_rejected_logps and strength, (B,).
            return_outputs: also return the model's outputs on the batch (for compute_metrics).
            num_items_in_batch: unused (the loss is a mean over pairs, as in TRL).
        """
        mode = "train" if self.model.training else "eval"
        batch = self._text_batch(inputs)
        policy = concatenated_logps(model, batch)
        reference_chosen = reference_rejected = None  # a reference-free loss (SimPO, SFT) needs none
        if LOSSES[self.capo_loss].needs_reference:
            reference_chosen, reference_rejected = (
                logps.to(policy.chosen_logps) for logps in self._reference_logps(inputs, batch)
            )
        params = dict(self.capo_params)
        if self._loss_takes_strength and STRENGTH_COLUMN in inputs:
            params[STRENGTH_COLUMN] = inputs[STRENGTH_COLUMN].to(policy.chosen_logps)
        output = preference_loss(
            self.capo_loss,
            policy.chosen_logps,
            policy.rejected_logps,
            reference_chosen,
            reference_rejected,
            beta=self.beta,
            chosen_lengths=policy.chosen_lengths,
            rejected_lengths=policy.rejected_lengths,
            **params,
        )
        loss = output.losses.mean()
        self._record_metrics(mode, inputs, policy, output)
        if not return_outputs:
            return loss
        with torch.no_grad():
            outputs = model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
            )
        return loss, outputs

    def _text_batch(self, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        """input_ids, attention_mask, completion_mask, (2B, T); truncated as TRL 0.29 does in its loss."""
        fields = inputs["input_ids"], inputs["attention_mask"], inputs["completion_mask"]
        if hasattr(self, "_truncate_inputs"):  # TRL 0.29 truncates here; 1.x truncates in the collator
            fields = self._truncate_inputs(*fields)
        return dict(zip(("input_ids", "attention_mask", "completion_mask"), fields))

    def _reference_logps(self, inputs: dict[str, Tensor], batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """(B,) summed completion log-probs of chosen and rejected under the reference, detached."""
        if self.args.precompute_ref_log_probs:
            return inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
        with (
            torch.no_grad(),
            disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs),
            self._reference_model() as reference,
        ):
            reference_logps = concatenated_logps(reference, batch)
        return reference_logps.chosen_logps, reference_logps.rejected_logps

    @contextlib.contextmanager
    def _reference_model(self) -> Iterator[nn.Module]:
        """The reference as TRL chooses it: ref_model, else the policy with its adapter disabled."""
        if self.ref_model is not None:
            yield self.ref_model
        elif is_peft_model(self.model):
            # A new adapter: disabling it gives the base model. A re-trained adapter: TRL copied it as "ref".
            unwrapped = self.accelerator.unwrap_model(self.model)
            with use_adapter(unwrapped, adapter_name="ref" if "ref" in unwrapped.peft_config else None):
                yield self.model
        else:
            raise RuntimeError(
                "CAPOTrainer has no reference model: pass ref_model, a PEFT model, or "
                "precompute_ref_log_probs=True"
            )

    # -- metrics ------------------------------------------------------------------------------------

    def _record_metrics(
        self, mode: str, inputs: dict[str, Tensor], policy: PairLogps, output: PreferenceLossOutput
    ) -> None:
        """Append this batch's metrics (gathered over processes) to TRL's store, which ``log`` averages."""
        gather = self.accelerator.gather_for_metrics
        chosen, rejected = gather(output.chosen_rewards.float()), gather(output.rejected_rewards.float())
        weights = gather(output.weights.float())
        values = {
            "rewards/chosen": chosen.mean(),
            "rewards/rejected": rejected.mean(),
            "rewards/accuracies": (chosen > rejected).float().mean(),
            "rewards/margins": (chosen - rejected).mean(),
            "logps/chosen": gather(policy.chosen_logps.detach()).mean(),
            "logps/rejected": gather(policy.rejected_logps.detach()).mean(),
            "weights/mean": weights.mean(),
            "weights/std": weights.std(correction=0),
            "weights/min": weights.min(),
            "weights/max": weights.max(),
        }
        for name, value in zip(values, torch.stack(list(values.values())).tolist()):  # one host sync
            self._metrics[mode][name].append(value)
        if mode == "train":
            tokens = gather(inputs["attention_mask"].sum()).sum().item()
            self._total_train_tokens += tokens // getattr(self, "_tp_size", 1)
        self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
