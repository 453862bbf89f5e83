"""One run folder, for every kind of training (vision and text meta-training, frozen models, meta-RL).

A run folder ``RUN/`` holds:

- ``config.yaml``: the run's configuration (JSON, which is valid YAML); ``--resume RUN`` reads it back.
- ``metrics.jsonl``: one JSON record per line, each with a step field (``step``; ``iteration`` in meta-RL).
  On resume the records past the checkpoint are dropped (they are redone); ``metashot plot RUN`` draws them.
- ``last/``: the resumable checkpoint, written every ``checkpoint_every`` steps, on SIGINT/SIGTERM and at the
  end; ``best/``: best validation score; ``final/``: the end of training (see :mod:`metashot.checkpoint`
  for their crash-safe swaps).
- ``summary.json``: the outcome (steps, best score, why it stopped); ``tensorboard/``: optional events.
- ``.lock``: held (``fcntl.flock``, non-blocking) while a process trains there, with the owner's pid, host
  and command line, which the error of a second process names. Re-entrant within one process.

A fresh (not resumed) run in a used folder removes the old run's checkpoints, summary, events and log first
(with a warning naming them), so ``metashot eval RUN`` never evaluates a model of another run; a resumed one
restores checkpoints whose swap was killed between its two renames.
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
from typing import Any

from metashot.checkpoint import clean_hidden_copies, recover
from metashot.signals import handling

LAST, BEST, FINAL = "last", "best", "final"
RUN_CONFIG = "config.yaml"  # (a checkpoint's config is metashot.checkpoint.CONFIG, config.json)
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
LOCK = ".lock"
TENSORBOARD = "tensorboard"
# What a run leaves that a later, fresh run must not inherit (metrics.jsonl is removed beside them).
PREVIOUS_RUN = (BEST, FINAL, LAST, SUMMARY, TENSORBOARD)

try:
    import fcntl
except ImportError:  # (Windows: no advisory locks; runs are not locked there)
    fcntl = None  # type: ignore[assignment]

_held: dict[str, list] = {}  # realpath -> [file object, depth]: the locks this process holds


class RunFolderLockedError(RuntimeError):
    """Another process is training into the same run folder."""


class RunDir:
    """The run folder ``path`` (created when a run starts).

    Args:
        path: the folder.
        step_key: the step field of its metrics records (``step``; meta-RL: ``iteration``).

    Attributes:
        signal: the SIGINT/SIGTERM received inside :meth:`stop_signals` (None: none yet); the training loop
            checkpoints ``last/`` and stops after its current step when it is set.
    """

    def __init__(self, path: str | Path, step_key: str = "step") -> None:
        self.path = Path(path)
        self.step_key = step_key
        self.signal: int | None = None
        self._tb: Any = None

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    @property
    def config_file(self) -> Path:
        return self.path / RUN_CONFIG

    @property
    def metrics_file(self) -> Path:
        return self.path / METRICS

    @property
    def summary_file(self) -> Path:
        return self.path / SUMMARY

    def checkpoint(self, name: str) -> Path:
        """The folder of checkpoint ``name`` (:data:`LAST`, :data:`BEST` or :data:`FINAL`)."""
        return self.path / name

    # -- the lock, a fresh start, a resumed start -----------------------------------------------------

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the folder's lock (the folder is created if missing) for the duration of the block.

        Raises:
            RunFolderLockedError: another process holds it; the message names that process.
        """
        self.path.mkdir(parents=True, exist_ok=True)
        key = os.path.realpath(self.path)
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
        f = open(self.path / LOCK, "a+")
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
                f"run folder {self.path} is in use by another training process ({owner}); wait for it to "
                f"end, stop it, or train into another folder (--set train.out_dir=...)"
            ) from None
        try:
            f.seek(0)
            f.truncate()
            owner = {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv)}
            f.write(json.dumps(owner))
            f.flush()
            _held[key] = [f, 1]
            yield
        finally:
            _held.pop(key, None)
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
            f.close()

    def start(self, config: dict[str, Any], fresh: bool) -> None:
        """Begin writing (under :meth:`lock`): create the folder and write ``config.yaml``; a fresh run then
        removes what an earlier run left (:meth:`clear`), a resumed one repairs its checkpoints
        (:meth:`recover`)."""
        self.path.mkdir(parents=True, exist_ok=True)
        self.write_config(config)
        if fresh:
            self.clear()
        else:
            self.recover()

    def clear(self) -> list[str]:
        """Remove what an earlier run left (checkpoints and their hidden leftovers, summary, TensorBoard
        events, the metrics log); warns with the names removed (the log aside) and returns them."""
        removed = []
        for name in PREVIOUS_RUN:
            p = self.path / name
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
                removed.append(f"{name}/")
            elif p.exists() or p.is_symlink():
                p.unlink()
                removed.append(name)
            removed += [f"{c.name}/" for c in clean_hidden_copies(p)]
        if removed:
            warnings.warn(
                f"{self.path} held an earlier run; this fresh run removed its {', '.join(removed)} (to "
                f"continue a run instead, use --resume {self.path})",
                stacklevel=3,
            )
        self.metrics_file.unlink(missing_ok=True)
        return removed

    def earlier_run(self) -> list[str]:
        """What an earlier run left here that a fresh run would remove (its checkpoints and summary)."""
        names = (BEST, FINAL, LAST, SUMMARY)
        return [f"{n}/" if n != SUMMARY else n for n in names
                if (self.path / n).exists() or (self.path / n).is_symlink()]

    def resumable(self) -> Path:
        """``last/``, the checkpoint a run resumes from; FileNotFoundError naming the folder if it is missing
        (a run folder holds one once training wrote its first checkpoint)."""
        last = self.checkpoint(LAST)
        if not (last / "config.json").is_file():
            raise FileNotFoundError(f"--resume {self.path}: no {LAST}/ checkpoint there (it is written every "
                                    f"train.checkpoint_every steps, on SIGINT/SIGTERM and at the end of "
                                    f"training)")
        return last

    def recover(self, names: tuple[str, ...] = (LAST, BEST, FINAL)) -> None:
        """Restore the checkpoints ``names`` whose write was killed between its two renames (see
        :func:`metashot.checkpoint.recover`); only under :meth:`lock`."""
        for name in names:
            recover(self.checkpoint(name))

    # -- config, metrics, summary ---------------------------------------------------------------------

    def write_config(self, config: dict[str, Any]) -> None:
        self.config_file.write_text(json.dumps(config, indent=2))

    def read_config(self) -> dict[str, Any]:
        """The raw ``config.yaml`` of the run; errors name the folder or the file."""
        p = self.config_file
        if not p.is_file():
            raise FileNotFoundError(f"{self.path} is not a metashot run folder: {RUN_CONFIG} is missing")
        try:
            return json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{p}: not valid JSON ({e}); the run's config was damaged: repair it or start a "
                             f"new run from its YAML config") from e

    def log(self, record: dict[str, Any]) -> None:
        """Append one record to ``metrics.jsonl`` (and its numbers to TensorBoard, if open)."""
        with open(self.metrics_file, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for k, v in record.items():
                if k != self.step_key and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self._tb.add_scalar(k if k.startswith("val_") else f"train/{k}", v, record[self.step_key])

    def truncate_metrics(self, step: int) -> None:
        """Drop the records past ``step`` (written after the checkpoint a run resumes from), atomically. A
        torn last line (a crash in the middle of a write) is dropped with a warning; any other unreadable
        line is an error naming it."""
        path = self.metrics_file
        if not path.is_file():
            return
        key = self.step_key
        lines = [(n, line) for n, line in enumerate(path.read_text().splitlines(), 1) if line.strip()]
        keep = []
        for i, (n, line) in enumerate(lines):
            try:
                at = json.loads(line)[key]
            except (ValueError, KeyError, TypeError) as e:
                if i == len(lines) - 1:  # the step it belongs to is redone anyway
                    warnings.warn(f"{path}: dropping its unreadable last line {n} (cut short by a crash?)",
                                  stacklevel=2)
                    break
                raise ValueError(f"{path}, line {n}: not a metrics record with {key!r} ({e}); repair or "
                                 f"delete that line to resume") from None
            if at <= step:
                keep.append(line)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in keep))
        tmp.replace(path)

    def write_summary(self, result: dict[str, Any]) -> None:
        self.summary_file.write_text(json.dumps(result, indent=2))

    def open_tensorboard(self, purge_step: int | None = None) -> None:
        """Also send the records of :meth:`log` to TensorBoard events in ``tensorboard/``."""
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise ImportError(
                "train.tensorboard=true needs the tensorboard package: pip install tensorboard "
                "(or set train.tensorboard=false; metrics.jsonl is always written)"
            ) from e
        self._tb = SummaryWriter(str(self.path / TENSORBOARD), purge_step=purge_step)

    def close_tensorboard(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    # -- stop signals ---------------------------------------------------------------------------------

    @contextlib.contextmanager
    def stop_signals(self, second_aborts: bool = True) -> Iterator[None]:
        """Inside the block, SIGINT/SIGTERM set :attr:`signal` (the loop checkpoints and stops after its
        step); with ``second_aborts`` a second one raises KeyboardInterrupt (abort without a checkpoint).
        The handlers of before come back at the end. Off the main thread nothing is installed."""
        def handler(signum: int, frame: Any) -> None:
            if second_aborts and self.signal is not None:
                raise KeyboardInterrupt(f"second signal {signum}: aborting without a checkpoint")
            self.signal = signum

        with handling(handler):
            yield
