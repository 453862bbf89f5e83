"""MAML for reinforcement learning (Finn et al. 2017, section 5.3) on the shared functional core.

The pieces, each a plain function so that tests can check them one by one:

- :class:`GaussianMLPPolicy`: mean = MLP(obs) (2 x 100 ReLU in the paper), state-independent learned log-std.
- :func:`rollout`: T tasks x N trajectories of a batched environment (:mod:`metashot.rl.envs`), with one
  shared parameter dict (pre-update) or one per task (post-update, leading task dim).
- :func:`process`: discounted returns (reward-to-go), the linear feature baseline of rllab fitted per task
  (:func:`fit_linear_baseline`), advantages = returns - baseline, normalised per task.
- :func:`adapt`: the inner loop, ``theta' = theta - alpha * grad L_VPG(theta)`` per task, built on
  :func:`metashot.nn.functional.inner_sgd`, the same definition that MAML uses for classification and
  regression: vectorised over tasks with ``torch.vmap`` or a per-task loop (the reference; a float64 test
  shows they agree). Second order by default, ``first_order=True`` drops the Hessian term.
- :func:`meta_objective`: the TRPO surrogate ``-E[pi_theta'(a|s) / pi_old(a|s) * A]`` on the post-update
  trajectories and the mean KL(pi_old || pi_theta') that bounds the step, both functions of theta through the
  inner loop.
- :func:`conjugate_gradient` and :func:`trpo_step`: natural-gradient step with exact Hessian-vector products
  of the KL (double backward through the inner loop), step scaled to the KL bound, backtracking line search.

Tensor layout: trajectories are dense ``[T, N, H, ...]`` (tasks, trajectories, time) with a 0/1 ``mask`` for
the steps after an episode ended.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import nn

from metashot.nn.functional import Params, functional_forward, inner_sgd

LOG_2PI = math.log(2 * math.pi)


class GaussianMLPPolicy(nn.Module):
    """pi(a | s) = N(MLP(s), diag(exp(log_std))^2) with a learned, state-independent log-std.

    Args:
        obs_dim, act_dim: sizes of observations and actions.
        hidden: hidden layer widths (the paper: (100, 100)).
        init_std: initial standard deviation of every action dimension (rllab: 1.0).
    """

    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int] = (100, 100),
                 init_std: float = 1.0) -> None:
        super().__init__()
        if init_std <= 0:
            raise ValueError(f"GaussianMLPPolicy: init_std must be > 0, got {init_std}")
        layers: list[nn.Module] = []
        d = obs_dim
        for h in hidden:
            layers += [nn.Linear(d, h), nn.ReLU()]
            d = h
        layers.append(nn.Linear(d, act_dim))
        self.mean = nn.Sequential(*layers)
        self.log_std = nn.Parameter(torch.full((act_dim,), math.log(init_std)))
        self.obs_dim, self.act_dim, self.hidden, self.init_std = obs_dim, act_dim, tuple(hidden), init_std

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = self.mean(obs)
        return mean, self.log_std.expand_as(mean)

    def config_dict(self) -> dict[str, Any]:
        return {"obs_dim": self.obs_dim, "act_dim": self.act_dim, "hidden": list(self.hidden),
                "init_std": self.init_std}


def policy_params(policy: nn.Module) -> Params:
    """The policy's parameters as a dict of detached leaves that require grad (what TRPO updates)."""
    return {k: v.detach().clone().requires_grad_(True) for k, v in policy.named_parameters()}


def policy_dist(policy: nn.Module, params: Params, obs: torch.Tensor,
                per_task: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, log_std) of the actions at ``obs`` [T, ..., obs_dim].

    ``per_task=False``: one parameter dict for every task; ``True``: every tensor of ``params`` has a leading
    task dim T (the adapted policies) and the forward is vmapped over it.
    """
    if not per_task:
        return functional_forward(policy, params, {}, obs)

    def one(p: Params, o: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return functional_forward(policy, p, {}, o)

    return torch.vmap(one)(params, obs)


def gaussian_log_prob(mean: torch.Tensor, log_std: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """log N(actions; mean, exp(log_std)^2), summed over the last (action) dim."""
    z = (actions - mean) * torch.exp(-log_std)
    return (-0.5 * z.pow(2) - log_std - 0.5 * LOG_2PI).sum(-1)


def gaussian_kl(mean0: torch.Tensor, log_std0: torch.Tensor, mean1: torch.Tensor,
                log_std1: torch.Tensor) -> torch.Tensor:
    """KL(N0 || N1) of diagonal Gaussians, summed over the last dim."""
    var0, var1 = torch.exp(2 * log_std0), torch.exp(2 * log_std1)
    return (log_std1 - log_std0 + (var0 + (mean0 - mean1).pow(2)) / (2 * var1) - 0.5).sum(-1)


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


def vpg_loss(policy: nn.Module, params: Params, obs: torch.Tensor, actions: torch.Tensor,
             advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The inner-loop (vanilla policy gradient) loss of one task: ``-mean_valid(log pi(a|s) * A)``.

    Its gradient is the REINFORCE estimate of minus the gradient of the expected return (with baseline).
    """
    mean, log_std = functional_forward(policy, params, {}, obs)
    logp = gaussian_log_prob(mean, log_std, actions)
    return -(logp * advantages * mask).sum() / mask.sum().clamp_min(1)


def _lr_at(lrs: float | Sequence[float], k: int) -> float:
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

            p = inner_sgd(loss, p, _lr_at(lr, k), 1, first_order=first_order, vectorized=vectorized)
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


def gauss_newton_fvp(policy: nn.Module, params: Params, mb: MetaBatch, lr: float | Sequence[float],
                     first_order: bool = False,
                     damping: float = 0.0) -> Callable[[torch.Tensor], torch.Tensor]:
    """Fisher-vector products ``v -> (H_KL + damping I) v`` at theta = ``params`` in Gauss-Newton form.

    The KL's Hessian at the sampling parameters is exactly ``J^T M J`` (its gradient with respect to the
    action distribution vanishes there), with J the Jacobian of the post-update (mean, log_std) with respect
    to theta *through the inner loop* and M the Fisher metric of a diagonal Gaussian (1/sigma^2 for the mean,
    2 for the log-std, weighted as the mean KL weights each step). ``J v`` is a forward-mode product
    linearised once (:func:`torch.func.linearize`), ``J^T u`` a reverse-mode product with the graph kept
    (:func:`torch.func.vjp`): each product costs about a third of a double backward through the inner loop.
    Needs the vectorised inner loop (``torch.func`` all the way); a float64 test checks it against the
    double-backward product.
    """
    names = list(params)
    prim = {k: v.detach() for k, v in params.items()}

    def f(p: Params) -> tuple[torch.Tensor, torch.Tensor]:
        return post_update_dist(policy, p, mb, lr, first_order, vectorized=True)

    _, vjp_fn = torch.func.vjp(f, prim)
    with warnings.catch_warnings():  # torch's fx tracing inside linearize warns about its own constants
        warnings.simplefilter("ignore")
        _, jvp_fn = torch.func.linearize(f, prim)
    mask = mb.post.mask
    t = mask.shape[0]
    w = (mask / mask.sum(dim=(1, 2), keepdim=True).clamp_min(1) / t)[..., None]
    m_mean = w * torch.exp(-2 * mb.old_log_std)
    m_log_std = 2 * w

    def fvp(v: torch.Tensor) -> torch.Tensor:
        dm, dl = jvp_fn(unflat(v, prim))
        (g,) = vjp_fn((dm * m_mean, dl * m_log_std))
        return flat([g[k] for k in names]) + damping * v

    return fvp


def _mlp_layers(policy: nn.Module) -> list[tuple[str, str]] | None:
    """(weight, bias) names of the Linear layers of a :class:`GaussianMLPPolicy` whose mean network is
    Linear, ReLU, ..., Linear (with biases), or None for any other policy."""
    if type(policy) is not GaussianMLPPolicy:  # a subclass may change the forward
        return None
    mods = list(policy.mean)
    if len(mods) % 2 == 0:
        return None
    layers = []
    for i, m in enumerate(mods):
        if i % 2 == 0 and type(m) is nn.Linear and m.bias is not None:
            layers.append((f"mean.{i}.weight", f"mean.{i}.bias"))
        elif i % 2 == 1 and type(m) is nn.ReLU:
            continue
        else:
            return None
    return layers


def _weight_grad(delta: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """``delta^T h`` [out, in], computed the way round that keeps the narrow operand out of the skinny
    matrix-product layout that is slow on a CPU."""
    if h.shape[1] < delta.shape[1]:
        return (h.t() @ delta).t()
    return delta.t() @ h


class _MLPPass:
    """Forward and backward passes of a ReLU MLP for one task (samples [S, in]), written out with matrix
    products, and their directional (R-operator) forms: the exact products that autograd's double backward
    gives, without its bookkeeping. One task at a time, so that the [S, hidden] activations stay in cache.

    ``hs[l]`` is the input of layer l (``hs[0]`` = x), ``masks[l]`` the ReLU derivative after layer l.
    """

    def __init__(self, layers: list[tuple[str, str]], params: Params, x: torch.Tensor) -> None:
        self.layers, self.p = layers, params
        self.hs, self.masks = [x], []
        h = x
        for i, (wn, bn) in enumerate(layers):
            z = torch.addmm(params[bn], h, params[wn].t())
            if i < len(layers) - 1:
                m = (z > 0).to(z.dtype)
                h = z * m
                self.masks.append(m)
                self.hs.append(h)
        self.out = z

    def r_forward(self, v: Params) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
        """The output's derivative in direction ``v`` and the hidden layers' (``rhs[l]`` for ``hs[l]``)."""
        rhs: list[torch.Tensor | None] = [None]
        for i, (wn, bn) in enumerate(self.layers):
            rz = torch.addmm(v[bn], self.hs[i], v[wn].t())
            rh = rhs[i]
            if rh is not None:
                rz = torch.addmm(rz, rh, self.p[wn].t())
            if i < len(self.layers) - 1:
                rhs.append(self.masks[i] * rz)
        return rz, rhs

    def backward(self, delta: torch.Tensor, keep: bool = False) -> tuple[Params, list[torch.Tensor]]:
        """Parameter gradients for the output gradient ``delta`` [S, out] (and, with ``keep``, the gradient
        at every layer's pre-activation, ``deltas[l]`` for layer l)."""
        grads: Params = {}
        deltas: list[torch.Tensor] = [delta] * len(self.layers)
        for i in range(len(self.layers) - 1, -1, -1):
            wn, bn = self.layers[i]
            deltas[i] = delta
            grads[wn] = _weight_grad(delta, self.hs[i])
            grads[bn] = delta.sum(0)
            if i > 0:
                delta = self.masks[i - 1] * (delta @ self.p[wn])
        return grads, (deltas if keep else [])

    def r_backward(self, v: Params, deltas: list[torch.Tensor], rhs: list[torch.Tensor | None],
                   rdelta: torch.Tensor) -> Params:
        """Directional derivative (direction ``v``) of :meth:`backward`'s gradients, given the cached
        ``deltas``, the forward tangents ``rhs`` and the output gradient's derivative ``rdelta``."""
        out: Params = {}
        for i in range(len(self.layers) - 1, -1, -1):
            wn, bn = self.layers[i]
            g = _weight_grad(rdelta, self.hs[i])
            rh = rhs[i]
            if rh is not None:
                g = g + _weight_grad(deltas[i], rh)
            out[wn] = g
            out[bn] = rdelta.sum(0)
            if i > 0:
                rdh = torch.addmm(rdelta @ self.p[wn], deltas[i], v[wn])
                rdelta = self.masks[i - 1] * rdh
        return out


class _MLPInnerHessian:
    """Hessian-vector products of one task's inner-loop VPG loss (:func:`vpg_loss`) at its parameters, for a
    ReLU :class:`GaussianMLPPolicy` (see :class:`_MLPPass`).

    With ``c = A * mask / n`` per sample, ``r = a - mu`` and ``e = exp(-2 log_std)``, the loss is
    ``sum c * sum_d (r^2 e / 2 + log_std) + const``: ``dL/dmu = -c r e``, ``d2L/dmu2 = c e``,
    ``d2L/dmu dlog_std = 2 c r e``, ``dL/dlog_std = sum c (1 - r^2 e)``, ``d2L/dlog_std2 = sum 2 c r^2 e``.
    """

    def __init__(self, layers: list[tuple[str, str]], params: Params, obs: torch.Tensor,
                 actions: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor) -> None:
        x = obs.reshape(-1, obs.shape[-1])
        act = actions.reshape(-1, actions.shape[-1])
        m = mask.reshape(-1)
        c = (advantages.reshape(-1) * m / m.sum().clamp_min(1))[:, None]
        self.net = _MLPPass(layers, params, x)
        r = act - self.net.out
        e = torch.exp(-2 * params["log_std"])
        cre = c * r * e
        self.ce = c * e  # [S, d]
        self.two_cre = 2 * cre
        self.s2 = (2 * cre * r).sum(0)  # [d]
        self.grad, self.deltas = self.net.backward(-cre, keep=True)
        self.grad["log_std"] = (c * (1 - r * r * e)).sum(0)  # the loss's gradient too (the inner step)

    def __call__(self, v: Params) -> Params:
        rmu, rhs = self.net.r_forward(v)
        vs = v["log_std"]
        rg = self.ce * rmu + self.two_cre * vs
        out = self.net.r_backward(v, self.deltas, rhs, rg)
        out["log_std"] = (self.two_cre * rmu).sum(0) + self.s2 * vs
        return out


class _MLPFisher:
    """Fisher products ``J_f^T M J_f u`` at one task's adapted parameters on its post-update samples (mean:
    weight ``w / sigma_old^2`` per sample, log-std: ``2 w``), for a ReLU :class:`GaussianMLPPolicy`."""

    def __init__(self, layers: list[tuple[str, str]], params: Params, obs: torch.Tensor,
                 m_mean: torch.Tensor, w_sum: torch.Tensor) -> None:
        self.net = _MLPPass(layers, params, obs.reshape(-1, obs.shape[-1]))
        self.m_mean = m_mean.reshape(-1, m_mean.shape[-1])
        self.w2 = 2 * w_sum

    def __call__(self, u: Params) -> Params:
        rmu, _ = self.net.r_forward(u)
        out, _ = self.net.backward(self.m_mean * rmu)
        out["log_std"] = self.w2 * u["log_std"]
        return out


def _per_task(ops: list[Callable[[Params], Params]]) -> Callable[[Params], Params]:
    """Apply one operator per task to a per-task vector ``{name: [T, ...]}``."""
    def apply(v: Params) -> Params:
        outs = [op({n: x[j] for n, x in v.items()}) for j, op in enumerate(ops)]
        return {n: torch.stack([o[n] for o in outs]) for n in v}
    return apply


class _ChainPiece:
    """The graphs of :class:`ChainCurvature` for one chunk of tasks (a per-task loop; ``policy`` is this
    chunk's own copy of the policy module, so that chunks can run in threads).

    Per-task vectors are dicts ``{name: [T_chunk, *shape]}``. With ``fast`` (a ReLU
    :class:`GaussianMLPPolicy`), the Hessian and Fisher products are the written-out passes of
    :class:`_MLPInnerHessian` and :class:`_MLPFisher`; otherwise autograd over graphs kept from the set-up.
    """

    def __init__(self, policy: nn.Module, params: Params, mb: MetaBatch, lo: int, hi: int, total: int,
                 lr: float | Sequence[float], first_order: bool, fast: bool = True) -> None:
        names = self.names = list(params)
        self.count = hi - lo
        self.policy, self.mb, self.lo, self.hi, self.total, self.lr = policy, mb, lo, hi, total, lr
        layers = _mlp_layers(policy) if fast else None
        self.fast = layers is not None
        sl = slice(lo, hi)
        cur = [{k: v.detach() for k, v in params.items()} for _ in range(lo, hi)]
        # per inner step: v -> H v for the chunk's tasks, and the step size
        self.steps: list[tuple[Callable[[Params], Params], float]] = []
        with torch.enable_grad():
            for k, b in enumerate(mb.inner):
                a = _lr_at(lr, k)
                if self.fast:  # the written-out passes give the inner step's gradient as well
                    ops = [_MLPInnerHessian(layers, cur[j], b.obs[i], b.actions[i], b.advantages[i],
                                            b.mask[i]) for j, i in enumerate(range(lo, hi))]
                    nxt = [{n: cur[j][n] - a * op.grad[n] for n in names} for j, op in enumerate(ops)]
                    if not first_order:
                        self.steps.append((_per_task(ops), a))
                else:
                    leaves_k, grads_k, nxt = [], [], []
                    for j, i in enumerate(range(lo, hi)):
                        leaves = {n: v.detach().clone().requires_grad_(True) for n, v in cur[j].items()}
                        loss = vpg_loss(policy, leaves, b.obs[i], b.actions[i], b.advantages[i], b.mask[i])
                        g = torch.autograd.grad(loss, [leaves[n] for n in names],
                                                create_graph=not first_order)
                        leaves_k += [leaves[n] for n in names]
                        grads_k += list(g)
                        nxt.append({n: leaves[n].detach() - a * gn.detach()
                                    for n, gn in zip(names, g, strict=True)})
                    if not first_order:
                        self.steps.append((self._autograd_product(leaves_k, grads_k), a))
                cur = nxt
            post = mb.post
            self.post_leaves: list[torch.Tensor] = []
            means, log_stds = [], []
            for j, i in enumerate(range(lo, hi)):
                leaves = {n: v.detach().clone().requires_grad_(True) for n, v in cur[j].items()}
                m, ls = policy_dist(policy, leaves, post.obs[i], per_task=False)
                self.post_leaves += [leaves[n] for n in names]
                means.append(m)
                log_stds.append(ls)
            outputs = means + log_stds
            mask = post.mask[sl]
            w = (mask / mask.sum(dim=(1, 2), keepdim=True).clamp_min(1) / total)[..., None]
            if self.fast:
                self.fisher: Callable[[Params], Params] = _per_task([
                    _MLPFisher(layers, cur[j], post.obs[i], w[j] * torch.exp(-2 * mb.old_log_std[i]),
                               w[j].sum()) for j, i in enumerate(range(lo, hi))])
            else:
                # J_f^T c as a function of c (kept in the graph), so that J_f u is one more backward pass
                cs = [torch.zeros_like(o, requires_grad=True) for o in outputs]
                jt = torch.autograd.grad(outputs, self.post_leaves, grad_outputs=cs, create_graph=True)
                metric = [w[j] * torch.exp(-2 * mb.old_log_std[i]) for j, i in enumerate(range(lo, hi))] + \
                    [2 * w[j] for j in range(hi - lo)]
                self.fisher = self._autograd_fisher(outputs, cs, jt, metric)
            # the surrogate loss of these tasks at the adapted parameters (the meta-objective's terms)
            mean, log_std = torch.stack(means), torch.stack(log_stds)
            gap = ((mean - mb.old_mean[sl]).abs() + (log_std - mb.old_log_std[sl]).abs()).detach()
            gap = torch.where(post.mask[sl][..., None] > 0, gap, torch.zeros_like(gap))
            self.offset = float(gap.max()) if gap.numel() else 0.0
            logp = gaussian_log_prob(mean, log_std, post.actions[sl])
            old_logp = gaussian_log_prob(mb.old_mean[sl], mb.old_log_std[sl], post.actions[sl])
            n = post.mask[sl].sum(dim=(1, 2)).clamp_min(1)
            ratio = torch.exp(logp - old_logp)
            self.loss = (-(ratio * post.advantages[sl] * post.mask[sl]).sum(dim=(1, 2)) / n).sum() / total

    def _to_list(self, d: Params) -> list[torch.Tensor]:
        return [d[n][j] for j in range(self.count) for n in self.names]

    def _from_list(self, xs: Sequence[torch.Tensor]) -> Params:
        p = len(self.names)
        return {n: torch.stack([xs[j * p + q] for j in range(self.count)]) for q, n in enumerate(self.names)}

    def _autograd_product(self, leaves: list[torch.Tensor], grads: list[torch.Tensor]
                          ) -> Callable[[Params], Params]:
        def hvp(v: Params) -> Params:
            return self._from_list(torch.autograd.grad(grads, leaves, grad_outputs=self._to_list(v),
                                                       retain_graph=True))
        return hvp

    def _autograd_fisher(self, outputs: list[torch.Tensor], cs: list[torch.Tensor],
                         jt: Sequence[torch.Tensor],
                         metric: list[torch.Tensor]) -> Callable[[Params], Params]:
        def fisher(u: Params) -> Params:
            ju = torch.autograd.grad(jt, cs, grad_outputs=self._to_list(u), retain_graph=True)
            return self._from_list(torch.autograd.grad(
                outputs, self.post_leaves, grad_outputs=[d * m for d, m in zip(ju, metric, strict=True)],
                retain_graph=True))
        return fisher

    def evaluate(self, params: Params) -> tuple[torch.Tensor, torch.Tensor]:
        """This chunk's terms of :func:`meta_objective` (first order: values only) at other parameters."""
        mb, sl = self.mb, slice(self.lo, self.hi)
        sub = MetaBatch([TaskBatch(*(x[sl] for x in b)) for b in mb.inner],
                        TaskBatch(*(x[sl] for x in mb.post)), mb.old_mean[sl], mb.old_log_std[sl])
        p = {k: v.detach().requires_grad_(True) for k, v in params.items()}
        loss, kl = meta_objective(self.policy, p, sub, self.lr, first_order=True, vectorized=False)
        scale = self.count / self.total
        return loss.detach() * scale, kl.detach() * scale

    def _jacobian_t(self, w: Params) -> torch.Tensor:
        """sum over this chunk's tasks of J_i^T w_i, as one flat vector."""
        for hvp, a in reversed(self.steps):
            hw = hvp(w)
            w = {n: w[n] - a * hw[n] for n in self.names}
        return flat([w[n].sum(0) for n in self.names])

    def gradient(self) -> torch.Tensor:
        g = torch.autograd.grad(self.loss, self.post_leaves, retain_graph=True)
        return self._jacobian_t(self._from_list(g))

    def product(self, v: Params) -> torch.Tensor:
        u = {n: x.unsqueeze(0).expand(self.count, *x.shape) for n, x in v.items()}
        for hvp, a in self.steps:  # u = J v, step by step
            hu = hvp(u)
            u = {n: u[n] - a * hu[n] for n in self.names}
        return self._jacobian_t(self.fisher(u))


class ChainCurvature:
    """The meta-gradient and Fisher-vector products ``v -> (H_KL + damping I) v`` at theta = ``params`` by the
    chain rule through the inner loop, from graphs built once per TRPO step.

    At the sampling parameters the KL's gradient with respect to each task's adapted parameters vanishes, so
    its Hessian with respect to theta is exactly ``(1/T) sum_i J_i^T F_i J_i``: ``F_i`` the Fisher matrix of
    task i's adapted policy on its post-update samples (Gauss-Newton form ``J_f^T M J_f`` of a diagonal
    Gaussian: 1/sigma^2 for the mean, 2 for the log-std) and ``J_i`` the Jacobian of the adapted parameters,
    ``J_i = (I - a_K H_K,i) ... (I - a_1 H_1,i)``, ``H_k,i`` the Hessian of task i's k-th inner-loop loss at
    its parameters before step k (``J_i = I`` for first-order MAML or no inner loop). One product is, per
    task, a Hessian-vector product per inner step (``J v``), a forward- and a reverse-mode product on the
    post-update samples (``F u``) and the Hessian-vector products again in reverse (``J^T w``): backward
    passes over graphs made once, with no forward pass or double backward through the whole inner loop per
    product. The meta-gradient is ``sum_i J_i^T g_i`` with ``g_i`` the surrogate's gradient at task i's
    adapted parameters. Float64 tests check both against autograd through :func:`meta_objective`.

    It must be built at the parameters that sampled ``mb`` (``mb.old_mean``/``old_log_std`` are the adapted
    policies' distribution, with the same inner step sizes), as :func:`metashot.rl.train.meta_step` does;
    elsewhere the identity does not hold, and a RuntimeWarning says so.

    ``workers > 1`` splits the tasks into that many chunks that build and multiply concurrently in threads,
    each through its own copy of ``policy`` (set ``torch.set_num_threads(1)`` so that the threads do not
    compete for cores); the chunks' sums are added in a fixed order, so the result does not depend on timing.
    Call :meth:`close` (or use ``with``) to stop the threads.
    """

    def __init__(self, policy: nn.Module, params: Params, mb: MetaBatch, lr: float | Sequence[float],
                 first_order: bool = False, damping: float = 0.0, workers: int = 1,
                 fast: bool = True) -> None:
        if workers < 1:
            raise ValueError(f"ChainCurvature: workers must be >= 1, got {workers}")
        t = mb.post.obs.shape[0]
        # (the sampling distribution can be a view of the policy's log-std that still requires grad)
        mb = MetaBatch(mb.inner, mb.post, mb.old_mean.detach(), mb.old_log_std.detach())
        self.names = list(params)
        self.like = {k: v.detach() for k, v in params.items()}
        self.damping = damping
        bounds = torch.linspace(0, t, min(workers, t) + 1).round().long().tolist()
        chunks = list(zip(bounds[:-1], bounds[1:], strict=True))
        self.pool = ThreadPoolExecutor(len(chunks)) if len(chunks) > 1 else None
        try:
            policies = [policy] + [copy.deepcopy(policy) for _ in chunks[1:]]
            self.pieces = self._map(lambda k: _ChainPiece(policies[k], self.like, mb, *chunks[k], t, lr,
                                                          first_order, fast), range(len(chunks)))
        except BaseException:
            self.close()
            raise
        self.loss = sum(p.loss.detach() for p in self.pieces)
        offset = max(p.offset for p in self.pieces)
        scale = 1.0 + float(mb.old_mean.abs().max()) if mb.old_mean.numel() else 1.0
        if offset > 1e-4 * scale:
            warnings.warn(f"ChainCurvature: the adapted policies differ from the sampling distribution "
                          f"(max |d mean| + |d log_std| = {offset:.3g}): the products are then a "
                          "Gauss-Newton approximation, not the Hessian of the KL (build it at the parameters "
                          "that sampled the meta-batch, with the same inner step sizes)",
                          RuntimeWarning, stacklevel=2)

    def _map(self, fn: Callable[[Any], Any], items: Any) -> list[Any]:
        if self.pool is None:
            return [fn(x) for x in items]
        grad_mode = torch.is_grad_enabled()

        def run(x: Any) -> Any:
            with torch.set_grad_enabled(grad_mode):
                return fn(x)

        return list(self.pool.map(run, items))

    def evaluate(self, params: Params, create_graph: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, KL) of :func:`meta_objective` at ``params`` (first order, values only; e.g. for TRPO's line
        search), the chunks concurrently."""
        if create_graph:
            raise ValueError("ChainCurvature.evaluate gives values only (create_graph=False)")
        parts = self._map(lambda p: p.evaluate(params), self.pieces)
        return sum(x[0] for x in parts), sum(x[1] for x in parts)

    def gradient(self) -> torch.Tensor:
        """The meta-gradient of the surrogate loss with respect to theta, flat."""
        return sum(self._map(lambda p: p.gradient(), self.pieces))

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        vs = unflat(v, self.like)
        return sum(self._map(lambda p: p.product(vs), self.pieces)) + self.damping * v

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()
            self.pool = None

    def __enter__(self) -> ChainCurvature:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def flat(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def unflat(vec: torch.Tensor, like: Params) -> Params:
    out, i = {}, 0
    for k, v in like.items():
        out[k] = vec[i: i + v.numel()].reshape(v.shape).clone()
        i += v.numel()
    return out


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
    :func:`gauss_newton_fvp` or a :class:`ChainCurvature`, which must include the damping).
    ``loss_grad``: the loss at ``params`` and its flat gradient, when the caller has them (e.g.
    :meth:`ChainCurvature.gradient`); then ``objective`` is called in the line search only.
    ``reuse_cg_product``: take ``x^T A x`` for the step size from the products the conjugate-gradient
    iterations made instead of one more product (the same value up to rounding).
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
