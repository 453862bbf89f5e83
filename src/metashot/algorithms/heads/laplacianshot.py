"""LaplacianShot (Ziko, Dolz, Granger & Ben Ayed, ICML 2020, "Laplacian regularized few-shot learning",
eq. 1 and the bound updates of eq. 10-11)."""

from __future__ import annotations

import torch

from metashot.algorithms.heads import Head, prototypes, register_head
from metashot.nn.prototypes import sq_euclidean


def knn_affinity(zq: torch.Tensor, k: int) -> torch.Tensor:
    """W_jl = 1 if q_l is among the k nearest other queries of q_j, else 0: zq [T, M, D] -> [T, M, M]."""
    M = zq.shape[-2]
    k = min(k, M - 1)
    d = sq_euclidean(zq, zq)
    d = d + torch.eye(M, dtype=d.dtype, device=d.device) * 1e9  # never one's own neighbour
    idx = d.topk(k, dim=-1, largest=False).indices
    return torch.zeros_like(d).scatter_(-1, idx, 1.0)


@register_head("laplacianshot")
class LaplacianShot(Head):
    """Transductive: assignments Y minimising  sum_j sum_k y_jk a_jk - (lam / 2) sum_{j,l} W_jl y_j^T y_l
    (eq. 1, a_jk = s ||q_j - m_k||^2 to the prototypes m_k, W the k-nearest-neighbour graph of the queries),
    by the bound iterations (eq. 11)

        y_j <- softmax(-a_j + lam sum_l W_jl y_l),   y_j started at softmax(-a_j),

    until the assignments stop changing (at most ``steps``). Scores are log y_j. The prototypes m_k are the
    support means, rectified by BD-CSPN's cross-class shift of the queries when ``shift`` (as the authors'
    code does).

    Args:
        lam: lambda, the weight of the Laplacian term.
        knn: k of the affinity graph.
        scale: s, the scale of the unary distances.
        steps: at most this many bound iterations.
        shift: the cross-class shift xi = mean(support) - mean(queries) of the queries.
    """

    transductive = True

    def __init__(self, lam: float = 0.7, knn: int = 3, scale: float = 10.0, steps: int = 20,
                 shift: bool = True) -> None:
        super().__init__(lam=lam, knn=knn, scale=scale, steps=steps, shift=shift)
        self.lam, self.knn, self.scale, self.steps = float(lam), int(knn), float(scale), int(steps)
        self.shift = bool(shift)

    def __call__(self, zs: torch.Tensor, ys: torch.Tensor, zq: torch.Tensor, ways: int) -> torch.Tensor:
        if self.shift:
            zq = zq + (zs.mean(-2, keepdim=True) - zq.mean(-2, keepdim=True))
        unary = self.scale * sq_euclidean(zq, prototypes(zs, ys, ways))  # [T, M, N]
        if zq.shape[-2] < 2:
            return -unary
        w = knn_affinity(zq, self.knn)
        y = (-unary).softmax(-1)
        for _ in range(self.steps):
            new = (-unary + self.lam * w @ y).softmax(-1)
            done = bool((new.argmax(-1) == y.argmax(-1)).all()) and bool((new - y).abs().max() < 1e-6)
            y = new
            if done:
                break
        return torch.log(y.clamp_min(1e-30))
