"""Soft k-means prototype refinement (Ren et al., ICLR 2018, "Meta-learning for semi-supervised few-shot
classification", eq. 3-4)."""

from __future__ import annotations

import torch

from metashot.algorithms.heads import Head, distance_logits, prototypes, register_head


@register_head("soft_kmeans")
class SoftKMeans(Head):
    """Transductive: prototypes refined by soft assignments of the unlabelled queries.

        w_jk = softmax_k(-s ||q_j - p_k||^2),
        p_k <- (sum_{i: y_i = k} z_i + sum_j w_jk q_j) / (|S_k| + sum_j w_jk),

    starting from the support means p_k = mean_{i: y_i = k} z_i, repeated ``steps`` times (the paper takes
    one step); the queries are then scored by -s ||q - p_k||^2.

    Args:
        steps: refinement steps.
        scale: s, the sharpness of the soft assignment and of the scores.
    """

    transductive = True

    def __init__(self, steps: int = 1, scale: float = 10.0) -> None:
        super().__init__(steps=steps, scale=scale)
        self.steps, self.scale = int(steps), float(scale)

    def __call__(self, zs: torch.Tensor, ys: torch.Tensor, zq: torch.Tensor, ways: int) -> torch.Tensor:
        onehot = torch.nn.functional.one_hot(ys, ways).to(zs.dtype)  # [T, S, N]
        sums, counts = onehot.transpose(-1, -2) @ zs, onehot.sum(-2).unsqueeze(-1)
        p = prototypes(zs, ys, ways)
        for _ in range(self.steps):
            w = distance_logits(zq, p, self.scale).softmax(-1)  # [T, M, N]
            p = (sums + w.transpose(-1, -2) @ zq) / (counts + w.sum(-2).unsqueeze(-1))
        return distance_logits(zq, p, self.scale)
