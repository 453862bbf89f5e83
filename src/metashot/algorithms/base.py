"""The MetaLearner contract: every algorithm maps a support set to a predictor.

    learner.adapt(support_x, support_y) -> predictor        predictor(query_x) -> logits [M, N]

``meta_loss(batch)`` is the loss of each adapted predictor on its query set, averaged over the meta-batch; the
trainer back-propagates it into the learner's parameters. Everything else (data, episodes, training loop,
evaluation, checkpoints, CLI, fit/predict) is shared and never looks inside an algorithm.

Adding an algorithm is one file: subclass :class:`MetaLearner`, decorate with ``@register("name")``, implement
``adapt`` (and optionally a faster ``meta_loss`` / ``predict_batch``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from metashot.data.episodes import EpisodeBatch

Predictor = Callable[[torch.Tensor], torch.Tensor]

_REGISTRY: dict[str, type[MetaLearner]] = {}


def register(name: str) -> Callable[[type[MetaLearner]], type[MetaLearner]]:
    """Class decorator: make an algorithm constructible by name from configs and checkpoints."""
    def deco(cls: type[MetaLearner]) -> type[MetaLearner]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"algorithm name {name!r} is already registered by {_REGISTRY[name].__name__}")
        _REGISTRY[name] = cls
        cls.algorithm_name = name
        return cls
    return deco


def algorithm_class(name: str) -> type[MetaLearner]:
    import metashot.algorithms  # noqa: F401  (registers the built-in algorithms)

    if name not in _REGISTRY:
        raise ValueError(f"unknown algorithm {name!r}; available: {sorted(_REGISTRY)}")
    return _REGISTRY[name]


def available_algorithms() -> list[str]:
    import metashot.algorithms  # noqa: F401

    return sorted(_REGISTRY)


class MetaLearner(nn.Module):
    """Base class of every metashot algorithm.

    Subclasses implement :meth:`adapt`. Shapes: support_x [N*K, *item], support_y [N*K] with labels 0..N-1,
    query_x [M, *item]; the predictor returns logits [M, N] (any monotone score is fine for accuracy; the
    default loss is cross-entropy on them).

    ``adapt_needs_grad`` is True for algorithms whose adaptation differentiates (MAML, Meta-LSTM); the
    evaluator then keeps autograd on while adapting.
    """

    algorithm_name: str = "base"
    adapt_needs_grad: bool = False

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor) -> Predictor:
        raise NotImplementedError

    def task_loss(self, logits: torch.Tensor, query_y: torch.Tensor) -> torch.Tensor:
        """Loss of one task's query logits [M, N] against labels [M]; cross-entropy unless overridden."""
        return F.cross_entropy(logits, query_y)

    def meta_loss(self, batch: EpisodeBatch) -> tuple[torch.Tensor, dict[str, float]]:
        """Mean query loss over the batch's tasks, and metrics (``loss``, ``acc`` in [0, 1]).

        The reference implementation loops over tasks; algorithms may override it with a faster path that
        gives the same value.
        """
        losses, correct, total = [], 0, 0
        for t in range(batch.num_tasks):
            sx, sy, qx, qy = batch.task(t)
            logits = self.adapt(sx, sy)(qx)
            losses.append(self.task_loss(logits, qy))
            correct += int((logits.argmax(-1) == qy).sum())
            total += qy.numel()
        loss = torch.stack(losses).mean()
        return loss, {"loss": float(loss.detach()), "acc": correct / max(total, 1)}

    def predict_batch(self, batch: EpisodeBatch) -> torch.Tensor:
        """Query logits of every task: [T, N*Q, N]. Loops over tasks unless overridden."""
        out = []
        for t in range(batch.num_tasks):
            sx, sy, qx, _ = batch.task(t)
            out.append(self.adapt(sx, sy)(qx).detach())
        return torch.stack(out)

    def config_dict(self) -> dict[str, Any]:
        """Constructor arguments that rebuild this learner (besides the backbone); stored in checkpoints."""
        return {}


class BatchedEpisodesMixin:
    """For learners that score every task of a batch in one pass.

    A subclass (listing this mixin before :class:`MetaLearner`) implements ``batched_logits(batch)`` -> query
    scores [T, N*Q, N]; the mixin derives ``meta_loss`` (``task_loss`` over all queries, the mean over tasks
    for equal query counts) and, in eval mode, ``predict_batch`` from it. In training mode ``predict_batch``
    stays the per-task reference path.
    """

    def batched_logits(self, batch: EpisodeBatch) -> torch.Tensor:
        raise NotImplementedError

    def meta_loss(self, batch: EpisodeBatch) -> tuple[torch.Tensor, dict[str, float]]:
        logits = self.batched_logits(batch)
        loss = self.task_loss(logits.flatten(0, 1), batch.query_y.flatten())  # type: ignore[attr-defined]
        acc = (logits.argmax(-1) == batch.query_y).float().mean()
        return loss, {"loss": float(loss.detach()), "acc": float(acc)}

    def predict_batch(self, batch: EpisodeBatch) -> torch.Tensor:
        if self.training:  # type: ignore[attr-defined]
            return super().predict_batch(batch)  # type: ignore[misc]
        return self.batched_logits(batch).detach()
