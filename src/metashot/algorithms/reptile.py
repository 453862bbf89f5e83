"""Reptile: move the initialisation towards the weights that plain SGD reaches on each task."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from metashot.algorithms.base import Batch, register
from metashot.algorithms.inner_loop import InnerLoopLearner
from metashot.nn.functional import params_and_buffers


@register("reptile")
class Reptile(InnerLoopLearner):
    """Reptile (Nichol, Achiam & Schulman, "On First-Order Meta-Learning Algorithms", 2018).

    For each task, k steps of SGD on its support loss take theta to phi_i = U^k_{T_i}(theta); the meta-update
    interpolates towards them, theta <- theta + epsilon * (1/n sum_i phi_i - theta) (Algorithm 2, batched).

    metashot's Trainer minimises a loss, so :meth:`meta_loss` returns the surrogate
    R(theta) = 1/n sum_i 1/2 ||theta - stopgrad(phi_i)||^2, whose gradient is exactly theta - mean_i phi_i:
    one plain SGD step with learning rate epsilon (``train.optimizer`` sgd without momentum) is the Reptile
    update, and Adam on it is the paper's variant that "treats theta - phi as a gradient" (section 3). The
    logged ``loss``/``acc`` are those of the adapted networks on the query sets (no gradient flows from them).
    Adaptation at test time is the same as MAML's: ``inner_steps_test`` SGD steps from theta.

    Args: as :class:`MAML`, with ``inner_steps`` = k (the inner loop is always first order) and
    ``inner_lr`` the inner SGD step size (the paper used Adam with beta1 = 0 inside; plain SGD here).
    """

    def __init__(self, backbone: nn.Module, **kwargs: Any) -> None:
        kwargs.setdefault("first_order", True)
        kwargs.setdefault("inner_steps", 5)
        if kwargs.get("learn_inner_lr"):
            raise ValueError("Reptile: learn_inner_lr is not defined for Reptile (its inner loop is not "
                             "differentiated); use algorithm 'metasgd'")
        super().__init__(backbone, **kwargs)

    def task_weights(self, support_x: torch.Tensor, support_y: torch.Tensor) -> dict[str, torch.Tensor]:
        """phi_i for every task, stacked: {name: [T, *shape]} from support [T, S, ...]; no graph to theta."""
        params, buffers = params_and_buffers(self.backbone, detach=True)
        for k in self.adapted_names:
            params[k].requires_grad_(True)
        steps = self.inner_steps
        if self.vectorized:
            def one(sx: torch.Tensor, sy: torch.Tensor) -> dict[str, torch.Tensor]:
                a = self.adapt_params(params, buffers, sx, sy, steps, True, True)
                return {k: a[k] for k in self.adapted_names}

            with torch.enable_grad():
                phi = torch.vmap(one, randomness="different")(support_x, support_y)
        else:
            per = []
            with torch.enable_grad():
                for t in range(support_x.shape[0]):
                    a = self.adapt_params(params, buffers, support_x[t], support_y[t], steps, True, False)
                    per.append({k: a[k] for k in self.adapted_names})
            phi = {k: torch.stack([p[k] for p in per]) for k in self.adapted_names}
        return {k: v.detach() for k, v in phi.items()}

    def meta_loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        self._check_ways(batch.support_x[0], batch.ways)
        phi = self.task_weights(batch.support_x, batch.support_y)
        theta = dict(self.backbone.named_parameters())
        surrogate = sum(0.5 * (theta[k].unsqueeze(0) - phi[k]).pow(2).flatten(1).sum(1).mean()
                        for k in self.adapted_names)
        # Query metrics of the adapted networks, for the log only.
        with torch.no_grad():
            _, buffers = params_and_buffers(self.backbone)
            fixed = {k: v.detach() for k, v in theta.items() if k not in phi}

            def query(ph: dict[str, torch.Tensor], qx: torch.Tensor) -> torch.Tensor:
                return self.forward_with({**fixed, **ph}, buffers, qx)

            out = torch.vmap(query, randomness="different")(phi, batch.query_x)
        if self.loss == "mse":
            return surrogate, {"loss": float(F.mse_loss(out, batch.query_y)),
                               "reptile_sq": float(surrogate.detach())}
        qloss = F.cross_entropy(out.flatten(0, 1), batch.query_y.flatten())
        acc = (out.argmax(-1) == batch.query_y).float().mean()
        return surrogate, {"loss": float(qloss), "acc": float(acc), "reptile_sq": float(surrogate.detach())}
