"""Matching Networks: cosine attention (sums to one, nearest neighbour in the sharp limit), FCE, learning."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from metashot.algorithms.matching import FullContextEmbedding, MatchingNet, cosine_attention
from metashot.data.episodes import EpisodeSampler
from metashot.data.store import ClassStore
from metashot.evaluate import evaluate
from metashot.nn.backbones import build_backbone


def test_attention_sums_to_one_and_sharpens_to_nearest_neighbour() -> None:
    g = torch.Generator().manual_seed(0)
    zq, zs = torch.randn(2, 7, 5, generator=g), torch.randn(2, 9, 5, generator=g)
    a = cosine_attention(zq, zs)
    assert a.shape == (2, 7, 9) and torch.allclose(a.sum(-1), torch.ones(2, 7))
    cos = torch.nn.functional.cosine_similarity(zq.unsqueeze(-2), zs.unsqueeze(-3), dim=-1)
    sharp = cosine_attention(zq, zs, temperature=1e4)
    assert torch.equal(sharp.argmax(-1), cos.argmax(-1))
    assert torch.allclose(sharp, torch.nn.functional.one_hot(cos.argmax(-1), 9).float(), atol=1e-4)


def test_prediction_is_attention_weighted_labels() -> None:
    learner = MatchingNet(nn.Flatten(), input_shape=(2,))
    sx = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1]])
    sy = torch.tensor([0, 1, 0])
    logp = learner.adapt(sx, sy)(torch.tensor([[1.0, 0.0]]))
    a = cosine_attention(torch.tensor([[1.0, 0.0]]), sx)[0]
    assert torch.allclose(logp.exp()[0], torch.stack([a[0] + a[2], a[1]]), atol=1e-6)
    sharp = MatchingNet(nn.Flatten(), temperature=1e4, input_shape=(2,))
    assert sharp.adapt(sx, sy)(torch.tensor([[0.1, 1.0]])).argmax(-1).item() == 1


def test_full_context_embeddings_shapes_and_gradients() -> None:
    torch.manual_seed(0)
    fce = FullContextEmbedding(dim=6, steps=3)
    zs, zq = torch.randn(2, 5, 6), torch.randn(2, 4, 6)
    gs = fce.support(zs)
    fq = fce.query(zq, gs)
    assert gs.shape == (2, 5, 6) and fq.shape == (2, 4, 6)
    fq.sum().backward()
    assert all(p.grad is not None for p in fce.parameters())
    # Each query is embedded independently of the other queries.
    assert torch.allclose(fce.query(zq[:, :1], gs), fq[:, :1], atol=1e-6)


@pytest.mark.parametrize("fce", [False, True])
@pytest.mark.slow
def test_learns_above_chance(omniglot_train: ClassStore, omniglot_test: ClassStore, fce: bool,
                             one_thread: None, meta_train) -> None:
    torch.manual_seed(0)
    backbone = build_backbone("conv4", in_channels=1, hidden=16, out_channels=16)
    learner = MatchingNet(backbone, fce=fce, fce_steps=2, temperature=10.0)
    sampler = EpisodeSampler(omniglot_train, ways=5, shots=1, queries=3, seed=0, tasks_per_batch=2)
    meta_train(learner, sampler, 30)
    res = evaluate(learner, omniglot_test, ways=5, shots=1, queries=3, episodes=30, seed=1, progress=False)
    assert res["acc"] > 40.0  # chance is 20%
    # The batched path and the per-task adapt() path agree in eval mode.
    learner.eval()
    batch = EpisodeSampler(omniglot_test, 5, 2, 2, seed=3, tasks_per_batch=2).sample(0).to("cpu")
    with torch.no_grad():
        ref = torch.stack([learner.adapt(*batch.task(t)[:2])(batch.task(t)[2]) for t in range(2)])
        assert torch.allclose(learner.predict_batch(batch), ref, atol=1e-5)


def test_distortion_only_in_training_meta_loss() -> None:
    from metashot.data.episodes import EpisodeBatch

    torch.manual_seed(0)
    learner = MatchingNet(build_backbone("conv4", in_channels=1, hidden=4, out_channels=4), temperature=5.0,
                          distort=True)
    g = torch.Generator().manual_seed(0)
    y = torch.arange(3).view(1, 3)
    b = EpisodeBatch(torch.rand(1, 3, 1, 28, 28, generator=g), y, torch.rand(1, 3, 1, 28, 28, generator=g), y,
                     torch.zeros(1, 3), 3, 1, 1)
    learner.eval()
    assert torch.equal(learner.meta_loss(b)[0], learner.meta_loss(b)[0])
    learner.train()
    torch.manual_seed(1)
    first = learner.meta_loss(b)[0]
    assert not torch.equal(first, learner.meta_loss(b)[0])  # a new distortion each call
    assert learner.config_dict()["distort"] is True
