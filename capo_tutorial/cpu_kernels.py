"""The CPU kernels the committed numbers were made with, and how to select them for a rerun.

PyTorch picks its CPU kernels by the instruction sets the CPU offers: AVX-512 where it has them, else
AVX2, for its own vectorised operations (ATen), for matrix products (MKL) and for oneDNN's. The
kernels round differently in the last bits. A short run stays within float rounding of the committed
log-probs on either (``tests/test_short_run_numbers.py``), but a grid cell's ~1,600 training steps
magnify the difference into a few flipped rankings of near-tied test pairs. Measured on the committed
``slice`` grid, seed 0 at 20% flipped, recomputed on an AMD EPYC with AVX-512: DPO's test accuracy
moved from 0.6075 to 0.6625 and its share of flipped pairs memorised from 0.439 to 0.379, beyond the
tolerances of :data:`capo_tutorial.experiments.RECOMPUTE_TOLERANCE`; with the AVX2 kernels selected on
the same CPU, every committed number came back to the last bit (margin 0.0906829908490181).

The slice coming back to the last bit says that it was made with the AVX2 kernels, and so were the
grid cells run on the machine that made it; manifests written from now on record the kernels
(:func:`kernels_in_use`). :func:`select_committed_kernels` selects the AVX2 kernels on any x86-64 CPU
with AVX2, through the variables in :data:`COMMITTED_KERNELS`. PyTorch and MKL read them when they
first compute, so call it **before** importing torch (or anything that imports it). The experiment
scripts and the test suite call it first thing. Variables already set are left as they are, so
``ATEN_CPU_CAPABILITY=avx512 python experiments/run_grid.py ...`` still chooses other kernels. On other
CPUs (ARM) the variables do nothing, and a recompute is only as close as the tolerances allow; the
test suite's slice recompute skips there, and ``tests/test_short_run_numbers.py`` guards the numerics.
"""

from __future__ import annotations

import os
import sys
import warnings

__all__ = ["COMMITTED_KERNELS", "kernels_in_use", "select_committed_kernels"]

COMMITTED_KERNELS: dict[str, str] = {
    "ATEN_CPU_CAPABILITY": "avx2",  # PyTorch's own vectorised kernels (element-wise ops, reductions)
    "MKL_CBWR": "AVX2",  # MKL's code path for matrix products (conditional numerical reproducibility)
    "ONEDNN_MAX_CPU_ISA": "AVX2",  # oneDNN's kernels
}
"""Environment variables that select the kernels the committed numbers were made with. All three were
set when the slice came back to the last bit; which of them matters on which CPU was not isolated."""


def select_committed_kernels() -> dict[str, str]:
    """Select the committed numbers' CPU kernels for this process and the processes it starts.

    Sets each variable of :data:`COMMITTED_KERNELS` that is not set already. Call it before torch is
    imported: PyTorch and MKL read the variables when they first compute, so a call after that warns
    that this process may keep the kernels it already chose (the processes it starts still get them).

    Returns:
        The values in effect, variable -> value (a user's own setting where there was one).
    """
    unset = [name for name in COMMITTED_KERNELS if name not in os.environ]
    if unset and "torch" in sys.modules:
        warnings.warn(
            f"torch was imported before select_committed_kernels(): {', '.join(unset)} may come too late "
            "for this process. Call it at the top of the script, before other imports.",
            RuntimeWarning,
            stacklevel=2,
        )
    for name, value in COMMITTED_KERNELS.items():
        os.environ.setdefault(name, value)
    return {name: os.environ[name] for name in COMMITTED_KERNELS}


def kernels_in_use() -> dict[str, str | None]:
    """What a manifest records about the CPU kernels: PyTorch's CPU capability in use (e.g. "AVX2",
    "AVX512") and each variable of :data:`COMMITTED_KERNELS` as set (None where unset). Imports torch."""
    import torch

    return {
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        **{name: os.environ.get(name) for name in COMMITTED_KERNELS},
    }
