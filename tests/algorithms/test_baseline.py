"""Baseline / Baseline++: pre-training on store classes, a new head fitted per support set, learning."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from metashot.algorithms.baseline import Baseline, CosineHead
from metashot.data.episodes import EpisodeSampler
from metashot.data.store import ClassStore
from metashot.evaluate import evaluate
from metashot.nn.backbones import build_backbone


def test_cosine_head_by_hand() -> None:
    head = CosineHead(2, 2, scale=3.0)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[2.0, 0.0], [1.0, 1.0]]))
    out = head(torch.tensor([[5.0, 0.0]]))
    assert torch.allclose(out, torch.tensor([[3.0, 3.0 / 2 ** 0.5]]))


def test_adapt_fits_a_separable_support_set_deterministically(one_thread: None) -> None:
    for head in ("linear", "cosine"):
        learner = Baseline(nn.Flatten(), num_classes=4, head=head, finetune_epochs=40, input_shape=(2,))
        learner.eval()
        sx = torch.tensor([[3.0, 0.2], [2.5, -0.3], [-0.2, 3.0], [0.3, 2.0], [-3.0, -0.1], [-2.0, 0.4]])
        sy = torch.tensor([0, 0, 1, 1, 2, 2])
        qx = torch.tensor([[2.0, 0.0], [0.0, 2.5], [-2.5, 0.0]])
        a = learner.adapt(sx, sy)(qx)
        assert a.argmax(-1).tolist() == [0, 1, 2]
        assert torch.equal(a, learner.adapt(sx, sy)(qx))  # seeded fine-tuning


def test_pretraining_uses_store_class_labels() -> None:
    learner = Baseline(nn.Flatten(), num_classes=3, input_shape=(4,))
    from metashot.data.episodes import EpisodeBatch

    b = EpisodeBatch(torch.rand(1, 2, 4), torch.tensor([[0, 1]]), torch.rand(1, 2, 4), torch.tensor([[1, 0]]),
                     torch.tensor([[2, 0]]), 2, 1, 1)
    loss, _ = learner.meta_loss(b)
    z = torch.cat([b.support_x[0], b.query_x[0]])
    ref = nn.functional.cross_entropy(learner.classifier(z), torch.tensor([2, 0, 0, 2]))
    assert torch.allclose(loss, ref)
    small = Baseline(nn.Flatten(), num_classes=2, input_shape=(4,))
    with pytest.raises(ValueError, match="num_classes is 2"):
        small.meta_loss(b)


@pytest.mark.parametrize("head", ["linear", "cosine"])
@pytest.mark.slow
def test_learns_above_chance(omniglot_train: ClassStore, omniglot_test: ClassStore, head: str,
                             one_thread: None, meta_train) -> None:
    torch.manual_seed(0)
    train = omniglot_train.subset(list(range(0, 400, 4)))  # 100 unrotated training characters
    backbone = build_backbone("conv4", in_channels=1, hidden=16, out_channels=16)
    learner = Baseline(backbone, num_classes=100, head=head, finetune_epochs=30)
    sampler = EpisodeSampler(train, ways=20, shots=2, queries=2, seed=0)
    meta_train(learner, sampler, 60)
    res = evaluate(learner, omniglot_test, ways=5, shots=1, queries=3, episodes=30, seed=1, progress=False)
    assert res["acc"] > 35.0  # chance is 20%
