"""PT-MAP (Hu, Gripon & Pateux, ICANN 2021, "Leveraging the feature distribution in transfer-based
few-shot learning", Algorithm 1): MAP class centres with a Sinkhorn-balanced assignment of the queries."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from metashot.algorithms.heads import Head, prototypes, register_head
from metashot.nn.prototypes import sq_euclidean


def sinkhorn(cost: torch.Tensor, lam: float, col_mass: torch.Tensor, iters: int) -> torch.Tensor:
    """The entropic transport plan P = diag(u) exp(-lam cost) diag(v) with rows summing to 1 and columns to
    ``col_mass`` [T, N] (Sinkhorn & Knopp): cost [T, M, N] -> P [T, M, N]."""
    p = torch.exp(-lam * (cost - cost.amin((-1, -2), keepdim=True)))
    for _ in range(iters):
        p = p * (col_mass / p.sum(-2).clamp_min(1e-30)).unsqueeze(-2)
        p = p / p.sum(-1, keepdim=True).clamp_min(1e-30)
    return p


@register_head("pt_map")
class PTMAP(Head):
    """Transductive (Algorithm 1 of Hu et al. 2021). Centres c_k start at the support means; repeat:

        P = Sinkhorn(exp(-lam ||q_j - c_k||^2)), rows summing to 1, columns to M / N (balanced classes),
        mu_k = (sum_{i: y_i = k} z_i + sum_j P_jk q_j) / (|S_k| + sum_j P_jk),
        c_k <- c_k + a (mu_k - c_k).

    Scores are log P of the final plan. The column constraint assumes every class has M / N queries: the
    assumption that imbalanced batches break (Veilleux et al. 2021).

    Args:
        lam: lambda, the sharpness of the transport cost (the paper: 10).
        alpha: a, the centre update rate (the paper: 0.2).
        steps: outer iterations (the paper: 30); sinkhorn_iters: inner Sinkhorn iterations.
    """

    transductive = True

    def __init__(self, lam: float = 10.0, alpha: float = 0.2, steps: int = 30,
                 sinkhorn_iters: int = 50) -> None:
        super().__init__(lam=lam, alpha=alpha, steps=steps, sinkhorn_iters=sinkhorn_iters)
        self.lam, self.alpha = float(lam), float(alpha)
        self.steps, self.iters = int(steps), int(sinkhorn_iters)

    def plan(self, zq: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        T, M, N = zq.shape[0], zq.shape[-2], c.shape[-2]
        mass = torch.full((T, N), M / N, dtype=zq.dtype, device=zq.device)
        return sinkhorn(sq_euclidean(zq, c), self.lam, mass, self.iters)

    def __call__(self, zs: torch.Tensor, ys: torch.Tensor, zq: torch.Tensor, ways: int) -> torch.Tensor:
        onehot = F.one_hot(ys, ways).to(zs.dtype)
        sums, counts = onehot.transpose(-1, -2) @ zs, onehot.sum(-2).unsqueeze(-1)
        c = prototypes(zs, ys, ways)
        for _ in range(self.steps):
            p = self.plan(zq, c)
            mu = (sums + p.transpose(-1, -2) @ zq) / (counts + p.sum(-2).unsqueeze(-1))
            c = c + self.alpha * (mu - c)
        return torch.log(self.plan(zq, c).clamp_min(1e-30))
