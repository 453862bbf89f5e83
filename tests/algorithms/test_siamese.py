"""Siamese networks: contrastive loss by hand, pair sampler, few-shot rule, Koch distortions, learning."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from metashot.algorithms.siamese import SiameseNet, balanced_mean, contrastive_loss
from metashot.data.augment import random_affine
from metashot.data.episodes import EpisodeSampler
from metashot.data.pairs import PairSampler
from metashot.data.store import ClassStore
from metashot.evaluate import verification_accuracy
from metashot.nn.backbones import build_backbone


def test_contrastive_loss_by_hand() -> None:
    d = torch.tensor([0.5, 0.5, 2.0, 0.2])
    same = torch.tensor([1, 0, 0, 1])
    # m = 1: same -> d; different -> max(0, 1 - d).
    assert torch.allclose(contrastive_loss(d, same, margin=1.0), torch.tensor([0.5, 0.5, 0.0, 0.2]))
    # Hadsell 2006: same -> d^2 / 2; different -> max(0, m - d)^2 / 2.
    assert torch.allclose(contrastive_loss(d, same, margin=1.0, squared=True),
                          torch.tensor([0.125, 0.125, 0.0, 0.02]))
    assert torch.allclose(contrastive_loss(d, same, margin=3.0), torch.tensor([0.5, 2.5, 1.0, 0.2]))


def test_balanced_mean_weighs_same_and_different_equally() -> None:
    v = torch.tensor([1.0, 3.0, 10.0, 10.0, 10.0, 10.0])
    same = torch.tensor([1, 1, 0, 0, 0, 0])
    assert float(balanced_mean(v, same)) == pytest.approx(0.5 * 2.0 + 0.5 * 10.0)


def _toy_store(classes: int = 6, per_class: int = 4) -> ClassStore:
    imgs = torch.arange(classes * per_class, dtype=torch.uint8).view(-1, 1, 1, 1)
    imgs = imgs.expand(-1, 1, 2, 2).contiguous()
    offsets = np.arange(0, classes * per_class + 1, per_class)
    return ClassStore(imgs, offsets, [f"c{i}" for i in range(classes)])


def test_pair_sampler_balanced_and_deterministic() -> None:
    store = _toy_store()
    s = PairSampler(store, pairs=50, seed=3)
    a, b, same = s.indices(7)
    assert same.sum() == 25 and len(same) == 50
    cls = lambda rows: rows // 4  # noqa: E731
    assert np.array_equal(cls(a) == cls(b), same)
    assert np.all(a[same] != b[same])  # a same pair is two distinct items
    a2, b2, same2 = PairSampler(store, pairs=50, seed=3).indices(7)
    assert np.array_equal(a, a2) and np.array_equal(b, b2) and np.array_equal(same, same2)
    a3, _, _ = s.indices(8)
    assert not np.array_equal(a, a3)
    pb = s.sample(7)
    assert pb.x1.shape == (50, 1, 2, 2) and torch.equal(pb.same, torch.from_numpy(same))


def test_prediction_best_mean_similarity() -> None:
    """Identity embedding: the query takes the class whose support items are on average nearest."""
    learner = SiameseNet(nn.Flatten(), input_shape=(1,))
    sx = torch.tensor([[0.0], [10.0], [3.0], [3.2]])
    sy = torch.tensor([0, 0, 1, 1])
    # Query 1.0: nearest single item is class 0 (at 0), but the mean distances are 5.0 (class 0) vs 2.1.
    logits = learner.adapt(sx, sy)(torch.tensor([[1.0], [9.0]]))
    assert torch.allclose(logits, -torch.tensor([[5.0, 2.1], [5.0, 5.9]]), atol=1e-5)
    assert logits.argmax(-1).tolist() == [1, 0]
    # K = 1: most similar support item.
    one = learner.adapt(sx[[0, 2]], torch.tensor([0, 1]))(torch.tensor([[1.0]]))
    assert one.argmax(-1).item() == 0


def test_koch_weighted_l1_and_affine() -> None:
    torch.manual_seed(0)
    learner = SiameseNet(nn.Flatten(), loss="koch", input_shape=(3,))
    with torch.no_grad():
        learner.head.weight.copy_(torch.tensor([[-1.0, -2.0, 0.0]]))
        learner.head.bias.fill_(0.5)
    s = learner.pair_scores(torch.tensor([[1.0, 1.0, 5.0]]), torch.tensor([[0.0, 2.0, -5.0]]))
    assert s.item() == pytest.approx(-1.0 - 2.0 + 0.5)
    x = torch.rand(8, 1, 12, 12)
    assert torch.allclose(random_affine(x, prob=0.0), x, atol=1e-5)  # no distortion drawn: identity
    y = random_affine(x, torch.Generator().manual_seed(1), prob=1.0)
    assert y.shape == x.shape and not torch.allclose(y, x)


@pytest.mark.parametrize("loss", ["contrastive", "koch"])
@pytest.mark.slow
def test_learns_above_chance(omniglot_train: ClassStore, omniglot_test: ClassStore, loss: str,
                             one_thread: None, meta_train) -> None:
    torch.manual_seed(0)
    backbone = build_backbone("conv4", in_channels=1, hidden=16, out_channels=16)
    learner = SiameseNet(backbone, loss=loss, distort=(loss == "koch"))
    sampler = EpisodeSampler(omniglot_train, ways=5, shots=1, queries=3, seed=0, tasks_per_batch=2)
    metrics = meta_train(learner, sampler, 40)
    assert set(metrics) >= {"loss", "acc", "verification_acc"}
    from metashot.evaluate import evaluate

    res = evaluate(learner, omniglot_test, ways=5, shots=1, queries=3, episodes=40, seed=1, progress=False)
    assert res["acc"] > (40.0 if loss == "contrastive" else 30.0)  # chance is 20%; BCE starts slower
    ver = verification_accuracy(learner, omniglot_test, pairs=400, seed=2)
    assert ver["verification_acc"] > 55.0 and ver["pairs"] == 400  # chance is 50%
