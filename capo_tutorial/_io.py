"""Atomic writes, and locks between processes that share a file.

Atomic writes: a file or folder appears under its final name complete, or not at all. The content
is written under a temporary name beside the target, flushed to disk (fsync), then renamed onto the
target (``os.replace``, atomic on POSIX and Windows), so that a crash or a reader in another process
never sees half a file. Checkpoints, grid manifests and benchmark reports use it.

:func:`exclusive_lock` lets one process at a time work on a shared file (grid results, a cached
warm-up).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "exclusive_lock", "write_text_atomic"]


@contextlib.contextmanager
def atomic_path(final: str | Path, *, folder: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``final`` to write to; on success, fsync it and rename it onto ``final``.

    Args:
        final: the file (or folder) to create or replace.
        folder: yield an empty temporary folder (its files are each flushed) instead of a file path.

    On an exception inside the block the temporary is removed and ``final`` is left as it was.
    """
    final = Path(final)
    temporary = final.with_name(f".{final.name}.{os.getpid()}.tmp")  # two processes may write one cache file
    _remove(temporary)
    if folder:
        temporary.mkdir(parents=True)
    else:
        temporary.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield temporary
        for file in temporary.iterdir() if folder else [temporary]:
            with open(file, "rb") as handle:
                os.fsync(handle.fileno())
        if folder and final.exists():
            shutil.rmtree(final)  # os.replace cannot replace a non-empty folder
        os.replace(temporary, final)
    finally:
        _remove(temporary)


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return Path(path)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.unlink()


@contextlib.contextmanager
def exclusive_lock(path: str | Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path`` + ".lock" (created with its folder) while the block
    runs: another process asking for the same lock waits. Where the OS has no ``fcntl`` (Windows) the
    block runs unlocked."""
    lock_path = Path(path).with_name(Path(path).name + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as lock:
        try:
            import fcntl
        except ImportError:
            yield
            return
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
