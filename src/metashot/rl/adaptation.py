"""MAML for reinforcement learning (Finn, Abbeel & Levine 2017, section 5.3): the adaptation and the
meta-objective.

A task T_i is an MDP; its loss is minus the expected return, estimated from trajectories of the policy. The
inner loop is Eq. 1 with the policy gradient: ``theta'_i = theta - alpha * grad L_VPG(theta)`` on trajectories
that the policy sampled in T_i (:func:`adapt`; step k on the trajectories of the policy after k steps), built
on :func:`metashot.nn.functional.inner_sgd`, the same definition that MAML uses for classification and
regression, vectorised over tasks with ``torch.vmap`` or a per-task loop (the reference; a float64 test shows
they agree); second order by default, ``first_order=True`` drops the Hessian term. The meta-objective is the
TRPO surrogate ``-E[pi_theta'(a|s) / pi_old(a|s) * A]`` on post-update trajectories sampled with the adapted
policies, and the mean KL(pi_old || pi_theta') that bounds the step (:func:`meta_objective`), both functions
of theta through the inner loop; :func:`metashot.rl.trpo.trpo_step` takes the step.

Meta-RL follows the library's ``adapt -> predictor`` contract in spirit: the support set is a task's
trajectories (a :class:`~metashot.rl.rollout.TaskBatch` per inner step), :func:`adapt` takes policy-gradient
steps on them and the predictor is the adapted policy (its parameters, run by
:func:`metashot.rl.policy.policy_dist`). It is a sibling of :class:`metashot.algorithms.base.MetaLearner`, not
a subclass, because its meta-objective needs fresh rollouts from an environment, not a fixed EpisodeBatch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from metashot.nn.functional import Params, functional_forward, inner_sgd
from metashot.rl.policy import gaussian_kl, gaussian_log_prob, policy_dist
from metashot.rl.rollout import TaskBatch


def vpg_loss(policy: nn.Module, params: Params, obs: torch.Tensor, actions: torch.Tensor,
             advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The inner-loop (vanilla policy gradient) loss of one task: ``-mean_valid(log pi(a|s) * A)``.

    Its gradient is the REINFORCE estimate of minus the gradient of the expected return (with baseline).
    """
    mean, log_std = functional_forward(policy, params, {}, obs)
    logp = gaussian_log_prob(mean, log_std, actions)
    return -(logp * advantages * mask).sum() / mask.sum().clamp_min(1)


def lr_at(lrs: float | Sequence[float], k: int) -> float:
    """The step size of inner step k: ``lrs`` itself, or its k-th entry (the last one repeats)."""
    if isinstance(lrs, (int, float)):
        return float(lrs)
    return float(lrs[min(k, len(lrs) - 1)])


def adapt(policy: nn.Module, params: Params, batches: Sequence[TaskBatch], lr: float | Sequence[float],
          first_order: bool = False, vectorized: bool = True) -> Params:
    """Inner loop: one VPG step per batch in ``batches`` (step k on batch k, as sampled by the policy after k
    steps), for every task; returns per-task parameters with a leading task dim T.

    ``params`` are the shared (meta) parameters; the result is differentiable with respect to them (to second
    order unless ``first_order``). ``lr``: one step size, or one per step (the last repeats).
    """
    if not batches:
        raise ValueError("adapt: needs at least one batch of trajectories (one per inner step)")
    t = batches[0].obs.shape[0]

    def one_task(*data: torch.Tensor) -> Params:
        p = params
        for k in range(len(batches)):
            obs, act, adv, mask = data[4 * k: 4 * k + 4]

            def loss(q: Params, obs: torch.Tensor = obs, act: torch.Tensor = act, adv: torch.Tensor = adv,
                     mask: torch.Tensor = mask) -> torch.Tensor:
                return vpg_loss(policy, q, obs, act, adv, mask)

            p = inner_sgd(loss, p, lr_at(lr, k), 1, first_order=first_order, vectorized=vectorized)
        return p

    flat = [x for b in batches for x in b]
    if vectorized:
        return torch.vmap(one_task)(*flat)
    outs = [one_task(*[x[i] for x in flat]) for i in range(t)]
    return {k: torch.stack([o[k] for o in outs]) for k in params}


@dataclass
class MetaBatch:
    """Everything one meta-iteration sampled: inner-loop batches (one per inner step) and the post-update
    trajectories with the sampling policy's action distribution (for the importance ratio and the KL)."""

    inner: list[TaskBatch]
    post: TaskBatch
    old_mean: torch.Tensor
    old_log_std: torch.Tensor


def post_update_dist(policy: nn.Module, params: Params, mb: MetaBatch, lr: float | Sequence[float],
                     first_order: bool = False, vectorized: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, log_std) [T, N, H, act_dim] of the adapted policies at the post-update observations, as a
    function of the meta-parameters ``params`` (through the inner loop on ``mb.inner``, if any)."""
    post = mb.post
    if not mb.inner:
        mean, log_std = policy_dist(policy, params, post.obs, per_task=False)
        return mean, log_std
    adapted = adapt(policy, params, mb.inner, lr, first_order=first_order, vectorized=vectorized)
    if vectorized:
        return policy_dist(policy, adapted, post.obs, per_task=True)
    outs = [policy_dist(policy, {k: v[i] for k, v in adapted.items()}, post.obs[i], per_task=False)
            for i in range(post.obs.shape[0])]
    return torch.stack([o[0] for o in outs]), torch.stack([o[1] for o in outs])


def meta_objective(policy: nn.Module, params: Params, mb: MetaBatch, lr: float | Sequence[float],
                   first_order: bool = False, vectorized: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(surrogate loss, mean KL) of theta = ``params``: both go through the inner loop on ``mb.inner``.

    loss = mean over tasks of ``-mean_valid(exp(log pi_theta' - log pi_old) * A_post)``;
    KL = mean over tasks of ``mean_valid KL(pi_old || pi_theta')``. With no inner batches (inner_steps = 0)
    this is plain TRPO on the pre-update policy (the paper's "pretrained" and "oracle" baselines).
    """
    post = mb.post
    mean, log_std = post_update_dist(policy, params, mb, lr, first_order, vectorized)
    logp = gaussian_log_prob(mean, log_std, post.actions)
    old_logp = gaussian_log_prob(mb.old_mean, mb.old_log_std, post.actions)
    n = post.mask.sum(dim=(1, 2)).clamp_min(1)
    ratio = torch.exp(logp - old_logp)
    loss = (-(ratio * post.advantages * post.mask).sum(dim=(1, 2)) / n).mean()
    kl = ((gaussian_kl(mb.old_mean, mb.old_log_std, mean, log_std) * post.mask).sum(dim=(1, 2)) / n).mean()
    return loss, kl

