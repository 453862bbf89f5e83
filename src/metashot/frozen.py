"""Runs of models with nothing to meta-train: a frozen pretrained backbone plus a parameter-free head.

SimpleShot (Wang et al. 2019) is such a model: a pretrained embedding, centred on the mean feature of the base
classes and L2-normalised, with a nearest-centroid (ProtoNet) head. Its only fitted tensor is that mean.
``metashot train`` sends a config whose learner has no trainable parameter here: the backbone's ``prepare``
hook fits its statistics on the training split's (cached) features, the model is scored on the validation
episodes, and the run folder gets the same files as a trained run (``config.yaml``, ``metrics.jsonl``,
``best/``, ``final/``, ``summary.json``), so ``metashot eval RUN`` and ``metashot.load(RUN)`` work unchanged.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from metashot.algorithms.base import MetaLearner
from metashot.checkpoint import build_learner, save_checkpoint
from metashot.config import Config
from metashot.data import load_split
from metashot.evaluate import evaluate
from metashot.runs import BEST, FINAL, RunDir


def has_trainable_parameters(learner: torch.nn.Module) -> bool:
    return any(p.requires_grad for p in learner.parameters())


def image_spec_of(learner: MetaLearner) -> Any:
    """The backbone's own input pipeline (a pretrained timm model's ``image_spec``), or None."""
    return getattr(getattr(learner, "backbone", None), "image_spec", None)


def load_for(learner: MetaLearner, cfg: Config, split: str) -> Any:
    """``split`` of the config's dataset, preprocessed as the learner's backbone needs (its pretrained
    config)."""
    spec = image_spec_of(learner)
    return load_split(cfg.data.dataset, split, cfg.data.root, cfg.data.image_size, image_spec=spec,
                      **cfg.data.options)


def fit_frozen(cfg: Config, progress: bool = True, out_dir: str | Path | None = None,
               learner: MetaLearner | None = None) -> dict[str, Any]:
    """Fit the statistics of a learner without trainable parameters and write its run folder.

    Holds the run folder's lock throughout; what an earlier run left there is removed first (with a warning).
    ``learner``: the config's learner if the caller built it already (it is built here otherwise).
    """
    run = RunDir(out_dir if out_dir is not None else cfg.out_dir())
    with run.lock():
        run.clear()
        return _fit_frozen(cfg, progress, run, learner)


def _fit_frozen(cfg: Config, progress: bool, run: RunDir, learner: MetaLearner | None) -> dict[str, Any]:
    from metashot.nn.pretrained import feature_store, frozen_trunk

    t0 = time.perf_counter()
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    if learner is None:
        torch.manual_seed(cfg.train.seed)
        learner = build_learner(dict(cfg.model.__dict__))
    if has_trainable_parameters(learner):
        raise ValueError(f"{cfg.name}: fit_frozen is for learners without trainable parameters")
    trunk = frozen_trunk(learner)
    if trunk is None:
        raise ValueError(f"{cfg.name}: the learner has no trainable parameters and no frozen pretrained "
                         f"backbone to fit statistics for; nothing to train")
    device = cfg.train.device
    learner.to(device)
    result: dict[str, Any] = {"steps": 0}
    if trunk.needs_statistics:  # e.g. SimpleShot's base-class mean; a support-centred head needs none
        train = load_for(learner, cfg, cfg.data.train_split)
        feats = feature_store(trunk, train, device, progress=progress)
        trunk.prepare(feats.images.to(device))
        result.update(fitted="statistics", train_split=train.meta.get("name"), train_images=len(train))
    else:
        result.update(fitted="nothing")
    run.write_config(cfg.to_dict())
    lines = []
    if cfg.data.val_split:
        val = load_for(learner, cfg, cfg.data.val_split)
        e = cfg.eval
        res = evaluate(learner, val, e.ways, e.shots, e.queries, cfg.train.val_episodes, cfg.train.val_seed,
                       e.meta_batch, device, progress=progress)
        lines.append({"step": 0, "val_acc": res["acc"], "val_ci95": res["ci95"]})
        result.update(best_val_acc=res["acc"], best_step=0)
    run.metrics_file.touch()  # (an empty log when there is no validation split)
    for r in lines:
        run.log(r)
    extra = {"image_spec": trunk.image_spec.to_dict(), "step": 0}
    for sub in (FINAL, BEST):
        save_checkpoint(run.checkpoint(sub), learner, cfg.to_dict(), extra=extra)
    result.update(seconds=round(time.perf_counter() - t0, 2), out_dir=str(run.path))
    run.write_summary(result)
    return result
