"""Written-out forward, backward and R-operator (directional derivative) passes of a ReLU
:class:`~metashot.rl.policy.GaussianMLPPolicy`, for the chain-rule curvature of :mod:`metashot.rl.curvature`.

They give exactly the products that autograd's double backward gives (float64 tests in
tests/rl/test_curvature.py compare them through :class:`~metashot.rl.curvature.ChainCurvature`), with matrix
products and none of autograd's bookkeeping: one task at a time, so that the [S, hidden] activations stay in
cache. Per-sample tensors are [S, features] (S = N trajectories x H steps of one task, flattened).
"""

from __future__ import annotations

import torch
from torch import nn

from metashot.nn.functional import Params
from metashot.rl.policy import GaussianMLPPolicy


def mlp_layers(policy: nn.Module) -> list[tuple[str, str]] | None:
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


class MLPPass:
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


class MLPInnerHessian:
    """Hessian-vector products of one task's inner-loop VPG loss (:func:`metashot.rl.adaptation.vpg_loss`)
    at its parameters, for a ReLU :class:`GaussianMLPPolicy` (see :class:`MLPPass`).

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
        self.net = MLPPass(layers, params, x)
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


class MLPFisher:
    """Fisher products ``J_f^T M J_f u`` at one task's adapted parameters on its post-update samples (mean:
    weight ``w / sigma_old^2`` per sample, log-std: ``2 w``), for a ReLU :class:`GaussianMLPPolicy`."""

    def __init__(self, layers: list[tuple[str, str]], params: Params, obs: torch.Tensor,
                 m_mean: torch.Tensor, w_sum: torch.Tensor) -> None:
        self.net = MLPPass(layers, params, obs.reshape(-1, obs.shape[-1]))
        self.m_mean = m_mean.reshape(-1, m_mean.shape[-1])
        self.w2 = 2 * w_sum

    def __call__(self, u: Params) -> Params:
        rmu, _ = self.net.r_forward(u)
        out, _ = self.net.backward(self.m_mean * rmu)
        out["log_std"] = self.w2 * u["log_std"]
        return out

