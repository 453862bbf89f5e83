"""SimpleShot: the CL2N rule by hand, the batched path against the per-task one, and the options."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from metashot.algorithms.protonet import ProtoNet
from metashot.algorithms.simpleshot import SimpleShot
from metashot.data.episodes import EpisodeBatch


def _batch(T: int = 3, N: int = 4, K: int = 2, Q: int = 3, D: int = 6, seed: int = 0) -> EpisodeBatch:
    g = torch.Generator().manual_seed(seed)
    sy = torch.arange(N).repeat_interleave(K).expand(T, -1)
    qy = torch.arange(N).repeat_interleave(Q).expand(T, -1)
    centres = torch.randn(T, N, D, generator=g, dtype=torch.float64) * 2
    sx = centres.gather(1, sy.unsqueeze(-1).expand(-1, -1, D)) + torch.randn(T, N * K, D, generator=g,
                                                                                dtype=torch.float64)
    qx = centres.gather(1, qy.unsqueeze(-1).expand(-1, -1, D)) + torch.randn(T, N * Q, D, generator=g,
                                                                                dtype=torch.float64)
    return EpisodeBatch(sx, sy.clone(), qx, qy.clone(), torch.zeros(T, N, dtype=torch.long), N, K, Q)


def test_support_centring_by_hand() -> None:
    """t(z) = n(n(z) - mean_S n(z)); prototypes are class means of t(support); score = -||t(q) - c_k||^2."""
    sx = torch.tensor([[3.0, 0.0], [0.0, 2.0], [1.0, 1.0]], dtype=torch.float64)
    sy = torch.tensor([0, 1, 1])
    q = torch.tensor([[2.0, 0.5]], dtype=torch.float64)
    n = F.normalize
    mu = n(sx).mean(0)
    ts, tq = n(n(sx) - mu), n(n(q) - mu)
    protos = torch.stack([ts[0], ts[1:].mean(0)])
    want = -((tq.unsqueeze(1) - protos.unsqueeze(0)) ** 2).sum(-1)
    got = SimpleShot(nn.Identity()).adapt(sx, sy)(q)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("centre", ["support", "none"])
def test_batched_path_equals_per_task_path_in_float64(centre: str) -> None:
    b = _batch()
    learner = SimpleShot(nn.Identity(), centre=centre).eval()
    fast = learner.batched_logits(b)
    ref = torch.stack([learner.adapt(b.support_x[t], b.support_y[t])(b.query_x[t])
                       for t in range(b.num_tasks)])
    torch.testing.assert_close(fast, ref, rtol=1e-12, atol=1e-12)
    loss, metrics = learner.meta_loss(b)
    assert torch.isfinite(loss) and 0 <= metrics["acc"] <= 1


def test_without_normalisation_it_is_protonet() -> None:
    b = _batch(seed=1)
    plain = SimpleShot(nn.Identity(), centre="none", l2norm=False).batched_logits(b)
    proto = ProtoNet(nn.Identity()).batched_logits(b)
    torch.testing.assert_close(plain, proto, rtol=1e-12, atol=1e-12)


def test_support_centring_ignores_a_shift_shared_by_the_normalised_embeddings() -> None:
    """Centring removes what every normalised support embedding shares: an offset added after the first
    normalisation changes no score, which is why it suits photo domains unlike the base classes."""
    b = _batch(seed=2)
    shift = torch.randn(b.support_x.shape[-1], dtype=torch.float64)

    class NormalisedAndShifted(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.normalize(x, dim=-1) + shift

    shifted = SimpleShot(NormalisedAndShifted(), centre="none", l2norm=False)
    shifted.centre = "support"  # the centring step alone, on embeddings normalised (and shifted) upstream
    torch.testing.assert_close(shifted.batched_logits(b), SimpleShot(nn.Identity()).batched_logits(b),
                               rtol=1e-10, atol=1e-10)


def test_bad_options() -> None:
    with pytest.raises(ValueError, match="centre"):
        SimpleShot(nn.Identity(), centre="base")
    with pytest.raises(ValueError, match="l2norm"):
        SimpleShot(nn.Identity(), centre="support", l2norm=False)


def test_temperature_scales_scores_and_changes_no_prediction() -> None:
    b = _batch(seed=3)
    one = SimpleShot(nn.Identity()).batched_logits(b)
    ten = SimpleShot(nn.Identity(), temperature=10.0).batched_logits(b)
    torch.testing.assert_close(ten, 10 * one, rtol=1e-12, atol=1e-12)
    assert torch.equal(ten.argmax(-1), one.argmax(-1))
    with pytest.raises(ValueError, match="temperature"):
        SimpleShot(nn.Identity(), temperature=0.0)
