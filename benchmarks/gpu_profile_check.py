"""The gpu profile's training path on a CUDA card, capped to a T4's memory, against the plan.

Builds a random-init Qwen2 of Qwen2.5-0.5B's shape (real width, depth and 152k-token LM head; no
download), writes preference pairs long enough that every row reaches ``max_length``, caps this
process to ``--cap-gib`` of GPU memory, and trains the gpu profile with the plan's settings for a
T4 for ``--steps`` optimizer steps in fp16 and in bf16, and once more with gradient checkpointing.
For each run it records the peak memory PyTorch allocated (training and evaluation) beside the
plan's estimate, and the time per optimizer step. Writes ``gpu_profile_check.json``.

    python benchmarks/gpu_profile_check.py --out benchmarks/results
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib.metadata
import json
import platform
import random
import tempfile
import time
from pathlib import Path

import torch

from capo_tutorial.config import profile_config
from capo_tutorial.plan import KNOWN_SHAPES, card_from_memory, model_shape, plan_run, step_flops
from capo_tutorial.stand_ins import save_qwen2_stand_in
from capo_tutorial.training import _adamw, train

GPU_MODEL = "Qwen/Qwen2.5-0.5B-Instruct"
PACKAGES = ("torch", "transformers", "peft", "accelerate", "datasets")


def _words(rng: random.Random, n: int) -> str:
    return " ".join(
        "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 9))) for _ in range(n)
    )


def write_pairs(path: Path, n: int, seed: int = 0) -> list[str]:
    """n conversational pairs whose rows all exceed 512 tokens; returns texts for the tokenizer."""
    rng = random.Random(seed)
    texts, lines = [], []
    for _ in range(n):
        prompt, chosen, rejected = _words(rng, 150), _words(rng, 300), _words(rng, 300)
        texts += [prompt, chosen, rejected]
        record = {
            "prompt": [{"role": "user", "content": prompt}],
            "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}],
            "language": "en",
            "strength": float(rng.randint(1, 3)),
        }
        lines.append(json.dumps(record))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return texts


def _cuda_memory(statistic: str) -> float:
    return getattr(torch.cuda, statistic)() / 2**30 if torch.cuda.is_available() else float("nan")


def adamw_is_fused(device: str) -> bool:
    """Whether the training loop's optimizer runs torch's fused AdamW kernel on ``device``."""
    probe = torch.nn.Parameter(torch.zeros(1, device=device))
    return bool(_adamw([probe], lr=1e-3).defaults.get("fused"))


def run_once(name: str, config, card) -> dict:
    plan = plan_run(config, card)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    result = train(config)
    wall = time.perf_counter() - start
    history = result.history
    steps = history[history.stage == "preference"]
    row = {
        "run": name,
        "precision": config.precision,
        "batch_size": config.batch_size,
        "gradient_accumulation_steps": config.gradient_accumulation_steps,
        "max_length": config.max_length,
        "gradient_checkpointing": config.gradient_checkpointing,
        "eval_batch_size": config.eval_batch_size,
        "planned_peak_gib": round(max(plan.memory_gib["total"], plan.memory_gib["evaluation"]), 3),
        "planned_terms_gib": {k: round(v, 3) for k, v in plan.memory_gib.items()},
        "measured_peak_gib": round(_cuda_memory("max_memory_allocated"), 3),
        "measured_reserved_gib": round(_cuda_memory("max_memory_reserved"), 3),
        "seconds_per_step": round(result.seconds["preference"] / config.max_steps, 4),
        "evaluation_seconds": round(result.seconds["evaluation"], 2),
        "wall_seconds": round(wall, 1),
        "skipped_steps": int(steps["skipped"].sum()) if "skipped" in steps else 0,
        "final_loss": float(steps["loss"].dropna().iloc[-1]),
    }
    row["measured_over_planned"] = round(row["measured_peak_gib"] / row["planned_peak_gib"], 3)
    # every row reaches max_length, so the step's work is the plan's count at a fill of 1
    row["achieved_tflops"] = round(
        step_flops(model_shape(config), config, fill=1.0) / 1e12 / row["seconds_per_step"], 2
    )
    print(json.dumps(row), flush=True)
    del result
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--cap-gib", type=float, default=15.0, help="GPU memory this process may use")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--dry-run", action="store_true", help="a narrow model on the CPU: checks the script")
    parser.add_argument("--commit", default="unknown", help="the commit that runs (the copy has no .git)")
    arguments = parser.parse_args(argv)
    if not arguments.dry_run:
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, arguments.cap_gib * 2**30 / total))
    card = card_from_memory(arguments.cap_gib, like="T4")
    work = Path(tempfile.mkdtemp(prefix="capo-gpu-check-"))
    shape = KNOWN_SHAPES[GPU_MODEL]
    if arguments.dry_run:
        shape = dataclasses.replace(
            shape, layers=2, hidden=64, intermediate=128, heads=4, kv_heads=2, vocab=2048
        )
    texts = write_pairs(work / "pairs.jsonl", n=16 * arguments.steps)
    folder = save_qwen2_stand_in(
        work / "model",
        texts,
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_layers=shape.layers,
        num_heads=shape.heads,
        num_kv_heads=shape.kv_heads,
        vocab_size=shape.vocab,
    )
    planned = profile_config("gpu", card=card)  # the T4 plan's micro-batch, accumulation, checkpointing
    common = dict(
        model=str(folder),
        data=str(work / "pairs.jsonl"),
        data_config=None,
        eval_data=None,
        eval_data_configs=[],
        eval_split="train",
        max_train_pairs=None,
        max_eval_pairs=64,
        max_steps=arguments.steps,
        eval_every=0,
        save_every=0,
        log_every=5,
        progress="lines",
        loss="capo",
        batch_size=planned.batch_size,
        gradient_accumulation_steps=planned.gradient_accumulation_steps,
        gradient_checkpointing=planned.gradient_checkpointing,
        eval_batch_size=planned.eval_batch_size,
    )
    runs = {
        "fp16 (T4 plan)": dict(precision="fp16"),
        "bf16 (T4 plan)": dict(precision="bf16"),
        "bf16, checkpointing, 16 pairs": dict(
            precision="bf16", batch_size=16, gradient_accumulation_steps=1, gradient_checkpointing=True
        ),
    }
    rows = []
    for name, changes in runs.items():
        config = profile_config("gpu", card=card, **{**common, **changes, "output_dir": str(work / name[:4])})
        try:
            rows.append(run_once(name, config, card))
        except torch.OutOfMemoryError as error:  # a finding, not a crash: keep the other runs' rows
            rows.append({"run": name, "out_of_memory": str(error).split(". ")[0]})
            print(json.dumps(rows[-1]), flush=True)
    report = {
        "command": "python benchmarks/gpu_profile_check.py --cap-gib "
        f"{arguments.cap_gib:g} --steps {arguments.steps}",
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu (dry run)",
        "commit": arguments.commit,
        "cap_gib": arguments.cap_gib,
        "python": platform.python_version(),
        "versions": {name: importlib.metadata.version(name) for name in PACKAGES},
        "fused_adamw": adamw_is_fused("cuda" if torch.cuda.is_available() else "cpu"),
        "runs": rows,
    }
    arguments.out.mkdir(parents=True, exist_ok=True)
    name = "gpu_profile_check_dry_run.json" if arguments.dry_run else "gpu_profile_check.json"
    (arguments.out / name).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
