"""How a meta-training run stops when it cannot go on, and what it leaves in its run folder.

- Divergence (a NaN/Inf loss, gradient, buffer or parameter; :class:`metashot.optim.NonFiniteLossError`):
  the step is logged as a ``non_finite`` event, ``summary.json`` records it, and the error names the last
  good checkpoint and a command that continues from it. A checkpoint is good (:func:`health_problem`) when
  its weights and buffers are finite, it predicts finite scores in evaluation mode, and the next step's
  forward pass from it is finite: a run whose batch-norm statistics grow towards overflow (finite, but
  1e30) never leaves a "last good" checkpoint that cannot be evaluated or resumed. Non-finite scores in
  validation stop the run the same way.
- An operating-system error (a full disk, a run folder made read-only): logged as an ``os_error`` event and
  written into ``summary.json`` as far as the disk still allows; the error names the run folder when the
  operating system named no file.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import torch

from metashot.checkpoint import read_meta
from metashot.data.episodes import EpisodeBatch
from metashot.optim import NonFiniteLossError, non_finite_names
from metashot.runs import LAST

# ``tr`` below is a metashot.trainer.Trainer (typed loosely: the Trainer imports this module)
Trainer = Any


def failed_at(e: NonFiniteLossError, step: int) -> NonFiniteLossError:
    """``e``, marked as found at step ``step`` (1-based; a step whose update was applied)."""
    e.at_step = step  # type: ignore[attr-defined]
    return e


def health_problem(tr: Trainer) -> NonFiniteLossError | None:
    """Why the model in memory (after ``tr.step`` steps) is not a good checkpoint, or None if it is.

    Good: every weight and buffer finite; finite scores in evaluation mode on the next training batch (for
    episodic learners); and a finite loss and finite batch-norm statistics from the next step's forward pass
    in training mode, so resuming from it (with any rate) gets past its first step. Buffers, the training
    mode and the random-number state are restored: checking changes nothing in the run.
    """
    learner = tr.learner
    bad = non_finite_names(learner.state_dict().items())
    if bad:
        return failed_at(NonFiniteLossError(f"Trainer: tensor {bad[0]!r} holds NaN/Inf after step {tr.step}"),
                         tr.step)
    batch, _ = tr._batch()
    saved = [b.detach().clone() for b in learner.buffers()]
    was_training = learner.training
    devices = [tr.device] if tr.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            if isinstance(batch, EpisodeBatch):
                learner.eval()
                with learner.adapt_mode():
                    scores = learner.predict_batch(batch)
                if not bool(torch.isfinite(scores).all()):
                    return failed_at(NonFiniteLossError(
                        f"Trainer: the model after step {tr.step} gives non-finite scores in evaluation mode "
                        f"(its batch-norm statistics or weights overflow)"), tr.step)
            learner.train()
            with tr._autocast():
                loss, _ = tr.loss_fn(batch)
            loss_value = float(loss.detach())
            buffers = non_finite_names(learner.named_buffers())
            if not math.isfinite(loss_value) or buffers:
                what = (f"loss ({loss_value})" if not math.isfinite(loss_value)
                        else f"buffer(s) {', '.join(buffers)}")
                return NonFiniteLossError(
                    f"Trainer: the forward pass of step {tr.step + 1} (batch {tr.step}) gives a non-finite "
                    f"{what}; no update was applied")
    finally:
        with torch.no_grad():
            for b, v in zip(learner.buffers(), saved, strict=True):
                b.copy_(v)
        learner.train(was_training)
    return None


def diverged(tr: Trainer, e: NonFiniteLossError) -> NonFiniteLossError:
    """Log and summarise a non-finite step; the error to raise names the last good checkpoint."""
    at = getattr(e, "at_step", tr.step + 1)
    tr._log({"step": at, "event": "non_finite", "message": str(e)})
    good = tr.run.checkpoint(LAST)
    where = (f"the last good checkpoint is {good} (step {read_meta(good).get('step')})"
             if (good / "config.json").is_file()
             else "no checkpoint was written before (set train.checkpoint_every to keep one)")
    if tr.dist.is_main:
        tr.run.write_summary({"diverged_at_step": at, "steps": at - 1, "out_dir": str(tr.out_dir),
                              "error": str(e)})
    return NonFiniteLossError(f"{e}. Training stopped; {where}. To continue from it with a lower rate or "
                              f"gradient clipping: metashot train --resume {tr.out_dir} --set "
                              f"train.lr=... (or --set train.grad_clip=...)")


def os_failure(tr: Trainer, e: OSError) -> OSError:
    """Record a write that failed (a full disk, a read-only folder) in the run folder as far as the disk
    allows; the error to raise names the run folder if the operating system named no file."""
    msg = f"{e.strerror or e}" + (f" ({e.filename})" if e.filename else "")
    with contextlib.suppress(OSError):
        tr.run.log({"step": tr.step, "event": "os_error", "message": msg})
    with contextlib.suppress(OSError):
        tr.run.write_summary({"steps": tr.step, "out_dir": str(tr.out_dir), "error": msg})
    if e.filename is None and e.errno is not None:
        return type(e)(e.errno, f"{e.strerror} (writing the run folder)", str(tr.out_dir))
    return e
