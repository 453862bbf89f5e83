"""SimpleShot with a transductive head: the adapt(support, labels, query_x) contract, the batched path against
the per-task one, the inductive fallbacks, the known-class score and the unknown gating, pickling."""

from __future__ import annotations

import pickle

import pytest
import torch
from torch import nn

from metashot.algorithms.base import MetaLearner
from metashot.algorithms.heads import cosine, prototypes
from metashot.algorithms.simpleshot import SimpleShot
from metashot.data.episodes import EpisodeBatch
from metashot.nn.feature_maps import l2n

HEADS = ["soft_kmeans", "bd_cspn", "laplacianshot", "pt_map", "tim", "transductive_finetune"]


def _batch(T: int = 2, N: int = 3, K: int = 2, Q: int = 4, D: int = 8, seed: int = 0) -> EpisodeBatch:
    g = torch.Generator().manual_seed(seed)
    sy = torch.arange(N).repeat_interleave(K).expand(T, -1)
    qy = torch.arange(N).repeat_interleave(Q).expand(T, -1)
    centres = torch.randn(T, N, D, generator=g) * 2
    sx = centres.gather(1, sy.unsqueeze(-1).expand(-1, -1, D)) + 0.5 * torch.randn(T, N * K, D, generator=g)
    qx = centres.gather(1, qy.unsqueeze(-1).expand(-1, -1, D)) + 0.5 * torch.randn(T, N * Q, D, generator=g)
    return EpisodeBatch(sx, sy.clone(), qx, qy.clone(), torch.zeros(T, N, dtype=torch.long), N, K, Q)


@pytest.mark.parametrize("head", HEADS)
def test_batched_path_equals_per_task_adapt_with_queries(head: str) -> None:
    learner = SimpleShot(nn.Identity(), head=head).eval()
    assert learner.uses_queries
    b = _batch()
    batched = learner.predict_batch(b)
    for t in range(2):
        per_task = learner.adapt(b.support_x[t], b.support_y[t], b.query_x[t])(b.query_x[t])
        torch.testing.assert_close(batched[t], per_task, rtol=1e-4, atol=1e-4)
    # the per-task path of the base class passes query_x to a transductive learner
    looped = MetaLearner.predict_batch(learner, b)
    torch.testing.assert_close(looped, batched, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("head", HEADS)
def test_inductive_fallbacks(head: str) -> None:
    """One query alone, or transductive=False, is nearest class mean (the `ncm` learner's scores)."""
    trans = SimpleShot(nn.Identity(), head=head, temperature=10.0)
    plain = SimpleShot(nn.Identity(), temperature=10.0)
    b = _batch()
    sx, sy, qx = b.support_x[0], b.support_y[0], b.query_x[0]
    ind = plain.adapt(sx, sy)(qx)
    pred = trans.adapt(sx, sy)
    torch.testing.assert_close(pred.classify(qx, transductive=False)[0], ind)
    for j in range(3):
        torch.testing.assert_close(pred(qx[j : j + 1]), ind[j : j + 1])
    off = SimpleShot(nn.Identity(), head=head, temperature=10.0, transductive=False)
    assert not off.uses_queries
    torch.testing.assert_close(off.adapt(sx, sy)(qx), ind)


def test_known_scores_are_cosines_after_batch_centring() -> None:
    b = _batch()
    learner = SimpleShot(nn.Identity())
    zs, zq = l2n(b.support_x[0]), l2n(b.query_x[0])
    m = torch.cat([zs, zq]).mean(0)
    want = cosine(l2n(zq - m)[None], prototypes(l2n(zs - m)[None], b.support_y[:1], 3)).amax(-1)
    got = learner.known_scores(zs[None], b.support_y[:1], zq[None], 3)
    torch.testing.assert_close(got, want)


def test_unknown_queries_are_gated_out_of_the_transductive_batch() -> None:
    """With a threshold, queries below it get inductive scores and do not move the others' scores: the
    known queries score as if the unknown ones were absent."""
    b = _batch(T=1, Q=5)
    learner = SimpleShot(nn.Identity(), head="soft_kmeans", head_args={"steps": 5})
    sx, sy, qx = b.support_x[0], b.support_y[0], b.query_x[0]
    far = torch.randn(6, qx.shape[1], generator=torch.Generator().manual_seed(3)) * 0.1 - 5  # no class
    mixed = torch.cat([qx, far])
    pred = learner.adapt(sx, sy)
    _, known = pred.classify(mixed)
    threshold = float(known[len(qx):].max()) + 1e-4
    assert float(known[: len(qx)].min()) > threshold  # the synthetic unknowns score lower
    scores, _ = pred.classify(mixed, unknown_threshold=threshold)
    alone = pred(qx)
    torch.testing.assert_close(scores[: len(qx)], alone)
    torch.testing.assert_close(scores[len(qx):], pred.classify(far, transductive=False)[0])
    ungated = pred(mixed)[: len(qx)]
    assert not torch.allclose(ungated, alone)  # without gating the unknowns do pull the prototypes


def test_order_of_queries_does_not_change_answers() -> None:
    b = _batch(T=1, Q=6)
    pred = SimpleShot(nn.Identity(), head="tim").adapt(b.support_x[0], b.support_y[0])
    qx = b.query_x[0]
    perm = torch.randperm(len(qx), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(pred(qx[perm]), pred(qx)[perm], rtol=1e-4, atol=1e-4)


def test_head_predictor_pickles() -> None:
    b = _batch(T=1)
    learner = SimpleShot(nn.Identity(), head="soft_kmeans", unknown_threshold=0.2)
    pred = learner.adapt(b.support_x[0], b.support_y[0])
    again = pickle.loads(pickle.dumps(pred))
    torch.testing.assert_close(again(b.query_x[0]), pred(b.query_x[0]))
    cfg = learner.config_dict()
    assert cfg["head"] == "soft_kmeans" and cfg["unknown_threshold"] == 0.2 and cfg["transductive"] is True
    rebuilt = SimpleShot(nn.Identity(), **cfg)
    torch.testing.assert_close(rebuilt.adapt(b.support_x[0], b.support_y[0])(b.query_x[0]),
                               pred(b.query_x[0]))
