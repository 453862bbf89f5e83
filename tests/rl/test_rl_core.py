"""MAML-TRPO pieces: environments, baseline, policy gradient, inner loop paths, conjugate gradient, TRPO."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from metashot.rl.core import (
    ChainCurvature,
    GaussianMLPPolicy,
    MetaBatch,
    TaskBatch,
    TRPOConfig,
    adapt,
    baseline_features,
    conjugate_gradient,
    discounted_returns,
    fit_linear_baseline,
    flat,
    gauss_newton_fvp,
    gaussian_kl,
    gaussian_log_prob,
    meta_objective,
    policy_dist,
    policy_params,
    process,
    rollout,
    trpo_step,
)
from metashot.rl.envs import Navigation2D, cheetah_reward, gym_navigation2d, make_env

# --- environments ----------------------------------------------------------------------------------------


def test_navigation_step_reward_and_clipping_by_hand():
    env = Navigation2D(horizon=100, action_scale=1.0)
    goals = torch.tensor([[0.3, -0.2], [0.0, 0.05]], dtype=torch.float64)
    obs = env.reset(goals, 2)
    assert obs.shape == (2, 2, 2) and torch.all(obs == 0)
    # task 0 traj 0 moves (0.05, -0.3) -> clipped to (0.05, -0.1); traj 1 moves (-0.02, 0.04)
    a = torch.tensor([[[0.05, -0.3], [-0.02, 0.04]], [[0.0, 0.2], [0.0, 0.0]]], dtype=torch.float64)
    obs, r, done = env.step(a)
    assert torch.allclose(obs[0, 0], torch.tensor([0.05, -0.1], dtype=torch.float64))
    assert torch.allclose(obs[1, 0], torch.tensor([0.0, 0.1], dtype=torch.float64))
    assert r[0, 0].item() == pytest.approx(-math.hypot(0.05 - 0.3, -0.1 + 0.2))
    assert r[0, 1].item() == pytest.approx(-math.hypot(-0.02 - 0.3, 0.04 + 0.2))
    assert r[1, 0].item() == pytest.approx(-math.hypot(0.0, 0.1 - 0.05))
    assert r[1, 1].item() == pytest.approx(-0.05)
    assert not done.any()
    # reaching within 0.01 on both axes ends the episode
    obs, r, done = env.step(torch.tensor([[[0.0, 0.0], [0.0, 0.0]], [[0.0, -0.045], [0.0, 0.0]]],
                                         dtype=torch.float64))
    assert done.tolist() == [[False, False], [True, False]]
    assert r[1, 0].item() == pytest.approx(-0.005)


def test_navigation_action_scale_is_rllab_normalize():
    # rllab's normalize(): a -> lb + (a + 1) / 2 * (ub - lb) = 0.1 a for bounds +-0.1, then clipped
    env = Navigation2D()
    env.reset(torch.tensor([[0.5, 0.5]], dtype=torch.float64), 1)
    obs, _, _ = env.step(torch.tensor([[[0.4, -3.0]]], dtype=torch.float64))
    assert torch.allclose(obs[0, 0], torch.tensor([0.04, -0.1], dtype=torch.float64))
    with pytest.raises(ValueError, match="action_scale"):
        Navigation2D(action_scale=0)


def test_navigation_observe_goal_and_bad_inputs():
    env = Navigation2D(observe_goal=True)
    obs = env.reset(torch.tensor([[0.1, 0.2]]), 3)
    assert obs.shape == (1, 3, 4)
    assert torch.allclose(obs[0, :, 2:], torch.tensor([0.1, 0.2], dtype=torch.float64))
    with pytest.raises(ValueError, match="goals"):
        env.reset(torch.zeros(3), 1)
    with pytest.raises(ValueError, match="actions"):
        env.step(torch.zeros(2, 3, 2))
    with pytest.raises(RuntimeError, match="reset"):
        Navigation2D().step(torch.zeros(1, 1, 2))
    with pytest.raises(ValueError, match="unknown RL environment"):
        make_env("cartpole")


def test_gymnasium_navigation_matches_batched():
    env = gym_navigation2d()
    obs, info = env.reset(seed=0, options={"task": (0.2, 0.3)})
    assert np.allclose(obs, 0) and np.allclose(info["goal"], [0.2, 0.3])
    batched = Navigation2D(action_scale=1.0)  # the Gymnasium form takes actions in position units
    batched.reset(torch.tensor([[0.2, 0.3]], dtype=torch.float64), 1)
    rng = np.random.default_rng(0)
    steps = 0
    for _ in range(100):
        steps += 1
        a = rng.uniform(-0.2, 0.2, size=2)
        o1, r1, term, trunc, _ = env.step(a)
        o2, r2, d2 = batched.step(torch.as_tensor(a)[None, None])
        assert np.allclose(o1, o2[0, 0].numpy()) and r1 == pytest.approx(float(r2[0, 0]))
        assert term == bool(d2[0, 0])
        if term:
            break
    assert trunc == (steps == 100 and not term)


def test_cheetah_rewards_by_hand():
    v = np.array([1.0, 0.5, -2.0])
    a = np.array([[0.1] * 6, [0.0] * 6, [1.0] * 6])
    goal = np.array([1.5, 0.5, 1.0])
    np.testing.assert_allclose(cheetah_reward("vel", v, a, goal), [-0.5 - 0.05 * 0.06, 0.0, -3.0 - 0.3])
    np.testing.assert_allclose(cheetah_reward("dir", v, a, np.array([1.0, -1.0, -1.0])),
                               [1.0 - 0.003, -0.5, 2.0 - 0.3])
    with pytest.raises(ValueError):
        cheetah_reward("jump", v, a, goal)


# --- returns and baseline ------------------------------------------------------------------------------


def test_discounted_returns_and_mask():
    r = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    m = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    out = discounted_returns(r, m, 0.5)
    assert torch.allclose(out, torch.tensor([[1 + 0.5 * 2 + 0.25 * 3, 2 + 0.5 * 3, 3.0, 0.0]]))


def test_linear_baseline_recovers_linear_targets_and_matches_lstsq():
    g = torch.Generator().manual_seed(0)
    obs = torch.randn(3, 4, 6, 2, generator=g, dtype=torch.float64)
    feats = baseline_features(obs)
    assert feats.shape == (3, 4, 6, 2 + 2 + 3 + 1)
    assert torch.allclose(feats[0, 0, :, 4], torch.arange(6, dtype=torch.float64) / 100)
    w = torch.randn(3, 8, generator=g, dtype=torch.float64)
    y = torch.einsum("tnhf,tf->tnh", feats, w)
    mask = torch.ones(3, 4, 6, dtype=torch.float64)
    fitted = fit_linear_baseline(feats, y, mask, reg=1e-10)
    assert torch.allclose(fitted, y, atol=1e-6)
    # noisy targets with masked steps: equals the (ridge) least squares of the valid rows
    y2 = y + torch.randn(y.shape, generator=g, dtype=torch.float64)
    mask[:, :, 4:] = 0
    fitted = fit_linear_baseline(feats, y2, mask, reg=1e-5)
    x = feats[1][mask[1].bool()].numpy()
    sol = np.linalg.solve(x.T @ x + 1e-5 * np.eye(8), x.T @ y2[1][mask[1].bool()].numpy())
    np.testing.assert_allclose(fitted[1].numpy(), feats[1].numpy() @ sol, rtol=1e-6, atol=1e-8)


# --- policy gradient against finite differences ----------------------------------------------------------


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


# --- vectorised vs loop, Gauss-Newton vs double backward (float64) ----------------------------------------


def _tiny_meta_batch(inner_steps=1, seed=0, lr=0.3):
    torch.manual_seed(seed)
    pol = GaussianMLPPolicy(2, 2, hidden=(8, 8), init_std=0.5).double()
    params = policy_params(pol)
    env = Navigation2D(horizon=6)
    gen = torch.Generator().manual_seed(seed)
    tasks = env.sample_tasks(3, gen)
    inner, cur, per_task = [], params, False
    for _ in range(inner_steps):
        inner.append(process(rollout(env, pol, cur, tasks, 4, gen, per_task=per_task)))
        cur = {k: v.detach() for k, v in adapt(pol, params, inner, lr, first_order=True).items()}
        per_task = True
    post = process(rollout(env, pol, cur, tasks, 4, gen, per_task=per_task))
    with torch.no_grad():
        m, s = policy_dist(pol, cur, post.obs, per_task=per_task)
    return pol, params, MetaBatch(inner, post, m, s)


@pytest.mark.parametrize("inner_steps", [1, 2])
def test_vectorized_equals_loop_second_order_float64(inner_steps):
    pol, params, mb = _tiny_meta_batch(inner_steps)
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


def test_gauss_newton_fvp_equals_kl_hessian_float64():
    pol, params, mb = _tiny_meta_batch(1, seed=3)
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
def test_chain_curvature_equals_autograd_float64(inner_steps, first_order, workers, fast):
    """J^T F J products and the chain-rule meta-gradient against double backward through meta_objective,
    with the written-out MLP passes (fast) and with autograd over the kept graphs."""
    lr = [0.3, 0.2]  # the sampling used these step sizes too: the products hold at the sampling point
    pol, params, mb = _tiny_meta_batch(inner_steps, seed=7, lr=lr)
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
def test_chain_curvature_with_ended_episodes_float64(inner_steps, fast):
    """Episodes that end at random steps (inner and post-update batches) and one task whose post-update steps
    are all masked: products, meta-gradient and loss still equal autograd's through meta_objective."""
    lr = [0.3, 0.2]
    pol, params, mb = _tiny_meta_batch(inner_steps, seed=11, lr=lr)
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


def test_chain_curvature_warns_away_from_the_sampling_point():
    pol, params, mb = _tiny_meta_batch(1, seed=7, lr=0.3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ChainCurvature(pol, params, mb, 0.3).close()  # at the sampling point: no warning
    with pytest.warns(RuntimeWarning, match="Gauss-Newton approximation"):
        ChainCurvature(pol, params, mb, 0.1).close()  # other inner step size than the sampling's


def test_chain_curvature_other_policies_take_the_autograd_path():
    """A policy other than a ReLU GaussianMLPPolicy (here tanh hidden layers) gets autograd's products."""
    pol, params, mb = _tiny_meta_batch(1, seed=9)
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


def test_chain_curvature_workers_do_not_change_the_result_and_damping():
    pol, params, mb = _tiny_meta_batch(1, seed=8)
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


def test_conjugate_gradient_accumulated_product():
    gen = torch.Generator().manual_seed(0)
    m = torch.randn(6, 6, generator=gen, dtype=torch.float64)
    a = m @ m.T + torch.eye(6, dtype=torch.float64)
    b = torch.randn(6, generator=gen, dtype=torch.float64)
    for iters in (2, 6):
        x, ax = conjugate_gradient(lambda v: a @ v, b, iters=iters, return_product=True)
        assert torch.allclose(ax, a @ x, rtol=1e-10, atol=1e-12)
        assert torch.equal(x, conjugate_gradient(lambda v: a @ v, b, iters=iters))


def test_trpo_step_with_chain_curvature_matches_reference():
    pol, params, mb = _tiny_meta_batch(1, seed=1)

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


def test_second_order_meta_gradient_matches_finite_differences():
    pol, params, mb = _tiny_meta_batch(1, seed=5)
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


def test_gaussian_log_prob_and_kl():
    m0, s0 = torch.tensor([[0.3, -1.0]]), torch.tensor([[0.1, -0.4]])
    m1, s1 = torch.tensor([[0.0, 0.5]]), torch.tensor([[-0.2, 0.3]])
    a = torch.tensor([[1.0, 0.0]])
    d0 = torch.distributions.Normal(m0, s0.exp())
    d1 = torch.distributions.Normal(m1, s1.exp())
    assert torch.allclose(gaussian_log_prob(m0, s0, a), d0.log_prob(a).sum(-1))
    assert torch.allclose(gaussian_kl(m0, s0, m1, s1), torch.distributions.kl_divergence(d0, d1).sum(-1))


# --- conjugate gradient and TRPO ---------------------------------------------------------------------------


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


def test_trpo_step_lowers_loss_within_kl_bound():
    pol, params, mb = _tiny_meta_batch(1, seed=1)

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
