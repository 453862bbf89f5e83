"""The MetaLearner contract: every algorithm maps a support set to a predictor.

    learner.adapt(support_x, support_y) -> predictor        predictor(query_x) -> logits [M, N]

``meta_loss(batch)`` is the loss of each adapted predictor on its query set, averaged over the meta-batch; the
trainer back-propagates it into the learner's parameters. Everything else (data, episodes, training loop,
evaluation, checkpoints, CLI, fit/predict) is shared and never looks inside an algorithm.

Adding an algorithm is one file: put a module in ``metashot/algorithms/`` (the package imports every module
it holds), subclass :class:`MetaLearner`, decorate with ``@register("name")``, implement ``adapt`` (and
optionally a faster ``meta_loss`` / ``predict_batch``). Algorithms read no data: a batch is anything with the
attributes of :class:`Batch`.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from metashot.registry import Registry

Predictor = Callable[[torch.Tensor], torch.Tensor]
TaskScores = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]

# (the package imports every algorithm module; looking a name up first makes sure that happened)
ALGORITHMS: Registry[type[MetaLearner]] = Registry(
    "algorithm", on_lookup=lambda: importlib.import_module("metashot.algorithms"))


class Batch(Protocol):
    """What an algorithm reads from a batch of T tasks (an ``EpisodeBatch``, a ``RegressionBatch``, ...).

    Shapes: support_x [T, S, *item], support_y [T, S] (int64 labels 0..ways-1), query_x [T, M, *item],
    query_y [T, M]; regression batches have float targets [T, S, 1] / [T, M, 1] and ``ways`` = 1 (outputs).
    """

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor
    ways: int


def register(name: str) -> Callable[[type[MetaLearner]], type[MetaLearner]]:
    """Class decorator: make an algorithm constructible by name from configs and checkpoints (a name taken
    by another class is an error). What shared code needs to know of it are its declared fields
    (``adapt_needs_grad``, ``uses_queries``) and methods (``eval_settings``, ``extra_metrics``)."""
    def deco(cls: type[MetaLearner]) -> type[MetaLearner]:
        ALGORITHMS.add(name, cls)
        cls.algorithm_name = name
        return cls
    return deco


def algorithm_class(name: str) -> type[MetaLearner]:
    return ALGORITHMS.get(name)


def available_algorithms() -> list[str]:
    return ALGORITHMS.names()


class MetaLearner(nn.Module):
    """Base class of every metashot algorithm.

    Subclasses implement :meth:`adapt`. Shapes: support_x [N*K, *item], support_y [N*K] with labels 0..N-1,
    query_x [M, *item]; the predictor returns logits [M, N] (any monotone score is fine for accuracy; the
    default loss is cross-entropy on them).

    ``adapt_needs_grad`` is True for algorithms whose adaptation differentiates (MAML, Meta-LSTM); the
    evaluator then keeps autograd on while adapting.

    Transductive learners (``uses_queries`` True, e.g. SimpleShot with a transductive head) adapt with the
    unlabelled queries too: ``adapt(support_x, support_y, query_x) -> predictor``, and their predictor treats
    the items of one call as one unlabelled batch (a query's answer may depend on the others). Rules every
    such learner keeps: a single query, or its inductive setting, falls back to the inductive rule; the
    order of the queries never changes an answer; batches may be unbalanced or miss a class. ``evaluate``
    gives each episode's query set (per task and in the batched path); ``FewShotClassifier.predict`` gives
    the images of the call. Inductive learners ignore ``query_x``.
    """

    algorithm_name: str = "base"
    adapt_needs_grad: bool = False
    uses_queries: bool = False  # a transductive learner: predictions use the unlabelled batch

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor,
              query_x: torch.Tensor | None = None) -> Predictor:
        """A predictor for the task with this support set (and, for a transductive learner, its unlabelled
        queries ``query_x``, the batch the predictor will be asked about)."""
        raise NotImplementedError

    def adapt_mode(self) -> contextlib.AbstractContextManager:
        """Grad mode for adapt(): enabled when adaptation differentiates, else inference mode."""
        return torch.enable_grad() if self.adapt_needs_grad else torch.inference_mode()

    def task_loss(self, logits: torch.Tensor, query_y: torch.Tensor) -> torch.Tensor:
        """Loss of one task's query logits [M, N] against labels [M]; cross-entropy unless overridden."""
        return F.cross_entropy(logits, query_y)

    def meta_loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """Mean query loss over the batch's tasks, and metrics (``loss``, ``acc`` in [0, 1]).

        The reference implementation loops over tasks; algorithms may override it with a faster path that
        gives the same value.
        """
        losses, correct, total = [], 0, 0
        for t in range(batch.support_x.shape[0]):
            sx, sy, qx, qy = batch.support_x[t], batch.support_y[t], batch.query_x[t], batch.query_y[t]
            logits = self.adapt(sx, sy)(qx)
            losses.append(self.task_loss(logits, qy))
            correct += int((logits.argmax(-1) == qy).sum())
            total += qy.numel()
        loss = torch.stack(losses).mean()
        return loss, {"loss": float(loss.detach()), "acc": correct / max(total, 1)}

    def predict_batch(self, batch: Batch) -> torch.Tensor:
        """Query logits of every task: [T, N*Q, N]. Loops over tasks unless overridden."""
        out = []
        for t in range(batch.support_x.shape[0]):
            qx = batch.query_x[t]
            pred = self.adapt(batch.support_x[t], batch.support_y[t], qx) if self.uses_queries else \
                self.adapt(batch.support_x[t], batch.support_y[t])
            out.append(pred(qx).detach())
        return torch.stack(out)

    def config_dict(self) -> dict[str, Any]:
        """Constructor arguments that rebuild this learner (besides the backbone); stored in checkpoints."""
        return {}

    def eval_settings(self) -> list[str]:
        """The evaluation settings (:mod:`metashot.eval_settings`) this learner accepts: the constructor
        arguments it is rebuilt with that evaluation may change without touching a weight."""
        from metashot.eval_settings import EVAL_SETTINGS

        return [k for k in self.config_dict() if k in EVAL_SETTINGS]

    def extra_metrics(self, store: Any, **options: Any) -> dict[str, Any]:
        """Metrics of this algorithm beyond episode accuracy, on a class store (e.g. a Siamese network's
        same/different accuracy); None for an algorithm that has none."""
        raise NotImplementedError(f"{type(self).__name__} ({self.algorithm_name}) has no extra metrics")


def embed_episodes(embed: Callable[[torch.Tensor], torch.Tensor], batch: Batch,
                   transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
                   flat: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Every support and query item of the batch's T tasks through ``embed`` in one pass (after ``transform``,
    e.g. an augmentation): (zs [T, S, ...], zq [T, Q, ...]); ``flat``: features flattened to [T, S, D]."""
    T, S = batch.support_x.shape[:2]
    Q = batch.query_x.shape[1]
    x = torch.cat([batch.support_x.flatten(0, 1), batch.query_x.flatten(0, 1)])
    z = embed(x if transform is None else transform(x))
    shape = (-1,) if flat else tuple(z.shape[1:])
    return z[: T * S].view(T, S, *shape), z[T * S :].view(T, Q, *shape)


class BatchedEpisodesMixin:
    """For learners that score every task of a batch in one pass.

    A subclass (listing this mixin before :class:`MetaLearner`) implements ``batched_logits(batch)`` -> query
    scores [T, N*Q, N]; the mixin derives ``meta_loss`` (``task_loss`` over all queries, the mean over tasks
    for equal query counts) and, in eval mode, ``predict_batch`` from it. In training mode ``predict_batch``
    stays the per-task reference path.
    """

    embed_episodes = staticmethod(embed_episodes)  # (one pass over a batch's support and query items)

    def batched_logits(self, batch: Batch) -> torch.Tensor:
        raise NotImplementedError

    def meta_loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        logits = self.batched_logits(batch)
        loss = self.task_loss(logits.flatten(0, 1), batch.query_y.flatten())  # type: ignore[attr-defined]
        acc = (logits.argmax(-1) == batch.query_y).float().mean()
        return loss, {"loss": float(loss.detach()), "acc": float(acc)}

    def predict_batch(self, batch: Batch) -> torch.Tensor:
        if self.training:  # type: ignore[attr-defined]
            return super().predict_batch(batch)  # type: ignore[misc]
        return self.batched_logits(batch).detach()

    @staticmethod
    def one_task_predictor(embed: Callable[[torch.Tensor], torch.Tensor], scores: TaskScores,
                           support_x: torch.Tensor, support_y: torch.Tensor) -> Predictor:
        """An ``adapt`` from batched scoring: embed the support set once, score each query set as one task.

        ``scores(zs [T, S, ...], support_y [T, S], zq [T, M, ...], ways) -> [T, M, N]`` runs with T = 1; the
        predictor maps query_x [M, *item] to [M, N].
        """
        ways = int(support_y.max()) + 1
        zs = embed(support_x).unsqueeze(0)

        def predictor(query_x: torch.Tensor) -> torch.Tensor:
            return scores(zs, support_y.unsqueeze(0), embed(query_x).unsqueeze(0), ways)[0]

        return predictor
