"""Meta-training runs: from a config to a :class:`~metashot.trainer.Trainer` (:func:`build_run`) and to its
summary (:func:`train_from_config`).

``build_run`` is the one place that assembles a run: the learner (:func:`metashot.factory.create_learner`,
seeded), its batches and validation store (:mod:`metashot.data.sources`, preprocessed as a pretrained
backbone needs) and the Trainer. A learner with nothing to train (a frozen pretrained backbone with a
parameter-free head) is the same kind of run with nothing to step: its statistics are fitted by the Trainer's
``prepare`` hook (:func:`metashot.frozen.fit_statistics`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from metashot.algorithms.base import MetaLearner
from metashot.config import Config
from metashot.data.sources import train_source, val_store
from metashot.distributed import DistContext
from metashot.evaluate import evaluate
from metashot.factory import create_learner
from metashot.frozen import check_frozen, fit_statistics, has_trainable_parameters, image_spec_of
from metashot.runs import LAST, RunDir
from metashot.trainer import Trainer

__all__ = ["Trainer", "build_run", "build_trainer", "episodic_validator", "run_config", "seeded_learner",
           "train_from_config"]


def episodic_validator(cfg: Config, image_spec: Any = None,
                       always: bool = False) -> Callable[[MetaLearner], dict[str, Any]] | None:
    """Validation on ``cfg.data.val_split`` with the evaluation protocol of ``cfg.eval`` (fixed seed); None
    without a validation split or (unless ``always``) with ``train.val_every`` 0.

    ``image_spec``: the backbone's own preprocessing (a pretrained timm model's), if it has one.
    """
    store = val_store(cfg, image_spec) if cfg.train.val_every or always else None
    if store is None:
        return None
    e, t = cfg.eval, cfg.train
    return lambda learner: evaluate(learner, store, e.ways, e.shots, e.queries, t.val_episodes, t.val_seed,
                                    e.meta_batch, next(learner.parameters()).device, progress=False)


def seeded_learner(cfg: Config) -> MetaLearner:
    """The learner of ``cfg``, initialised from ``train.seed`` (the first draw of the run's RNG)."""
    torch.manual_seed(cfg.train.seed)
    return create_learner(cfg)


def build_run(cfg: Config, progress: bool = True, out_dir: str | Path | None = None,
              dist: DistContext | None = None, learner: MetaLearner | None = None) -> Trainer:
    """The learner, data, validator and :class:`Trainer` of ``cfg`` (nothing trained yet).

    ``learner``: one already made by :func:`seeded_learner` (the same weights and RNG state as building it
    here).
    """
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    if learner is None:
        learner = seeded_learner(cfg)
    trainable = has_trainable_parameters(learner)
    if not trainable:
        check_frozen(learner, cfg)
    # A pretrained backbone (timm) brings its own input pipeline: size, crop, filter of its pretrained config.
    spec = image_spec_of(learner)
    dist = dist if dist is not None else DistContext.current()
    on_device = dist.device(cfg.train.device) if cfg.train.data_on_device else None
    source, extra = train_source(cfg, spec, on_device)
    # (the Trainer lets the other ranks follow rank 0's validation)
    validate = episodic_validator(cfg, spec, always=not trainable) if dist.is_main else None
    return Trainer(learner, source, cfg, validate, out_dir=out_dir, progress=progress, checkpoint_extra=extra,
                   dist=dist, prepare=None if trainable else fit_statistics(cfg, progress))


build_trainer = build_run  # (its older name)


def run_config(run_dir: str | Path) -> Config:
    """The configuration a run was started with (``RUN_DIR/config.yaml``)."""
    run = RunDir(run_dir)
    return Config.from_dict(run.read_config(), source=str(run.config_file))


def train_from_config(cfg: Config, progress: bool = True, resume: str | Path | None = None) -> dict[str, Any]:
    """Build the run of ``cfg`` (:func:`build_run`) and meta-train it; returns the run summary.

    With ``resume=RUN_DIR`` training continues from ``RUN_DIR/last`` (written every ``train.checkpoint_every``
    steps, on SIGINT/SIGTERM and at the end) into the same folder; the model section of ``cfg`` must match the
    run's. Under torchrun (``WORLD_SIZE`` > 1) the process group is set up here and torn down at the end.
    """
    from metashot import distributed

    learner = seeded_learner(cfg) if resume is None else None
    ctx = distributed.init_from_env(cfg.train.device, cfg.train.dist_backend)
    held = contextlib.ExitStack()
    try:
        run = None
        if resume is not None:
            run = RunDir(resume)
            saved = run_config(run.path)
            if saved.model != cfg.model:
                raise ValueError(f"--resume {resume}: the config's model section {cfg.model} differs from "
                                 f"the run's {saved.model}; resume with the run's own config")
            if ctx.is_main:  # lock the folder before reading it; repair a last/ whose swap was killed
                held.enter_context(run.lock())
                run.recover((LAST,))
            ctx.barrier()
        last = run.resumable() if run is not None else None
        # (called by its older name, build_trainer: callers and tests that replace the assembly replace that)
        trainer = build_trainer(cfg, progress, None if run is None else run.path, ctx, learner=learner)
        if last is not None:
            trainer.load_state(last)
        return trainer.fit()
    finally:
        held.close()
        if ctx.enabled:
            distributed.shutdown()
