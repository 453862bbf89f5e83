"""Sampling and advantages of MAML-RL: rollouts of T tasks x N trajectories, returns, rllab's linear baseline.

- :func:`rollout`: T tasks x N trajectories of a batched environment (:mod:`metashot.rl.envs`), with one
  shared parameter dict (pre-update) or one per task (post-update, leading task dim).
- :func:`process`: discounted returns (reward-to-go), the linear feature baseline of rllab fitted per task
  (:func:`fit_linear_baseline`), advantages = returns - baseline, normalised per task.

Tensor layout: trajectories are dense ``[T, N, H, ...]`` (tasks, trajectories, time) with a 0/1 ``mask`` for
the steps after an episode ended.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import nn

from metashot.nn.functional import Params
from metashot.rl.policy import policy_dist


class Trajectories(NamedTuple):
    """T tasks x N trajectories x H steps, dense with a mask."""

    obs: torch.Tensor  # [T, N, H, obs_dim] (the policy's dtype)
    actions: torch.Tensor  # [T, N, H, act_dim]
    rewards: torch.Tensor  # [T, N, H]
    mask: torch.Tensor  # [T, N, H] 1.0 while the episode runs, 0.0 after it ended
    raw_obs: torch.Tensor  # [T, N, H, obs_dim] float64 as the environment returned them (baseline features)

    def returns(self) -> torch.Tensor:
        """Undiscounted return of every trajectory [T, N]."""
        return (self.rewards * self.mask).sum(-1)


@torch.no_grad()
def rollout(env: Any, policy: nn.Module, params: Params, tasks: torch.Tensor, n: int,
            generator: torch.Generator, per_task: bool, deterministic: bool = False) -> Trajectories:
    """Run n trajectories of every task with the policy given by ``params`` (see :func:`policy_dist`).

    Actions are sampled with ``generator`` (on the CPU, so that a run is reproducible on any device);
    ``deterministic=True`` takes the mean action.
    """
    dtype = next(iter(params.values())).dtype
    device = next(iter(params.values())).device
    raw = env.reset(tasks, n, generator)
    t_count, horizon = raw.shape[0], env.horizon
    alive = torch.ones(t_count, n, dtype=torch.bool)
    obs_l, act_l, rew_l, mask_l, raw_l = [], [], [], [], []
    for _ in range(horizon):
        o = raw.to(device=device, dtype=dtype)
        mean, log_std = policy_dist(policy, params, o, per_task)
        if deterministic:
            a = mean
        else:
            noise = torch.randn(mean.shape, generator=generator, dtype=dtype).to(device)
            a = mean + torch.exp(log_std) * noise
        nxt, r, done = env.step(a.cpu())
        obs_l.append(o)
        act_l.append(a)
        raw_l.append(raw)
        rew_l.append(torch.where(alive, r, torch.zeros_like(r)))
        mask_l.append(alive.clone())
        alive = alive & ~done.bool()
        raw = nxt
        if not alive.any():
            break
    steps = len(obs_l)
    pad = horizon - steps  # every episode ended early: pad to the horizon with masked steps

    def stack(xs: list[torch.Tensor], fill: torch.Tensor) -> torch.Tensor:
        return torch.stack(xs + [torch.zeros_like(fill)] * pad, dim=2)

    return Trajectories(
        obs=stack(obs_l, obs_l[0]), actions=stack(act_l, act_l[0]),
        rewards=stack(rew_l, rew_l[0]).to(device=device, dtype=dtype),
        mask=stack(mask_l, mask_l[0]).to(device=device, dtype=dtype), raw_obs=stack(raw_l, raw_l[0]))


def discounted_returns(rewards: torch.Tensor, mask: torch.Tensor, discount: float) -> torch.Tensor:
    """Reward-to-go ``R_t = r_t + discount * R_{t+1}`` along the last dim, zero after the episode ends."""
    out = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[..., 0])
    for t in range(rewards.shape[-1] - 1, -1, -1):
        running = (rewards[..., t] + discount * running) * mask[..., t]
        out[..., t] = running
    return out


def baseline_features(raw_obs: torch.Tensor) -> torch.Tensor:
    """rllab's linear-baseline features [obs, obs^2, t, t^2, t^3, 1] (obs clipped to +-10, t = step / 100)."""
    o = raw_obs.to(torch.float64).clamp(-10, 10)
    h = o.shape[-2]
    t = (torch.arange(h, dtype=torch.float64, device=o.device) / 100.0).reshape(
        *([1] * (o.dim() - 2)), h, 1).expand(*o.shape[:-1], 1)
    return torch.cat([o, o * o, t, t * t, t ** 3, torch.ones_like(t)], dim=-1)


def fit_linear_baseline(features: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor,
                        reg: float = 1e-5) -> torch.Tensor:
    """Per-task ridge regression of ``targets`` on ``features``; returns the fitted values.

    features [T, N, H, F], targets/mask [T, N, H]. Solves (X'X + reg I) w = X'y over the valid steps of each
    task, in float64; like rllab, the ridge is multiplied by 10 (up to 5 times) while the solution is not
    finite.
    """
    x = features.to(torch.float64) * mask.to(torch.float64)[..., None]
    y = targets.to(torch.float64)
    t = x.shape[0]
    x2 = x.reshape(t, -1, x.shape[-1])
    xtx = x2.transpose(1, 2) @ x2
    xty = x2.transpose(1, 2) @ y.reshape(t, -1, 1)
    eye = torch.eye(x.shape[-1], dtype=torch.float64, device=x.device)
    for _ in range(5):
        w = torch.linalg.solve(xtx + reg * eye, xty)
        if torch.isfinite(w).all():
            break
        reg *= 10
    return (features.to(torch.float64).reshape(t, -1, x.shape[-1]) @ w).reshape(y.shape)


class TaskBatch(NamedTuple):
    """What the losses need of a set of trajectories: obs, actions, advantages and mask [T, N, H, ...]."""

    obs: torch.Tensor
    actions: torch.Tensor
    advantages: torch.Tensor
    mask: torch.Tensor


def process(traj: Trajectories, discount: float = 0.99, normalize: bool = True) -> TaskBatch:
    """Advantages = discounted returns - the per-task linear baseline (GAE with lambda = 1), normalised to
    zero mean and unit variance over each task's valid steps (rllab's ``center_adv``)."""
    ret = discounted_returns(traj.rewards.to(torch.float64), traj.mask.to(torch.float64), discount)
    base = fit_linear_baseline(baseline_features(traj.raw_obs), ret, traj.mask)
    m = traj.mask.to(torch.float64)
    adv = (ret - base) * m
    if normalize:
        n = m.sum(dim=(1, 2), keepdim=True).clamp_min(1)
        mean = adv.sum(dim=(1, 2), keepdim=True) / n
        var = ((adv - mean) * m).pow(2).sum(dim=(1, 2), keepdim=True) / n
        adv = (adv - mean) / (var.sqrt() + 1e-8) * m
    return TaskBatch(traj.obs, traj.actions, adv.to(traj.obs.dtype), traj.mask)

