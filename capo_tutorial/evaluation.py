"""Score a trained policy on a preference data set: per-pair implicit rewards and their summaries.

The implicit reward of a response is ``beta * (log pi_theta(y|x) - log pi_ref(y|x))`` (SimPO, a
reference-free loss, scores with its own length-normalised reward instead). A pair is ranked
correctly when the chosen response gets the larger reward.

:func:`score_pairs` scores any model and data set; :func:`score_run` a run's evaluation split;
:func:`evaluate_run` (``capo eval``) a finished run's latest checkpoint, rebuilt from its folder.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import datasets
import pandas as pd
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from capo_tutorial.checkpoint import latest_checkpoint, load_trainable_weights
from capo_tutorial.components import Components, build_components
from capo_tutorial.config import RunConfig
from capo_tutorial.logprobs import concatenated_logps
from capo_tutorial.losses import LOSSES
from capo_tutorial.metrics import expected_calibration_error, per_language_summary
from capo_tutorial.reference import Reference, freeze_reference

__all__ = ["evaluate_run", "evaluation_summary", "score_pairs", "score_run"]

# Per-pair metadata copied into the predictions table when the data set has it.
METADATA_COLUMNS = (
    *("pair_id", "language", "script", "task", "margin_class", "flipped", "systematic_candidate", "strength"),
)


@torch.no_grad()
def score_pairs(
    model: nn.Module,
    reference: Reference,
    dataset: datasets.Dataset,
    collator,
    *,
    beta: float,
    batch_size: int = 32,
    accelerator=None,
    reference_free: bool = False,
) -> pd.DataFrame:
    """Implicit rewards of every pair of ``dataset`` (one row per pair, in data set order).

    Args:
        model: the policy.
        reference: gives the reference log-probs (ignored when ``reference_free``).
        dataset: tokenized pairs (with reference columns when the reference is precomputed).
        collator: builds the 2B batch.
        beta: the reward's inverse temperature.
        batch_size: pairs per forward pass.
        accelerator: an ``accelerate.Accelerator`` to shard the work over processes (optional).
        reference_free: score with beta * mean token log-prob (SimPO's reward).

    Returns:
        DataFrame with the metadata columns the data set has, and policy/reference log-probs,
        completion lengths, chosen_reward, rejected_reward, margin, correct (strict r_w > r_l).
    """
    was_training = model.training
    model.eval()
    indexed = dataset.add_column("_row", list(range(len(dataset))))
    loader = DataLoader(indexed, batch_size=batch_size, shuffle=False, collate_fn=collator)
    if accelerator is not None:
        loader = accelerator.prepare(loader)
    pieces = []
    device = next(model.parameters()).device
    for batch in loader:
        if accelerator is None:  # a prepared loader places batches itself
            batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        # The run's precision (fp16/bf16 autocast on a GPU; nothing on a CPU in fp32).
        with accelerator.autocast() if accelerator is not None else contextlib.nullcontext():
            piece = _score_batch(model, reference, batch, beta, reference_free)
        if accelerator is not None:
            piece = accelerator.gather_for_metrics(piece)
        pieces.append({key: value.cpu() for key, value in piece.items()})
    model.train(was_training)
    columns = {key: torch.cat([p[key] for p in pieces]).numpy() for key in pieces[0]}
    return _predictions_frame(dataset, columns)


def _score_batch(
    model, reference: Reference, batch: dict, beta: float, reference_free: bool
) -> dict[str, Tensor]:
    policy = concatenated_logps(model, batch)
    rows = torch.as_tensor(batch["_row"], device=policy.chosen_logps.device)
    if reference_free:
        ref_chosen = torch.zeros_like(policy.chosen_logps)
        ref_rejected = torch.zeros_like(policy.rejected_logps)
        chosen_reward = beta * policy.chosen_logps / policy.chosen_lengths
        rejected_reward = beta * policy.rejected_logps / policy.rejected_lengths
    else:
        ref_chosen, ref_rejected = reference.logps(batch)
        chosen_reward = beta * (policy.chosen_logps - ref_chosen)
        rejected_reward = beta * (policy.rejected_logps - ref_rejected)
    return {
        "_row": rows,
        "policy_chosen_logps": policy.chosen_logps,
        "policy_rejected_logps": policy.rejected_logps,
        "reference_chosen_logps": ref_chosen,
        "reference_rejected_logps": ref_rejected,
        "chosen_length": policy.chosen_lengths,
        "rejected_length": policy.rejected_lengths,
        "chosen_reward": chosen_reward,
        "rejected_reward": rejected_reward,
    }


def _predictions_frame(dataset: datasets.Dataset, columns: dict) -> pd.DataFrame:
    frame = pd.DataFrame(columns).sort_values("_row").drop_duplicates("_row")
    rows = frame.pop("_row").to_numpy()
    for column in METADATA_COLUMNS:
        if column in dataset.column_names:
            frame.insert(0, column, pd.Series(list(dataset[column])).iloc[rows].to_numpy())
    frame["margin"] = frame.chosen_reward - frame.rejected_reward
    frame["correct"] = frame.chosen_reward > frame.rejected_reward
    return frame.reset_index(drop=True)


def evaluation_summary(predictions: pd.DataFrame) -> pd.DataFrame:
    """Per-language table (n, accuracy with a Wilson interval, margins, rewards) plus ECE per language.

    Calibration scores sigmoid(margin) against the true label: every label is right on a clean
    split; where a ``flipped`` column exists, flipped pairs count as labelled wrong.
    """
    table = per_language_summary(predictions.language, predictions.chosen_reward, predictions.rejected_reward)
    ece = {language: _ece(rows) for language, rows in predictions.groupby("language")}
    ece["all"] = _ece(predictions)
    table["ece"] = pd.Series(ece)
    return table


def _ece(predictions: pd.DataFrame) -> float:
    labels = ~predictions.flipped.astype(bool) if "flipped" in predictions else None
    return expected_calibration_error(predictions.margin, labels)


def score_run(config: RunConfig, components: Components, accelerator=None) -> pd.DataFrame:
    """:func:`score_pairs` on a run's evaluation split, with the run's beta, batch size and reward
    (reference-free for a loss that trains without a reference)."""
    return score_pairs(
        components.model,
        components.reference,
        components.eval_dataset,
        components.collator,
        beta=config.beta,
        batch_size=config.eval_batch_size,
        accelerator=accelerator,
        reference_free=not LOSSES[config.loss].needs_reference,
    )


def evaluate_run(run_dir: str | Path, *, split: str | None = None) -> pd.DataFrame:
    """Per-language evaluation of a finished run's latest checkpoint on ``split`` (default: its eval split).

    Rebuilds the run's data and model from ``run_dir/config.json``, loads its reference weights and
    its latest checkpoint, and scores every pair of the split (``capo eval``).
    """
    # The run's Accelerate set-up (precision, processes) is the training loop's, which imports this module.
    from capo_tutorial.training import make_accelerator

    run_dir = Path(run_dir)
    if not (run_dir / "config.json").exists():
        raise FileNotFoundError(
            f"{run_dir} holds no config.json: is it the output_dir of a `capo train` run?"
        )
    config = RunConfig.load(run_dir / "config.json")
    config = config.replace(resume=True, output_dir=str(run_dir), eval_split=split or config.eval_split)
    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is None:
        raise FileNotFoundError(f"{run_dir} holds no checkpoint-* folder: the run did not finish a stage")
    accelerator = make_accelerator(config)
    components = build_components(config)
    freeze_reference(config, components, accelerator, load=True)
    load_trainable_weights(components.model, checkpoint / "model.safetensors")
    return evaluation_summary(score_run(config, components, accelerator))
