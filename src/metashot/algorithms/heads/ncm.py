"""Nearest class mean: the inductive rule (SimpleShot; Wang et al. 2019, the ProtoNet rule)."""

from __future__ import annotations

import torch

from metashot.algorithms.heads import Head, distance_logits, prototypes, register_head


@register_head("ncm")
class NearestMean(Head):
    """Inductive: score_k(q) = -s ||q - c_k||^2, c_k = mean of class k's support features.

    Args:
        scale: s, the softmax sharpness (changes no prediction).
    """

    def __init__(self, scale: float = 10.0) -> None:
        super().__init__(scale=scale)
        self.scale = float(scale)

    def __call__(self, zs: torch.Tensor, ys: torch.Tensor, zq: torch.Tensor, ways: int) -> torch.Tensor:
        return distance_logits(zq, prototypes(zs, ys, ways), self.scale)
