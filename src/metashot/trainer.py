"""The Trainer: meta-training loop shared by every algorithm (:mod:`metashot.train` assembles its runs).

It knows nothing about the algorithm: step ``s`` (0-based) draws batch ``s`` from a source (``sample(index)
-> batch``, a function of ``(seed, index)``; :mod:`metashot.data.sources` makes it from the config), calls
``learner.meta_loss`` and takes an optimizer step. It writes a run folder (:class:`metashot.runs.RunDir`);
``metrics.jsonl`` gets one record per logging step (``step``, ``loss``, ``acc`` in percent, ``lr``,
``grad_norm``, ``steps_per_s``, ``episodes_per_s``, ``elapsed_s``) and one per validation (``val_acc``,
``val_ci95`` in percent). A resumed run (:mod:`metashot.train_state`) ends with exactly the parameters of an
uninterrupted one. A NaN/Inf loss, gradient, buffer or updated parameter stops training with an error naming
the step (:func:`metashot.optim.non_finite_step`); no checkpoint is ever written with non-finite weights.

A learner without trainable parameters (a frozen pretrained backbone with a parameter-free head, e.g.
SimpleShot) is a run with nothing to step: its ``prepare`` hook fits what it fits (statistics), it is
validated at step 0, and the run folder gets the same files (no ``last/``: there is no state to resume).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from metashot.algorithms.base import MetaLearner
from metashot.checkpoint import save_checkpoint
from metashot.config import Config
from metashot.data.device import pinned
from metashot.data.episodes import EpisodeBatch
from metashot.data.sources import BatchSource
from metashot.distributed import DistContext
from metashot.optim import (
    NonFiniteLossError,
    grad_norm_and_finite,
    make_optimizer,
    make_schedule,
    non_finite_names,
    non_finite_step,
)
from metashot.runs import BEST, FINAL, LAST, RunDir
from metashot.train_state import (
    load_weights,
    optimizer_state_flat,
    optimizer_state_unflat,
    read_train_state,
    rng_state,
    set_rng_state,
    state_files,
)
from metashot.train_stop import diverged, failed_at, health_problem, os_failure


class Trainer:
    """Meta-trains ``learner`` on batches from ``source``.

    Args:
        learner: any MetaLearner.
        source: batch ``i`` of training is ``source.sample(i)``; under torch.distributed, rank ``r`` calls
            ``source.sample(i, tasks=slice)`` for its share of the ``source.tasks_per_batch`` episodes.
        cfg: the run configuration (optimizer, schedule, logging, checkpoints, GPU options).
        validate: optional ``learner -> dict`` with ``acc`` (percent) and ``ci95``; called every
            ``train.val_every`` steps (on rank 0 only).
        out_dir: run folder (config.yaml, metrics.jsonl, last/, best/, final/, summary.json).
        progress: show a progress bar (rank 0 only).
        checkpoint_extra: extra JSON entries written into every checkpoint's config.json.
        dist: the process group context; default: the initialised default group, if any.
        prepare: optional ``learner -> dict`` run once before the first step of a fresh run (under the run
            folder's lock; e.g. fitting a frozen backbone's statistics); its dict goes into the summary.
    """

    def __init__(self, learner: MetaLearner, source: BatchSource, cfg: Config,
                 validate: Callable[[MetaLearner], dict[str, Any]] | None = None,
                 out_dir: str | Path | None = None, progress: bool = True,
                 checkpoint_extra: dict[str, Any] | None = None, dist: DistContext | None = None,
                 prepare: Callable[[MetaLearner], dict[str, Any]] | None = None) -> None:
        t = cfg.train
        if t.precision not in ("fp32", "bf16"):
            raise ValueError(f"train.precision must be 'fp32' or 'bf16', got {t.precision!r}")
        self.learner = learner
        self.checkpoint_extra = dict(checkpoint_extra or {})
        self.source = source
        self.cfg = cfg
        self.validate = validate
        self.prepare = prepare
        self.run = RunDir(out_dir if out_dir is not None else cfg.out_dir())
        self.out_dir = self.run.path
        self.dist = dist if dist is not None else DistContext.current()
        if self.dist.enabled and self.dist.broadcast_object(validate is not None) and not self.dist.is_main:
            self.validate = _no_validation  # rank 0 validates; the others join its decision broadcast
        self.progress = progress and self.dist.is_main
        self.device = self.dist.device(t.device)
        self.learner.to(self.device)
        self.dist.broadcast_parameters_(self.learner)
        self.params = [p for p in learner.parameters() if p.requires_grad]
        self.float_buffers = [b for b in learner.buffers() if b.is_floating_point()]
        # nothing to step: a run of one validation at step 0 (no optimizer, no schedule)
        self.total_steps = t.steps if self.params else 0
        self.opt = make_optimizer(self.params, cfg) if self.params else None
        self.sched = make_schedule(self.opt, cfg) if self.opt is not None else None
        self.loss_fn = torch.compile(learner.meta_loss) if t.compile else learner.meta_loss
        self.tasks_per_batch = int(getattr(source, "tasks_per_batch", cfg.episodes.meta_batch))
        self.step, self.stale, self.elapsed, self.best_acc = 0, 0, 0.0, -math.inf
        self.best_step: int | None = None
        self.window: list[dict[str, float]] = []  # the metrics of the steps since the last log record
        self.history: list[dict[str, Any]] = []
        self._stop_all = False  # a signal reached this rank or another one
        self._healthy_at = -1  # the step whose model passed the checkpoint health check (train_stop)

    @property
    def _signal(self) -> int | None:
        """The SIGINT/SIGTERM this process received (the run folder's stop-signal handler records it)."""
        return self.run.signal

    @_signal.setter
    def _signal(self, signum: int | None) -> None:
        self.run.signal = signum

    # -- persistence ------------------------------------------------------------------------------

    def _log(self, record: dict[str, Any]) -> None:
        self.history.append(record)
        if self.dist.is_main:
            self.run.log(record)

    def save(self, name: str, extra: dict[str, Any] | None = None, with_state: bool = False) -> Path:
        """Write checkpoint ``out_dir/name`` (rank 0 only; never with non-finite weights)."""
        path = self.run.checkpoint(name)
        if not self.dist.is_main:
            return path
        bad = non_finite_names(self.learner.state_dict().items())
        if bad:
            raise NonFiniteLossError(f"Trainer: refusing to write checkpoint {path}: tensor {bad[0]!r} holds "
                                     f"NaN/Inf at step {self.step}")
        if self._healthy_at != self.step and self.params:  # once per step (last/ and best/ may share one)
            problem = health_problem(self)
            if problem is not None:
                raise problem
            self._healthy_at = self.step
        return save_checkpoint(path, self.learner, self.cfg.to_dict(),
                               extra={"step": self.step, **self.checkpoint_extra, **(extra or {})},
                               train_state=state_files(self.state_dict()) if with_state else None)

    def state_dict(self) -> dict[str, Any]:
        """Everything the next step depends on besides the weights: optimizer and schedule state, every RNG
        state, the step, the best validation score and step, the early-stopping count, the elapsed time and
        the metrics of the steps since the last log record. :meth:`load_state_dict` is its inverse."""
        return {"step": self.step, "optimizer": optimizer_state_flat(self.opt), "rng": rng_state(),
                "scheduler": self.sched.state_dict(), "stale": self.stale, "elapsed_s": self.elapsed,
                "best_acc": None if self.best_acc == -math.inf else self.best_acc,
                "best_step": self.best_step, "window": list(self.window), "world_size": self.dist.world_size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict`'s ``state``. A ``train.lr`` other than the saved one wins: the
        schedule's closed form gives the rate at the saved step."""
        optimizer_state_unflat(self.opt, *state["optimizer"])
        step = int(state["step"])
        if all(lr == self.cfg.train.lr for lr in state["scheduler"]["base_lrs"]):
            self.sched.load_state_dict(state["scheduler"])
        else:
            for g in self.opt.param_groups:
                g["initial_lr"] = self.cfg.train.lr
            self.sched = make_schedule(self.opt, self.cfg, step)
        set_rng_state(*state["rng"])
        self.step, self.stale, self.elapsed = step, int(state["stale"]), float(state["elapsed_s"])
        self.best_acc = -math.inf if state["best_acc"] is None else float(state["best_acc"])
        self.best_step = state["best_step"]
        self.window = list(state["window"])

    def load_state(self, path: str | Path) -> None:
        """Resume from checkpoint ``path`` (usually ``RUN_DIR/last``): weights, then :meth:`load_state_dict`
        of its training state; on the main rank the metrics log loses the records past that step.

        Raises:
            CheckpointError: no training state, a file that does not match its SHA-256, or weights that do
                not fit the model.
        """
        load_weights(self.learner, path, self.device)
        self.load_state_dict(read_train_state(path))
        if self.dist.is_main:
            self.run.truncate_metrics(self.step)

    # -- one step ---------------------------------------------------------------------------------

    def _batch(self) -> tuple[EpisodeBatch, float]:
        """This rank's part of batch ``self.step`` on the device, and its share of the meta-batch."""
        if self.dist.enabled:
            sl = self.dist.task_slice(self.tasks_per_batch)
            batch = self.source.sample(self.step, tasks=sl)  # type: ignore[call-arg]
            weight = (sl.stop - sl.start) / self.tasks_per_batch
        else:
            batch, weight = self.source.sample(self.step), 1.0
        if self.cfg.train.pin_memory and self.device.type == "cuda" and batch.support_x.device.type == "cpu":
            return pinned(batch).to(self.device, non_blocking=True), weight
        return batch.to(self.device), weight

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.cfg.train.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def train_step(self) -> dict[str, float]:
        """One meta-update on batch ``self.step``; returns its metrics (averaged over ranks).

        Raises:
            NonFiniteLossError: the loss, gradient norm or a buffer (batch-norm statistics) is NaN/Inf
                (parameters and buffers are left untouched), or the update made a parameter NaN/Inf.
        """
        batch, weight = self._batch()
        buffers_before = [b.detach().clone() for b in self.learner.buffers()]  # BN statistics: kept on NaN
        self.learner.train()
        with self._autocast():
            loss, metrics = self.loss_fn(batch)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        keys = sorted(metrics)
        flags = [1.0 if self._signal is not None else 0.0]
        if self.dist.enabled:
            summed = self.dist.all_reduce_(self.params, self.float_buffers, weight,
                                           [float(metrics[k]) * weight for k in keys] + flags)
            metrics = dict(zip(keys, summed[: len(keys)], strict=True))
            self._stop_all = summed[len(keys)] > 0
        else:
            metrics = {k: float(metrics[k]) for k in keys}
            self._stop_all = self._signal is not None
        grads = [p.grad for p in self.params if p.grad is not None]
        norm, buffers_ok = grad_norm_and_finite(grads, self.float_buffers, self.device)
        loss_value = metrics.get("loss", float(loss.detach()))
        err = non_finite_step(loss_value, norm, buffers_ok, self.learner, self.step)
        if err is not None:
            with torch.no_grad():
                for b, saved in zip(self.learner.buffers(), buffers_before, strict=True):
                    b.copy_(saved)
            self.opt.zero_grad(set_to_none=True)
            raise err
        if self.cfg.train.grad_clip:
            torch.nn.utils.clip_grads_with_norm_(self.params, self.cfg.train.grad_clip, torch.tensor(norm))
        self.opt.step()
        if self.params and not bool(torch.stack([torch.isfinite(q).all() for q in self.params]).all()):
            bad = non_finite_names(self.learner.named_parameters())
            raise NonFiniteLossError(f"Trainer: non-finite parameter(s) {', '.join(bad)} after the "
                                     f"update of step {self.step + 1} (batch {self.step}); the weights in "
                                     f"memory are no longer valid")
        self.sched.step()
        self.step += 1
        metrics["grad_norm"] = norm
        return metrics

    # -- the loop ---------------------------------------------------------------------------------

    def fit(self) -> dict[str, Any]:
        """Train until ``train.steps`` (or early stop / target / signal); returns the run summary.

        Holds the run folder's lock (:meth:`RunDir.lock`) and starts it fresh (step 0) or resumed
        (:meth:`RunDir.start`). SIGINT/SIGTERM: checkpoint ``last/`` and stop after the current step; a second
        one aborts.

        Raises:
            NonFiniteLossError: NaN/Inf loss, gradient, buffer or updated parameter; training stops at that
                step, ``summary.json`` records it and ``last/`` and ``best/`` keep the last good weights.
        """
        if not self.dist.is_main:
            return self._fit()
        with self.run.lock():
            self.run.start(self.cfg.to_dict(), fresh=self.step == 0)
            prepared = self.prepare(self.learner) if self.prepare is not None and self.step == 0 else {}
            if self.cfg.train.tensorboard:
                self.run.open_tensorboard(purge_step=self.step or None)
            try:
                return self._fit(prepared)
            except OSError as e:  # a full disk, a folder made read-only: say so in the run folder if we can
                raise os_failure(self, e) from None
            finally:
                self.run.close_tensorboard()

    def _fit(self, prepared: dict[str, Any] | None = None) -> dict[str, Any]:
        t = self.cfg.train
        t0 = time.perf_counter() - self.elapsed
        last = (time.perf_counter(), self.step)
        result: dict[str, Any] = dict(prepared or {})
        bar = tqdm(total=self.total_steps, initial=self.step, desc=f"train {self.cfg.name}", unit="step",
                   disable=not self.progress)
        try:
            with self.run.stop_signals():
                if not self.total_steps:
                    self._validate_maybe(result, t0, bar)
                while self.step < self.total_steps:
                    metrics = self.train_step()
                    self.window.append(metrics)
                    bar.update(1)
                    self.elapsed = time.perf_counter() - t0
                    if self.step % t.log_every == 0 or self.step == self.total_steps:
                        last = self._log_window(bar, *last)
                    stop = self._validate_maybe(result, t0, bar)
                    saved = bool(t.checkpoint_every) and self.step % t.checkpoint_every == 0
                    if saved:
                        self.save(LAST, with_state=True)
                    if stop:
                        break
                    if self._stop_all:
                        if not saved:
                            self.save(LAST, with_state=True)
                        result["interrupted_at_step"] = self.step
                        result["signal"] = self._signal if self._signal is not None else "peer"
                        break
            if "interrupted_at_step" not in result:
                self.save(FINAL)
                if self.opt is not None:  # (nothing to resume in a run with nothing to step)
                    self.save(LAST, with_state=True)
        except NonFiniteLossError as e:  # a step, a validation or a checkpoint's health check
            self.elapsed = time.perf_counter() - t0
            raise diverged(self, e) from None
        finally:
            bar.close()
        result.update(steps=self.step, seconds=round(self.elapsed, 2),
                      best_val_acc=None if self.best_acc == -math.inf else self.best_acc,
                      best_step=self.best_step, out_dir=str(self.out_dir))
        if self.dist.is_main:
            self.run.write_summary(result)
        self.dist.barrier()
        return result

    def _log_window(self, bar: Any, last_t: float, last_step: int) -> tuple[float, int]:
        """Log the mean metrics of the steps since the last record; returns the new (time, step) mark."""
        now = time.perf_counter()
        sps = (self.step - last_step) / max(now - last_t, 1e-9)
        mean = {k: sum(m[k] for m in self.window) / len(self.window) for k in self.window[-1]}
        # accuracies in percent in the log and the bar, like val_acc and metashot eval
        mean.update({k: 100.0 * v for k, v in mean.items() if k.endswith("acc")})
        rec = {"step": self.step, "lr": self.opt.param_groups[0]["lr"], **mean, "steps_per_s": sps,
               "episodes_per_s": sps * self.tasks_per_batch, "elapsed_s": round(self.elapsed, 2)}
        self._log(rec)
        shown = [f"loss={rec['loss']:.3f}"] if "loss" in rec else []
        shown += [f"acc={rec['acc']:.1f}%"] if "acc" in rec else []
        bar.set_postfix_str(", ".join(shown))
        self.window = []
        return now, self.step

    def _validate_maybe(self, result: dict[str, Any], t0: float, bar: Any = None) -> bool:
        """Validate if due (rank 0), keep best/, decide early stopping; True = stop (all ranks agree)."""
        t = self.cfg.train
        due = (bool(t.val_every) and (self.step % t.val_every == 0 or self.step == self.total_steps)
               or not self.total_steps)  # (a run with nothing to step is validated once, at step 0)
        if self.validate is None or not due:
            return False
        decision: dict[str, Any] = {}
        if self.dist.is_main:
            shown = bar.postfix if bar is not None and self.progress else None
            if bar is not None and self.progress:  # validation can take a while: say so instead of freezing
                bar.set_postfix_str(((shown + ", ") if shown else "") + "validating...", refresh=True)
            try:
                val = self.validate(self.learner)
            except ValueError as e:  # evaluate refuses non-finite scores: the run diverged
                if "not finite" not in str(e):
                    raise
                raise failed_at(NonFiniteLossError(f"Trainer: validation after step {self.step}: {e}"),
                                self.step) from None
            if bar is not None and self.progress:
                bar.set_postfix_str(shown or "", refresh=True)
            self._log({"step": self.step, "val_acc": val["acc"], "val_ci95": val.get("ci95"),
                       "elapsed_s": round(time.perf_counter() - t0, 2)})
            if val["acc"] > self.best_acc:
                self.best_acc, self.best_step, self.stale = float(val["acc"]), self.step, 0
                self.save(BEST, {"val": val})
            else:
                self.stale += 1
            if t.target_val_acc is not None and val["acc"] >= t.target_val_acc:
                decision = {"reached_target_at_step": self.step,
                            "reached_target_s": round(time.perf_counter() - t0, 2)}
            elif t.early_stop_patience and self.stale >= t.early_stop_patience:
                decision = {"early_stopped_at_step": self.step}
        # every rank keeps rank 0's decision and best score (the next checkpoint's training state holds them)
        decision, best = self.dist.broadcast_object(  # type: ignore[misc]
            (decision, (self.best_acc, self.best_step, self.stale)))
        self.best_acc, self.best_step, self.stale = best
        result.update(decision)
        return bool(decision)


def _no_validation(learner: MetaLearner) -> dict[str, Any]:
    raise AssertionError("Trainer: only rank 0 calls the validator")


