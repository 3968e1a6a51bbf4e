"""The training loop: an optional SFT warm-up, then preference optimisation, on Hugging Face Accelerate.

The same code runs on 2 CPU cores, one GPU, or many processes (``accelerate launch``): Accelerate
places the model, shards the batches, averages the gradients and gathers the metrics.

    stage "sft"          -mean log pi(y_w|x) per chosen token, on the chosen responses only
    stage "preference"   the configured loss (capo_tutorial.losses) on the 2B batch

A weighted loss (CAPO) has its weights normalised to mean 1 over the whole optimizer step, every
micro-batch of an accumulation and every process, not over each micro-batch (see _StepWeights);
its logged ``weights/*`` are then the raw weights. With fp16 a step whose gradients overflow is
skipped by the loss scaler and counted (``skipped``); only many in a row stop the run.

After the warm-up, the policy is frozen into the reference model. Metrics use TRL's names
(loss, rewards/chosen, rewards/rejected, rewards/accuracies, rewards/margins, logps/chosen, ...)
and go to ``history.jsonl``; the final per-language evaluation goes to ``evaluation.csv``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import set_seed
from torch import Tensor
from torch.utils.data import DataLoader
from transformers import get_scheduler

from capo_tutorial._io import exclusive_lock
from capo_tutorial.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from capo_tutorial.components import Components, build_components
from capo_tutorial.config import RunConfig
from capo_tutorial.evaluation import evaluation_summary, score_run
from capo_tutorial.logprobs import concatenated_logps
from capo_tutorial.losses import LOSSES, preference_loss
from capo_tutorial.reference import freeze_reference
from capo_tutorial.warmup import reference_weights_path, sft_step

__all__ = ["TrainResult", "TrainingDivergedError", "make_accelerator", "train"]


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept on disk."""


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        history: one row per logged step (TRL metric names, plus stage, step, epoch, learning_rate).
        evaluation: per-language table on the evaluation split (see ``evaluation_summary``).
        predictions: one row per evaluated pair (rewards, log-probs, metadata).
        output_dir: where the run wrote history.jsonl, evaluation.csv, predictions.csv, config.json
            and its checkpoints.
        seconds: wall-clock seconds of each stage.
    """

    history: pd.DataFrame
    evaluation: pd.DataFrame
    predictions: pd.DataFrame
    output_dir: Path
    config: RunConfig
    seconds: dict[str, float] = field(default_factory=dict)
    components: Components | None = None


@dataclass
class _Progress:
    """Where a run is: the stage, optimizer steps done in it, and the data position."""

    stage: str = "sft"
    step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dict(
            stage=self.stage, step=self.step, epoch=self.epoch, batches_in_epoch=self.batches_in_epoch
        )


@dataclass
class _Run:
    """What both stages of one run share: its settings, model and data, Accelerate, and history."""

    config: RunConfig
    components: Components
    accelerator: Accelerator
    logger: _Logger


def train(config: RunConfig, *, components: Components | None = None) -> TrainResult:
    """Run the configured training and evaluation; see the module docstring for the stages.

    Args:
        config: the run (``capo_tutorial.config.profile_config`` gives the profiles' configs).
        components: model, tokenizer, data and collator built already (default: built from config).

    Returns:
        A :class:`TrainResult`. Files are written to ``config.output_dir`` by the main process.

    Raises:
        TrainingDivergedError: the loss became NaN or inf (the last checkpoint is kept).
    """
    if config.loss not in LOSSES:
        raise ValueError(f"RunConfig.loss {config.loss!r} is not a loss; known losses: {sorted(LOSSES)}")
    accelerator = make_accelerator(config)
    set_seed(config.seed)
    output_dir = Path(config.output_dir)
    resume_from = latest_checkpoint(output_dir) if config.resume else None
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        config.save(output_dir / "config.json")
    components = components or build_components(config)
    logger = _Logger(output_dir / "history.jsonl", accelerator, config, fresh=resume_from is None)
    progress = _Progress(stage="sft" if config.sft_steps else "preference")
    if resume_from is not None:
        progress = _Progress(**json.loads((resume_from / "state.json").read_text())["progress"])
        logger.truncate(progress)
    run = _Run(config, components, accelerator, logger)
    seconds: dict[str, float] = {}
    with _one_warmup_at_a_time(config, components):
        warmed_up = progress.stage == "preference" or (
            config.sft_cache and reference_weights_path(config, components).exists()
        )
        if progress.stage == "sft" and warmed_up:
            accelerator.print(
                f"reusing the SFT warm-up cached in {reference_weights_path(config, components)}"
            )
            progress, resume_from = _Progress(stage="preference"), None
        if progress.stage == "sft":
            seconds["sft"] = _run_stage(run, "sft", progress, resume_from)
            progress, resume_from = _Progress(stage="preference"), None
        freeze_reference(config, components, accelerator, load=warmed_up)
    if config.drop_suspect_pairs:  # "audit, drop, then train": the audit's flag on the training pairs
        from capo_tutorial.audit import drop_suspect_pairs

        with accelerator.autocast():  # the run's precision, however the warm-up was obtained
            dropped = drop_suspect_pairs(
                components, config.drop_suspect_pairs, batch_size=config.eval_batch_size
            )
        accelerator.print(f"dropped {dropped} suspect training pairs ({config.drop_suspect_pairs})")
    seconds["preference"] = _run_stage(run, "preference", progress, resume_from)
    start = time.perf_counter()
    predictions = score_run(config, components, accelerator)
    seconds["evaluation"] = time.perf_counter() - start
    evaluation = evaluation_summary(predictions)
    if accelerator.is_main_process:
        evaluation.to_csv(output_dir / "evaluation.csv")
        predictions.to_csv(output_dir / "predictions.csv", index=False)
    accelerator.wait_for_everyone()
    return TrainResult(logger.frame(), evaluation, predictions, output_dir, config, seconds, components)


@contextlib.contextmanager
def _one_warmup_at_a_time(config: RunConfig, components: Components) -> Iterator[None]:
    """Hold a lock on the cached warm-up while it is looked up, made and saved: two runs that need the
    same warm-up at once (two grid slices, two test workers) make it once; the second waits, then
    reads it. Only for a cached warm-up in a single process (a distributed run has its barriers)."""
    if not (config.sft_cache and config.sft_steps) or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        yield
        return
    with exclusive_lock(reference_weights_path(config, components)):  # Windows: unlocked
        yield


def make_accelerator(config: RunConfig) -> Accelerator:
    """Accelerate for this run; processes started by torchrun / ``accelerate launch --multi_gpu`` on a
    machine without CUDA train data-parallel on the CPU (gloo), which needs ``cpu=True``."""
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
    mixed_precision = _mixed_precision(config.precision)
    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision") not in (None, mixed_precision):
        # Accelerate keeps one precision per process; a later run in the same process (a notebook,
        # a benchmark) may ask for another. The distributed set-up (PartialState) is kept.
        AcceleratorState._reset_state()
    return Accelerator(
        cpu=launched and not torch.cuda.is_available(),
        mixed_precision=mixed_precision,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
    )


def _mixed_precision(precision: str) -> str:
    """Accelerate's mixed_precision for a RunConfig.precision.

    "auto" is bf16 on a GPU that computes it natively (compute capability >= 8.0: A100, L4, H100),
    fp16 with loss scaling on older GPUs (T4, V100), and fp32 on a CPU. ``torch.cuda.is_bf16_supported``
    is no guide: it is True on a T4, which only emulates bf16, slowly.
    """
    if precision == "auto":
        if not torch.cuda.is_available():
            return "no"
        return "bf16" if torch.cuda.get_device_capability()[0] >= 8 else "fp16"
    return {"fp32": "no", "fp16": "fp16", "bf16": "bf16"}[precision]


# --------------------------------------------------------------------------------------------------
# One stage: optimizer, schedule, data order, checkpoints
# --------------------------------------------------------------------------------------------------


def _run_stage(run: _Run, stage: str, progress: _Progress, resume_from: Path | None) -> float:
    """Train one stage ("sft" or "preference") to its step count, from ``progress`` (and the checkpoint
    ``resume_from``, if any); returns its wall-clock seconds."""
    config, components, accelerator, logger = run.config, run.components, run.accelerator, run.logger
    total_steps = config.sft_steps if stage == "sft" else config.max_steps
    if total_steps == 0:
        return 0.0
    model = components.model
    optimizer, scheduler = _optimizer_and_schedule(config, model, stage, total_steps)
    if resume_from is not None:
        load_checkpoint(resume_from, model=model, optimizer=optimizer, scheduler=scheduler)
        accelerator.print(f"resumed {stage} from {resume_from} at step {progress.step}")
    prepared_model, optimizer = accelerator.prepare(model, optimizer)
    step_function = sft_step if stage == "sft" else _preference_step
    overflows = _OverflowGuard(config, accelerator)
    step_weights = _StepWeights()
    start = time.perf_counter()
    logger.start(stage, total_steps, progress.step)
    prepared_model.train()  # from_pretrained leaves eval mode, in which checkpointing and dropout are off
    for batch in _batches(components, config, accelerator, progress):
        with accelerator.accumulate(prepared_model):
            metrics = step_function(prepared_model, batch, config, components, accelerator)
            _guard_finite(metrics["loss"], "loss", stage, progress, config, accelerator)
            accelerator.backward(metrics["loss"])
            step_weights.add(metrics)
            if accelerator.sync_gradients:
                step_weights.normalise(prepared_model.parameters(), accelerator)
                # The norm is needed anyway to clip; a non-finite one would poison the weights, except
                # under fp16 loss scaling, where the scaler skips that step and lowers its scale.
                metrics["grad_norm"] = accelerator.clip_grad_norm_(
                    prepared_model.parameters(), config.max_grad_norm or math.inf
                )
                metrics["skipped"] = overflows.check(metrics["grad_norm"], stage, progress)
                if metrics["skipped"]:  # an inf norm says nothing about the run: leave it out of the mean
                    del metrics["grad_norm"]
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        if not accelerator.sync_gradients:
            continue
        scheduler.step()
        progress.step += 1
        logger.record(metrics, progress, scheduler.get_last_lr()[0])
        _maybe_checkpoint(run, progress, total_steps, optimizer, scheduler)
        periodic = config.eval_every and progress.step % config.eval_every == 0
        if periodic and stage == "preference" and progress.step < total_steps:  # the end has its own
            logger.log_evaluation(score_run(config, components, accelerator), progress)
            prepared_model.train()
        if progress.step >= total_steps:
            break
    logger.finish()
    components.model = accelerator.unwrap_model(prepared_model)
    accelerator.free_memory()
    return time.perf_counter() - start


def _optimizer_and_schedule(config: RunConfig, model, stage: str, total_steps: int):
    """AdamW on the trainable parameters, with the stage's learning rate, warm-up and schedule."""
    optimizer = _adamw(
        [p for p in model.parameters() if p.requires_grad],
        lr=config.sft_learning_rate if stage == "sft" else config.learning_rate,
        weight_decay=config.weight_decay,
    )
    scheduler = get_scheduler(
        config.lr_scheduler if config.lr_scheduler != "constant" else "constant_with_warmup",
        optimizer,
        num_warmup_steps=math.ceil(config.warmup_ratio * total_steps),
        num_training_steps=total_steps,
    )
    return optimizer, scheduler


def _adamw(parameters: list[torch.nn.Parameter], **options) -> torch.optim.AdamW:
    """Fused AdamW (one kernel over all parameters; 1.02-1.09x the step rate on the CPU benchmarks,
    benchmarks/README.md) where this torch has it for the parameters' device, else the default one."""
    try:
        return torch.optim.AdamW(parameters, fused=True, **options)
    except (RuntimeError, ValueError):  # e.g. torch < 2.4 on a CPU: no fused kernel there
        return torch.optim.AdamW(parameters, **options)


def _batches(components: Components, config: RunConfig, accelerator: Accelerator, progress: _Progress):
    """Training batches in a deterministic order, epoch after epoch, resuming mid-epoch if needed."""
    loader = accelerator.prepare(
        DataLoader(
            components.train_dataset, batch_sampler=components.train_sampler, collate_fn=components.collator
        )
    )
    while True:
        # The prepared loader sets its sampler's epoch when iterated: the epoch goes to the loader.
        loader.set_epoch(progress.epoch)
        done = progress.batches_in_epoch
        for batch in accelerator.skip_first_batches(loader, done) if done else loader:
            progress.batches_in_epoch += 1
            yield batch
        progress.epoch += 1
        progress.batches_in_epoch = 0


def _maybe_checkpoint(run: _Run, progress: _Progress, total_steps: int, optimizer, scheduler) -> None:
    """Save a checkpoint every ``save_every`` steps and at the stage's last step (main process only)."""
    config, accelerator = run.config, run.accelerator
    due = (config.save_every and progress.step % config.save_every == 0) or progress.step == total_steps
    if not due:
        return
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        save_checkpoint(
            config.output_dir,
            step=_global_step(config, progress),
            model=accelerator.unwrap_model(run.components.model),
            optimizer=optimizer,
            scheduler=scheduler,
            state={"progress": progress.to_dict(), "history_rows": run.logger.rows},
            keep=config.keep_checkpoints,
        )
    accelerator.wait_for_everyone()


def _global_step(config: RunConfig, progress: _Progress) -> int:
    """Steps across both stages, so checkpoint names sort in training order."""
    return progress.step + (config.sft_steps if progress.stage == "preference" else 0)


def _all_finite(value: Tensor, accelerator) -> bool:
    """Whether ``value`` is finite on every process (all must agree to stop, or the others hang)."""
    finite = torch.isfinite(value.detach()).float()
    if accelerator.num_processes > 1:
        finite = accelerator.reduce(finite, reduction="mean")
    return bool(finite == 1)


def _diverged(what: str, stage: str, progress: _Progress, config: RunConfig) -> TrainingDivergedError:
    last = latest_checkpoint(config.output_dir)
    kept = f"the last good checkpoint is {last}" if last else "no checkpoint was written yet (set save_every)"
    return TrainingDivergedError(
        f"the {stage} {what} at step {progress.step + 1}; {kept}. Lower the learning rate (now "
        f"{config.sft_learning_rate if stage == 'sft' else config.learning_rate}), raise beta, "
        "or check the data; resume with resume=True after changing it."
    )


def _guard_finite(
    value: Tensor, what: str, stage: str, progress: _Progress, config: RunConfig, accelerator
) -> None:
    """Stop the run with a clear message when ``value`` is NaN or inf, before it reaches the weights."""
    if not _all_finite(value, accelerator):
        raise _diverged(f"{what} became {value.item()}", stage, progress, config)


# fp16 loss scaling starts at 2**16 and halves on every overflow: 24 overflows in a row bring the scale
# below 1, where no gradient of a healthy run overflows; that is divergence, not scaling.
MAX_CONSECUTIVE_OVERFLOWS = 24


class _OverflowGuard:
    """Tells fp16 overflow (skip the step, as the loss scaler does) from divergence (stop the run).

    Without a loss scaler (fp32, bf16) a non-finite gradient norm stops the run at once. With one
    (fp16), the scaler skips the step and lowers its scale; that is routine early in a run, so the
    step is counted as skipped (``skipped`` in the history) and the run stops only after
    :data:`MAX_CONSECUTIVE_OVERFLOWS` overflows in a row.
    """

    def __init__(self, config: RunConfig, accelerator) -> None:
        self.config, self.accelerator, self.in_a_row = config, accelerator, 0

    def check(self, grad_norm: Tensor, stage: str, progress: _Progress) -> Tensor:
        """1.0 when this step's gradients overflowed and the scaler will skip it, else 0.0."""
        if _all_finite(grad_norm, self.accelerator):
            self.in_a_row = 0
            return torch.tensor(0.0)
        if self.accelerator.scaler is None:
            raise _diverged(f"gradient norm became {grad_norm.item()}", stage, progress, self.config)
        self.in_a_row += 1
        if self.in_a_row >= MAX_CONSECUTIVE_OVERFLOWS:
            raise _diverged(
                f"fp16 gradients overflowed {self.in_a_row} steps in a row (each step skipped, the loss "
                f"scale now {self.accelerator.scaler.get_scale():.3g})",
                stage,
                progress,
                self.config,
            )
        return torch.tensor(1.0)


# --------------------------------------------------------------------------------------------------
# The preference step: loss and metrics of one micro-batch (the SFT step is warmup.sft_step)
# --------------------------------------------------------------------------------------------------


class _StepWeights:
    """Normalises a weighted loss's weights over the whole optimizer step, not each micro-batch.

    A loss such as CAPO rescales its weights to mean 1 over the pairs it sees. Within one micro-batch
    on one process that is the whole step, and the loss does it itself. When a step spans several
    micro-batches (gradient accumulation) or processes, a micro-batch of suspect pairs alone would
    be rescaled back to weight 1; instead each micro-batch computes its loss with the raw weights
    (``weights/sum`` in its metrics), and at the end of the step the accumulated gradient is divided
    by the mean weight over all of the step's pairs: exactly the gradient of one batch normalised
    as a whole, since the weights carry no gradient.
    """

    def __init__(self) -> None:
        self.weight_sum, self.pairs = 0.0, 0.0

    def add(self, metrics: dict[str, Tensor]) -> None:
        if "weights/sum" in metrics:
            self.weight_sum = self.weight_sum + metrics.pop("weights/sum")
            self.pairs = self.pairs + metrics.pop("weights/pairs")

    def normalise(self, parameters, accelerator) -> None:
        if isinstance(self.pairs, float):  # the loss normalised its own batch (or has no weights)
            return
        totals = torch.stack([self.weight_sum, self.pairs]).float()
        if accelerator.num_processes > 1:
            totals = accelerator.reduce(totals, reduction="sum")
        scale = totals[1] / totals[0].clamp_min(torch.finfo(torch.float32).tiny)
        for parameter in parameters:
            if parameter.grad is not None:
                parameter.grad.mul_(scale.to(parameter.grad.dtype))
        self.weight_sum, self.pairs = 0.0, 0.0


def normalises_over_step(config: RunConfig, loss_params: dict, processes: int) -> bool:
    """Whether training normalises the loss's weights over the optimizer step (see _StepWeights).

    Not with an RPO-style SFT term (``sft_weight``): rescaling the step's gradient would rescale
    that term too, so such runs keep the loss's own per-micro-batch normalisation.
    """
    spec = LOSSES[config.loss]
    normalise = loss_params.get("normalize", spec.defaults.get("normalize", False))
    spans = config.gradient_accumulation_steps > 1 or processes > 1
    return bool(normalise) and spans and not config.sft_weight


def _preference_step(model, batch, config, components, accelerator) -> dict[str, Tensor]:
    """The configured preference loss on the 2B batch, and TRL's metrics of it (detached)."""
    with accelerator.autocast():  # the reference too: an fp32 forward on a GPU would cost twice
        policy = concatenated_logps(model, batch)
        if _reference_free(config.loss):
            ref_chosen = ref_rejected = None
        else:
            ref_chosen, ref_rejected = components.reference.logps(batch)
    params = dict(config.loss_params)
    if "strength" in batch and LOSSES[config.loss].takes_strength:
        params["strength"] = batch["strength"]
    over_step = normalises_over_step(config, params, accelerator.num_processes)
    if over_step:
        params["normalize"] = False  # _StepWeights normalises over the whole step
    output = preference_loss(
        config.loss,
        policy.chosen_logps,
        policy.rejected_logps,
        ref_chosen,
        ref_rejected,
        beta=config.beta,
        chosen_lengths=policy.chosen_lengths,
        rejected_lengths=policy.rejected_lengths,
        validate=False,
        **params,
    )
    loss = output.losses.mean()
    if config.sft_weight:
        loss = loss + config.sft_weight * (-policy.chosen_logps / policy.chosen_lengths).mean()
    step_weights = {}
    if over_step:
        step_weights = {
            "weights/sum": output.weights.sum(),
            "weights/pairs": output.weights.new_tensor(len(output.weights)),
        }
    return {
        "loss": loss,
        **step_weights,
        "rewards/chosen": output.chosen_rewards.mean(),
        "rewards/rejected": output.rejected_rewards.mean(),
        "rewards/accuracies": (output.chosen_rewards > output.rejected_rewards).float().mean(),
        "rewards/margins": (output.chosen_rewards - output.rejected_rewards).mean(),
        "logps/chosen": policy.chosen_logps.detach().mean(),
        "logps/rejected": policy.rejected_logps.detach().mean(),
        "weights/mean": output.weights.float().mean(),
        "weights/min": output.weights.float().min(),
        "weights/max": output.weights.float().max(),
    }


def _reference_free(loss: str) -> bool:
    """Whether a registered loss trains without reference log-probs (its spec says: SimPO, SFT, ...)."""
    return not LOSSES[loss].needs_reference


# --------------------------------------------------------------------------------------------------
# Logging: history rows with TRL's names, progress for terminals and for CI logs
# --------------------------------------------------------------------------------------------------


class _Logger:
    """Averages step metrics over ``log_every`` steps (and over processes) and writes history rows."""

    def __init__(self, path: Path, accelerator: Accelerator, config: RunConfig, fresh: bool) -> None:
        self.path, self.accelerator, self.config = path, accelerator, config
        self.records: list[dict[str, Any]] = []
        self.rows = 0
        self.sums: dict[str, Tensor] = {}
        self.counts: dict[str, int] = {}
        self.steps = 0
        self.bar = None
        if accelerator.is_main_process and fresh:
            path.write_text("", encoding="utf-8")

    def truncate(self, progress: _Progress) -> None:
        """On resume, keep the history rows written up to the checkpoint and drop later ones."""
        if not self.path.exists():
            return
        lines = [json.loads(line) for line in self.path.read_text(encoding="utf-8").splitlines() if line]
        order = {"sft": 0, "preference": 1}
        keep = [r for r in lines if (order[r["stage"]], r["step"]) <= (order[progress.stage], progress.step)]
        self.records = keep
        self.rows = len(keep)
        if self.accelerator.is_main_process:
            self.path.write_text("".join(json.dumps(r) + "\n" for r in keep), encoding="utf-8")

    def start(self, stage: str, total: int, done: int) -> None:
        self.stage, self.total, self.started, self.start_step = stage, total, time.perf_counter(), done
        mode = self.config.progress
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "lines"
        self.mode = mode if self.accelerator.is_main_process else "none"
        if self.mode == "bar":
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=done, desc=stage, dynamic_ncols=True)

    def record(self, metrics: dict[str, Tensor], progress: _Progress, learning_rate: float) -> None:
        device = self.accelerator.device  # counts such as "skipped" arrive as Python numbers
        for key, value in metrics.items():
            value = (
                value.detach().float().to(device)
                if isinstance(value, Tensor)
                else torch.tensor(float(value), device=device)
            )
            self.sums[key] = self.sums.get(key, 0) + value
            self.counts[key] = self.counts.get(key, 0) + 1
        self.steps += 1
        if self.bar is not None:
            self.bar.update(1)
        if progress.step % self.config.log_every == 0 or progress.step == self.total:
            self._flush(progress, learning_rate)

    def _flush(self, progress: _Progress, learning_rate: float) -> None:
        names = sorted(self.sums)
        local = torch.stack([self.sums[n] / self.counts[n] for n in names]).to(self.accelerator.device)
        averaged = self.accelerator.reduce(local, reduction="mean").tolist()
        row = {
            "stage": progress.stage,
            "step": progress.step,
            "epoch": progress.epoch,
            "learning_rate": learning_rate,
        }
        row.update(dict(zip(names, averaged)))
        row["num_processes"] = self.accelerator.num_processes
        if "skipped" in row:  # a share of the window's steps: the history keeps the count
            row["skipped"] = round(row["skipped"] * self.steps)
        self.sums, self.counts, self.steps = {}, {}, 0
        self.records.append(row)
        self.rows += 1
        if self.accelerator.is_main_process:
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(row) + "\n")
        self._show(row)

    def _show(self, row: dict[str, Any]) -> None:
        shown = f"loss {row['loss']:.4f}"
        if row.get("skipped"):
            shown += f"  ({row['skipped']} fp16 steps skipped: gradients overflowed, loss scale lowered)"
        if "rewards/accuracies" in row:
            shown += f"  acc {row['rewards/accuracies']:.3f}  margin {row['rewards/margins']:.3f}"
        if self.bar is not None:
            self.bar.set_postfix_str(shown)
        elif self.mode == "lines":
            rate = (row["step"] - self.start_step) / max(time.perf_counter() - self.started, 1e-9)
            print(
                f"[{self.stage}] step {row['step']}/{self.total}  {shown}  lr {row['learning_rate']:.2e}"
                f"  ({rate:.1f} steps/s)",
                flush=True,
            )

    def log_evaluation(self, predictions: pd.DataFrame, progress: _Progress) -> None:
        row = {
            "stage": progress.stage,
            "step": progress.step,
            "epoch": progress.epoch,
            "eval_rewards/accuracies": float(predictions.correct.mean()),
            "eval_rewards/margins": float(predictions.margin.mean()),
        }
        self.records.append(row)
        self.rows += 1
        if self.accelerator.is_main_process:
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(row) + "\n")
            if self.mode == "lines":
                print(
                    f"[eval] step {progress.step}  accuracy {row['eval_rewards/accuracies']:.3f}  "
                    f"margin {row['eval_rewards/margins']:.3f}",
                    flush=True,
                )

    def finish(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.records)
