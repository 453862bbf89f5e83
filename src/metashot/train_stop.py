"""How a meta-training run stops when it cannot go on, and what it leaves in its run folder.

- Divergence (a NaN/Inf loss, gradient, buffer or parameter; :class:`metashot.optim.NonFiniteLossError`):
  the step is logged as a ``non_finite`` event, ``summary.json`` records it, and the error names the last
  good checkpoint and a command that continues from it.
- An operating-system error (a full disk, a run folder made read-only): logged as an ``os_error`` event and
  written into ``summary.json`` as far as the disk still allows; the error names the run folder when the
  operating system named no file.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from metashot.checkpoint import read_meta
from metashot.optim import NonFiniteLossError
from metashot.runs import LAST

if TYPE_CHECKING:
    from metashot.train import Trainer


def diverged(tr: Trainer, e: NonFiniteLossError) -> NonFiniteLossError:
    """Log and summarise a non-finite step; the error to raise names the last good checkpoint."""
    tr._log({"step": tr.step + 1, "event": "non_finite", "message": str(e)})
    good = tr.run.checkpoint(LAST)
    where = (f"the last good checkpoint is {good} (step {read_meta(good).get('step')})"
             if (good / "config.json").is_file()
             else "no checkpoint was written before (set train.checkpoint_every to keep one)")
    if tr.dist.is_main:
        tr.run.write_summary({"diverged_at_step": tr.step + 1, "steps": tr.step, "out_dir": str(tr.out_dir),
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
