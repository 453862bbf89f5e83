"""Shared set-up of the MAML-RL tests: a tiny float64 meta-batch sampled on 2D navigation."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from metashot.rl.adaptation import MetaBatch, adapt
from metashot.rl.envs import Navigation2D
from metashot.rl.policy import GaussianMLPPolicy, policy_dist, policy_params
from metashot.rl.rollout import process, rollout


def _build(inner_steps=1, seed=0, lr=0.3):
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


@pytest.fixture
def tiny_meta_batch() -> Callable[..., tuple]:
    """``tiny_meta_batch(inner_steps=1, seed=0, lr=0.3) -> (policy, params, MetaBatch)``: 3 tasks x 4
    trajectories x 6 steps per inner step and after adaptation, sampled at the adapted parameters with step
    sizes ``lr`` (so the curvature identities hold at the sampling point)."""
    return _build
