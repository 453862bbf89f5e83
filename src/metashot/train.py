"""The Trainer: meta-training loop shared by every algorithm.

It knows nothing about the algorithm: step ``s`` (0-based) draws batch ``s`` from a source (anything with
``sample(index) -> EpisodeBatch``; batches depend only on ``(seed, index)``), calls ``learner.meta_loss``,
and takes an optimizer step. A run folder holds:

- ``config.yaml``: the run's configuration (JSON, which is valid YAML); ``metashot train --resume`` reads it.
- ``metrics.jsonl``: one JSON line per logging step (``step``, ``loss``, ``acc`` in percent, ``lr``,
  ``grad_norm``, ``steps_per_s``, ``episodes_per_s``, ``elapsed_s``) and one per validation (``val_acc``,
  ``val_ci95`` in percent). ``metashot plot RUN_DIR`` draws them.
- ``last/``: the resumable checkpoint (weights + ``train_state.safetensors`` / ``train_state.json``: optimizer
  moments, schedule, RNG states, step, best metric), written every ``train.checkpoint_every`` steps, on
  SIGINT/SIGTERM and at the end; ``best/``: best validation accuracy; ``final/``: the end of training.
  Every checkpoint is written to a temporary folder and renamed into place: a crash never leaves half a file.
- ``summary.json``: the outcome (steps, best validation accuracy, why it stopped).
- ``.lock``: held (``flock``) while a process trains there, with its pid; a second one is refused.

A fresh run in a used folder removes the old run's checkpoints, summary and log first (with a warning), so a
folder never mixes two runs; a resumed one restores a checkpoint whose swap was killed between its renames.

Resuming restores everything the next step depends on, so an interrupted and resumed run ends with exactly the
parameters of an uninterrupted one. A non-finite loss, gradient or buffer (batch-norm running statistics,
checked after every step) stops training before the optimizer step, and a parameter made non-finite by the
update stops it right after, with an error naming the step; no checkpoint is ever written with non-finite
weights.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from tqdm.auto import tqdm

from metashot.algorithms.base import MetaLearner
from metashot.checkpoint import (
    CheckpointError,
    build_learner,
    load_train_state,
    read_meta,
    read_weights,
    recover,
    save_checkpoint,
)
from metashot.config import Config
from metashot.data import load_split
from metashot.data.episodes import EpisodeBatch, EpisodeSampler
from metashot.distributed import DistContext
from metashot.evaluate import evaluate
from metashot.frozen import image_spec_of
from metashot.runfolder import clear_previous_run, lock_run

LAST, BEST, FINAL = "last", "best", "final"
METRICS = "metrics.jsonl"
RUN_CONFIG = "config.yaml"


class BatchSource(Protocol):
    def sample(self, batch_index: int) -> EpisodeBatch: ...


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/Inf loss or gradient; the optimizer step was not taken."""


def make_optimizer(params: Any, cfg: Config) -> torch.optim.Optimizer:
    t = cfg.train
    if t.optimizer == "adam":
        return torch.optim.Adam(params, lr=t.lr, weight_decay=t.weight_decay)
    if t.optimizer == "sgd":
        if not 0.0 <= t.momentum < 1.0:
            raise ValueError(f"train.momentum must be in [0, 1), got {t.momentum!r}")
        return torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
    raise ValueError(f"train.optimizer must be 'adam' or 'sgd', got {t.optimizer!r}")


def lr_factor(cfg: Config) -> Callable[[int], float]:
    """Multiplier of the base learning rate after ``s`` steps, in closed form (so resuming is exact).

    ``step``: ``lr_gamma ** (s // lr_step)``; ``constant``: 1;
    ``cosine``: ``f + (1 - f) * (1 + cos(pi * s / steps)) / 2`` with ``f = lr_min / lr``.
    """
    t = cfg.train
    if t.lr_schedule == "constant":
        return lambda s: 1.0
    if t.lr_schedule == "step":
        size, gamma = max(1, t.lr_step), t.lr_gamma
        return lambda s: gamma ** (s // size)
    if t.lr_schedule == "cosine":
        total, floor = max(1, t.steps), (t.lr_min / t.lr if t.lr else 0.0)
        return lambda s: floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(s, total) / total))
    raise ValueError(f"train.lr_schedule must be constant, step or cosine, got {t.lr_schedule!r}")


def make_schedule(opt: torch.optim.Optimizer, cfg: Config) -> torch.optim.lr_scheduler.LRScheduler:
    return torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(cfg))


# -- training state <-> (tensors, JSON) -------------------------------------------------------------


def optimizer_state_flat(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimizer's ``state_dict`` as named tensors plus a JSON-able remainder (no pickle)."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"optim.{idx}.{k}"] = v.detach().clone()
            else:
                scalars.setdefault(str(idx), {})[k] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_state_unflat(
    opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]
) -> None:
    """Inverse of :func:`optimizer_state_flat`: load the state into ``opt``."""
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = v
    for idx, d in meta["scalars"].items():
        state.setdefault(int(idx), {}).update(d)
    groups = []
    for saved, now in zip(meta["param_groups"], opt.param_groups, strict=False):
        # JSON turns tuples (Adam's betas) into lists; give them back their type
        groups.append({k: tuple(v) if isinstance(now.get(k), tuple) else v for k, v in saved.items()})
    if len(groups) != len(opt.param_groups):
        raise CheckpointError(
            f"training state has {len(meta['param_groups'])} optimizer parameter groups but the "
            f"optimizer has {len(opt.param_groups)}; was the config's model changed?"
        )
    opt.load_state_dict({"state": state, "param_groups": groups})


def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """torch (CPU and CUDA), numpy and Python global RNG states as tensors + JSON."""
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    tensors["rng.numpy.keys"] = torch.from_numpy(np.asarray(keys, dtype=np.uint32).view(np.int32).copy())
    py = random.getstate()
    tensors["rng.python"] = torch.tensor(py[1], dtype=torch.int64)
    meta = {"numpy": [name, int(pos), int(has_gauss), float(gauss)], "python": [py[0], py[2]]}
    return tensors, meta


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = sorted((k for k in tensors if k.startswith("rng.cuda.")), key=lambda k: int(k.rsplit(".", 1)[1]))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda][: torch.cuda.device_count()])
    name, pos, has_gauss, gauss = meta["numpy"]
    np.random.set_state((name, tensors["rng.numpy.keys"].numpy().view(np.uint32), pos, has_gauss, gauss))
    v, g = meta["python"]
    random.setstate((v, tuple(int(x) for x in tensors["rng.python"].tolist()), g))


# -- device-side sources ----------------------------------------------------------------------------


class DeviceSampler:
    """An :class:`EpisodeSampler` whose store images live on ``device`` (``train.data_on_device``).

    The episode indices still come from ``sampler.indices(i)`` (CPU, numpy), so the episodes are identical to
    ``sampler.sample(i)``; only the gather runs on the device, and no image crosses the bus per step.
    """

    def __init__(self, sampler: EpisodeSampler, device: torch.device | str) -> None:
        self.sampler = sampler
        self.device = torch.device(device)
        self.images = sampler.store.images.to(self.device)
        self.tasks_per_batch = sampler.tasks_per_batch
        self.seed = sampler.seed

    def sample(self, batch_index: int, tasks: slice | None = None) -> EpisodeBatch:
        """Batch ``batch_index`` (uint8 images on the device); ``tasks`` selects a slice of its episodes."""
        classes, rows = self.sampler.indices(batch_index)
        if tasks is not None:
            classes, rows = classes[tasks], rows[tasks]
        T, N = classes.shape
        K, Q = self.sampler.shots, self.sampler.queries
        flat = torch.from_numpy(rows.reshape(-1)).to(self.device, non_blocking=True)
        x = self.images.index_select(0, flat).view(T, N, K + Q, *self.images.shape[1:])
        ys = torch.arange(N, device=self.device).repeat_interleave(K).expand(T, -1)
        yq = torch.arange(N, device=self.device).repeat_interleave(Q).expand(T, -1)
        return EpisodeBatch(
            x[:, :, :K].reshape(T, N * K, *x.shape[3:]),
            ys,
            x[:, :, K:].reshape(T, N * Q, *x.shape[3:]),
            yq,
            torch.from_numpy(classes),
            N,
            K,
            Q,
        )


def _pinned(batch: EpisodeBatch) -> EpisodeBatch:
    return EpisodeBatch(
        batch.support_x.pin_memory(),
        batch.support_y.pin_memory(),
        batch.query_x.pin_memory(),
        batch.query_y.pin_memory(),
        batch.classes,
        batch.ways,
        batch.shots,
        batch.queries,
    )


# -- the trainer ------------------------------------------------------------------------------------


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
    """

    def __init__(
        self,
        learner: MetaLearner,
        source: BatchSource,
        cfg: Config,
        validate: Callable[[MetaLearner], dict[str, Any]] | None = None,
        out_dir: str | Path | None = None,
        progress: bool = True,
        checkpoint_extra: dict[str, Any] | None = None,
        dist: DistContext | None = None,
    ) -> None:
        t = cfg.train
        if t.precision not in ("fp32", "bf16"):
            raise ValueError(f"train.precision must be 'fp32' or 'bf16', got {t.precision!r}")
        self.learner = learner
        self.checkpoint_extra = dict(checkpoint_extra or {})
        self.source = source
        self.cfg = cfg
        self.validate = validate
        self.out_dir = Path(out_dir) if out_dir is not None else cfg.out_dir()
        self.dist = dist if dist is not None else DistContext.current()
        if self.dist.enabled and self.dist.broadcast_object(validate is not None) and not self.dist.is_main:
            self.validate = _no_validation  # rank 0 validates; the others join its decision broadcast
        self.progress = progress and self.dist.is_main
        self.device = torch.device(t.device)
        if self.device.type == "cuda" and self.device.index is None and self.dist.enabled:
            self.device = torch.device("cuda", self.dist.local_rank)
        self.learner.to(self.device)
        self.dist.broadcast_parameters_(self.learner)
        self.params = [p for p in learner.parameters() if p.requires_grad]
        self.float_buffers = [b for b in learner.buffers() if b.is_floating_point()]
        self.opt = make_optimizer(self.params, cfg)
        self.sched = make_schedule(self.opt, cfg)
        self.loss_fn = torch.compile(learner.meta_loss) if t.compile else learner.meta_loss
        self.step = 0
        self.best_acc = -math.inf
        self.best_step: int | None = None
        self.stale = 0
        self.elapsed = 0.0
        self.window: list[dict[str, float]] = []
        self.history: list[dict[str, Any]] = []
        self._signal: int | None = None
        self._stop_all = False
        self._tb: Any = None

    # -- persistence ------------------------------------------------------------------------------

    def _log(self, record: dict[str, Any]) -> None:
        self.history.append(record)
        if not self.dist.is_main:
            return
        with open(self.out_dir / METRICS, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self._tb.add_scalar(k if k.startswith("val_") else f"train/{k}", v, record["step"])

    def _check_finite_weights(self, name: str) -> None:
        for k, v in self.learner.state_dict().items():
            if v.is_floating_point() and not bool(torch.isfinite(v).all()):
                raise NonFiniteLossError(
                    f"Trainer: refusing to write checkpoint {self.out_dir / name}: "
                    f"tensor {k!r} holds NaN/Inf at step {self.step}"
                )

    def train_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Everything the next step depends on besides the weights: (tensors, JSON-able dict)."""
        ot, om = optimizer_state_flat(self.opt)
        rt, rm = rng_state()
        meta = {
            "step": self.step,
            "optimizer": om,
            "scheduler": self.sched.state_dict(),
            "rng": rm,
            "best_acc": None if self.best_acc == -math.inf else self.best_acc,
            "best_step": self.best_step,
            "stale": self.stale,
            "elapsed_s": self.elapsed,
            "window": self.window,
            "world_size": self.dist.world_size,
        }
        return {**ot, **rt}, meta

    def save(self, name: str, extra: dict[str, Any] | None = None, with_state: bool = False) -> Path:
        """Write checkpoint ``out_dir/name`` (rank 0 only; never with non-finite weights)."""
        path = self.out_dir / name
        if not self.dist.is_main:
            return path
        self._check_finite_weights(name)
        return save_checkpoint(
            path,
            self.learner,
            self.cfg.to_dict(),
            extra={"step": self.step, **self.checkpoint_extra, **(extra or {})},
            train_state=self.train_state() if with_state else None,
        )

    def load_state(self, path: str | Path) -> None:
        """Resume from checkpoint ``path`` (usually ``RUN_DIR/last``): weights, optimizer, schedule, RNG,
        step, best metric. Raises :class:`CheckpointError` if it has no training state or does not fit."""
        path = Path(path)
        meta = read_meta(path)
        state = read_weights(path, meta, self.device)  # checks the SHA-256; unreadable files: CheckpointError
        try:
            self.learner.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise CheckpointError(
                f"checkpoint {path}: weights do not match this run's model "
                f"({str(e).splitlines()[0]}); resume with the run's own config"
            ) from e
        tensors, meta = load_train_state(path)
        optimizer_state_unflat(self.opt, tensors, meta["optimizer"])
        self.sched.load_state_dict(meta["scheduler"])
        base = self.cfg.train.lr
        if any(lr != base for lr in self.sched.base_lrs):  # resumed with --set train.lr=...: it wins
            self.sched.base_lrs = [base] * len(self.sched.base_lrs)
            lr = base * lr_factor(self.cfg)(int(meta["step"]))
            for g in self.opt.param_groups:
                g["initial_lr"], g["lr"] = base, lr
            self.sched._last_lr = [lr] * len(self.opt.param_groups)
        set_rng_state(tensors, meta["rng"])
        self.step = int(meta["step"])
        self.best_acc = -math.inf if meta["best_acc"] is None else float(meta["best_acc"])
        self.best_step = meta["best_step"]
        self.stale = int(meta["stale"])
        self.elapsed = float(meta["elapsed_s"])
        self.window = list(meta["window"])
        if self.dist.is_main:
            _truncate_metrics(self.out_dir / METRICS, self.step)

    # -- one step ---------------------------------------------------------------------------------

    def _batch(self) -> tuple[EpisodeBatch, float]:
        """This rank's part of batch ``self.step`` on the device, and its share of the meta-batch."""
        if self.dist.enabled:
            total = int(getattr(self.source, "tasks_per_batch", self.cfg.episodes.meta_batch))
            sl = self.dist.task_slice(total)
            batch = self.source.sample(self.step, tasks=sl)  # type: ignore[call-arg]
            weight = (sl.stop - sl.start) / total
        else:
            batch, weight = self.source.sample(self.step), 1.0
        if self.cfg.train.pin_memory and self.device.type == "cuda" and batch.support_x.device.type == "cpu":
            return _pinned(batch).to(self.device, non_blocking=True), weight
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
        buffers_before = [
            b.detach().clone() for b in self.learner.buffers()
        ]  # BN statistics, restored on NaN
        self.learner.train()
        with self._autocast():
            loss, metrics = self.loss_fn(batch)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        keys = sorted(metrics)
        flags = [1.0 if self._signal is not None else 0.0]
        if self.dist.enabled:
            summed = self.dist.all_reduce_(
                self.params, self.float_buffers, weight, [float(metrics[k]) * weight for k in keys] + flags
            )
            metrics = dict(zip(keys, summed[: len(keys)], strict=True))
            self._stop_all = summed[len(keys)] > 0
        else:
            metrics = {k: float(metrics[k]) for k in keys}
            self._stop_all = self._signal is not None
        grads = [p.grad for p in self.params if p.grad is not None]
        # the gradient norm and "every float buffer is finite" in one device sync: the forward pass updated
        # the batch-norm running statistics, which can overflow while the loss stays finite
        norm, buffers_ok = _norm_and_finite(grads, self.float_buffers, self.device)
        loss_value = metrics.get("loss", float(loss.detach()))
        if not (math.isfinite(loss_value) and math.isfinite(norm) and buffers_ok):
            bad = [] if buffers_ok else _non_finite_names(self.learner.named_buffers())
            with torch.no_grad():
                for b, saved in zip(self.learner.buffers(), buffers_before, strict=True):
                    b.copy_(saved)
            self.opt.zero_grad(set_to_none=True)
            if not math.isfinite(loss_value):
                what = f"loss ({loss_value})"
            elif not math.isfinite(norm):
                what = f"gradient norm ({norm})"
            else:
                what = f"buffer(s) {', '.join(bad)} (e.g. batch-norm running statistics)"
            raise NonFiniteLossError(
                f"Trainer: non-finite {what} at step {self.step + 1} (batch {self.step}); "
                f"no update was applied"
            )
        if self.cfg.train.grad_clip:
            torch.nn.utils.clip_grads_with_norm_(self.params, self.cfg.train.grad_clip, torch.tensor(norm))
        self.opt.step()
        if self.params and not bool(torch.stack([torch.isfinite(q).all() for q in self.params]).all()):
            bad = _non_finite_names(self.learner.named_parameters())
            raise NonFiniteLossError(
                f"Trainer: non-finite parameter(s) {', '.join(bad)} after the update of step {self.step + 1} "
                f"(batch {self.step}); the weights in memory are no longer valid"
            )
        self.sched.step()
        self.step += 1
        metrics["grad_norm"] = norm
        return metrics

    # -- the loop ---------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _signals(self) -> Iterator[None]:
        """SIGINT/SIGTERM: checkpoint and stop cleanly after the current step; a second one aborts."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum: int, frame: Any) -> None:
            if self._signal is not None:
                raise KeyboardInterrupt(f"second signal {signum}: aborting without a checkpoint")
            self._signal = signum

        old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in old.items():
                signal.signal(s, h)

    def _open_tensorboard(self) -> None:
        if not (self.cfg.train.tensorboard and self.dist.is_main):
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise ImportError(
                "train.tensorboard=true needs the tensorboard package: pip install tensorboard "
                "(or set train.tensorboard=false; metrics.jsonl is always written)"
            ) from e
        self._tb = SummaryWriter(str(self.out_dir / "tensorboard"), purge_step=self.step or None)

    def _write_summary(self, result: dict[str, Any]) -> None:
        if self.dist.is_main:
            (self.out_dir / "summary.json").write_text(json.dumps(result, indent=2))

    def fit(self) -> dict[str, Any]:
        """Train until ``train.steps`` (or early stop / target / signal); returns the run summary.

        Holds the run folder's lock throughout (:func:`metashot.runfolder.lock_run`). A fresh run (step 0)
        in a used folder first removes the old run's checkpoints and summary, with a warning; a resumed one
        restores checkpoints whose write was killed between its renames.
        """
        if not self.dist.is_main:
            return self._fit()
        with lock_run(self.out_dir):
            return self._fit()

    def _fit(self) -> dict[str, Any]:
        """:meth:`fit` under the run folder's lock.

        Raises:
            NonFiniteLossError: NaN/Inf loss, gradient, buffer or updated parameter; training stops at that
                step, ``summary.json`` records it and ``last/`` and ``best/`` keep the last good weights.
        """
        t = self.cfg.train
        if self.dist.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / RUN_CONFIG).write_text(json.dumps(self.cfg.to_dict(), indent=2))
            if self.step == 0:  # a fresh run in a used folder: nothing of the old run stays, its log included
                clear_previous_run(self.out_dir)
                (self.out_dir / METRICS).unlink(missing_ok=True)
            else:
                for name in (LAST, BEST, FINAL):
                    recover(self.out_dir / name)
        self._open_tensorboard()
        total = int(getattr(self.source, "tasks_per_batch", self.cfg.episodes.meta_batch))
        t0 = time.perf_counter() - self.elapsed
        last_t, last_step = time.perf_counter(), self.step
        result: dict[str, Any] = {}
        bar = tqdm(
            total=t.steps,
            initial=self.step,
            desc=f"train {self.cfg.name}",
            unit="step",
            disable=not self.progress,
        )
        try:
            with self._signals():
                while self.step < t.steps:
                    try:
                        metrics = self.train_step()
                    except NonFiniteLossError as e:
                        self.elapsed = time.perf_counter() - t0
                        self._log({"step": self.step + 1, "event": "non_finite", "message": str(e)})
                        good = self.out_dir / LAST
                        where = (
                            f"the last good checkpoint is {good} (step {read_meta(good).get('step')})"
                            if (good / "config.json").is_file()
                            else "no checkpoint was written before (set train.checkpoint_every to keep one)"
                        )
                        self._write_summary(
                            {
                                "diverged_at_step": self.step + 1,
                                "steps": self.step,
                                "out_dir": str(self.out_dir),
                                "error": str(e),
                            }
                        )
                        raise NonFiniteLossError(
                            f"{e}. Training stopped; {where}. To continue from it with a lower rate or "
                            f"gradient clipping: metashot train --resume {self.out_dir} --set train.lr=... "
                            f"(or --set train.grad_clip=...)"
                        ) from None
                    self.window.append(metrics)
                    bar.update(1)
                    self.elapsed = time.perf_counter() - t0
                    if self.step % t.log_every == 0 or self.step == t.steps:
                        now = time.perf_counter()
                        sps = (self.step - last_step) / max(now - last_t, 1e-9)
                        mean = {k: sum(m[k] for m in self.window) / len(self.window) for k in self.window[-1]}
                        # accuracies in percent in the log and the bar, like val_acc and metashot eval
                        mean.update({k: 100.0 * v for k, v in mean.items() if k.endswith("acc")})
                        rec = {
                            "step": self.step,
                            "lr": self.opt.param_groups[0]["lr"],
                            **mean,
                            "steps_per_s": sps,
                            "episodes_per_s": sps * total,
                            "elapsed_s": round(self.elapsed, 2),
                        }
                        self._log(rec)
                        shown = [f"loss={rec['loss']:.3f}"] if "loss" in rec else []
                        shown += [f"acc={rec['acc']:.1f}%"] if "acc" in rec else []
                        bar.set_postfix_str(", ".join(shown))
                        self.window, last_t, last_step = [], now, self.step
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
        finally:
            bar.close()
            if self._tb is not None:
                self._tb.close()
        if "interrupted_at_step" not in result:
            self.save(FINAL)
            self.save(LAST, with_state=True)
        result.update(
            steps=self.step,
            seconds=round(self.elapsed, 2),
            best_val_acc=None if self.best_acc == -math.inf else self.best_acc,
            best_step=self.best_step,
            out_dir=str(self.out_dir),
        )
        self._write_summary(result)
        self.dist.barrier()
        return result

    def _validate_maybe(self, result: dict[str, Any], t0: float, bar: Any = None) -> bool:
        """Validate if due (rank 0), keep best/, decide early stopping; True = stop (all ranks agree)."""
        t = self.cfg.train
        if (
            self.validate is None
            or not t.val_every
            or not (self.step % t.val_every == 0 or self.step == t.steps)
        ):
            return False
        decision: dict[str, Any] = {}
        if self.dist.is_main:
            shown = bar.postfix if bar is not None and self.progress else None
            if bar is not None and self.progress:  # validation can take a while: say so instead of freezing
                bar.set_postfix_str(((shown + ", ") if shown else "") + "validating...", refresh=True)
            val = self.validate(self.learner)
            if bar is not None and self.progress:
                bar.set_postfix_str(shown or "", refresh=True)
            self._log(
                {
                    "step": self.step,
                    "val_acc": val["acc"],
                    "val_ci95": val.get("ci95"),
                    "elapsed_s": round(time.perf_counter() - t0, 2),
                }
            )
            if val["acc"] > self.best_acc:
                self.best_acc, self.best_step, self.stale = float(val["acc"]), self.step, 0
                self.save(BEST, {"val": val})
            else:
                self.stale += 1
            if t.target_val_acc is not None and val["acc"] >= t.target_val_acc:
                decision = {
                    "reached_target_at_step": self.step,
                    "reached_target_s": round(time.perf_counter() - t0, 2),
                }
            elif t.early_stop_patience and self.stale >= t.early_stop_patience:
                decision = {"early_stopped_at_step": self.step}
            decision["_best"] = [self.best_acc, self.best_step, self.stale]
        decision = dict(self.dist.broadcast_object(decision))  # type: ignore[arg-type]
        self.best_acc, self.best_step, self.stale = decision.pop("_best")
        result.update(decision)
        return bool(decision)


def _norm_and_finite(
    grads: list[torch.Tensor], buffers: list[torch.Tensor], device: torch.device
) -> tuple[float, bool]:
    """(total gradient norm, whether every tensor of ``buffers`` is finite), read back in one sync."""
    norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros((), device=device)
    ok = [torch.isfinite(b).all() for b in buffers]
    flag = torch.stack(ok).all() if ok else torch.ones((), dtype=torch.bool, device=norm.device)
    value, finite = torch.stack([norm.float(), flag.to(norm.device).float()]).tolist()
    return value, finite == 1.0


def _non_finite_names(named: Iterator[tuple[str, torch.Tensor]]) -> list[str]:
    """Names of the floating-point tensors of ``named`` that hold NaN/Inf."""
    return [n for n, t in named if t.is_floating_point() and not bool(torch.isfinite(t).all())]


def _truncate_metrics(path: Path, step: int, key: str = "step") -> None:
    """Drop log lines past ``step`` (written after the checkpoint we resume from), atomically; ``key`` names
    the step field (``iteration`` in meta-RL runs)."""
    if not path.is_file():
        return
    lines = [(n, line) for n, line in enumerate(path.read_text().splitlines(), 1) if line.strip()]
    keep = []
    for i, (n, line) in enumerate(lines):
        try:
            rec = json.loads(line)
            at = rec[key]
        except (ValueError, KeyError, TypeError) as e:
            if i == len(lines) - 1:  # torn by a crash in the middle of a write: the step is redone anyway
                warnings.warn(f"{path}: dropping its unreadable last line {n} (cut short by a crash?)",
                              stacklevel=2)
                break
            raise ValueError(f"{path}, line {n}: not a metrics record with {key!r} ({e}); repair or delete "
                             f"that line to resume") from None
        if at <= step:
            keep.append(line)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in keep))
    tmp.replace(path)


def episodic_validator(
    cfg: Config, image_spec: Any = None
) -> Callable[[MetaLearner], dict[str, Any]] | None:
    """Validation on ``cfg.data.val_split`` with the evaluation protocol of ``cfg.eval`` (fixed seed).

    ``image_spec``: the backbone's own preprocessing (a pretrained timm model's), if it has one.
    """
    if not cfg.train.val_every or not cfg.data.val_split:
        return None
    store = load_split(
        cfg.data.dataset, cfg.data.val_split, cfg.data.root, cfg.data.image_size, image_spec=image_spec,
        **cfg.data.options
    )
    e = cfg.eval

    def run(learner: MetaLearner) -> dict[str, Any]:
        device = next(learner.parameters()).device
        return evaluate(
            learner,
            store,
            e.ways,
            e.shots,
            e.queries,
            cfg.train.val_episodes,
            cfg.train.val_seed,
            e.meta_batch,
            device,
            progress=False,
        )

    return run


def seeded_learner(cfg: Config) -> MetaLearner:
    """The learner of ``cfg``, initialised from ``train.seed`` (the first draw of the run's RNG)."""
    torch.manual_seed(cfg.train.seed)
    return build_learner(dict(cfg.model.__dict__))


def build_trainer(
    cfg: Config, progress: bool = True, out_dir: str | Path | None = None, dist: DistContext | None = None,
    learner: MetaLearner | None = None,
) -> Trainer:
    """The learner, data, validator and :class:`Trainer` of ``cfg`` (nothing trained yet).

    ``learner``: one already made by :func:`seeded_learner` (the same weights and RNG state as building it
    here).
    """
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    if learner is None:
        learner = seeded_learner(cfg)
    # A pretrained backbone (timm) brings its own input pipeline: size, crop, filter of its pretrained config.
    spec = image_spec_of(learner)
    store = load_split(
        cfg.data.dataset, cfg.data.train_split, cfg.data.root, cfg.data.image_size, image_spec=spec,
        **cfg.data.options
    )
    ep = cfg.episodes
    sampler = EpisodeSampler(
        store, ep.ways, ep.shots, ep.queries, seed=cfg.train.seed, tasks_per_batch=ep.meta_batch,
        within_group=ep.within_group, group_depth=ep.group_depth,
    )
    source: Any = sampler
    dist = dist if dist is not None else DistContext.current()
    if cfg.train.data_on_device:
        dev = torch.device(cfg.train.device)
        if dev.type == "cuda" and dev.index is None and dist.enabled:
            dev = torch.device("cuda", dist.local_rank)
        source = DeviceSampler(sampler, dev)
    extra = {"image_spec": store.meta["image_spec"]} if "image_spec" in store.meta else {}
    # (the Trainer lets the other ranks follow rank 0's validation)
    validate = episodic_validator(cfg, spec) if dist.is_main else None
    return Trainer(
        learner, source, cfg, validate, out_dir=out_dir, progress=progress, checkpoint_extra=extra, dist=dist
    )


def _no_validation(learner: MetaLearner) -> dict[str, Any]:
    raise AssertionError("Trainer: only rank 0 calls the validator")


def run_config(run_dir: str | Path) -> Config:
    """The configuration a run was started with (``RUN_DIR/config.yaml``)."""
    p = Path(run_dir) / RUN_CONFIG
    if not p.is_file():
        raise FileNotFoundError(f"{run_dir} is not a metashot run folder: {RUN_CONFIG} is missing")
    try:
        raw = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{p}: not valid JSON ({e}); the run's config was damaged: repair it or start a new "
                         f"run from its YAML config") from e
    return Config.from_dict(raw, source=str(p))


def train_from_config(cfg: Config, progress: bool = True, resume: str | Path | None = None) -> dict[str, Any]:
    """Build the learner and data of ``cfg`` and meta-train it; returns the run summary.

    With ``resume=RUN_DIR`` training continues from ``RUN_DIR/last`` (written every ``train.checkpoint_every``
    steps, on SIGINT/SIGTERM and at the end) into the same folder; the model section of ``cfg`` must match the
    run's. Under torchrun (``WORLD_SIZE`` > 1) the process group is set up here and torn down at the end.
    """
    from metashot import distributed
    from metashot.frozen import fit_frozen, has_trainable_parameters

    learner = seeded_learner(cfg) if resume is None else None
    if learner is not None and not has_trainable_parameters(learner):
        with lock_run(cfg.out_dir()):  # e.g. SimpleShot on a frozen pretrained backbone
            clear_previous_run(cfg.out_dir())
            return fit_frozen(cfg, progress, learner=learner)
    ctx = distributed.init_from_env(cfg.train.device, cfg.train.dist_backend)
    held = contextlib.ExitStack()
    try:
        out_dir = None
        if resume is not None:
            out_dir = Path(resume)
            saved = run_config(out_dir)
            if saved.model != cfg.model:
                raise ValueError(
                    f"--resume {resume}: the config's model section {cfg.model} differs from the "
                    f"run's {saved.model}; resume with the run's own config"
                )
            if ctx.is_main:  # lock the folder before reading it; repair a last/ whose swap was killed
                held.enter_context(lock_run(out_dir))
                recover(out_dir / LAST)
            ctx.barrier()
            if not (out_dir / LAST / "config.json").is_file():
                raise FileNotFoundError(
                    f"--resume {resume}: no {LAST}/ checkpoint there (it is written every "
                    f"train.checkpoint_every steps, on SIGINT/SIGTERM and at the end of training)"
                )
        trainer = build_trainer(cfg, progress, out_dir, ctx, learner=learner)
        if out_dir is not None:
            trainer.load_state(out_dir / LAST)
        return trainer.fit()
    finally:
        held.close()
        if ctx.enabled:
            distributed.shutdown()
