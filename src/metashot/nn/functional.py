"""Functional core for gradient-based meta-learning: a network as a pure function of a parameter dict.

Any ``torch.nn.Module`` is called through :func:`torch.func.functional_call` with an explicit parameter dict
and buffer dict, so an inner loop produces *new* tensors (``theta' = theta - alpha * grad``) and never
mutates the module. The same definition runs in a plain per-task loop (``torch.autograd.grad``) and
vectorised over tasks (``torch.vmap`` of ``torch.func.grad``).

Public API (also used by Meta-LSTM and any other optimisation-based learner):

    params, buffers = params_and_buffers(module)                  # {name: tensor}, {name: tensor}
    out = functional_forward(module, params, buffers, x)          # module(x) with those tensors, no mutation
    new = sgd_step(loss_fn, params, lr, first_order=False)        # one differentiable step (loop path)
    new = inner_sgd(loss_fn, params, lr, steps, vectorized=True)  # several steps (either path)

Batch norm. ``functional_forward`` intercepts every ``F.batch_norm`` call of the module (BatchNorm1d/2d/3d and
anything else that calls it):

- ``bn="batch"`` (default, *transductive*, as in Finn et al. 2017): normalise with the mean and biased
  variance of the current batch, over every dim except the channel dim. Under vmap this is per task. Running
  statistics are neither used nor updated, in training and in evaluation alike, so the predictions on a query
  set depend on the whole query batch, as in the paper's code.
- ``bn="running"`` (inductive): normalise with the module's stored running statistics, frozen (an explicit
  affine map).

Batch statistics are computed with an explicit formulation (mean/sub/mul ops whose batching rules are plain)
inside torch.func transforms and while torch.compile traces, and with torch's fused kernel (without running
statistics, so nothing is written) elsewhere, i.e. on the per-task loop path, where its first and second
derivatives are exact and it is faster. The explicit formulation is what makes the vectorised path exact: the
fused kernel's backward under vmap gives wrong meta-gradients (functorch issue 534; ``python
benchmarks/maml_bn_vmap.py``). tests/nn/test_functional.py checks the explicit form against ``F.batch_norm``
and tests/algorithms/test_maml.py the two paths against each other in float64.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

Params = dict[str, torch.Tensor]
LearningRate = float | torch.Tensor | Mapping[str, torch.Tensor | float]

BN_MODES = ("batch", "running")


def params_and_buffers(module: nn.Module, detach: bool = False) -> tuple[Params, Params]:
    """The module's parameters and buffers as two ordered dicts ``{qualified name: tensor}``.

    Args:
        module: any network.
        detach: return detached copies that require grad (fresh leaves, e.g. to adapt at test time without
            building a graph into the module's own parameters).
    """
    params = dict(module.named_parameters())
    if detach:
        params = {k: v.detach().requires_grad_(v.requires_grad) for k, v in params.items()}
    buffers = dict(module.named_buffers())
    return params, buffers


def batch_norm_batch_stats(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                           eps: float) -> torch.Tensor:
    """Batch norm with the statistics of ``x`` itself: x [B, C, *spatial] -> same shape.

    y = (x - mean) / sqrt(var + eps) * weight + bias with mean and biased var over dims (0, 2, 3, ...),
    written with plain ops so that vmap and higher-order autograd treat it exactly.
    """
    if x.dim() < 2:
        raise ValueError(f"metashot.nn.functional: batch norm needs input [B, C, ...], got shape "
                         f"{tuple(x.shape)}")
    dims = [0, *range(2, x.dim())]
    var, mean = torch.var_mean(x, dim=dims, correction=0, keepdim=True)
    # Fold the normalisation and the affine map into one per-channel scale and shift: two full-size passes.
    scale = torch.rsqrt(var + eps)
    shape = [1, -1] + [1] * (x.dim() - 2)
    if weight is not None:
        scale = scale * weight.reshape(shape)
    shift = -mean * scale
    if bias is not None:
        shift = shift + bias.reshape(shape)
    return torch.addcmul(shift, x, scale)


class _BatchNormalize(torch.autograd.Function):
    """(x - mean) / sqrt(var + eps) over ``dims`` and its 1 / sqrt(var + eps), with an analytic backward.

    The backward, dx = rstd * (g - mean(g) - xhat * mean(g * xhat)) - g_rstd * rstd^2 * xhat / n, is
    written in differentiable ops on the saved *outputs* (xhat, rstd), so higher derivatives are exact too
    (autograd differentiates the backward, and the outputs' own gradients flow back through this function).
    It takes fewer full-size passes than autograd through the plain formula; vmap batches it by running the
    forward and backward under vmap (``generate_vmap_rule``).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor, dims: list[int], eps: float) -> tuple[torch.Tensor, torch.Tensor]:
        mean = x.mean(dims, keepdim=True)
        xc = x - mean
        rstd = torch.rsqrt(xc.square().mean(dims, keepdim=True) + eps)
        return xc * rstd, rstd

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[torch.Tensor, torch.Tensor]) -> None:
        x, dims, _ = inputs
        xhat, rstd = output
        ctx.dims = dims
        ctx.n = x.numel() // rstd.numel()
        ctx.save_for_backward(xhat, rstd)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor, g_rstd: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        xhat, rstd = ctx.saved_tensors
        g_mean = g.mean(ctx.dims, keepdim=True)
        gx_mean = (g * xhat).mean(ctx.dims, keepdim=True)
        c = -rstd * gx_mean - g_rstd * rstd.square() / ctx.n
        return torch.addcmul(torch.addcmul(-rstd * g_mean, xhat, c), g, rstd), None, None


def batch_norm_batch_stats_analytic(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                                    eps: float) -> torch.Tensor:
    """:func:`batch_norm_batch_stats` through :class:`_BatchNormalize` (analytic backward; same values).

    Faster where its backward is not itself differentiated (first-order inner loops, query forwards); exact
    to any order either way (tests/nn/test_functional.py, tests/algorithms/test_maml.py in float64).
    """
    if x.dim() < 2:
        raise ValueError(f"metashot.nn.functional: batch norm needs input [B, C, ...], got shape "
                         f"{tuple(x.shape)}")
    xhat, _ = _BatchNormalize.apply(x, [0, *range(2, x.dim())], eps)
    shape = [1, -1] + [1] * (x.dim() - 2)
    if weight is None:
        return xhat if bias is None else xhat + bias.reshape(shape)
    if bias is None:
        return xhat * weight.reshape(shape)
    return torch.addcmul(bias.reshape(shape), xhat, weight.reshape(shape))


def batch_norm_running_stats(x: torch.Tensor, running_mean: torch.Tensor, running_var: torch.Tensor,
                             weight: torch.Tensor | None, bias: torch.Tensor | None,
                             eps: float) -> torch.Tensor:
    """Batch norm with fixed (running) statistics: an elementwise affine map of x [B, C, *spatial]."""
    shape = [1, -1] + [1] * (x.dim() - 2)
    y = (x - running_mean.reshape(shape)) * torch.rsqrt(running_var.reshape(shape) + eps)
    if weight is not None:
        y = y * weight.reshape(shape)
    if bias is not None:
        y = y + bias.reshape(shape)
    return y


def _explicit_bn_needed() -> bool:
    """True inside a torch.func transform (vmap, grad, jvp, ...) or while torch.compile traces (dynamo cannot
    trace the functorch level probe): where batch statistics must use the explicit formula."""
    if torch.compiler.is_compiling():
        return True
    level = getattr(torch._C._functorch, "maybe_current_level", None)
    return level is None or level() is not None


class _ExplicitBatchNorm(TorchFunctionMode):
    """Routes ``F.batch_norm`` to :func:`batch_norm_batch_stats` / :func:`batch_norm_running_stats`.

    Running statistics are never updated (no in-place writes), whatever the module's training flag.
    Batch statistics use torch's fused kernel (``torch.batch_norm`` without running statistics) outside
    torch.func transforms, where its first and second derivatives are exact and it is faster (the per-task
    loop), and the explicit formula inside them, where the fused kernel's batching rule gives wrong
    meta-gradients (tests/algorithms/test_maml.py compares the two paths in float64).
    """

    def __init__(self, mode: str, analytic: bool = False) -> None:
        super().__init__()
        self.mode = mode
        self.analytic = analytic

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func is F.batch_norm:
            return self._batch_norm(*args, **kwargs)
        return func(*args, **kwargs)

    def _batch_norm(self, input: torch.Tensor, running_mean: torch.Tensor | None,
                    running_var: torch.Tensor | None, weight: torch.Tensor | None = None,
                    bias: torch.Tensor | None = None, training: bool = False,
                    momentum: float | None = 0.1, eps: float = 1e-5) -> torch.Tensor:
        if self.mode == "running":
            if running_mean is None or running_var is None:
                raise ValueError("metashot.nn.functional: bn='running' but a batch-norm layer has no running "
                                 "statistics (track_running_stats=False); use bn='batch'")
            return batch_norm_running_stats(input, running_mean, running_var, weight, bias, eps)
        if not _explicit_bn_needed():
            return torch.batch_norm(input, weight, bias, None, None, True, 0.0, eps, False)
        if self.analytic and not torch.compiler.is_compiling():  # dynamo cannot vmap the autograd.Function
            return batch_norm_batch_stats_analytic(input, weight, bias, eps)
        return batch_norm_batch_stats(input, weight, bias, eps)


def batch_stats_only(module: nn.Module) -> None:
    """Make every batch-norm layer normalise with the current batch's statistics, in training and evaluation.

    In place. Meta-LSTM's learner uses it (the paper's choice); ``benchmarks/bn_mode.py`` evaluates a ProtoNet
    this way. :func:`functional_forward` with ``bn="batch"`` already ignores running statistics; removing the
    buffers keeps unused tensors out of checkpoints and makes a plain ``backbone(x)`` call behave
    the same way.
    """
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.track_running_stats = False
            m.running_mean = None
            m.running_var = None
            m.num_batches_tracked = None


def has_batch_norm(module: nn.Module) -> bool:
    """True if the module holds a torch batch-norm layer (whose calls :func:`functional_forward` rewrites)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


def functional_forward(module: nn.Module, params: Mapping[str, torch.Tensor],
                       buffers: Mapping[str, torch.Tensor], x: torch.Tensor,
                       bn: str = "batch", analytic_bn: bool = False) -> torch.Tensor:
    """``module(x)`` computed with the given tensors instead of the module's own; the module is not modified.

    Args:
        module: any network; its ``training`` flag still drives dropout etc.
        params: ``{name: tensor}`` for some or all parameters (missing ones fall back to the module's).
        buffers: ``{name: tensor}`` buffers (running statistics are read only with ``bn="running"``).
        x: input batch [B, *item] (under vmap: one task's batch).
        bn: ``"batch"`` (transductive, per-batch statistics; the MAML paper's choice) or ``"running"``.
        analytic_bn: where batch statistics take the explicit formula (inside torch.func transforms), use
            :func:`batch_norm_batch_stats_analytic` (same values and derivatives, fewer elementwise passes
            unless its backward is differentiated again) instead of autograd through the plain formula.

    Returns:
        The module's output, e.g. logits [B, N].
    """
    if bn not in BN_MODES:
        raise ValueError(f"metashot.nn.functional: bn must be one of {BN_MODES}, got {bn!r}")
    # num_batches_tracked is incremented in place by BatchNorm.forward in training mode; hand it a scratch
    # counter so the caller's buffers (and the module's) are never written.
    bufs = {k: (torch.zeros_like(v) if k.endswith("num_batches_tracked") else v) for k, v in buffers.items()}
    tensors = {**bufs, **params}
    if has_batch_norm(module):
        with _ExplicitBatchNorm(bn, analytic_bn):
            return torch.func.functional_call(module, tensors, (x,), strict=False)
    return torch.func.functional_call(module, tensors, (x,), strict=False)


def _lr_of(lr: LearningRate, name: str) -> torch.Tensor | float:
    if isinstance(lr, Mapping):
        if name not in lr:
            raise KeyError(f"metashot.nn.functional: no learning rate for parameter {name!r}; "
                           f"the lr dict has {sorted(lr)}")
        return lr[name]
    return lr


def sgd_step(loss_fn: Callable[[Params], torch.Tensor], params: Params, lr: LearningRate,
             first_order: bool = False) -> Params:
    """One gradient step ``theta - lr * grad loss_fn(theta)`` with ``torch.autograd.grad`` (the loop path).

    Args:
        loss_fn: scalar loss of a parameter dict.
        params: the tensors to adapt (others are closed over by ``loss_fn``).
        lr: a float, a scalar tensor, or ``{name: tensor}`` with per-parameter (elementwise) rates (Meta-SGD).
        first_order: detach the gradient (first-order MAML); otherwise it keeps its graph (``create_graph``),
            so the result is differentiable to second order.
    """
    names = list(params)
    loss = loss_fn(params)
    grads = torch.autograd.grad(loss, [params[k] for k in names], create_graph=not first_order,
                                allow_unused=True)
    out = {}
    for k, g in zip(names, grads, strict=True):
        if g is None:  # the parameter does not reach the loss: it stays put
            out[k] = params[k]
            continue
        if first_order:
            g = g.detach()
        out[k] = params[k] - _lr_of(lr, k) * g
    return out


def sgd_step_func(loss_fn: Callable[[Params], torch.Tensor], params: Params, lr: LearningRate,
                  first_order: bool = False) -> Params:
    """:func:`sgd_step` with ``torch.func.grad``: usable inside ``torch.vmap`` (the vectorised path).

    First order evaluates the gradient at detached copies, so no graph is recorded for it at all.
    """
    at = {k: v.detach() for k, v in params.items()} if first_order else params
    grads = torch.func.grad(loss_fn)(at)
    out = {}
    for k, p in params.items():
        g = grads[k].detach() if first_order else grads[k]
        out[k] = p - _lr_of(lr, k) * g
    return out


def inner_sgd(loss_fn: Callable[[Params], torch.Tensor], params: Params, lr: LearningRate, steps: int,
              first_order: bool = False, vectorized: bool = False, checkpoint: bool = False) -> Params:
    """``steps`` differentiable SGD steps on ``loss_fn`` from ``params``; returns the adapted dict.

    Args:
        loss_fn: scalar loss of a parameter dict (e.g. a task's support loss).
        params: initial tensors (the meta-parameters, or the adapted subset for ANIL).
        lr: see :func:`sgd_step`.
        steps: number of steps (0 returns ``params`` unchanged).
        first_order: drop second-order terms (detached gradients).
        vectorized: use ``torch.func.grad`` (needed inside ``torch.vmap``) instead of ``torch.autograd.grad``.
        checkpoint: recompute each step in the backward pass instead of storing its activations
            (``torch.utils.checkpoint``): memory stays about one step's worth for any number of steps, for
            roughly one extra forward+backward per step. Loop path only.
    """
    if steps < 0:
        raise ValueError(f"metashot.nn.functional.inner_sgd: steps must be >= 0, got {steps}")
    if checkpoint and vectorized:
        raise ValueError("metashot.nn.functional.inner_sgd: checkpoint=True is supported on the loop path "
                         "only (vectorized=False)")
    step = sgd_step_func if vectorized else sgd_step
    names = list(params)
    for _ in range(steps):
        if checkpoint:
            def run(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
                with torch.enable_grad():
                    new = step(loss_fn, dict(zip(names, tensors, strict=True)), lr, first_order)
                return tuple(new[k] for k in names)

            outs = torch.utils.checkpoint.checkpoint(run, *[params[k] for k in names], use_reentrant=False)
            params = dict(zip(names, outs, strict=True))
        else:
            params = step(loss_fn, params, lr, first_order)
    return params
