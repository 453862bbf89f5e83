"""Conjugate gradient and the TRPO step (double backward, Gauss-Newton and chain-rule products)."""

from __future__ import annotations

import pytest
import torch

from metashot.rl.adaptation import meta_objective
from metashot.rl.curvature import ChainCurvature, gauss_newton_fvp
from metashot.rl.policy import flat
from metashot.rl.trpo import TRPOConfig, conjugate_gradient, trpo_step


def test_conjugate_gradient_solves_spd_system():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(6, 6, generator=g, dtype=torch.float64)
    a = q @ q.T + 6 * torch.eye(6, dtype=torch.float64)
    b = torch.randn(6, generator=g, dtype=torch.float64)
    x = conjugate_gradient(lambda v: a @ v, b, iters=6)
    assert torch.allclose(x, torch.linalg.solve(a, b), atol=1e-8)
    # fewer iterations than the dimension: a partial solve that already lowers the residual
    x2 = conjugate_gradient(lambda v: a @ v, b, iters=2)
    assert (a @ x2 - b).norm() < b.norm()


def test_conjugate_gradient_accumulated_product():
    gen = torch.Generator().manual_seed(0)
    m = torch.randn(6, 6, generator=gen, dtype=torch.float64)
    a = m @ m.T + torch.eye(6, dtype=torch.float64)
    b = torch.randn(6, generator=gen, dtype=torch.float64)
    for iters in (2, 6):
        x, ax = conjugate_gradient(lambda v: a @ v, b, iters=iters, return_product=True)
        assert torch.allclose(ax, a @ x, rtol=1e-10, atol=1e-12)
        assert torch.equal(x, conjugate_gradient(lambda v: a @ v, b, iters=iters))


@pytest.mark.slow
def test_trpo_step_lowers_loss_within_kl_bound(tiny_meta_batch):
    pol, params, mb = tiny_meta_batch(1, seed=1)

    def objective(p, create_graph):
        return meta_objective(pol, p, mb, 0.3, first_order=not create_graph)

    loss0 = objective(params, True)[0].item()
    cfg = TRPOConfig(max_kl=0.01)
    new, stats = trpo_step(objective, params, cfg)
    loss1, kl1 = objective(new, False)
    assert stats["accepted"] == 1.0
    assert loss1.item() < loss0 and 0 < kl1.item() <= cfg.max_kl
    # the Gauss-Newton product gives the same step (float64; damped so that CG is well conditioned)
    cfg = TRPOConfig(max_kl=0.01, cg_damping=0.1)
    new, _ = trpo_step(objective, params, cfg)
    fvp = gauss_newton_fvp(pol, params, mb, 0.3, damping=cfg.cg_damping)
    new2, _ = trpo_step(objective, params, cfg, fvp=fvp)
    step1 = flat([new[k] - params[k] for k in params]).detach()
    step2 = flat([new2[k] - params[k] for k in params]).detach()
    assert ((step1 - step2).norm() / step1.norm()).item() < 1e-4  # CG amplifies the 1e-9 FVP agreement


@pytest.mark.slow
def test_trpo_step_with_chain_curvature_matches_reference(tiny_meta_batch):
    pol, params, mb = tiny_meta_batch(1, seed=1)

    def objective(p, create_graph):
        return meta_objective(pol, p, mb, 0.3, first_order=not create_graph)

    cfg = TRPOConfig(max_kl=0.01, cg_damping=0.1)
    new, stats = trpo_step(objective, params, cfg)
    with ChainCurvature(pol, params, mb, 0.3, damping=cfg.cg_damping, workers=2) as curv:
        new2, stats2 = trpo_step(curv.evaluate, params, cfg, curv, loss_grad=(curv.loss, curv.gradient()),
                                 reuse_cg_product=True)
    step1 = flat([new[k] - params[k] for k in params]).detach()
    step2 = flat([new2[k] - params[k] for k in params]).detach()
    assert stats["accepted"] == stats2["accepted"] == 1.0
    assert ((step1 - step2).norm() / step1.norm()).item() < 1e-6
    with pytest.raises(ValueError, match="loss_grad needs fvp"):
        trpo_step(objective, params, cfg, loss_grad=(curv.loss, curv.gradient()))
