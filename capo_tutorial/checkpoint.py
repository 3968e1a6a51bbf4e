"""Checkpoints that survive a crash: written to a temporary folder, then renamed into place.

A checkpoint folder ``checkpoint-{step:06d}`` (under the run's output folder) holds::

    model.safetensors      the trainable weights (all weights, or only the LoRA adapter)
    optimizer.pt           optimizer state   (tensors and numbers only: loaded with weights_only=True)
    scheduler.pt           LR-scheduler state (same)
    rng.pt                 torch RNG states   (same)
    state.json             stage, step, epoch, batches consumed in the epoch, and free-form extras

Nothing here unpickles arbitrary objects. A folder becomes visible under its final name only once
every file in it is written, so an interrupted write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from capo_tutorial._io import atomic_path

__all__ = [
    "latest_checkpoint",
    "load_checkpoint",
    "load_trainable_weights",
    "save_checkpoint",
    "trainable_state_dict",
]

_NAME = re.compile(r"^checkpoint-(\d+)$")


def trainable_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The weights a checkpoint must hold: the parameters that train (LoRA: the adapter only).

    Frozen weights are not saved: they come back from the model's source (the tiny model's seed,
    the pretrained files, or the saved reference folder).
    """
    return {
        name: parameter.detach().to("cpu").contiguous()
        for name, parameter in model.named_parameters()
        if parameter.requires_grad
    }


def load_trainable_weights(model: nn.Module, path: str | Path) -> None:
    """Load :func:`trainable_state_dict` weights from a safetensors file into ``model`` (strict)."""
    weights = load_file(str(path))
    expected = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    missing, unexpected = sorted(expected - set(weights)), sorted(set(weights) - expected)
    if missing or unexpected:
        raise ValueError(
            f"checkpoint {path} does not match the model: missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}; was it written by a run with another model or LoRA setting?"
        )
    parameters = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in weights.items():
            parameters[name].copy_(tensor)


def save_checkpoint(
    output_dir: str | Path,
    *,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: dict[str, Any],
    keep: int = 2,
) -> Path:
    """Write ``checkpoint-{step}`` atomically and delete all but the ``keep`` newest checkpoints.

    Args:
        output_dir: the run's folder.
        step: the global step the checkpoint is taken after (its name).
        model: the unwrapped model whose trainable weights are saved.
        optimizer, scheduler: objects with ``state_dict()``.
        state: JSON-serialisable run state (stage, step, epoch, ...).
        keep: how many checkpoints to keep.

    Returns:
        The checkpoint folder.
    """
    output_dir = Path(output_dir)
    final = output_dir / f"checkpoint-{step:06d}"
    with atomic_path(final, folder=True) as temporary:
        save_file(trainable_state_dict(model), str(temporary / "model.safetensors"))
        torch.save(optimizer.state_dict(), temporary / "optimizer.pt")
        torch.save(scheduler.state_dict(), temporary / "scheduler.pt")
        torch.save(_rng_state(), temporary / "rng.pt")
        (temporary / "state.json").write_text(json.dumps(state, indent=2, sort_keys=True), encoding="utf-8")
    _prune(output_dir, keep)
    return final


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete checkpoint folder in ``output_dir``, or None."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in output_dir.iterdir() if (m := _NAME.match(p.name)) and p.is_dir()]
    return max(found)[1] if found else None


def load_checkpoint(
    path: str | Path, *, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any
) -> dict[str, Any]:
    """Restore weights, optimizer, scheduler and RNG from a checkpoint folder; return its state dict."""
    path = Path(path)
    missing = [
        n
        for n in ("model.safetensors", "optimizer.pt", "scheduler.pt", "state.json")
        if not (path / n).exists()
    ]
    if missing:
        raise FileNotFoundError(
            f"checkpoint {path} is incomplete: {missing} missing; delete it to resume from an older one"
        )
    load_trainable_weights(model, path / "model.safetensors")
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True, map_location="cpu"))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    if (path / "rng.pt").exists():
        _set_rng_state(torch.load(path / "rng.pt", weights_only=True))
    return json.loads((path / "state.json").read_text(encoding="utf-8"))


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _prune(output_dir: Path, keep: int) -> None:
    found = sorted((int(m.group(1)), p) for p in output_dir.iterdir() if (m := _NAME.match(p.name)))
    for _, path in found[:-keep]:
        shutil.rmtree(path, ignore_errors=True)
