"""Few-shot heads over fixed features: inductive (each query alone) and transductive (the unlabelled batch).

A head maps one or more tasks of already-mapped features (:mod:`metashot.nn.feature_maps`) to query scores:

    head(zs [T, S, D], ys [T, S], zq [T, M, D], ways) -> scores [T, M, N]

Scores are logits: argmax is the prediction, softmax the class probabilities. A head whose ``transductive``
is True uses the other queries of the batch zq (so a query's answer can depend on the other queries); an
inductive head scores every query on its own. Heads are pure functions of their inputs (no state kept
between calls) and hold only hyperparameters. One file per head, each opening with its paper and equation;
``@register_head`` makes a head constructible by name (``SimpleShot(head=..., head_args=...)``).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from metashot.nn.prototypes import class_means, sq_euclidean
from metashot.registry import Registry, call_with


class Head:
    """Base class: hyperparameters in ``__init__``, the rule in ``__call__``; ``args`` rebuilds it."""

    name = "head"
    transductive = False

    def __init__(self, **args: Any) -> None:
        self.args = dict(args)

    def __call__(self, zs: torch.Tensor, ys: torch.Tensor, zq: torch.Tensor, ways: int) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.args.items())})"


HEADS: Registry[type[Head]] = Registry("head")


def register_head(name: str) -> Callable[[type[Head]], type[Head]]:
    """Class decorator: a head constructible by name; a second head with the same name is an error."""
    def deco(cls: type[Head]) -> type[Head]:
        HEADS.add(name, cls)
        cls.name = name
        return cls
    return deco


def make_head(name: str, **args: Any) -> Head:
    """The head registered as ``name`` with hyperparameters ``args`` (unknown ones are an error)."""
    return call_with(HEADS.get(name), args, lambda e: f"head {name!r}: bad arguments {sorted(args)} ({e})")


def available_heads() -> list[str]:
    return HEADS.names()


def distance_logits(zq: torch.Tensor, protos: torch.Tensor, scale: float) -> torch.Tensor:
    """-scale * ||zq - p_k||^2: zq [..., M, D], protos [..., N, D] -> [..., M, N]."""
    return -scale * sq_euclidean(zq, protos)


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of rows: a [..., M, D], b [..., N, D] -> [..., M, N]."""
    return F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).transpose(-1, -2)


def prototypes(zs: torch.Tensor, ys: torch.Tensor, ways: int) -> torch.Tensor:
    """Class means of the support features [..., S, D] -> [..., N, D]."""
    return class_means(zs, ys, ways, owner="head")


# -- what several heads use (entropies, fitting a classifier by gradient descent) --------------------------


def shannon(p: torch.Tensor) -> torch.Tensor:
    """H(p) = -sum_k p_k log p_k over the last dimension."""
    return -(p * torch.log(p + 1e-12)).sum(-1)


def fit_classifier(zs: torch.Tensor, ys: torch.Tensor, zq: torch.Tensor | None, ways: int,
                   loss_of: object, steps: int, lr: float, logits_of: object) -> torch.Tensor:
    """Gradient descent (Adam) on classifier weights W [T, N, D] initialised at the support means.

    ``loss_of(support_logits, ys, query_logits) -> [T]`` per-task losses; their sum is minimised, and the
    tasks are independent, so one run solves every task of the batch. Returns W (detached).
    """
    # Heads run under the learner's adapt_mode (inference mode for frozen features): leave it for this
    # optimisation, on copies made outside it (inference tensors cannot be saved for backward).
    with torch.inference_mode(False), torch.enable_grad():
        zs_, zq_ = zs.clone(), None if zq is None else zq.clone()
        w = prototypes(zs_, ys.clone(), ways).detach().requires_grad_(True)
        opt = torch.optim.Adam([w], lr=lr)
        for _ in range(steps):
            opt.zero_grad()
            loss = loss_of(logits_of(zs_, w), ys, None if zq_ is None else logits_of(zq_, w))  # type: ignore
            loss.sum().backward()
            opt.step()
    return w.detach()


def ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each task: logits [T, S, N], y [T, S] -> [T]."""
    return F.cross_entropy(logits.transpose(-1, -2), y, reduction="none").mean(-1)


for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    importlib.import_module(f"{__name__}.{_module}")
