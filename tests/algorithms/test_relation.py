"""Relation Networks: relation scores, MSE against one-hot targets, K-shot sums, learning."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from metashot.algorithms.relation import RelationNet
from metashot.data.episodes import EpisodeSampler
from metashot.data.store import ClassStore
from metashot.evaluate import evaluate
from metashot.nn.backbones import build_backbone


def _learner(hidden: int = 8) -> RelationNet:
    return RelationNet(build_backbone("conv4_maps", in_channels=1, hidden=hidden), input_shape=(1, 28, 28))


def test_scores_shape_range_and_mse_loss() -> None:
    torch.manual_seed(0)
    learner = _learner().eval()
    sx, sy = torch.rand(6, 1, 28, 28), torch.tensor([0, 0, 1, 1, 2, 2])
    qx = torch.rand(4, 1, 28, 28)
    scores = learner.adapt(sx, sy)(qx)
    assert scores.shape == (4, 3) and bool(((scores > 0) & (scores < 1)).all())
    qy = torch.tensor([0, 1, 2, 0])
    expected = ((scores - F.one_hot(qy, 3).float()) ** 2).mean()
    assert torch.allclose(learner.task_loss(scores, qy), expected)


def test_k_shot_uses_the_sum_of_class_feature_maps() -> None:
    torch.manual_seed(0)
    learner = _learner().eval()
    sx, qx = torch.rand(4, 1, 28, 28), torch.rand(3, 1, 28, 28)
    sy = torch.tensor([0, 1, 0, 1])
    with torch.no_grad():
        f = learner.backbone(sx)
        summed = learner._scores(torch.stack([f[0] + f[2], f[1] + f[3]]).unsqueeze(0), torch.tensor([[0, 1]]),
                                 learner.backbone(qx).unsqueeze(0), 2)[0]
        assert torch.allclose(learner.adapt(sx, sy)(qx), summed, atol=1e-6)


def test_flat_backbone_is_rejected() -> None:
    with pytest.raises(ValueError, match="feature maps"):
        RelationNet(build_backbone("conv4", in_channels=1, hidden=4, out_channels=4))


@pytest.mark.slow
def test_learns_above_chance(omniglot_train: ClassStore, omniglot_test: ClassStore, one_thread: None,
                             meta_train) -> None:
    torch.manual_seed(0)
    learner = _learner(hidden=16)
    sampler = EpisodeSampler(omniglot_train, ways=5, shots=1, queries=3, seed=0, tasks_per_batch=2)
    meta_train(learner, sampler, 40)
    res = evaluate(learner, omniglot_test, ways=5, shots=1, queries=3, episodes=30, seed=1, progress=False)
    assert res["acc"] > 35.0  # chance is 20%
