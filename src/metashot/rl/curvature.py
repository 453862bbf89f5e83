"""Curvature of the MAML-RL meta-objective: Fisher-vector products ``v -> (H_KL + damping I) v`` for TRPO.

- :func:`gauss_newton_fvp`: ``J^T M J`` with J the Jacobian of the post-update action distribution through the
  inner loop, linearised once with ``torch.func``.
- :class:`ChainCurvature`: ``(1/T) sum_i J_i^T F_i J_i`` by the chain rule through each task's inner steps,
  and the meta-gradient, from graphs built once per TRPO step; for a ReLU
  :class:`~metashot.rl.policy.GaussianMLPPolicy` the products are the written-out R-operator passes of
  :mod:`metashot.rl.mlp_passes`. Chunks of tasks can run in the task-worker threads of
  :mod:`metashot.nn.threads` (the pool that MAML's ``task_workers`` uses).

Both equal the double-backward Hessian of the KL at the sampling parameters (float64 tests).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from metashot.nn.functional import Params
from metashot.nn.threads import in_workers, task_pool
from metashot.rl.adaptation import MetaBatch, lr_at, meta_objective, post_update_dist, vpg_loss
from metashot.rl.mlp_passes import MLPFisher, MLPInnerHessian, mlp_layers
from metashot.rl.policy import flat, gaussian_log_prob, policy_dist, unflat
from metashot.rl.rollout import TaskBatch


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
    :class:`MLPInnerHessian` and :class:`MLPFisher`; otherwise autograd over graphs kept from the set-up.
    """

    def __init__(self, policy: nn.Module, params: Params, mb: MetaBatch, lo: int, hi: int, total: int,
                 lr: float | Sequence[float], first_order: bool, fast: bool = True) -> None:
        names = self.names = list(params)
        self.count = hi - lo
        self.policy, self.mb, self.lo, self.hi, self.total, self.lr = policy, mb, lo, hi, total, lr
        layers = mlp_layers(policy) if fast else None
        self.fast = layers is not None
        sl = slice(lo, hi)
        cur = [{k: v.detach() for k, v in params.items()} for _ in range(lo, hi)]
        # per inner step: v -> H v for the chunk's tasks, and the step size
        self.steps: list[tuple[Callable[[Params], Params], float]] = []
        with torch.enable_grad():
            for k, b in enumerate(mb.inner):
                a = lr_at(lr, k)
                if self.fast:  # the written-out passes give the inner step's gradient as well
                    ops = [MLPInnerHessian(layers, cur[j], b.obs[i], b.actions[i], b.advantages[i],
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
                    MLPFisher(layers, cur[j], post.obs[i], w[j] * torch.exp(-2 * mb.old_log_std[i]),
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

    ``workers > 1`` splits the tasks into that many chunks that build and multiply concurrently in the shared
    task-worker threads (:func:`metashot.nn.threads.in_workers`), each through its own copy of ``policy`` (set
    ``torch.set_num_threads(1)`` so that the threads do not compete for cores); the chunks' sums are added in
    a fixed order, so the result does not depend on timing. After :meth:`close` (or the end of a ``with``
    block) the chunks run in the calling thread.
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
        # (rounded linspace bounds, not metashot.nn.threads.task_chunks: other bounds would round the chunks'
        # sums differently from the runs made so far)
        bounds = torch.linspace(0, t, min(workers, t) + 1).round().long().tolist()
        chunks = list(zip(bounds[:-1], bounds[1:], strict=True))
        self.pool = task_pool(len(chunks)) if len(chunks) > 1 else None  # None: in the calling thread
        policies = [policy] + [copy.deepcopy(policy) for _ in chunks[1:]]
        self.pieces = self._map(lambda k: _ChainPiece(policies[k], self.like, mb, *chunks[k], t, lr,
                                                      first_order, fast), range(len(chunks)))
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
        return in_workers([lambda x=x: fn(x) for x in items])

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
        """Run the chunks in the calling thread from now on (the shared pool stays up for other users)."""
        self.pool = None

    def __enter__(self) -> ChainCurvature:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

