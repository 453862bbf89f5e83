"""Image augmentations applied to float batches on the model's device (not to the cached store)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def random_affine(x: torch.Tensor, generator: torch.Generator | None = None, rotation: float = 10.0,
                  shear: float = 0.3, scale: tuple[float, float] = (0.8, 1.2), translate: float = 2 / 105,
                  prob: float = 0.5) -> torch.Tensor:
    """Koch et al.'s affine distortions: x [B, C, H, W] float -> same shape.

    Each image independently gets, each with probability ``prob``: a rotation in [-rotation, rotation]
    degrees, shears in [-shear, shear], scales in ``scale`` and translations in [-translate, translate]
    (a fraction of the image side; Koch used +-2 pixels of 105). Bilinear resampling, zero (background) fill.
    Random numbers are drawn on the CPU (from ``generator``, or the global generator), so a seed gives the
    same distortions on any device.
    """
    B = x.shape[0]
    dev = x.device

    def u(lo: float, hi: float) -> torch.Tensor:
        r = torch.rand(B, generator=generator, device="cpu").to(dev)
        on = (torch.rand(B, generator=generator, device="cpu") < prob).to(dev)
        neutral = torch.full_like(r, 0.0 if lo < 0 else 1.0)
        return torch.where(on, lo + (hi - lo) * r, neutral)

    th = u(-rotation, rotation) * math.pi / 180
    sx, sy = u(-shear, shear), u(-shear, shear)
    kx, ky = u(*scale), u(*scale)
    tx, ty = u(-translate, translate) * 2, u(-translate, translate) * 2  # grid coordinates span [-1, 1]
    rot = torch.stack([torch.stack([th.cos(), -th.sin()], -1), torch.stack([th.sin(), th.cos()], -1)], -2)
    one = torch.ones_like(sx)
    sh = torch.stack([torch.stack([one, sx], -1), torch.stack([sy, one], -1)], -2)
    sc = torch.diag_embed(torch.stack([1 / kx, 1 / ky], -1))
    theta = torch.cat([rot @ sh @ sc, torch.stack([tx, ty], -1).unsqueeze(-1)], -1).to(x.dtype)  # [B, 2, 3]
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
