"""Training throughput: capo_tutorial's loop vs TRL's DPOTrainer vs a hand-written PyTorch loop.

On the smoke model (the tiny random-init Llama and the tokenizer trained on the testbed) and the
testbed's training split, 8 pairs per batch, max length 128, it measures for each configuration:
optimizer steps per second, non-pad tokens per second, and the peak resident memory of its process.

    loop-{dpo,capo}-{copy,adapter,precomputed}   capo_tutorial.training.train (adapter: LoRA r=16)
    trl-{copy,precomputed}                       trl.DPOTrainer, loss_type "sigmoid" (DPO)
    hand-{copy,precomputed}                      forward on the 2B batch, log-probs, DPO loss,
                                                 backward, clip, AdamW step: nothing else
    idle                                         imports and loads the model and data, trains nothing

How it is made fair, and robust to a shared, busy machine:

- Every configuration runs in its own process: its peak RSS is that child's ru_maxrss, read by the
  parent with os.wait4. Each child runs with ``--threads`` torch threads (default 1: on two shared
  cores, two threads stall waiting for each other whenever another job holds a core).
- All children start together, train ``--warmup`` untimed steps, and pause. Then the parent runs
  ``--rounds`` rounds; in each, every child in turn trains ``--block-steps`` steps while the others
  are paused (a hook on the optimizer step blocks on a pipe), in an order rotated (and reversed)
  from round to round. Two configurations' blocks of one round are seconds apart and train on the
  same batches. A speed ratio is the median, over all timed steps, of the ratio of the two step
  times on the same batch (with a 90% bootstrap interval that resamples rounds): a burst of load
  that slows a few steps barely moves it. Per-round block ratios are reported beside it.
- The parent builds the components once (``build_components`` of the smoke profile) and writes the
  model, the tokenizer and the data to a temporary folder; every child loads the same files, so every
  configuration starts from the same weights (checked by a hash) and trains on the same batches in
  the same order: the first ``warmup + rounds * block_steps`` batches of LengthGroupedBatchSampler's
  epoch 0, stored in batch order and read sequentially (TRL: ``train_sampling_strategy="sequential"``).
- TRL gets the text records and tokenizes them itself, as a user's TRL script would; the child
  checks that TRL's token ids equal capo_tutorial's, row for row. With ``ref_model=None`` TRL loads
  its reference copy from the saved folder; its precompute runs in ``__init__`` (untimed, as ours
  is). TRL is set up as a CPU user must set it up (bf16=False, gradient_checkpointing=False,
  use_cpu=True, an explicit learning rate) and otherwise keeps its defaults (fused AdamW, a tqdm bar,
  padding_free off); both trainers log every 10 steps (TRL's logging_steps, the loop's log_every).
- A block's time runs from the moment its child is released to the end of its last optimizer step
  (``torch.optim.optimizer.register_optimizer_step_post_hook``, the same hook for every
  configuration), so it holds data loading, forward, backward, clipping, optimizer step and logging.
  Wall-clock times decide the targets; CPU times (process_time) are reported beside them.
- Same optimisation everywhere: AdamW at the smoke profile's learning rate, constant, no weight
  decay; gradient clipping at norm 1; beta 0.1; float32. Before any timing, the losses of the first
  ``--parity-steps`` steps of TRL (logging_steps=1), the loop (log_every=1) and the hand-written
  loop are compared step by step; the timed runs' 10-step loss averages are compared as well.

Usage (about 7 minutes on 2 busy cores, 10 children of ~0.55 GB alive at once)::

    python benchmarks/train_throughput.py      # writes benchmarks/results/train_throughput.json
    python benchmarks/train_throughput.py --quick --out /tmp/quick.json     # checks the script runs
    python benchmarks/train_throughput.py --configs loop-dpo-copy,trl-copy --rounds 20

The JSON holds the command, git commit, library versions, threads, machine, every block's timing,
the summaries, the loss parity and the distance to each target (the speed and memory the training
loop is meant to reach, listed in SPEED_TARGETS and RSS_TARGETS below, discussed in
benchmarks/README.md). Results are data, not asserts: no test checks a timing. The process harness
and the statistics live in ``_harness.py`` beside this file.
"""

from __future__ import annotations

import time

_STARTED = time.perf_counter()  # before the heavy imports: a child's set-up time counts them

import argparse  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from _harness import (  # noqa: E402  (beside this script, which runs as a file)
    STAMP_KEYS,
    Child,
    StepClock,
    block_rates,
    paired_step_ratio,
    round_ratios,
    run_environment,
    run_rounds,
    start_process,
    summarise_rates,
    window_means,
)

from capo_tutorial._io import write_text_atomic  # noqa: E402
from capo_tutorial.losses import CAPO_DEFAULTS  # noqa: E402

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "train_throughput.json"

CAPO_PARAMS = dict(CAPO_DEFAULTS)  # the package's default CAPO
LORA_R, LORA_ALPHA = 16, 32  # the cpu profile's LoRA

CONFIGS: dict[str, dict[str, Any]] = {
    "loop-dpo-copy": dict(kind="loop", loss="dpo", reference="copy"),
    "loop-dpo-adapter": dict(kind="loop", loss="dpo", reference="adapter"),
    "loop-dpo-precomputed": dict(kind="loop", loss="dpo", reference="precomputed"),
    "loop-capo-copy": dict(kind="loop", loss="capo", reference="copy"),
    "loop-capo-adapter": dict(kind="loop", loss="capo", reference="adapter"),
    "loop-capo-precomputed": dict(kind="loop", loss="capo", reference="precomputed"),
    "trl-copy": dict(kind="trl", loss="dpo", reference="copy"),
    "trl-precomputed": dict(kind="trl", loss="dpo", reference="precomputed"),
    "hand-copy": dict(kind="hand", loss="dpo", reference="copy"),
    "hand-precomputed": dict(kind="hand", loss="dpo", reference="precomputed"),
}
IDLE = "idle"
# Run by default beside CONFIGS: a second process of one configuration. Its ratio to the first is
# the noise floor of comparisons between processes (heap layout, cache placement, ...).
REPLICA = "loop-dpo-precomputed#2"
# Proposed package changes, measured by patching them into a loop child: append "+NAME" to a loop
# configuration (e.g. --configs loop-dpo-copy,loop-dpo-copy+fused-adamw). Not run by default.
VARIANTS = {
    "fused-adamw": "torch.optim.AdamW(..., fused=True) in capo_tutorial.training._run_stage",
    "bf16": "RunConfig(precision='bf16'): bf16 autocast on the CPU (not a code change; numerics differ)",
}
PARITY_CONFIGS = ("loop-dpo-copy", "trl-copy", "hand-copy")

# The speed targets of the training loop (benchmarks/README.md explains them):
# (name, numerator, denominator, minimum ratio of steps/s).
SPEED_TARGETS = [
    ("loop >= 1.8x TRL (reference copy)", "loop-dpo-copy", "trl-copy", 1.8),
    ("loop >= 1.8x TRL (precomputed reference)", "loop-dpo-precomputed", "trl-precomputed", 1.8),
    ("loop >= 1.8x TRL (each one's default reference)", "loop-dpo-precomputed", "trl-copy", 1.8),
    ("loop within 10% of hand-written (copy)", "loop-dpo-copy", "hand-copy", 0.9),
    ("loop within 10% of hand-written (precomputed)", "loop-dpo-precomputed", "hand-precomputed", 0.9),
    ("precomputed >= 1.3x copy (dpo)", "loop-dpo-precomputed", "loop-dpo-copy", 1.3),
    ("precomputed >= 1.3x copy (capo)", "loop-capo-precomputed", "loop-capo-copy", 1.3),
    ("capo within 3% of dpo (copy)", "loop-capo-copy", "loop-dpo-copy", 0.97),
    ("capo within 3% of dpo (adapter)", "loop-capo-adapter", "loop-dpo-adapter", 0.97),
    ("capo within 3% of dpo (precomputed)", "loop-capo-precomputed", "loop-dpo-precomputed", 0.97),
]
RSS_TARGETS = [
    ("loop peak RSS <= TRL's (reference copy)", "loop-dpo-copy", "trl-copy"),
    ("loop peak RSS <= TRL's (precomputed reference)", "loop-dpo-precomputed", "trl-precomputed"),
    ("loop peak RSS <= TRL's (each one's default reference)", "loop-dpo-precomputed", "trl-copy"),
]
PADDING_TARGET = 0.15
# Not targets: ratios that explain them (how far the hand-written loop is from TRL, what LoRA costs).
CONTEXT_RATIOS = [
    ("hand-written / TRL, reference copy", "hand-copy", "trl-copy"),
    ("hand-written / TRL, precomputed reference", "hand-precomputed", "trl-precomputed"),
    ("adapter / copy (dpo)", "loop-dpo-adapter", "loop-dpo-copy"),
    ("TRL precomputed / TRL copy", "trl-precomputed", "trl-copy"),
    (
        "replica / itself: two processes of loop-dpo-precomputed (noise floor)",
        REPLICA,
        "loop-dpo-precomputed",
    ),
]


# --------------------------------------------------------------------------------------------------
# Shared pieces (parent and children)
# --------------------------------------------------------------------------------------------------


def base_config(args: argparse.Namespace, **overrides: Any):
    """The benchmark's RunConfig: the smoke profile at 8 pairs per batch, max length 128, no warm-up stage."""
    from capo_tutorial.config import profile_config

    settings = dict(
        max_length=args.max_length,
        batch_size=args.batch_size,
        sft_steps=0,
        lr_scheduler="constant",
        warmup_ratio=0.0,
        max_grad_norm=1.0,
        weight_decay=0.0,
        beta=args.beta,
        seed=0,
        sft_cache=False,  # never read or write the user's warm-up / reference log-prob cache
    )
    if args.learning_rate is not None:
        settings["learning_rate"] = args.learning_rate
    settings.update(overrides)
    return profile_config("smoke", **settings)


def fixed_batches(n_rows: int, batch_size: int):
    """A batch sampler over rows stored in batch order: [0..B-1], [B..2B-1], ... (set_epoch is a no-op)."""
    from torch.utils.data import Sampler

    class FixedBatches(Sampler):
        def __init__(self) -> None:
            self.batches = [list(range(i, min(i + batch_size, n_rows))) for i in range(0, n_rows, batch_size)]

        def set_epoch(self, epoch: int) -> None:
            pass

        def __iter__(self):
            return iter(self.batches)

        def __len__(self) -> int:
            return len(self.batches)

    return FixedBatches()


def parameter_hash(model) -> str:
    """A short hash of every weight (in state_dict order), to check that all configurations start alike."""
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().float().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def load_model_and_tokenizer(workdir: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(workdir / "model", dtype=torch.float32)
    model.train()  # from_pretrained returns eval mode; the smoke profile's freshly built model trains
    return model, AutoTokenizer.from_pretrained(workdir / "model")


# --------------------------------------------------------------------------------------------------
# Children: one configuration each
# --------------------------------------------------------------------------------------------------


def run_loop(spec: dict, args: argparse.Namespace, workdir: Path, scratch: Path) -> dict:
    """capo_tutorial.training.train on the prepared model and batches."""
    import datasets

    from capo_tutorial.components import Components
    from capo_tutorial.data import PreferenceCollator
    from capo_tutorial.models import apply_lora
    from capo_tutorial.training import train

    lora = spec["reference"] == "adapter"
    if spec.get("variant") == "fused-adamw":  # what the proposed one-argument change would do
        import functools

        import torch

        torch.optim.AdamW = functools.partial(torch.optim.AdamW, fused=True)
    config = base_config(
        args,
        loss=spec["loss"],
        loss_params=dict(CAPO_PARAMS) if spec["loss"] == "capo" else {},
        reference=spec["reference"],
        lora_r=LORA_R if lora else 0,
        lora_alpha=LORA_ALPHA,
        max_steps=args.total_steps,
        log_every=args.log_every,
        eval_batch_size=args.batch_size,  # precompute and evaluation in 8-pair batches, as TRL's precompute
        output_dir=str(scratch / "run"),
        precision="bf16" if spec.get("variant") == "bf16" else "fp32",
    )
    model, tokenizer = load_model_and_tokenizer(workdir)
    init_hash = parameter_hash(model)
    if lora:  # what build_components does when lora_r > 0
        model = apply_lora(model, r=LORA_R, alpha=LORA_ALPHA, dropout=0.0, seed=config.seed, verbose=False)
    train_dataset = datasets.load_from_disk(str(workdir / "train_tokenized"))
    components = Components(
        model=model,
        tokenizer=tokenizer,
        train_dataset=train_dataset,
        eval_dataset=datasets.load_from_disk(str(workdir / "eval_tokenized")),
        collator=PreferenceCollator(tokenizer),
        train_sampler=fixed_batches(len(train_dataset), args.batch_size),
    )
    result = train(config, components=components)
    history = result.history
    rows = history[(history["stage"] == "preference") & history["loss"].notna()]
    return dict(
        init_hash=init_hash,
        logged_losses=[[int(s), float(v)] for s, v in zip(rows["step"], rows["loss"])],
        stage_seconds=result.seconds,
    )


def run_trl(spec: dict, args: argparse.Namespace, workdir: Path, scratch: Path) -> dict:
    """trl.DPOTrainer from the saved folder and the text records, as a user's TRL script would run it."""
    # Over 60 lines: one TRL set-up written out as a user's script would write it (config, data,
    # trainer, the token-id check), so that the benchmark measures what such a script runs.
    import datasets
    import trl
    from trl import DPOConfig, DPOTrainer

    model, tokenizer = load_model_and_tokenizer(workdir)
    init_hash = parameter_hash(model)
    records = json.loads((workdir / "train_text.json").read_text(encoding="utf-8"))
    train_dataset = datasets.Dataset.from_list(records)  # in memory: TRL's caches cannot carry over
    trl_args = DPOConfig(
        output_dir=str(scratch / "trl"),
        # What a CPU user must set: TRL's defaults are bf16, gradient checkpointing and lr 1e-6.
        use_cpu=True,
        bf16=False,
        fp16=False,
        gradient_checkpointing=False,
        learning_rate=args.learning_rate,
        # The same optimisation and data order as the other configurations.
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        per_device_train_batch_size=args.batch_size,
        max_steps=args.total_steps,
        max_length=args.max_length,
        beta=args.beta,
        train_sampling_strategy="sequential",
        precompute_ref_log_probs=spec["reference"] == "precomputed",
        logging_steps=args.log_every,
        save_strategy="no",
        report_to="none",
        dataloader_num_workers=0,
        seed=0,
        data_seed=0,
    )
    trainer = DPOTrainer(model=model, args=trl_args, train_dataset=train_dataset, processing_class=tokenizer)
    ours = datasets.load_from_disk(str(workdir / "train_tokenized"))
    theirs = trainer.train_dataset
    same_tokens = sum(
        list(a) == list(b) and list(c) == list(d) and list(e) == list(f)
        for a, b, c, d, e, f in zip(
            theirs["prompt_ids"],
            ours["prompt_input_ids"],
            theirs["chosen_ids"],
            ours["chosen_input_ids"],
            theirs["rejected_ids"],
            ours["rejected_input_ids"],
        )
    )
    trainer.train()
    logged = [[int(h["step"]), float(h["loss"])] for h in trainer.state.log_history if "loss" in h]
    return dict(
        init_hash=init_hash,
        logged_losses=logged,
        trl_version=trl.__version__,
        optimizer=type(trainer.optimizer.optimizer).__name__,
        optim=str(trl_args.optim),
        rows_with_same_tokens=int(same_tokens),
        rows=len(ours),
    )


def run_hand(spec: dict, args: argparse.Namespace, workdir: Path, scratch: Path) -> dict:
    """The minimal loop: forward on the 2B batch, summed completion log-probs, DPO loss, backward, step."""
    import copy

    import datasets
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader

    from capo_tutorial.data import PreferenceCollator

    model, tokenizer = load_model_and_tokenizer(workdir)
    init_hash = parameter_hash(model)
    train_dataset = datasets.load_from_disk(str(workdir / "train_tokenized"))
    loader = DataLoader(
        train_dataset,
        batch_sampler=fixed_batches(len(train_dataset), args.batch_size),
        collate_fn=PreferenceCollator(tokenizer),
    )

    def summed_logps(net, batch):
        logits = net(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        per_token = logits.log_softmax(-1).gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
        return (per_token * batch["completion_mask"][:, 1:]).sum(-1)

    reference, precomputed = None, []
    if spec["reference"] == "copy":
        reference = copy.deepcopy(model).eval().requires_grad_(False)
    else:
        with torch.no_grad():
            precomputed = [summed_logps(model, batch) for batch in loader]
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=0.0)
    losses = []
    for step, batch in enumerate(loader):
        policy_chosen, policy_rejected = summed_logps(model, batch).chunk(2)
        if reference is not None:
            with torch.no_grad():
                ref_chosen, ref_rejected = summed_logps(reference, batch).chunk(2)
        else:
            ref_chosen, ref_rejected = precomputed[step].chunk(2)
        margin = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
        loss = -F.logsigmoid(args.beta * margin).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if step + 1 >= args.total_steps:
            break
    return dict(init_hash=init_hash, step_losses=losses)


def run_idle(spec: dict, args: argparse.Namespace, workdir: Path, scratch: Path) -> dict:
    """The floor: import the loop, load the model and data, train nothing."""
    import datasets

    import capo_tutorial.training  # noqa: F401  (the imports a training run pays for)

    model, _ = load_model_and_tokenizer(workdir)
    datasets.load_from_disk(str(workdir / "train_tokenized"))
    return dict(init_hash=parameter_hash(model))


RUNNERS = {"loop": run_loop, "trl": run_trl, "hand": run_hand, "idle": run_idle}


def child_main(args: argparse.Namespace) -> None:
    """Run one configuration; with --control, pause at every block boundary until the parent says go."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    boundaries = {args.warmup + i * args.block_steps for i in range(args.rounds + 1)}
    clock = StepClock(args.total_steps, boundaries if args.control else set(), args.control)
    clock.install()
    spec = config_spec(args.child)
    profiler = None
    if args.profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    with tempfile.TemporaryDirectory(prefix="capo-bench-child-") as scratch:
        out = RUNNERS[spec["kind"]](spec, args, Path(args.workdir), Path(scratch))
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(args.profile)
    out.update(config=args.child, torch_threads=torch.get_num_threads(), **clock.record(_STARTED))
    write_text_atomic(args.result, json.dumps(out))


# --------------------------------------------------------------------------------------------------
# Parent: prepare once, run the children, summarise
# --------------------------------------------------------------------------------------------------


def prepare(args: argparse.Namespace, workdir: Path) -> dict:
    """Build the smoke components once; save the model, tokenizer and batches every child trains on."""
    import numpy as np

    from capo_tutorial.components import build_components, load_run_data
    from capo_tutorial.data import padding_fraction, sequence_lengths

    config = base_config(args)
    args.learning_rate = config.learning_rate  # the profile's, unless given: the children get it explicitly
    components = build_components(config)
    train_text, _ = load_run_data(config)
    sampler = components.train_sampler
    batches = sampler.batches(0)
    if args.total_steps > len(batches):
        raise SystemExit(
            f"warmup + rounds * block_steps = {args.total_steps} exceeds the {len(batches)} batches "
            "of an epoch"
        )
    used = batches[: args.total_steps]
    rows = [i for batch in used for i in batch]
    components.model.save_pretrained(workdir / "model")
    components.tokenizer.save_pretrained(workdir / "model")
    components.train_dataset.select(rows).save_to_disk(str(workdir / "train_tokenized"))
    n_eval = min(64, len(components.eval_dataset))
    components.eval_dataset.select(range(n_eval)).save_to_disk(str(workdir / "eval_tokenized"))
    texts = train_text.select(rows).select_columns(["prompt", "chosen", "rejected"]).to_list()
    (workdir / "train_text.json").write_text(json.dumps(texts), encoding="utf-8")

    chosen, rejected = sequence_lengths(components.train_dataset)
    tokens = [int(chosen[b].sum() + rejected[b].sum()) for b in used]
    widths = [int(max(chosen[b].max(), rejected[b].max())) for b in used]
    # Padding over whole epochs: length-grouped batches (the loop's sampler) vs random batches.
    n = len(chosen)
    grouped = [padding_fraction(sampler.batches(e), chosen, rejected) for e in range(5)]
    shuffled = []
    for seed in range(5):
        order = np.random.default_rng(seed).permutation(n)
        cut = [order[i : i + args.batch_size] for i in range(0, n, args.batch_size)]
        shuffled.append(padding_fraction(cut, chosen, rejected))
    timed = slice(args.warmup, args.total_steps)
    return dict(
        model_parameters=int(sum(p.numel() for p in components.model.parameters())),
        model_config={
            k: getattr(components.model.config, k)
            for k in ("hidden_size", "num_hidden_layers", "intermediate_size", "vocab_size")
        },
        attn_implementation=components.model.config._attn_implementation,
        init_hash=parameter_hash(components.model),
        train_pairs=n,
        max_row_tokens=int(max(chosen.max(), rejected.max())),
        mean_row_tokens=float((chosen.mean() + rejected.mean()) / 2),
        rows_truncated=int(components.reports["train"].rows_truncated),
        batch_tokens=tokens,
        batch_widths=widths,
        timed_batches_padding=1 - sum(tokens[timed]) / sum(2 * args.batch_size * w for w in widths[timed]),
        padding={
            "length_grouped": {"epochs": grouped, "mean": float(np.mean(grouped))},
            "random": {"seeds": shuffled, "mean": float(np.mean(shuffled))},
        },
    )


def start_child(name: str, args, workdir: Path, logs: Path, *, controlled: bool, **overrides) -> Child:
    """Start configuration ``overrides.get('config', name)`` in a fresh process (paused at blocks if
    ``controlled``); ``overrides`` may also set warmup, rounds, block_steps and log_every."""
    options = dict(
        config=name,
        warmup=args.warmup,
        rounds=args.rounds,
        block_steps=args.block_steps,
        log_every=10,
        threads=args.threads,
    )
    options.update(overrides)
    result_path, log_path = logs / f"{name}.json", logs / f"{name}.log"
    command = [sys.executable, str(Path(__file__).resolve()), "--child", options.pop("config")]
    command += ["--workdir", str(workdir), "--result", str(result_path)]
    command += ["--batch-size", str(args.batch_size), "--max-length", str(args.max_length)]
    command += ["--learning-rate", str(args.learning_rate), "--beta", str(args.beta)]
    for key, value in options.items():
        command += [f"--{key.replace('_', '-')}", str(value)]
    return start_process(name, command, result_path, log_path, controlled=controlled)


def run_to_end(name: str, args, workdir: Path, logs: Path, **overrides) -> dict:
    return start_child(name, args, workdir, logs, controlled=False, **overrides).finish()


def logged_losses(result: dict) -> list[list[float]]:
    """The losses a run logged every 10 steps ([step, loss]); the hand-written loop's are averaged here."""
    if "logged_losses" in result:
        return result["logged_losses"]
    return window_means(result["step_losses"], 10)


def per_step_losses(result: dict) -> list[float]:
    if "step_losses" in result:
        return result["step_losses"]
    return [loss for _, loss in result["logged_losses"]]


def parity_report(args, workdir: Path, logs: Path, configs: list[str]) -> dict:
    """Per-step losses of the first --parity-steps steps: TRL vs the loop vs the hand-written loop."""
    losses = {}
    for config in configs:
        result = run_to_end(
            f"parity-{config}",
            args,
            workdir,
            logs,
            config=config,
            warmup=0,
            rounds=1,
            block_steps=args.parity_steps,
            log_every=1,
        )
        losses[config] = per_step_losses(result)
    names = list(losses)
    differences = {
        f"{a} vs {b}": max(abs(x - y) for x, y in zip(losses[a], losses[b]))
        for i, a in enumerate(names)
        for b in names[i + 1 :]
    }
    return dict(
        steps=args.parity_steps,
        losses=losses,
        max_abs_difference=differences,
        tolerance=args.parity_tolerance,
        passed=all(d <= args.parity_tolerance for d in differences.values()),
    )


def loss_agreement(results: dict[str, dict], early_steps: int = 50) -> dict:
    """Largest difference of the logged 10-step loss means between configurations that train alike,
    over the first ``early_steps`` steps and over the whole run (float rounding grows with the steps)."""
    families = [
        ("loop-dpo-copy", "trl-copy"),
        ("loop-dpo-precomputed", "trl-precomputed"),
        ("loop-dpo-copy", "hand-copy"),
        ("loop-dpo-precomputed", "hand-precomputed"),
        ("loop-dpo-copy", "loop-dpo-precomputed"),
        ("trl-copy", "trl-precomputed"),
    ]
    families += [
        (name.partition("#")[0].partition("+")[0], name) for name in results if "+" in name or "#" in name
    ]
    out = {}
    for a, b in families:
        if a in results and b in results:
            first, second = (
                dict(map(tuple, logged_losses(results[a]))),
                dict(map(tuple, logged_losses(results[b]))),
            )
            common = sorted(set(first) & set(second))
            if common:
                early = [abs(first[s] - second[s]) for s in common if s <= early_steps]
                out[f"{a} vs {b}"] = {
                    f"first_{early_steps}_steps": max(early, default=None),
                    "all_steps": max(abs(first[s] - second[s]) for s in common),
                }
    return out


def variant_effects(timings: dict[str, list[dict]]) -> dict:
    """For each "+variant" configuration: its rate over its base configuration's, per round."""
    out = {}
    for name in timings:
        base, _, variant = name.partition("#")[0].partition("+")
        if variant and base in timings:
            out[name] = {
                "change": VARIANTS[variant],
                "speed_ratio": paired_step_ratio(timings, name, base),
                "cpu_time_speed_ratio": paired_step_ratio(timings, name, base, "step_cpu_seconds"),
                "block_ratio": round_ratios(timings, name, base, "steps_per_s"),
            }
    return out


def loss_cost(pairs: int = 8, calls: int = 300, repeats: int = 5) -> dict:
    """CPU milliseconds per call of the preference loss + the loop's metrics + backward, on (pairs,)
    tensors, dpo vs capo, interleaved: the whole difference between a dpo and a capo step."""
    import torch

    from capo_tutorial.losses import preference_loss

    def one(name: str, params: dict) -> float:
        generator = torch.Generator().manual_seed(0)
        times = []
        for _ in range(calls):
            policy = torch.randn(2, pairs, generator=generator).requires_grad_()
            reference = torch.randn(2, pairs, generator=generator)
            lengths = torch.randint(1, 20, (2, pairs), generator=generator).float()
            start = time.thread_time()
            lengths_of = dict(chosen_lengths=lengths[0], rejected_lengths=lengths[1])
            out = preference_loss(name, *policy, *reference, beta=0.1, validate=False, **lengths_of, **params)
            loss = out.losses.mean()
            for value in (out.chosen_rewards, out.rejected_rewards, out.weights):  # the loop's metrics
                value.float().mean(), value.float().min(), value.float().max()
            loss.backward()
            times.append(time.thread_time() - start)
        return 1000 * statistics.median(times)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the children; idle OpenMP workers would spin on the CPU clock
    runs: dict[str, list[float]] = {"dpo": [], "capo": []}
    for _ in range(repeats):
        runs["dpo"].append(one("dpo", {}))
        runs["capo"].append(one("capo", CAPO_PARAMS))
    torch.set_num_threads(threads)
    return {name: statistics.median(values) for name, values in runs.items()} | {
        "capo_minus_dpo_ms": statistics.median(runs["capo"]) - statistics.median(runs["dpo"])
    }


def _trl_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("trl") is not None


def environment(args: argparse.Namespace) -> dict:
    """Command, commit, library versions, threads and machine of this run."""
    import torch

    packages = [
        "torch",
        "transformers",
        "accelerate",
        "datasets",
        "peft",
        *(["trl"] if _trl_available() else []),
    ]
    return run_environment(
        repository=HERE.parent,
        watched=["capo_tutorial", "benchmarks"],
        packages=packages,
        threads=args.threads or torch.get_num_threads(),
    )


def targets(results: dict, timings: dict, prep: dict) -> list[dict]:
    out = []
    for name, numerator, denominator, minimum in SPEED_TARGETS:
        paired = paired_step_ratio(timings, numerator, denominator)
        if paired is None:
            continue
        blocks_ratio = round_ratios(timings, numerator, denominator, "steps_per_s")
        out.append(
            dict(
                target=name,
                measure=f"steps/s {numerator} / {denominator}: median over steps paired by batch",
                required=f">= {minimum}",
                ratio=paired,
                met=paired["median"] >= minimum,
                distance=paired["median"] - minimum,
                block_ratio=blocks_ratio,
                rounds_meeting=sum(
                    a["steps_per_s"] / b["steps_per_s"] >= minimum
                    for a, b in zip(timings[numerator], timings[denominator])
                ),
                cpu_time_ratio=paired_step_ratio(timings, numerator, denominator, "step_cpu_seconds"),
            )
        )
    for name, numerator, denominator in RSS_TARGETS:
        if numerator not in results or denominator not in results:
            continue
        ratio = results[numerator]["peak_rss_mib"] / results[denominator]["peak_rss_mib"]
        out.append(
            dict(
                target=name,
                measure=f"peak RSS {numerator} / {denominator}",
                required="<= 1.0",
                value=ratio,
                mib=[results[numerator]["peak_rss_mib"], results[denominator]["peak_rss_mib"]],
                met=ratio <= 1.0,
                distance=1.0 - ratio,
            )
        )
    grouped = prep["padding"]["length_grouped"]["mean"]
    out.append(
        dict(
            target="padding <= 15% of tokens (length-grouped batches)",
            measure="padded slots / all slots, 5 epochs of 8-pair batches",
            required=f"<= {PADDING_TARGET}",
            value=grouped,
            random_batches=prep["padding"]["random"]["mean"],
            met=grouped <= PADDING_TARGET,
            distance=PADDING_TARGET - grouped,
        )
    )
    return out


def print_table(summary: dict, baseline: str | None) -> None:
    header = (
        f"{'configuration':<23}{'steps/s':>8}{'(q1-q3)':>14}{'tokens/s':>9}{'ms/step':>8}"
        f"{'steps/CPU-s':>12}{'CPU share':>10}{'peak RSS MiB':>13}{'vs ' + (baseline or '-'):>13}"
    )
    print(header)
    print("-" * len(header))
    base = summary.get(baseline, {}).get("steps_per_s", {}).get("median") if baseline else None
    for name, row in summary.items():
        rss = row["peak_rss_mib"]
        if "steps_per_s" not in row:
            print(f"{name:<23}{'':>8}{'':>14}{'':>9}{'':>8}{'':>12}{'':>10}{rss:>13.0f}")
            continue
        sps = row["steps_per_s"]
        spread = f"({sps['q1']:.1f}-{sps['q3']:.1f})"
        relative = f"{sps['median'] / base:.2f}x" if base else ""
        print(
            f"{name:<23}{sps['median']:>8.2f}{spread:>14}{row['tokens_per_s']['median']:>9.0f}"
            f"{row['median_step_ms']['median']:>8.1f}{row['steps_per_cpu_s']['median']:>12.2f}"
            f"{row['cpu_share']['median']:>10.2f}{rss:>13.0f}{relative:>13}"
        )


def print_targets(rows: list[dict]) -> None:
    print(
        "\ntargets: speed ratios are medians over steps paired by batch [90% interval, rounds resampled]; "
        "per-round block ratios and CPU time beside"
    )
    for row in rows:
        verdict = "met " if row["met"] else "MISS"
        if "ratio" in row:
            r, b, c = row["ratio"], row["block_ratio"], row["cpu_time_ratio"]
            shown = (
                f"{r['median']:.3f} [{r['ci90'][0]:.3f}-{r['ci90'][1]:.3f}], required {row['required']}; "
                f"blocks {b['median']:.3f} ({row['rounds_meeting']}/{b['n']} rounds meet it); "
                f"CPU time {c['median']:.3f}"
            )
        elif "mib" in row:
            numerator, denominator = row["mib"]
            shown = (
                f"{numerator:.0f} / {denominator:.0f} MiB = {row['value']:.3f}, required {row['required']}"
            )
        else:
            shown = (
                f"{row['value']:.3f} (random batches {row['random_batches']:.3f}), required {row['required']}"
            )
        print(f"[{verdict}] {row['target']}: {shown}")


def config_spec(name: str) -> dict:
    """The configuration a child runs: CONFIGS[name], or a loop configuration with a "+variant".

    A "#k" suffix names a replica (the same configuration in another process), to see how much
    two processes of one configuration differ.
    """
    if name == IDLE:
        return dict(kind="idle")
    base, _, variant = name.partition("#")[0].partition("+")
    if base not in CONFIGS or (variant and (variant not in VARIANTS or CONFIGS[base]["kind"] != "loop")):
        raise SystemExit(
            f"unknown configuration {name!r}; known: {', '.join(CONFIGS)}; a loop configuration may "
            f"take a +variant, one of {', '.join(VARIANTS)}"
        )
    return dict(CONFIGS[base], variant=variant or None)


def parent_main(args: argparse.Namespace) -> None:
    """Prepare the data once, check loss parity, time every configuration, then report and save."""
    names, parity_configs = selected_configs(args)
    out_path = Path(args.out) if args.out else (None if args.quick else DEFAULT_OUT)
    started = time.perf_counter()
    meta = environment(args)
    measured = measure(args, names, parity_configs)
    report = build_report(args, meta, measured)
    report["total_seconds"] = time.perf_counter() - started
    print_report(report)
    if out_path is not None:
        write_text_atomic(out_path, json.dumps(report, indent=1) + "\n")
        print(f"wrote {out_path}")


def selected_configs(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """The configurations to time and those of the parity check (TRL's left out when it is missing)."""
    names = [n.strip() for n in args.configs.split(",")] if args.configs else [*CONFIGS, REPLICA]
    for name in names:
        config_spec(name)
    parity_configs = list(PARITY_CONFIGS)
    if not _trl_available():
        print("trl is not installed: the trl-* configurations are skipped (pip install 'capo-tutorial[dev]')")
        names = [n for n in names if not n.startswith("trl")]
        parity_configs = [n for n in parity_configs if not n.startswith("trl")]
    return names, parity_configs


def measure(args: argparse.Namespace, names: list[str], parity_configs: list[str]) -> dict[str, Any]:
    """Everything the children measure, in a temporary folder: prep, parity, idle, loss cost, results."""
    with tempfile.TemporaryDirectory(prefix="capo-bench-") as tmp:
        workdir, logs = Path(tmp) / "data", Path(tmp) / "logs"
        workdir.mkdir()
        logs.mkdir()
        print(
            f"preparing the smoke model and {args.total_steps} batches of {args.batch_size} pairs ...",
            flush=True,
        )
        prep = prepare(args, workdir)
        parity = None
        if args.parity_steps:
            print(f"loss parity over the first {args.parity_steps} steps ...", flush=True)
            parity = parity_report(args, workdir, logs, parity_configs)
            for pair, difference in parity["max_abs_difference"].items():
                print(f"  {pair}: max |loss difference| {difference:.2e}")
        idle = run_to_end(IDLE, args, workdir, logs) if args.idle else None
        loss_ms = loss_cost(calls=20 if args.quick else 300)
        start = functools.partial(start_child, args=args, workdir=workdir, logs=logs, controlled=True)
        results = run_rounds(names, start, args.rounds)
    return dict(prep=prep, parity=parity, idle=idle, loss_ms=loss_ms, results=results)


def build_report(args: argparse.Namespace, meta: dict, measured: dict[str, Any]) -> dict[str, Any]:
    """The JSON report: settings, data, parity, per-configuration summaries, targets and every block."""
    prep, results = measured["prep"], measured["results"]
    shape = dict(warmup=args.warmup, rounds=args.rounds, block_steps=args.block_steps)
    timings = {
        name: block_rates(result, **shape, batch_tokens=prep["batch_tokens"])
        for name, result in results.items()
    }
    if measured["idle"] is not None:
        results = {IDLE: measured["idle"], **results}
    init_hashes = {result["init_hash"] for result in results.values()} | {prep["init_hash"]}
    meta["machine"]["load_average_at_end"] = list(os.getloadavg())
    return dict(
        benchmark="train_throughput",
        **meta,
        settings=settings(args),
        data=prep,
        same_initial_weights=len(init_hashes) == 1,
        loss_parity=measured["parity"],
        loss_agreement_10_step_means=loss_agreement(results),
        variant_effects=variant_effects(timings),
        loss_function_cpu_ms=measured["loss_ms"],
        context_ratios={
            name: paired_step_ratio(timings, a, b)
            for name, a, b in CONTEXT_RATIOS
            if a in timings and b in timings
        },
        summary=summarise_rates(results, timings),
        targets=targets(results, timings, prep),
        blocks=timings,
        children={
            name: {key: value for key, value in result.items() if key not in STAMP_KEYS}
            for name, result in results.items()
        },
    )


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """The run's settings, as the report records them."""
    return dict(
        profile="smoke",
        batch_pairs=args.batch_size,
        max_length=args.max_length,
        warmup_steps=args.warmup,
        rounds=args.rounds,
        block_steps=args.block_steps,
        learning_rate=args.learning_rate,
        lr_schedule="constant",
        max_grad_norm=1.0,
        weight_decay=0.0,
        beta=args.beta,
        capo_params=CAPO_PARAMS,
        lora=dict(r=LORA_R, alpha=LORA_ALPHA, reference="adapter"),
        log_every=10,
        loop_eval_batch_size=args.batch_size,
        quick=args.quick,
    )


def print_report(report: dict[str, Any]) -> None:
    """The report's summary table, targets, loss cost, context ratios, variants and padding."""
    summary, loss_ms, padding = report["summary"], report["loss_function_cpu_ms"], report["data"]["padding"]
    print()
    print_table(summary, "trl-copy" if "trl-copy" in summary else None)
    print_targets(report["targets"])
    print(
        f"loss + metrics + backward per step, CPU ms: dpo {loss_ms['dpo']:.3f}, capo {loss_ms['capo']:.3f} "
        "(the only work a capo step adds to a dpo step)"
    )
    for name, ratio in report["context_ratios"].items():
        print(f"context: {name}: {ratio['median']:.3f} [{ratio['ci90'][0]:.3f}-{ratio['ci90'][1]:.3f}]")
    for name, effect in report["variant_effects"].items():
        ratio = effect["speed_ratio"]
        print(
            f"{name}: {ratio['median']:.3f}x its base [{ratio['ci90'][0]:.3f}-{ratio['ci90'][1]:.3f}]; "
            f"{effect['change']}"
        )
    agreement = report["loss_agreement_10_step_means"].values()
    early = [row["first_50_steps"] for row in agreement if row["first_50_steps"] is not None]
    print(
        f"\npadding: length-grouped {padding['length_grouped']['mean']:.3f}, random "
        f"{padding['random']['mean']:.3f}; same initial weights: {report['same_initial_weights']}; "
        + (f"10-step loss means agree within {max(early):.1e} over the first 50 steps; " if early else "")
        + f"total {report['total_seconds']:.0f} s"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add("--configs", help=f"comma-separated subset of: {', '.join(CONFIGS)} (default: all)")
    add("--rounds", type=int, default=10, help="rounds; each runs a block of every configuration")
    add("--block-steps", type=int, default=30, help="timed optimizer steps per block")
    add("--warmup", type=int, default=10, help="untimed optimizer steps before the first round (>= 1)")
    add("--parity-steps", type=int, default=10, help="steps of the loss parity check (0: skip it)")
    add("--parity-tolerance", type=float, default=1e-4, help="largest |loss difference| accepted")
    add(
        "--threads",
        type=int,
        default=1,
        help="torch threads per child (default 1: on 2 shared cores, 2 threads stall on each other "
        "whenever another job holds a core; 0 keeps torch's default)",
    )
    add("--batch-size", type=int, default=8, help="pairs per batch")
    add("--max-length", type=int, default=128, help="max tokens of prompt + completion")
    add("--learning-rate", type=float, help="AdamW learning rate, constant (default: the smoke profile's)")
    add("--beta", type=float, default=0.1, help="DPO/CAPO beta")
    add("--no-idle", dest="idle", action="store_false", help="skip the idle child (the RSS floor)")
    add("--quick", action="store_true", help="1+3x2 steps, 3 parity steps: checks that the script runs")
    add("--out", help=f"JSON result (default {DEFAULT_OUT.relative_to(HERE.parent)}; with --quick: none)")
    add("--profile", help="(with --child) write cProfile stats of the child to this file")
    # Internal: one configuration in a child process (started by the parent).
    add("--child", help=argparse.SUPPRESS)
    add("--workdir", help=argparse.SUPPRESS)
    add("--result", help=argparse.SUPPRESS)
    add("--control", help=argparse.SUPPRESS)
    add("--log-every", type=int, default=10, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.warmup, args.rounds, args.block_steps = 1, 2, 3
        args.parity_steps = min(args.parity_steps, 3)
    args.total_steps = args.warmup + args.rounds * args.block_steps
    if not args.child and args.warmup < 1:
        parser.error("--warmup must be >= 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        child_main(args)
    else:
        parent_main(args)


if __name__ == "__main__":
    main()
