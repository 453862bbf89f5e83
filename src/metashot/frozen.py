"""What a run with nothing to meta-train fits: a frozen pretrained backbone's statistics.

SimpleShot (Wang et al. 2019) is such a model: a pretrained embedding, centred on the mean feature of the base
classes and L2-normalised, with a nearest-centroid (ProtoNet) head. Its only fitted tensor is that mean.
Such a run is an ordinary :class:`~metashot.trainer.Trainer` run with nothing to step
(:func:`metashot.train.build_run` gives it :func:`fit_statistics` as its ``prepare`` hook): the backbone's
``prepare`` hook fits its statistics on the training split's (cached) features, the model is validated at
step 0, and the run folder gets the same files as a trained run, so ``metashot eval RUN`` and
``metashot.load(RUN)`` work unchanged.
"""

from __future__ import annotations

from typing import Any

import torch

from metashot.algorithms.base import MetaLearner
from metashot.config import Config
from metashot.data.sources import config_split


def has_trainable_parameters(learner: torch.nn.Module) -> bool:
    return any(p.requires_grad for p in learner.parameters())


def image_spec_of(learner: MetaLearner) -> Any:
    """The backbone's own input pipeline (a pretrained timm model's ``image_spec``), or None."""
    return getattr(getattr(learner, "backbone", None), "image_spec", None)


def check_frozen(learner: MetaLearner, cfg: Config) -> None:
    """A learner without trainable parameters must have a frozen pretrained backbone to fit statistics for."""
    from metashot.nn.pretrained import frozen_trunk

    if frozen_trunk(learner) is None:
        raise ValueError(f"{cfg.name}: the learner has no trainable parameters and no frozen pretrained "
                         f"backbone to fit statistics for; nothing to train")


def fit_statistics(cfg: Config, progress: bool = True) -> Any:
    """The ``prepare`` hook of a frozen run: ``learner -> dict`` for the summary (what was fitted on which
    split); a support-centred head needs nothing fitted."""
    def prepare(learner: MetaLearner) -> dict[str, Any]:
        from metashot.nn.pretrained import feature_store, frozen_trunk

        trunk = frozen_trunk(learner)
        if trunk is None or not trunk.needs_statistics:  # e.g. SimpleShot's base-class mean
            return {"fitted": "nothing"}
        device = next(iter(learner.buffers())).device
        train = config_split(cfg, cfg.data.train_split, image_spec_of(learner))
        feats = feature_store(trunk, train, device, progress=progress)
        trunk.prepare(feats.images.to(device))
        return {"fitted": "statistics", "train_split": train.meta.get("name"), "train_images": len(train)}
    return prepare
