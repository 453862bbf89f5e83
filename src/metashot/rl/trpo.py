"""TRPO (Schulman et al. 2015), the outer loop of MAML-RL: conjugate gradient and one trust-region step.

:func:`trpo_step` takes a natural-gradient step on any ``objective(params) -> (loss, KL)`` (for MAML-RL,
:func:`metashot.rl.adaptation.meta_objective`): conjugate gradient on Fisher-vector products (exact
Hessian-vector products of the KL by double backward, or one of :mod:`metashot.rl.curvature`), the step scaled
so that the quadratic KL estimate equals the bound, then a backtracking line search.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from metashot.nn.functional import Params
from metashot.rl.policy import flat, unflat


def conjugate_gradient(matvec: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, iters: int = 10,
                       tol: float = 1e-10, return_product: bool = False
                       ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Approximately solve ``A x = b`` for symmetric positive-definite A given as ``matvec``.

    ``return_product=True`` returns ``(x, A x)``, with ``A x`` summed from the products the iterations made
    (A is linear), so that no further product is needed for it.
    """
    x = torch.zeros_like(b)
    ax = torch.zeros_like(b)
    r = b.clone()
    p = b.clone()
    rr = r @ r
    for _ in range(iters):
        if rr <= tol:
            break
        ap = matvec(p)
        alpha = rr / (p @ ap)
        x = x + alpha * p
        ax = ax + alpha * ap
        r = r - alpha * ap
        rr_new = r @ r
        p = r + (rr_new / rr) * p
        rr = rr_new
    return (x, ax) if return_product else x


@dataclass
class TRPOConfig:
    """TRPO's settings: KL bound, conjugate-gradient iterations and damping, line search."""

    max_kl: float = 0.01
    cg_iters: int = 10
    cg_damping: float = 1e-5
    backtrack_ratio: float = 0.8
    max_backtracks: int = 15


def trpo_step(objective: Callable[[Params, bool], tuple[torch.Tensor, torch.Tensor]], params: Params,
              cfg: TRPOConfig, fvp: Callable[[torch.Tensor], torch.Tensor] | None = None,
              loss_grad: tuple[torch.Tensor, torch.Tensor] | None = None,
              reuse_cg_product: bool = False) -> tuple[Params, dict[str, float]]:
    """One TRPO update of ``params``: natural gradient by conjugate gradient on exact Hessian-vector products
    of the KL, scaled so that the quadratic KL estimate equals ``max_kl``, then a backtracking line search
    that accepts the first step that lowers the loss and keeps the KL within ``max_kl``.

    ``objective(params, create_graph)`` returns (loss, kl); ``create_graph=False`` is used in the line search.
    ``fvp``: a Fisher-vector product to use instead of the double backward of the KL (e.g.
    :func:`metashot.rl.curvature.gauss_newton_fvp` or a :class:`metashot.rl.curvature.ChainCurvature`, which
    must include the damping). ``loss_grad``: the loss at ``params`` and its flat gradient, when the caller
    has them (e.g. :meth:`metashot.rl.curvature.ChainCurvature.gradient`); then ``objective`` is called in
    the line search only. ``reuse_cg_product``: take ``x^T A x`` for the step size from the products the
    conjugate-gradient iterations made instead of one more product (the same value up to rounding).
    Returns the new parameters (fresh leaves) and statistics.
    """
    names = list(params)
    leaves = [params[k] for k in names]
    if loss_grad is not None:
        if fvp is None:
            raise ValueError("trpo_step: loss_grad needs fvp too")
        loss, g = loss_grad
    elif fvp is None:
        loss, kl = objective(params, True)
        g = flat(torch.autograd.grad(loss, leaves, retain_graph=True))
        kl_g = flat(torch.autograd.grad(kl, leaves, create_graph=True))

        def fvp(v: torch.Tensor) -> torch.Tensor:
            hv = torch.autograd.grad(kl_g @ v, leaves, retain_graph=True)
            return flat(hv) + cfg.cg_damping * v
    else:
        loss, _ = objective(params, True)
        g = flat(torch.autograd.grad(loss, leaves))

    g = g.detach()
    if reuse_cg_product:
        x, ax = conjugate_gradient(fvp, g, cfg.cg_iters, return_product=True)
        xhx = (x @ ax).clamp_min(1e-12)
    else:
        x = conjugate_gradient(fvp, g, cfg.cg_iters)
        xhx = (x @ fvp(x)).clamp_min(1e-12)
    step = -torch.sqrt(2 * cfg.max_kl / xhx) * x
    expected = float(g @ step)
    theta = flat(leaves).detach()
    loss0 = float(loss.detach())
    stats = {"loss_before": loss0, "grad_norm": float(g.norm()), "expected_improvement": -expected}
    for k in range(cfg.max_backtracks):
        frac = cfg.backtrack_ratio ** k
        cand = {n: v.requires_grad_(True) for n, v in unflat(theta + frac * step, params).items()}
        new_loss, new_kl = (t.detach() for t in objective(cand, False))
        if float(new_loss) < loss0 and float(new_kl) <= cfg.max_kl and math.isfinite(float(new_loss)):
            stats.update(loss_after=float(new_loss), kl=float(new_kl), backtracks=k, accepted=1.0)
            return {n: v.detach().clone().requires_grad_(True) for n, v in cand.items()}, stats
    stats.update(loss_after=loss0, kl=0.0, backtracks=cfg.max_backtracks, accepted=0.0)
    return {n: v.detach().clone().requires_grad_(True) for n, v in params.items()}, stats
