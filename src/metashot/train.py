"""The Trainer: meta-training loop shared by every algorithm.

It knows nothing about the algorithm: each step draws batch ``step`` from a sampler (anything with
``sample(index) -> EpisodeBatch``), calls ``learner.meta_loss``, and takes an optimizer step. It writes a JSONL
metrics log (``metrics.jsonl``), validates on fixed seeded episodes, keeps the best checkpoint (``best/``) and
writes ``final/`` at the end.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch
from tqdm.auto import tqdm

from metashot.algorithms.base import MetaLearner
from metashot.checkpoint import build_learner, save_checkpoint
from metashot.config import Config
from metashot.data import load_split
from metashot.data.episodes import EpisodeBatch, EpisodeSampler
from metashot.evaluate import evaluate


class BatchSource(Protocol):
    def sample(self, batch_index: int) -> EpisodeBatch: ...


def make_optimizer(params: Any, cfg: Config) -> torch.optim.Optimizer:
    t = cfg.train
    if t.optimizer == "adam":
        return torch.optim.Adam(params, lr=t.lr, weight_decay=t.weight_decay)
    if t.optimizer == "sgd":
        return torch.optim.SGD(params, lr=t.lr, momentum=0.9, weight_decay=t.weight_decay)
    raise ValueError(f"train.optimizer must be 'adam' or 'sgd', got {t.optimizer!r}")


def make_schedule(opt: torch.optim.Optimizer, cfg: Config) -> torch.optim.lr_scheduler.LRScheduler:
    t = cfg.train
    if t.lr_schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    if t.lr_schedule == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=max(1, t.lr_step), gamma=t.lr_gamma)
    if t.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, t.steps))
    raise ValueError(f"train.lr_schedule must be constant, step or cosine, got {t.lr_schedule!r}")


class Trainer:
    """Meta-trains ``learner`` on batches from ``source``.

    Args:
        learner: any MetaLearner.
        source: batch ``i`` of training is ``source.sample(i)``.
        cfg: the run configuration (optimizer, schedule, logging, checkpoints).
        validate: optional ``learner -> dict`` with ``acc`` (percent); called every ``train.val_every`` steps.
        out_dir: run folder (metrics.jsonl, best/, final/).
    """

    def __init__(self, learner: MetaLearner, source: BatchSource, cfg: Config,
                 validate: Callable[[MetaLearner], dict[str, Any]] | None = None,
                 out_dir: str | Path | None = None, progress: bool = True,
                 checkpoint_extra: dict[str, Any] | None = None) -> None:
        self.learner = learner
        self.checkpoint_extra = dict(checkpoint_extra or {})
        self.source = source
        self.cfg = cfg
        self.validate = validate
        self.out_dir = Path(out_dir) if out_dir is not None else cfg.out_dir()
        self.progress = progress
        self.device = torch.device(cfg.train.device)
        self.learner.to(self.device)
        self.opt = make_optimizer([p for p in learner.parameters() if p.requires_grad], cfg)
        self.sched = make_schedule(self.opt, cfg)
        self.step = 0
        self.best_acc = -math.inf
        self.history: list[dict[str, Any]] = []

    def _log(self, record: dict[str, Any]) -> None:
        self.history.append(record)
        with open(self.out_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    def save(self, name: str, extra: dict[str, Any] | None = None) -> Path:
        return save_checkpoint(self.out_dir / name, self.learner, self.cfg.to_dict(),
                               extra={"step": self.step, **self.checkpoint_extra, **(extra or {})})

    def train_step(self) -> dict[str, float]:
        batch = self.source.sample(self.step).to(self.device)
        self.learner.train()
        loss, metrics = self.learner.meta_loss(batch)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.train.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.learner.parameters(), self.cfg.train.grad_clip)
        self.opt.step()
        self.sched.step()
        self.step += 1
        return metrics

    def fit(self) -> dict[str, Any]:
        t = self.cfg.train
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / "config.yaml").write_text(json.dumps(self.cfg.to_dict(), indent=2))
        t0 = time.perf_counter()
        window: list[dict[str, float]] = []
        last_t, last_step = t0, self.step
        result: dict[str, Any] = {}
        stale = 0
        bar = tqdm(total=t.steps, initial=self.step, desc=f"train {self.cfg.name}", unit="step",
                   disable=not self.progress)
        while self.step < t.steps:
            metrics = self.train_step()
            window.append(metrics)
            bar.update(1)
            if self.step % t.log_every == 0 or self.step == t.steps:
                now = time.perf_counter()
                rec = {"step": self.step, "lr": self.opt.param_groups[0]["lr"],
                       "loss": sum(m["loss"] for m in window) / len(window),
                       "acc": sum(m.get("acc", 0.0) for m in window) / len(window),
                       "steps_per_s": (self.step - last_step) / max(now - last_t, 1e-9),
                       "elapsed_s": round(now - t0, 2)}
                self._log(rec)
                bar.set_postfix(loss=f"{rec['loss']:.3f}", acc=f"{rec['acc']:.3f}")
                window, last_t, last_step = [], now, self.step
            if self.validate is not None and t.val_every and (self.step % t.val_every == 0 or self.step == t.steps):
                val = self.validate(self.learner)
                rec = {"step": self.step, "val_acc": val["acc"], "val_ci95": val.get("ci95"),
                       "elapsed_s": round(time.perf_counter() - t0, 2)}
                self._log(rec)
                if val["acc"] > self.best_acc:
                    self.best_acc = val["acc"]
                    stale = 0
                    self.save("best", {"val": val})
                else:
                    stale += 1
                if t.target_val_acc is not None and val["acc"] >= t.target_val_acc:
                    result["reached_target_at_step"] = self.step
                    result["reached_target_s"] = round(time.perf_counter() - t0, 2)
                    break
                if t.early_stop_patience and stale >= t.early_stop_patience:
                    result["early_stopped_at_step"] = self.step
                    break
        bar.close()
        self.save("final")
        result.update(steps=self.step, seconds=round(time.perf_counter() - t0, 2),
                      best_val_acc=None if self.best_acc == -math.inf else self.best_acc,
                      out_dir=str(self.out_dir))
        (self.out_dir / "summary.json").write_text(json.dumps(result, indent=2))
        return result


def episodic_validator(cfg: Config) -> Callable[[MetaLearner], dict[str, Any]] | None:
    """Validation on ``cfg.data.val_split`` with the evaluation protocol of ``cfg.eval`` (fixed seed)."""
    if not cfg.train.val_every or not cfg.data.val_split:
        return None
    store = load_split(cfg.data.dataset, cfg.data.val_split, cfg.data.root, cfg.data.image_size, **cfg.data.options)
    e = cfg.eval

    def run(learner: MetaLearner) -> dict[str, Any]:
        return evaluate(learner, store, e.ways, e.shots, e.queries, cfg.train.val_episodes, cfg.train.val_seed,
                        e.meta_batch, cfg.train.device, progress=False)

    return run


def train_from_config(cfg: Config, progress: bool = True) -> dict[str, Any]:
    """Build the learner and data of ``cfg`` and meta-train it; returns the run summary."""
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    torch.manual_seed(cfg.train.seed)
    learner = build_learner(dict(cfg.model.__dict__))
    store = load_split(cfg.data.dataset, cfg.data.train_split, cfg.data.root, cfg.data.image_size,
                       **cfg.data.options)
    ep = cfg.episodes
    sampler = EpisodeSampler(store, ep.ways, ep.shots, ep.queries, seed=cfg.train.seed, tasks_per_batch=ep.meta_batch)
    extra = {"image_spec": store.meta["image_spec"]} if "image_spec" in store.meta else {}
    trainer = Trainer(learner, sampler, cfg, episodic_validator(cfg), progress=progress, checkpoint_extra=extra)
    return trainer.fit()
