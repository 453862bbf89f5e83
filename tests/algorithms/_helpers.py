"""Tiny float64 networks and episode batches shared by the MAML-family tests (MAML, Meta-SGD, ANIL, Reptile):
small enough that every gradient check is exact to rounding and fast."""

from __future__ import annotations

import torch
from torch import nn

from metashot.algorithms.maml import MAML
from metashot.data.episodes import EpisodeBatch
from metashot.nn.backbones import maml_omniglot


def _batch(T: int, N: int, K: int, Q: int, side: int = 8, seed: int = 0,
           dtype: torch.dtype = torch.float64) -> EpisodeBatch:
    """T random N-way K-shot tasks of 1 x side x side images: support_x [T, N*K, 1, side, side] (dtype),
    query_x [T, N*Q, 1, side, side], labels 0..N-1 in class order."""
    g = torch.Generator().manual_seed(seed)
    sx = torch.randn(T, N * K, 1, side, side, generator=g, dtype=dtype)
    qx = torch.randn(T, N * Q, 1, side, side, generator=g, dtype=dtype)
    sy = torch.arange(N).repeat_interleave(K).expand(T, -1)
    qy = torch.arange(N).repeat_interleave(Q).expand(T, -1)
    return EpisodeBatch(sx, sy, qx, qy, torch.zeros(T, N, dtype=torch.long), N, K, Q)


def _tiny_conv(seed: int = 0, ways: int = 3) -> nn.Module:
    """MAML's Omniglot conv net, 4 channels wide, float64, `ways` outputs, seeded."""
    torch.manual_seed(seed)
    net = maml_omniglot(in_channels=1, hidden=4, out_features=ways).double()
    with torch.no_grad():  # non-trivial batch-norm affine parameters
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
    return net


def _meta_grad(learner: MAML, batch: EpisodeBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """(meta-loss [], meta-gradient flattened over the trainable parameters [P]; zeros where unused)."""
    loss, _ = learner.meta_loss(batch)
    params = [p for p in learner.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    flat = torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params,
                                                                                                  strict=True)])
    return loss.detach(), flat


class _Scalar(nn.Module):
    """y = w * x + b on scalars; out [B, 1] (hand-computable)."""

    def __init__(self, w: float, b: float) -> None:
        super().__init__()
        self.head = nn.Linear(1, 1).double()
        with torch.no_grad():
            self.head.weight.fill_(w)
            self.head.bias.fill_(b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)


def _reg_batch(xs: list[float], ys: list[float], xq: list[float], yq: list[float]) -> EpisodeBatch:
    t = lambda v: torch.tensor(v, dtype=torch.float64).view(1, -1, 1)  # noqa: E731
    return EpisodeBatch(t(xs), t(ys), t(xq), t(yq), torch.zeros(1, 1), 1, len(xs), len(xq))
