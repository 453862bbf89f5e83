"""The optimizer and learning-rate schedule of a run (``train.optimizer``, ``train.lr_schedule``)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch

from metashot.config import Config


def make_optimizer(params: Any, cfg: Config) -> torch.optim.Optimizer:
    """Adam or SGD (with momentum) over ``params`` with ``train.lr`` and ``train.weight_decay``."""
    t = cfg.train
    if t.optimizer == "adam":
        return torch.optim.Adam(params, lr=t.lr, weight_decay=t.weight_decay)
    if t.optimizer == "sgd":
        if not 0.0 <= t.momentum < 1.0:
            raise ValueError(f"train.momentum must be in [0, 1), got {t.momentum!r}")
        return torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
    raise ValueError(f"train.optimizer must be 'adam' or 'sgd', got {t.optimizer!r}")


def lr_factor(cfg: Config) -> Callable[[int], float]:
    """Multiplier of the base learning rate after ``s`` steps, in closed form (so resuming is exact).

    ``step``: ``lr_gamma ** (s // lr_step)``; ``constant``: 1;
    ``cosine``: ``f + (1 - f) * (1 + cos(pi * s / steps)) / 2`` with ``f = lr_min / lr``.
    """
    t = cfg.train
    if t.lr_schedule == "constant":
        return lambda s: 1.0
    if t.lr_schedule == "step":
        size, gamma = max(1, t.lr_step), t.lr_gamma
        return lambda s: gamma ** (s // size)
    if t.lr_schedule == "cosine":
        total, floor = max(1, t.steps), (t.lr_min / t.lr if t.lr else 0.0)
        return lambda s: floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(s, total) / total))
    raise ValueError(f"train.lr_schedule must be constant, step or cosine, got {t.lr_schedule!r}")


def make_schedule(
    opt: torch.optim.Optimizer, cfg: Config, step: int = 0
) -> torch.optim.lr_scheduler.LRScheduler:
    """The schedule of ``cfg`` over ``opt``, positioned after ``step`` steps.

    ``step > 0`` needs ``initial_lr`` in every parameter group (the base rate; a restored optimizer has it);
    the rate of each group becomes ``initial_lr * lr_factor(cfg)(step)``.
    """
    return torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(cfg), last_epoch=step - 1)


# -- the guard around an optimizer step -------------------------------------------------------------


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/Inf loss, gradient, buffer or parameter; training stops at that step."""


def grad_norm_and_finite(grads: list[torch.Tensor], buffers: list[torch.Tensor],
                         device: torch.device) -> tuple[float, bool]:
    """(total gradient norm, whether every tensor of ``buffers`` is finite), read back in one device sync:
    the forward pass updated the batch-norm running statistics, which can overflow while the loss stays
    finite."""
    norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros((), device=device)
    ok = [torch.isfinite(b).all() for b in buffers]
    flag = torch.stack(ok).all() if ok else torch.ones((), dtype=torch.bool, device=norm.device)
    value, finite = torch.stack([norm.float(), flag.to(norm.device).float()]).tolist()
    return value, finite == 1.0


def non_finite_names(named: Iterable[tuple[str, torch.Tensor]]) -> list[str]:
    """Names of the floating-point tensors of ``named`` that hold NaN/Inf."""
    return [n for n, t in named if t.is_floating_point() and not bool(torch.isfinite(t).all())]


def non_finite_step(loss: float, norm: float, buffers_ok: bool, module: torch.nn.Module,
                    step: int) -> NonFiniteLossError | None:
    """The error for step ``step`` (0-based) if its loss, gradient norm or ``module``'s buffers are not all
    finite (the caller then restores the buffers and takes no update); None if they are."""
    if math.isfinite(loss) and math.isfinite(norm) and buffers_ok:
        return None
    if not math.isfinite(loss):
        what = f"loss ({loss})"
    elif not math.isfinite(norm):
        what = f"gradient norm ({norm})"
    else:
        bad = non_finite_names(module.named_buffers())
        what = f"buffer(s) {', '.join(bad)} (e.g. batch-norm running statistics)"
    return NonFiniteLossError(f"Trainer: non-finite {what} at step {step + 1} (batch {step}); "
                              f"no update was applied")
