"""Feature maps of few-shot heads over pretrained features: the one place they are written.

Every head of :mod:`metashot.algorithms.heads` and SimpleShot see features through these maps:

- power transform (Hu et al. 2021): z -> (max(z, 0) + 1e-6) ** beta on non-negative (post-ReLU) features;
- L2 normalisation (SimpleShot's L2N);
- centring: on the base classes' mean feature (SimpleShot's CL2N, a fitted buffer of the backbone), on the
  task's support set (``support``: inductive, needs no base classes), or none; and, for the known-class
  score of open-set prediction only, on the mean of the support and the query batch together
  (:func:`batch_centre`, transductive).

Shapes: features [..., S, D] (a leading task dimension is allowed everywhere).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

CENTRES = ("support", "none")


def power_transform(z: torch.Tensor, power: float) -> torch.Tensor:
    """z -> (max(z, 0) + 1e-6) ** power: Hu et al.'s (2021) transform of non-negative (post-ReLU) features."""
    return z.clamp_min(0).add(1e-6).pow(power)


def l2n(z: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit Euclidean norm."""
    return F.normalize(z, dim=-1)


def support_centre(zs: torch.Tensor) -> torch.Tensor:
    """The mean of the support embeddings zs [..., S, D] -> [..., 1, D]."""
    return zs.mean(-2, keepdim=True)


def batch_centre(zs: torch.Tensor, zq: torch.Tensor) -> torch.Tensor:
    """The mean of the support zs [..., S, D] and the query batch zq [..., M, D] together -> [..., 1, D]."""
    return torch.cat([zs, zq], -2).mean(-2, keepdim=True)


def centre_map(z: torch.Tensor, centre: torch.Tensor | None) -> torch.Tensor:
    """t(z) = n(z - m) with m = ``centre`` ([..., 1, D]); the identity when ``centre`` is None."""
    return z if centre is None else l2n(z - centre)


def task_features(zs: torch.Tensor, zq: torch.Tensor | None, centre: str) -> tuple[torch.Tensor,
                                                                                     torch.Tensor | None]:
    """Map a task's support zs [..., S, D] and queries zq [..., M, D] (L2-normalised embeddings) with the
    centring ``centre`` (one of :data:`CENTRES`); the centre comes from the support set only, so the map is
    the same whatever the queries are."""
    if centre not in CENTRES:
        raise ValueError(f"centre must be one of {CENTRES}, got {centre!r}")
    m = support_centre(zs) if centre == "support" else None
    return centre_map(zs, m), (None if zq is None else centre_map(zq, m))
