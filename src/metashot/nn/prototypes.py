"""Class prototypes and distances over embeddings: the arithmetic that ProtoNet, Relation Networks, the
nearest-class-mean baselines, the few-shot heads and text fine-tuning share."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def class_sums(z: torch.Tensor, y: torch.Tensor, ways: int,
               owner: str = "ProtoNet") -> tuple[torch.Tensor, torch.Tensor]:
    """Sum and count of each class's embeddings: z [..., S, D], y [..., S] (int64, 0..ways-1) ->
    (sums [..., ways, D], counts [..., ways, 1]), both of z's dtype.

    The one place the prototype rule is written (a mean is ``sums / counts``; Relation Networks and the
    cosine rules, which normalise afterwards, use the sums). Raises ValueError naming ``owner`` when a class
    has no example.
    """
    onehot = F.one_hot(y, ways).to(z.dtype)  # [..., S, N]
    counts = onehot.sum(-2).unsqueeze(-1)
    if bool((counts == 0).any()):
        raise ValueError(f"{owner}: a class in 0..{ways - 1} has no support example; labels must be 0..N-1")
    return onehot.transpose(-1, -2) @ z, counts


def class_means(z: torch.Tensor, y: torch.Tensor, ways: int, owner: str = "ProtoNet") -> torch.Tensor:
    """Prototypes, the mean embedding of each class: z [..., S, D], y [..., S] (0..N-1) -> [..., ways, D]."""
    sums, counts = class_sums(z, y, ways, owner)
    return sums / counts


def sq_euclidean(q: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distance between rows: q [..., M, D], p [..., N, D] -> [..., M, N]."""
    d = q.pow(2).sum(-1, keepdim=True) - 2 * q @ p.transpose(-1, -2) + p.pow(2).sum(-1).unsqueeze(-2)
    return d.clamp_min(0)
