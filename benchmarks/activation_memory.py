"""What autograd keeps for a training step of a real-width Qwen2, against the plan's estimate.

Builds Qwen2 layers of Qwen2.5-0.5B's width (hidden 896, MLP 4864, 14 heads, 2 KV heads) and its
real 151,936-token LM head, with LoRA r=16 on every projection, runs the completion log-probs of
``capo_tutorial.logprobs`` under bf16 autocast on the CPU, and sums the bytes of every tensor saved
for the backward pass (saved-tensor hooks; the weights themselves are not counted). That is the
activation term of ``capo_tutorial.plan`` (activations plus the LM head), which this compares with
the plan's estimate at several sequence lengths, with and without gradient checkpointing. A CPU
measures the same saved tensors a GPU keeps, except attention kernels' workspace. With
checkpointing, the layer recomputed during the backward pass is not a saved tensor: the plan's
term for it is reported beside the comparison. The per-token coefficients of the plan were fitted
on such measurements at three widths (896/4864, 896/2432, 448/4864; 256 tokens): agreement at
this width checks the structure of the estimate over lengths and the LM head's two paths, not an
independent width.

    python benchmarks/activation_memory.py --out benchmarks/results
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
from pathlib import Path

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from capo_tutorial.logprobs import sequence_logps
from capo_tutorial.models import apply_lora, enable_gradient_checkpointing
from capo_tutorial.plan import KNOWN_SHAPES, activation_bytes, head_saved_bytes

SHAPE = KNOWN_SHAPES["Qwen/Qwen2.5-0.5B-Instruct"]


def saved_bytes(layers: int, rows: int, length: int, checkpointing: bool) -> int:
    """Bytes of the tensors autograd saves for one forward pass of ``rows`` x ``length`` tokens."""
    config = Qwen2Config(
        hidden_size=SHAPE.hidden,
        intermediate_size=SHAPE.intermediate,
        num_hidden_layers=layers,
        num_attention_heads=SHAPE.heads,
        num_key_value_heads=SHAPE.kv_heads,
        vocab_size=SHAPE.vocab,
        tie_word_embeddings=True,
        max_position_embeddings=4096,
    )
    torch.manual_seed(0)
    model = apply_lora(Qwen2ForCausalLM(config), r=16, alpha=32, seed=0, verbose=False)
    if checkpointing:
        enable_gradient_checkpointing(model)
    model.train()
    weights = {parameter.untyped_storage().data_ptr() for parameter in model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    ids = torch.randint(0, SHAPE.vocab, (rows, length))
    completion = torch.zeros_like(ids)
    completion[:, length // 4 :] = 1  # a quarter prompt, as the collator's left padding leaves it
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            sequence_logps(model, ids, torch.ones_like(ids), completion)
    return sum(saved.values())


def planned_bytes(layers: int, rows: int, length: int, checkpointing: bool) -> tuple[float, float]:
    """The plan's (saved, transient) bytes for the same micro-batch: saved activations and LM-head
    tensors, and the layer that checkpointing recomputes in the backward pass (not measurable here)."""
    shape = dataclasses.replace(SHAPE, layers=layers)
    saved, transient = activation_bytes(shape, rows * length, checkpointing)
    # Three quarters of the positions reach the LM head here (the plan assumes all, to be safe).
    return saved + head_saved_bytes(shape, rows * (length - length // 4)), transient


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--rows", type=int, default=2)
    parser.add_argument("--lengths", type=int, nargs="+", default=[128, 256, 512])
    arguments = parser.parse_args(argv)
    rows = []
    for checkpointing in (False, True):
        for length in arguments.lengths:
            measured = saved_bytes(arguments.layers, arguments.rows, length, checkpointing)
            planned, transient = planned_bytes(arguments.layers, arguments.rows, length, checkpointing)
            row = {
                "layers": arguments.layers,
                "rows": arguments.rows,
                "length": length,
                "gradient_checkpointing": checkpointing,
                "measured_saved_mib": round(measured / 2**20, 1),
                "planned_saved_mib": round(planned / 2**20, 1),
                "planned_over_measured": round(planned / measured, 3),
                "planned_recomputed_layer_mib": round(transient / 2**20, 1),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    report = {
        "command": "python benchmarks/activation_memory.py " + " ".join(argv or []),
        "what": "bytes autograd saves (bf16 autocast, LoRA r=16, Qwen2.5-0.5B width and vocabulary)",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "rows": rows,
    }
    arguments.out.mkdir(parents=True, exist_ok=True)
    (arguments.out / "activation_memory.json").write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
