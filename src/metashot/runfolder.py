"""What every training run does to its run folder: lock it, and clear what an older run left in it.

- :func:`lock_run`: ``fcntl.flock`` on ``RUN/.lock`` (non-blocking) while the run writes there, so two
  processes never interleave ``metrics.jsonl`` and checkpoints. The lock file holds the owner's pid, host and
  command line, which the error of a second process names. Re-entrant within one process.
- :func:`clear_previous_run`: a fresh (not resumed) run in a used folder removes the old run's checkpoints and
  summary (with a warning naming them), so ``metashot eval RUN`` never evaluates a model of another run.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

from metashot.checkpoint import clean_hidden_copies

LOCK = ".lock"
# What a run leaves that a later, fresh run must not inherit (metrics.jsonl is started anew by the trainer).
PREVIOUS_RUN = ("best", "final", "last", "summary.json", "tensorboard")

try:
    import fcntl
except ImportError:  # (Windows: no advisory locks; runs are not locked there)
    fcntl = None  # type: ignore[assignment]

_held: dict[str, list] = {}  # realpath -> [file object, depth]


class RunFolderLockedError(RuntimeError):
    """Another process is training into the same run folder."""


@contextlib.contextmanager
def lock_run(out_dir: str | Path) -> Iterator[None]:
    """Hold the lock of run folder ``out_dir`` (created if missing) for the duration of the block.

    Raises:
        RunFolderLockedError: another process holds it; the message names that process.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    key = os.path.realpath(out_dir)
    if key in _held:
        _held[key][1] += 1
        try:
            yield
        finally:
            _held[key][1] -= 1
        return
    if fcntl is None:
        yield
        return
    f = open(out_dir / LOCK, "a+")
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        owner = f.read().strip() or "unknown"
        f.close()
        try:
            o = json.loads(owner)
            owner = f"pid {o['pid']} on {o['host']}: {o['command']}"
        except (ValueError, KeyError, TypeError):
            pass
        raise RunFolderLockedError(
            f"run folder {out_dir} is in use by another training process ({owner}); wait for it to end, stop "
            f"it, or train into another folder (--set train.out_dir=...)"
        ) from None
    try:
        f.seek(0)
        f.truncate()
        f.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv)}))
        f.flush()
        _held[key] = [f, 1]
        yield
    finally:
        _held.pop(key, None)
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
        f.close()


def clear_previous_run(out_dir: str | Path) -> list[str]:
    """Remove what an earlier run left in ``out_dir`` (checkpoints, their hidden leftovers, summary,
    TensorBoard events) before a fresh run starts there; warns with the names removed and returns them."""
    out_dir = Path(out_dir)
    removed = []
    for name in PREVIOUS_RUN:
        p = out_dir / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
            removed.append(f"{name}/")
        elif p.exists() or p.is_symlink():
            p.unlink()
            removed.append(name)
        removed += [f"{c.name}/" for c in clean_hidden_copies(p)]
    if removed:
        warnings.warn(
            f"{out_dir} held an earlier run; this fresh run removed its {', '.join(removed)} (to continue "
            f"a run instead, use --resume {out_dir})",
            stacklevel=2,
        )
    return removed
