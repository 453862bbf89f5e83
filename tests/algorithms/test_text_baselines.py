"""The training-free baselines ``ncm`` and ``logreg`` are ordinary registered algorithms."""

from __future__ import annotations

import pytest
import torch

from metashot.algorithms.base import algorithm_class
from metashot.algorithms.logreg import LogisticRegression
from metashot.algorithms.ncm import NearestClassMean
from metashot.config import Config
from metashot.train import seeded_learner


def test_names_resolve() -> None:
    assert algorithm_class("ncm") is NearestClassMean
    assert algorithm_class("logreg") is LogisticRegression


@pytest.mark.parametrize("name,cls,args", [
    ("ncm", NearestClassMean, {"temperature": 5.0}),
    ("logreg", LogisticRegression, {"l2": 0.01, "steps": 20}),
])
def test_a_config_naming_them_builds(name, cls, args) -> None:
    cfg = Config.from_dict({"model": {"algorithm": name, "backbone": "adapter",
                                      "backbone_args": {"dim": 4, "hidden": 3}, "algorithm_args": args}})
    learner = seeded_learner(cfg)
    assert isinstance(learner, cls) and learner.config_dict().items() >= args.items()
    sx = torch.eye(4)[[0, 0, 1, 1, 2, 2]] + 0.01 * torch.arange(6.0)[:, None]
    sy = torch.tensor([0, 0, 1, 1, 2, 2])
    with learner.adapt_mode():
        logits = learner.adapt(sx, sy)(torch.eye(4)[:3])
    assert logits.shape == (3, 3) and logits.argmax(1).tolist() == [0, 1, 2]
