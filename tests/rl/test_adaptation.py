"""The inner loop and the meta-objective: the VPG step against finite differences of the exact expected
return, vectorised == per-task loop (float64), the second-order meta-gradient against finite differences."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from metashot.rl.adaptation import adapt, meta_objective
from metashot.rl.policy import GaussianMLPPolicy, flat, policy_params
from metashot.rl.rollout import process, rollout

# tiny float64 tensors: a second intra-op thread only spins, and on a shared CPU it costs 10x
pytestmark = pytest.mark.usefixtures("one_thread")


class OneStepTarget:
    """1-step task: observation s (fixed per trajectory), reward -(a - 2 s - 0.5)^2."""

    horizon = 1
    obs_dim = act_dim = 1

    def reset(self, tasks, n, generator=None):
        self.s = torch.linspace(-1, 1, n, dtype=torch.float64).repeat(tasks.shape[0], 1)[..., None]
        return self.s

    def step(self, a):
        r = -(a[..., 0].to(torch.float64) - 2 * self.s[..., 0] - 0.5) ** 2
        return self.s, r, torch.ones_like(r, dtype=torch.bool)


def test_policy_gradient_step_matches_finite_differences():
    torch.manual_seed(0)
    pol = GaussianMLPPolicy(1, 1, hidden=(), init_std=0.7).double()
    params = policy_params(pol)
    env = OneStepTarget()
    s = torch.linspace(-1, 1, 200_000, dtype=torch.float64)

    def expected_return(p):  # E[-(a - 2s - 0.5)^2] = -((mu - 2s - 0.5)^2 + sigma^2), exactly
        w, b, log_std = p["mean.0.weight"][0, 0], p["mean.0.bias"][0], p["log_std"][0]
        mu = w * s + b
        return -(((mu - 2 * s - 0.5) ** 2) + torch.exp(2 * log_std)).mean()

    fd = {}
    for k, v in params.items():
        g = torch.zeros_like(v)
        for idx in np.ndindex(*v.shape):
            plus = {n: t.detach().clone() for n, t in params.items()}
            minus = {n: t.detach().clone() for n, t in params.items()}
            plus[k][idx] += 1e-5
            minus[k][idx] -= 1e-5
            g[idx] = (expected_return(plus) - expected_return(minus)) / 2e-5
        fd[k] = g
    traj = rollout(env, pol, params, torch.zeros(1, 1), 200_000, torch.Generator().manual_seed(1),
                   per_task=False)
    batch = process(traj, discount=1.0, normalize=False)
    lr = 0.01
    new = adapt(pol, params, [batch], lr, first_order=True)
    for k in params:
        est = (new[k][0] - params[k]).detach() / lr
        assert torch.allclose(est, fd[k], rtol=0.03, atol=0.01), (k, est, fd[k])


@pytest.mark.parametrize("inner_steps", [1, 2])
def test_vectorized_equals_loop_second_order_float64(inner_steps, tiny_meta_batch):
    pol, params, mb = tiny_meta_batch(inner_steps)
    leaves = list(params.values())
    out = {}
    for vec in (True, False):
        loss, kl = meta_objective(pol, params, mb, [0.3, 0.2], vectorized=vec)
        g = flat(torch.autograd.grad(loss, leaves, retain_graph=True))
        kg = flat(torch.autograd.grad(kl, leaves, create_graph=True))
        v = torch.linspace(-1, 1, kg.numel(), dtype=torch.float64)
        hv = flat(torch.autograd.grad(kg @ v, leaves))
        out[vec] = (loss.detach(), g, hv)
    for a, b in zip(out[True], out[False], strict=True):
        assert ((a - b).norm() / b.norm()).item() <= 1e-9
    assert out[True][2].norm() > 0


def test_second_order_meta_gradient_matches_finite_differences(tiny_meta_batch):
    pol, params, mb = tiny_meta_batch(1, seed=5)
    loss, _ = meta_objective(pol, params, mb, 0.3)
    grads = torch.autograd.grad(loss, list(params.values()))
    first_order = torch.autograd.grad(meta_objective(pol, params, mb, 0.3, first_order=True)[0],
                                      list(params.values()))
    checked = 0
    for (k, p), g in zip(params.items(), grads, strict=True):
        for idx in list(np.ndindex(*p.shape))[:3]:
            plus = {n: t.detach().clone() for n, t in params.items()}
            minus = {n: t.detach().clone() for n, t in params.items()}
            plus[k][idx] += 1e-6
            minus[k][idx] -= 1e-6
            fd = (meta_objective(pol, plus, mb, 0.3)[0] - meta_objective(pol, minus, mb, 0.3)[0]) / 2e-6
            assert g[idx].item() == pytest.approx(fd.item(), rel=1e-5, abs=1e-8), k
            checked += 1
    assert checked > 10
    # the first-order gradient drops the Hessian term: it differs
    assert any((g - g1).abs().max() > 1e-6 for g, g1 in zip(grads, first_order, strict=True))
