"""The policy of MAML-RL (Finn et al. 2017, section 5.3) and its action distribution.

:class:`GaussianMLPPolicy`: mean = MLP(obs) (2 x 100 ReLU in the paper), state-independent learned log-std.
It is called as a pure function of a parameter dict (:func:`policy_dist`), one dict for every task or one per
task (the adapted policies, with a leading task dim). Also the diagonal Gaussian's log-density and KL, and the
parameter dict <-> flat vector conversions that TRPO works with.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from metashot.nn.functional import Params, functional_forward

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


def flat(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """The tensors flattened and concatenated into one vector (in order)."""
    return torch.cat([t.reshape(-1) for t in tensors])


def unflat(vec: torch.Tensor, like: Params) -> Params:
    """The inverse of :func:`flat` on ``like``'s names and shapes (fresh copies of ``vec``'s slices)."""
    out, i = {}, 0
    for k, v in like.items():
        out[k] = vec[i: i + v.numel()].reshape(v.shape).clone()
        i += v.numel()
    return out
