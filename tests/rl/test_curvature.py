"""Fisher-vector products through the inner loop: Gauss-Newton and chain-rule products (written-out MLP
passes and autograd, with task-chunk worker threads) against the double backward of the KL, in float64."""

from __future__ import annotations

import warnings

import pytest
import torch

from metashot.rl.adaptation import MetaBatch, adapt, meta_objective
from metashot.rl.curvature import ChainCurvature, gauss_newton_fvp
from metashot.rl.policy import flat, policy_dist
from metashot.rl.rollout import TaskBatch

# tiny float64 tensors: a second intra-op thread only spins, and on a shared CPU it costs 10x
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.slow
def test_gauss_newton_fvp_equals_kl_hessian_float64(tiny_meta_batch):
    pol, params, mb = tiny_meta_batch(1, seed=3)
    leaves = list(params.values())
    _, kl = meta_objective(pol, params, mb, 0.3, vectorized=False)
    kg = flat(torch.autograd.grad(kl, leaves, create_graph=True))
    fvp = gauss_newton_fvp(pol, params, mb, 0.3, damping=0.0)
    for seed in range(2):
        v = torch.randn(kg.numel(), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        hv = flat(torch.autograd.grad(kg @ v, leaves, retain_graph=True))
        assert ((fvp(v) - hv).norm() / hv.norm()).item() <= 1e-9


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("inner_steps,first_order,workers", [(1, False, 1), (2, False, 2), (1, True, 2),
                                                              (0, False, 2), (1, False, 3)])
def test_chain_curvature_equals_autograd_float64(inner_steps, first_order, workers, fast, tiny_meta_batch):
    """J^T F J products and the chain-rule meta-gradient against double backward through meta_objective,
    with the written-out MLP passes (fast) and with autograd over the kept graphs."""
    lr = [0.3, 0.2]  # the sampling used these step sizes too: the products hold at the sampling point
    pol, params, mb = tiny_meta_batch(inner_steps, seed=7, lr=lr)
    leaves = list(params.values())
    loss, kl = meta_objective(pol, params, mb, lr, first_order=first_order, vectorized=False)
    g = flat(torch.autograd.grad(loss, leaves, retain_graph=True))
    kg = flat(torch.autograd.grad(kl, leaves, create_graph=True))
    with ChainCurvature(pol, params, mb, lr, first_order=first_order, damping=0.0, workers=workers,
                        fast=fast) as curv:
        assert all(p.fast == fast for p in curv.pieces)
        assert abs(curv.loss.item() - loss.item()) <= 1e-12
        assert ((curv.gradient() - g).norm() / g.norm()).item() <= 1e-9
        for seed in range(2):
            v = torch.randn(kg.numel(), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
            hv = flat(torch.autograd.grad(kg @ v, leaves, retain_graph=True))
            assert hv.norm() > 0
            assert ((curv(v) - hv).norm() / hv.norm()).item() <= 1e-9
        # the line search's values at other parameters
        p2 = {k: (v + 0.05 * torch.ones_like(v)).detach().requires_grad_(True) for k, v in params.items()}
        l2, k2 = meta_objective(pol, p2, mb, lr, first_order=True, vectorized=False)
        l3, k3 = curv.evaluate(p2)
        assert abs(l2.item() - l3.item()) <= 1e-12 and abs(k2.item() - k3.item()) <= 1e-12 and k3.item() > 0
    assert curv.pool is None  # closed by the with block (workers > 1 had one)
    # the module and the meta-parameters are untouched
    for k, v in pol.named_parameters():
        assert torch.equal(v.detach(), params[k].detach())


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("inner_steps", [1, 2])
def test_chain_curvature_with_ended_episodes_float64(inner_steps, fast, tiny_meta_batch):
    """Episodes that end at random steps (inner and post-update batches) and one task whose post-update steps
    are all masked: products, meta-gradient and loss still equal autograd's through meta_objective."""
    lr = [0.3, 0.2]
    pol, params, mb = tiny_meta_batch(inner_steps, seed=11, lr=lr)
    gen = torch.Generator().manual_seed(1)

    def truncate(b, empty_task=None):
        m = b.mask.clone()
        ends = torch.randint(1, m.shape[2] + 1, m.shape[:2], generator=gen)
        m = m * (torch.arange(m.shape[2])[None, None, :] < ends[..., None])
        if empty_task is not None:
            m[empty_task] = 0
        return TaskBatch(b.obs, b.actions, b.advantages * m, m)

    inner = [truncate(b) for b in mb.inner]
    post = truncate(mb.post, empty_task=1)
    assert 0 < post.mask.sum() < post.mask.numel()
    cur = {k: v.detach() for k, v in adapt(pol, params, inner, lr, first_order=True).items()}
    with torch.no_grad():
        mean, log_std = policy_dist(pol, cur, post.obs, per_task=True)
    mb2 = MetaBatch(inner, post, mean, log_std)
    leaves = list(params.values())
    loss, kl = meta_objective(pol, params, mb2, lr, vectorized=False)
    g = flat(torch.autograd.grad(loss, leaves, retain_graph=True))
    kg = flat(torch.autograd.grad(kl, leaves, create_graph=True))
    v = torch.randn(kg.numel(), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    hv = flat(torch.autograd.grad(kg @ v, leaves, retain_graph=True))
    with ChainCurvature(pol, params, mb2, lr, workers=2, fast=fast) as curv:
        assert abs(curv.loss.item() - loss.item()) <= 1e-12
        assert ((curv.gradient() - g).norm() / g.norm()).item() <= 1e-9
        assert ((curv(v) - hv).norm() / hv.norm()).item() <= 1e-9


def test_chain_curvature_warns_away_from_the_sampling_point(tiny_meta_batch):
    pol, params, mb = tiny_meta_batch(1, seed=7, lr=0.3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ChainCurvature(pol, params, mb, 0.3).close()  # at the sampling point: no warning
    with pytest.warns(RuntimeWarning, match="Gauss-Newton approximation"):
        ChainCurvature(pol, params, mb, 0.1).close()  # other inner step size than the sampling's


def test_chain_curvature_other_policies_take_the_autograd_path(tiny_meta_batch):
    """A policy other than a ReLU GaussianMLPPolicy (here tanh hidden layers) gets autograd's products."""
    pol, params, mb = tiny_meta_batch(1, seed=9)
    pol.mean[1] = torch.nn.Tanh()
    pol.mean[3] = torch.nn.Tanh()
    leaves = list(params.values())
    v = torch.linspace(-1, 1, sum(x.numel() for x in leaves), dtype=torch.float64)
    # the products hold at the sampling point: the old action distribution is the tanh policy's own
    mb2 = MetaBatch(mb.inner, mb.post, *[x.detach() for x in policy_dist(
        pol, {k: v.detach() for k, v in adapt(pol, params, mb.inner, 0.3, first_order=True).items()},
        mb.post.obs, per_task=True)])
    _, kl = meta_objective(pol, params, mb2, 0.3, vectorized=False)
    kg = flat(torch.autograd.grad(kl, leaves, create_graph=True))
    hv = flat(torch.autograd.grad(kg @ v, leaves, retain_graph=True))
    with ChainCurvature(pol, params, mb2, 0.3) as curv:
        assert not curv.pieces[0].fast
        assert ((curv(v) - hv).norm() / hv.norm()).item() <= 1e-9


def test_chain_curvature_workers_do_not_change_the_result_and_damping(tiny_meta_batch):
    pol, params, mb = tiny_meta_batch(1, seed=8)
    v = torch.linspace(-1, 1, sum(p.numel() for p in params.values()), dtype=torch.float64)
    with ChainCurvature(pol, params, mb, 0.3, damping=0.5) as one, \
            ChainCurvature(pol, params, mb, 0.3, damping=0.5, workers=2) as two:
        assert one.pool is None and two.pool is not None and len(two.pieces) == 2
        a, b = one(v), two(v)
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)
    with ChainCurvature(pol, params, mb, 0.3, damping=0.0) as zero:
        assert torch.allclose(a - zero(v), 0.5 * v, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="workers"):
        ChainCurvature(pol, params, mb, 0.3, workers=0)
