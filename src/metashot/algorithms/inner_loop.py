"""The inner loop that the gradient-based learners share (MAML, Meta-SGD, ANIL in :mod:`.maml`; Reptile in
:mod:`.reptile`): gradient steps on each task's support set from a meta-learned start, as pure functions of
a parameter dict. A shared module, not an algorithm: it registers nothing."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from metashot.algorithms.base import Batch, MetaLearner, Predictor
from metashot.nn.functional import BN_MODES, Params, functional_forward, inner_sgd, params_and_buffers
from metashot.nn.threads import (
    GivenGradients,
    in_workers,
    module_for,
    structure_replicas,
    task_chunks,
    use_module,
)

LOSSES = ("cross_entropy", "mse")


def _lr_key(name: str) -> str:
    return name.replace(".", "__")  # ParameterDict keys cannot contain dots


class InnerLoopLearner(MetaLearner):
    """Model-Agnostic Meta-Learning's inner loop (Finn, Abbeel & Levine, ICML 2017), for its whole family.

    For each task T_i the network's parameters theta are adapted by gradient descent on the support loss,
    theta'_i = theta - alpha * grad_theta L_{T_i}^{support}(f_theta) (Eq. 1, repeated ``inner_steps``
    times), and the meta-objective is min_theta sum_i L_{T_i}^{query}(f_{theta'_i}) (Eq. 2), back-propagated
    through the inner steps (second order). ``first_order=True`` drops the second derivatives (the paper's
    first-order approximation): the meta-gradient is the query gradient at theta'_i.

    The network is any ``nn.Module`` mapping [B, *item] -> [B, N]; it is called as a pure function of a
    parameter dict (:mod:`metashot.nn.functional`), never modified in place. Its last layer is the classifier
    head, so its output size is the number of ways (``backbone_args.out_features``); adapting to a task with a
    different number of classes is an error (the head's initialisation is meta-learned per output).

    Batch norm (``bn``): ``"batch"`` (default) normalises every forward with the statistics of its own batch,
    i.e. of one task's support set in the inner loop and of its query set in the predictor; running statistics
    are never used or updated. This is the paper's transductive setting: a query prediction depends on the
    other queries of its batch. ``"running"`` uses the module's stored running statistics, frozen.

    Two execution paths give the same loss and meta-gradient (tests/algorithms/test_maml.py, float64):
    ``vectorized=True`` runs the whole inner loop and query loss of every task at once with ``torch.vmap`` of
    ``torch.func.grad``; ``vectorized=False`` loops over tasks with ``torch.autograd.grad`` (the reference).

    Args:
        backbone: the full network including its head.
        inner_lr: alpha (Omniglot 5-way: 0.4, 20-way: 0.1, sinusoid: 0.01).
        inner_steps: inner steps during meta-training.
        inner_steps_test: inner steps when adapting in eval mode (default: ``inner_steps``).
        first_order: first-order MAML.
        vectorized: vmap over the meta-batch (fast path) instead of a per-task loop.
        loss: ``cross_entropy`` (classification, logits [M, N]) or ``mse`` (regression, outputs [M, D]).
        bn: ``batch`` (transductive, default) or ``running``.
        learn_inner_lr: Meta-SGD: one learnable rate per parameter element, initialised to ``inner_lr``.
        adapt: ``all`` parameters (MAML) or only the ``head`` (ANIL; parameters whose names start with
            ``head_prefix``).
        head_prefix: name prefix of the head's parameters (``head.`` for the built-in MAML nets).
        checkpoint_inner: recompute inner steps in the backward pass to save memory (loop path only).
        task_workers: split the meta-batch into this many chunks of tasks and run them concurrently in
            threads, each chunk's inner loops, query loss and meta-gradient at once (on either path); the
            chunk gradients are summed in a fixed order. Worth it on a multi-core CPU, where small per-task
            operations do not fill the cores: use it with ``train.threads`` = cores / ``task_workers`` (e.g.
            2 workers x 1 thread on 2 cores). The loss it returns carries the exact meta-gradient for
            ``backward()`` but has no graph of its own (a double backward through the meta-loss raises);
            networks with dropout are refused (random draws from concurrent threads would not be
            reproducible). The workers inherit the caller's grad mode and autocast state; with no parameter
            requiring grad, or with grad disabled, the chunks run one after the other in the calling thread.
            Other thread-local state (torch function/dispatch modes, saved-tensor hooks, CUDA streams) does
            not reach the workers. Reptile's meta-update ignores it (only its evaluation uses it).
    """

    adapt_needs_grad = True
    # Vectorised path, first order: batch norm with batch statistics through metashot.nn.functional's analytic
    # backward (fewer elementwise passes; about 5 % more tasks/s on config A of benchmarks/maml.py). Second
    # order keeps autograd through the plain formula, whose double backward is cheaper than that of the
    # analytic backward. False: the plain formula everywhere (the reference; tests/algorithms/test_maml.py).
    analytic_bn = True

    def __init__(self, backbone: nn.Module, inner_lr: float = 0.4, inner_steps: int = 1,
                 inner_steps_test: int | None = None, first_order: bool = False, vectorized: bool = True,
                 loss: str = "cross_entropy", bn: str = "batch", learn_inner_lr: bool = False,
                 adapt: str = "all", head_prefix: str = "head.", checkpoint_inner: bool = False,
                 task_workers: int = 1) -> None:
        super().__init__()
        name = type(self).__name__
        if loss not in LOSSES:
            raise ValueError(f"{name}: loss must be one of {LOSSES}, got {loss!r}")
        if bn not in BN_MODES:
            raise ValueError(f"{name}: bn must be one of {BN_MODES}, got {bn!r}")
        if adapt not in ("all", "head"):
            raise ValueError(f"{name}: adapt must be 'all' or 'head', got {adapt!r}")
        if inner_steps < 0 or (inner_steps_test is not None and inner_steps_test < 0):
            raise ValueError(f"{name}: inner_steps must be >= 0, got {inner_steps} / {inner_steps_test}")
        if checkpoint_inner and vectorized:
            raise ValueError(f"{name}: checkpoint_inner=True needs vectorized=False (the loop path)")
        if int(task_workers) != task_workers or task_workers < 1:
            raise ValueError(f"{name}: task_workers must be an integer >= 1, got {task_workers!r}")
        if task_workers > 1 and any(isinstance(m, nn.modules.dropout._DropoutNd) for m in backbone.modules()):
            raise ValueError(f"{name}: task_workers > 1 with a dropout layer in the network: its random "
                             "draws from concurrent threads would not be reproducible; use task_workers=1")
        self.backbone = backbone
        self.inner_lr = float(inner_lr)
        self.inner_steps = int(inner_steps)
        self.inner_steps_test = int(inner_steps if inner_steps_test is None else inner_steps_test)
        self.first_order = bool(first_order)
        self.vectorized = bool(vectorized)
        self.loss = loss
        self.bn = bn
        self.learn_inner_lr = bool(learn_inner_lr)
        self.adapt_scope = adapt  # not adapt_mode: MetaLearner.adapt_mode() is the grad-mode switch
        self.head_prefix = head_prefix
        self.checkpoint_inner = bool(checkpoint_inner)
        self.task_workers = int(task_workers)
        self._replicas: list[tuple[nn.Module, nn.Module]] = []  # (backbone, its structure-only copy)
        names = [k for k, p in backbone.named_parameters() if p.requires_grad]
        if adapt == "head":
            names = [k for k in names if k.startswith(head_prefix)]
            if not names:
                have = [k for k, _ in backbone.named_parameters()][:6]
                raise ValueError(f"{name}: adapt='head' but the backbone has no parameter whose name starts "
                                 f"with {head_prefix!r} (it has {have}...); set algorithm_args.head_prefix")
        self.adapted_names: list[str] = names
        self._out_dim: int | None = None
        if self.learn_inner_lr:
            shapes = dict(backbone.named_parameters())
            self.inner_lrs = nn.ParameterDict({
                _lr_key(k): nn.Parameter(torch.full_like(shapes[k].detach(), self.inner_lr)) for k in names})

    # ----- the network as a function of a parameter dict ----------------------------------------------

    def forward_with(self, params: Params, buffers: Params, x: torch.Tensor,
                     analytic_bn: bool = False) -> torch.Tensor:
        """The backbone on x [B, *item] with ``params``: [B, N] (or [B, D] for regression).

        ``analytic_bn``: see :func:`metashot.nn.functional.functional_forward` (a speed choice only).
        """
        module = module_for(self, self.backbone)  # a task worker's own replica (metashot.nn.threads)
        return functional_forward(module, params, buffers, x, bn=self.bn, analytic_bn=analytic_bn)

    def task_loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.loss == "mse":
            return F.mse_loss(out, y)
        return F.cross_entropy(out, y)

    def learning_rates(self) -> float | dict[str, torch.Tensor]:
        """alpha: a float, or Meta-SGD's ``{parameter name: elementwise rates}``."""
        if not self.learn_inner_lr:
            return self.inner_lr
        return {k: self.inner_lrs[_lr_key(k)] for k in self.adapted_names}

    def adapt_params(self, params: Params, buffers: Params, support_x: torch.Tensor, support_y: torch.Tensor,
                     steps: int, first_order: bool, vectorized: bool, checkpoint: bool = False) -> Params:
        """theta'_i: ``steps`` SGD steps on one task's support loss; the full parameter dict.

        Shapes: support_x [S, *item], support_y [S] (or [S, D]). Only ``adapted_names`` move (ANIL: the head).
        """
        fast = {k: params[k] for k in self.adapted_names}
        fixed = {k: v for k, v in params.items() if k not in fast}
        # First order needs no derivative of the inner gradients: they see detached frozen parameters.
        inner_fixed = {k: v.detach() for k, v in fixed.items()} if first_order else fixed
        analytic = self.analytic_bn and first_order  # see the class attribute

        def support_loss(f: Params) -> torch.Tensor:
            out = self.forward_with({**inner_fixed, **f}, buffers, support_x, analytic_bn=analytic)
            return self.task_loss(out, support_y)

        fast = inner_sgd(support_loss, fast, self.learning_rates(), steps, first_order=first_order,
                         vectorized=vectorized, checkpoint=checkpoint)
        return {**fixed, **fast}

    def _check_ways(self, x: torch.Tensor, ways: int) -> None:
        """Error unless the backbone has ``ways`` outputs (probed once on two items of ``x`` [B, *item])."""
        if self.loss != "cross_entropy":
            return
        if self._out_dim is None:
            with torch.no_grad():
                params, buffers = params_and_buffers(self.backbone)
                self._out_dim = int(self.forward_with(params, buffers, x[:2]).shape[-1])
        if self._out_dim != ways:
            n = self._out_dim
            raise ValueError(
                f"{type(self).__name__}: the backbone outputs {n} logits but the task has {ways} classes. "
                f"MAML's head is part of the meta-learned initialisation, so a learner trained for {n} ways "
                f"only adapts to {n}-way tasks; train (or load) one with backbone_args.out_features={ways}")

    # ----- the meta-objective ------------------------------------------------------------------------

    def _mode(self) -> tuple[int, bool]:
        """(inner steps, first order) for the current mode: training uses the meta-training settings."""
        if self.training:
            return self.inner_steps, self.first_order
        return self.inner_steps_test, True  # evaluation needs no second derivatives

    def _task_query(self, params: Params, buffers: Params, sx: torch.Tensor, sy: torch.Tensor,
                    qx: torch.Tensor, steps: int, first_order: bool, vectorized: bool) -> torch.Tensor:
        adapted = self.adapt_params(params, buffers, sx, sy, steps, first_order, vectorized,
                                    checkpoint=self.checkpoint_inner and not vectorized)
        return self.forward_with(adapted, buffers, qx, analytic_bn=self.analytic_bn and first_order)

    def query_outputs(self, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor,
                      steps: int | None = None, first_order: bool | None = None,
                      vectorized: bool | None = None) -> torch.Tensor:
        """Adapted outputs on the queries: [T, M, N] from support [T, S, ...] and queries [T, M, ...].

        Differentiable with respect to the meta-parameters (to second order unless ``first_order``).
        """
        d_steps, d_fo = self._mode()
        steps = d_steps if steps is None else steps
        first_order = d_fo if first_order is None else first_order
        vectorized = self.vectorized if vectorized is None else vectorized
        params, buffers = params_and_buffers(self.backbone)
        if vectorized:
            def one(sx: torch.Tensor, sy: torch.Tensor, qx: torch.Tensor) -> torch.Tensor:
                return self._task_query(params, buffers, sx, sy, qx, steps, first_order, True)

            return torch.vmap(one, randomness="different")(support_x, support_y, query_x)
        return torch.stack([self._task_query(params, buffers, support_x[t], support_y[t], query_x[t], steps,
                                             first_order, False) for t in range(support_x.shape[0])])

    def _chunks(self, tasks: int) -> list[tuple[int, int]]:
        return task_chunks(tasks, self.task_workers)

    def _in_workers(self, fn: Callable[[int, int], Any], tasks: int, grad: bool) -> list[Any]:
        """``fn(lo, hi)`` for each chunk of tasks, concurrently, each worker thread calling the network
        through its own structure-only replica of the backbone (see :mod:`metashot.nn.threads`)."""
        chunks = self._chunks(tasks)
        if len(chunks) == 1:
            with torch.set_grad_enabled(grad):
                return [fn(lo, hi) for lo, hi in chunks]
        replicas = structure_replicas(self.backbone, self._replicas, len(chunks))
        flags = [m.training for m in self.backbone.modules()]

        def job(k: int) -> Callable[[], Any]:
            def run() -> Any:
                with use_module(self, replicas[k], flags):
                    return fn(*chunks[k])
            return run

        return in_workers([job(k) for k in range(len(chunks))], grad=grad)

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state = dict(state if isinstance(state, dict) else self.__dict__)
        state["_replicas"] = []  # rebuilt on demand from the backbone
        return state

    def _outputs_loss(self, out: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        if self.loss == "mse":
            return F.mse_loss(out, y, reduction=reduction)
        return F.cross_entropy(out.flatten(0, 1), y.flatten(), reduction=reduction)

    def _metrics(self, loss: torch.Tensor, out: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        if self.loss == "mse":
            return {"loss": float(loss.detach())}
        return {"loss": float(loss.detach()), "acc": float((out.argmax(-1) == y).float().mean())}

    def meta_loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """Mean query loss of the adapted networks over the meta-batch (Eq. 2); ``loss``/``acc`` metrics."""
        self._check_ways(batch.support_x[0], batch.ways)
        tasks = batch.support_x.shape[0]
        params = [p for p in self.parameters() if p.requires_grad]
        if len(self._chunks(tasks)) == 1 or not params or not torch.is_grad_enabled():
            with torch.enable_grad():
                out = self.query_outputs(batch.support_x, batch.support_y, batch.query_x)
            loss = self._outputs_loss(out, batch.query_y)
            return loss, self._metrics(loss, out, batch.query_y)
        # Task-parallel: each worker differentiates its chunk's summed query loss; the mean's gradient is the
        # sum of the chunks' gradients over the number of query items, added up in chunk order.
        count = batch.query_y.numel()

        def chunk(lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor | None, ...]]:
            out = self.query_outputs(batch.support_x[lo:hi], batch.support_y[lo:hi], batch.query_x[lo:hi])
            total = self._outputs_loss(out, batch.query_y[lo:hi], reduction="sum")
            grads = torch.autograd.grad(total, params, allow_unused=True)
            return out.detach(), total.detach(), grads

        results = self._in_workers(chunk, tasks, grad=True)
        out = torch.cat([r[0] for r in results])
        value = sum(r[1] for r in results)
        grads = []
        for i in range(len(params)):
            parts = [r[2][i] for r in results if r[2][i] is not None]
            grads.append(sum(parts) / count if parts else None)
        loss = GivenGradients.apply(value / count, grads, *params)
        return loss, self._metrics(loss, out, batch.query_y)

    def predict_batch(self, batch: Batch) -> torch.Tensor:
        self._check_ways(batch.support_x[0], batch.ways)
        # torch.func.grad differentiates inside no_grad: the vectorised inner loop needs no outer graph.
        no_graph = self.vectorized and not self.training

        def chunk(lo: int, hi: int) -> torch.Tensor:
            out = self.query_outputs(batch.support_x[lo:hi], batch.support_y[lo:hi], batch.query_x[lo:hi])
            return out.detach()

        outs = self._in_workers(chunk, batch.support_x.shape[0], grad=not no_graph)
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, steps: int | None = None) -> Predictor:
        """Fine-tune a copy of the parameters on one support set; the predictor is the adapted network.

        In training mode the predictor stays differentiable in the meta-parameters; in eval mode it is
        detached and ``steps`` defaults to ``inner_steps_test``.
        """
        d_steps, first_order = self._mode()
        steps = d_steps if steps is None else int(steps)
        with torch.enable_grad():
            if self.training:
                params, buffers = params_and_buffers(self.backbone)
            else:
                params, buffers = params_and_buffers(self.backbone, detach=True)
                for k in self.adapted_names:
                    params[k].requires_grad_(True)
            if self.loss == "cross_entropy":
                self._check_ways(support_x, int(support_y.max()) + 1)
            adapted = self.adapt_params(params, buffers, support_x, support_y, steps, first_order,
                                        vectorized=False, checkpoint=self.checkpoint_inner)
        if not self.training:
            adapted = {k: v.detach() for k, v in adapted.items()}

        def predictor(query_x: torch.Tensor) -> torch.Tensor:
            return self.forward_with(adapted, buffers, query_x)

        return predictor

    def config_dict(self) -> dict[str, Any]:
        return {"inner_lr": self.inner_lr, "inner_steps": self.inner_steps,
                "inner_steps_test": self.inner_steps_test, "first_order": self.first_order,
                "vectorized": self.vectorized, "loss": self.loss, "bn": self.bn,
                "learn_inner_lr": self.learn_inner_lr, "adapt": self.adapt_scope,
                "head_prefix": self.head_prefix,
                "checkpoint_inner": self.checkpoint_inner, "task_workers": self.task_workers}
