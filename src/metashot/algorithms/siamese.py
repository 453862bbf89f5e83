"""Siamese networks: twin encoders with shared weights trained on same/different pairs.

Two pair losses over the embeddings f(x1), f(x2) of one encoder, with y = 1 for a same-class pair:

* contrastive (Chopra, Hadsell & LeCun 2005; Hadsell, Chopra & LeCun 2006), d = ||f(x1) - f(x2)||_2:
  ``L = y * d + (1 - y) * max(0, m - d)``, or with ``squared=True`` the form of Hadsell et al. 2006:
  ``L = y * d^2 / 2 + (1 - y) * max(0, m - d)^2 / 2``.
* Koch, Zemel & Salakhutdinov 2015 ("Siamese neural networks for one-shot image recognition"):
  ``p = sigmoid(sum_j alpha_j |f_j(x1) - f_j(x2)| + b)`` (a learned weighted L1 distance), trained with
  binary cross-entropy against y, with random affine distortions of the training images as augmentation.

Few-shot prediction compares a query with every support item: the query takes the class of the most similar
support item, and for K > 1 shots the class with the best mean similarity (similarity = -d for the
contrastive models, p for Koch's).

How it plugs into the Trainer (design decision): ``meta_loss`` builds the pairs from an ordinary episode
batch, every (query, support item) pair of each episode, and weights the same-class and different-class pairs
equally (half of the loss each), which is the expectation of a balanced pair sampler. So ``metashot train``
works unchanged with the usual :class:`~metashot.data.episodes.EpisodeSampler`; 2-way 1-shot episodes with
one query give exactly one same and one different pair each. :class:`metashot.data.pairs.PairSampler` draws
balanced, seeded pairs from a store directly; :func:`metashot.evaluate.verification_accuracy` scores held-out
pairs with it.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from metashot.algorithms.base import Batch, MetaLearner, Predictor, embed_episodes, register
from metashot.data.augment import random_affine
from metashot.nn.backbones import output_dim

LOSSES = ("contrastive", "koch")


def contrastive_loss(d: torch.Tensor, same: torch.Tensor, margin: float = 1.0,
                     squared: bool = False) -> torch.Tensor:
    """Per-pair contrastive loss: d [P] distances (>= 0), same [P] (1 same class, 0 different) -> [P].

    ``squared=False``: y * d + (1 - y) * max(0, m - d).
    ``squared=True`` (Hadsell et al. 2006): y * d^2 / 2 + (1 - y) * max(0, m - d)^2 / 2.
    """
    y = same.to(d.dtype)
    hinge = (margin - d).clamp_min(0)
    if squared:
        return 0.5 * (y * d.pow(2) + (1 - y) * hinge.pow(2))
    return y * d + (1 - y) * hinge


def balanced_mean(values: torch.Tensor, same: torch.Tensor) -> torch.Tensor:
    """Half the mean over same-class pairs plus half the mean over different-class pairs (or either alone)."""
    same = same.bool()
    parts = [values[m].mean() for m in (same, ~same) if bool(m.any())]
    return torch.stack(parts).mean()


def euclidean(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Euclidean distance between rows: a [..., M, D], b [..., S, D] -> [..., M, S] (finite gradient at 0)."""
    sq = (a.unsqueeze(-2) - b.unsqueeze(-3)).pow(2).sum(-1)
    return (sq + 1e-12).sqrt()


@register("siamese")
class SiameseNet(MetaLearner):
    """Siamese network (Koch, Zemel & Salakhutdinov, ICML DL workshop 2015; Hadsell, Chopra & LeCun 2006).

    ``loss="contrastive"``: L = y d + (1 - y) max(0, m - d), d = ||f(x1) - f(x2)||_2 (``squared=True``:
    L = y d^2/2 + (1 - y) max(0, m - d)^2/2). ``loss="koch"``:
    p = sigmoid(sum_j alpha_j |f_j(x1) - f_j(x2)| + b), L = BCE(p, y). A query gets the class with the best
    mean similarity to its support items (-d, or p).

    Args:
        backbone: shared encoder f, [B, *item] -> [B, D] (flattened).
        loss: ``contrastive`` or ``koch``.
        margin: m of the contrastive loss.
        squared: Hadsell et al.'s squared contrastive form.
        distort: apply Koch's random affine distortions to training images (in ``meta_loss`` only).
        input_shape: item shape [C, H, W], needed to size Koch's alpha (the encoder's output dimension).
    """

    def __init__(self, backbone: nn.Module, loss: str = "contrastive", margin: float = 1.0,
                 squared: bool = False, distort: bool = False,
                 input_shape: list[int] | tuple[int, ...] = (1, 28, 28)) -> None:
        super().__init__()
        if loss not in LOSSES:
            raise ValueError(f"SiameseNet: loss must be one of {LOSSES}, got {loss!r}")
        if margin <= 0:
            raise ValueError(f"SiameseNet: margin must be positive, got {margin}")
        self.backbone = backbone
        self.loss, self.margin, self.squared, self.distort = loss, float(margin), bool(squared), bool(distort)
        self.input_shape = [int(v) for v in input_shape]
        self.head = nn.Linear(output_dim(backbone, tuple(self.input_shape)), 1) if loss == "koch" else None

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x).flatten(1)

    def pair_scores(self, za: torch.Tensor, zb: torch.Tensor) -> torch.Tensor:
        """Raw pair scores between rows: za [..., M, D], zb [..., S, D] -> [..., M, S].

        The Euclidean distance d (contrastive; small = similar) or Koch's logit (large = similar).
        """
        if self.head is None:
            return euclidean(za, zb)
        return self.head((za.unsqueeze(-2) - zb.unsqueeze(-3)).abs()).squeeze(-1)

    def similarity(self, scores: torch.Tensor) -> torch.Tensor:
        """Pair scores -> similarities (larger = more alike): -d, or Koch's probability p."""
        return torch.sigmoid(scores) if self.head is not None else -scores

    def pair_loss(self, scores: torch.Tensor, same: torch.Tensor) -> torch.Tensor:
        """Per-pair loss of raw pair scores [P] against same [P] (1 same class, 0 different) -> [P]."""
        if self.head is None:
            return contrastive_loss(scores, same, self.margin, self.squared)
        return F.binary_cross_entropy_with_logits(scores, same.to(scores.dtype), reduction="none")

    def same_class(self, scores: torch.Tensor) -> torch.Tensor:
        """Verification decision: d < m / 2 (contrastive) or p > 1/2 (Koch). Bool, shape of ``scores``."""
        return scores > 0 if self.head is not None else scores < self.margin / 2

    def _class_logits(self, scores: torch.Tensor, support_y: torch.Tensor, ways: int) -> torch.Tensor:
        """Mean similarity of each query to each class's support items: scores [..., M, S] -> [..., M, N]."""
        onehot = F.one_hot(support_y, ways).to(scores.dtype)  # [..., S, N]
        counts = onehot.sum(-2, keepdim=True)
        if bool((counts == 0).any()):
            raise ValueError(f"SiameseNet: a class in 0..{ways - 1} has no support example; labels must "
                             f"be 0..N-1")
        return self.similarity(scores) @ onehot / counts

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor) -> Predictor:
        ways = int(support_y.max()) + 1
        zs = self.embed(support_x)

        def predictor(query_x: torch.Tensor) -> torch.Tensor:
            return self._class_logits(self.pair_scores(self.embed(query_x), zs), support_y, ways)

        return predictor

    def _episode_scores(self, batch: Batch, distort: bool) -> torch.Tensor:
        zs, zq = embed_episodes(self.embed, batch, random_affine if distort else None)
        return self.pair_scores(zq, zs)  # [T, Q, S]

    def meta_loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """Balanced pair loss over every (query, support) pair of each episode; ``acc``: few-shot accuracy."""
        scores = self._episode_scores(batch, self.distort and self.training)
        same = batch.query_y.unsqueeze(-1) == batch.support_y.unsqueeze(-2)  # [T, Q, S]
        loss = balanced_mean(self.pair_loss(scores.flatten(), same.flatten()), same.flatten())
        logits = self._class_logits(scores.detach(), batch.support_y, batch.ways)
        acc = (logits.argmax(-1) == batch.query_y).float().mean()
        verif = (self.same_class(scores.detach()) == same).float().mean()
        return loss, {"loss": float(loss.detach()), "acc": float(acc), "verification_acc": float(verif)}

    def predict_batch(self, batch: Batch) -> torch.Tensor:
        if self.training:
            return super().predict_batch(batch)
        return self._class_logits(self._episode_scores(batch, False), batch.support_y, batch.ways).detach()

    def extra_metrics(self, store: Any, pairs: int = 2000, seed: int = 4321, batch: int = 500,
                      device: str | torch.device = "cpu") -> dict[str, Any]:
        """Same/different accuracy (percent) on ``pairs`` balanced held-out pairs of ``store`` (a class store,
        seeded by ``seed``; see :class:`~metashot.data.pairs.PairSampler`)."""
        from metashot.data.pairs import PairSampler
        from metashot.data.preprocess import to_float

        sampler = PairSampler(store, batch, seed)
        was = self.training
        self.eval()
        correct = total = 0
        try:
            with torch.inference_mode():
                for i in range(math.ceil(pairs / batch)):
                    pb = sampler.sample(i)
                    n = min(batch, pairs - total)
                    z1 = self.embed(to_float(pb.x1[:n].to(device)))
                    z2 = self.embed(to_float(pb.x2[:n].to(device)))
                    scores = self.pair_scores(z1.unsqueeze(1), z2.unsqueeze(1)).reshape(n)
                    correct += int((self.same_class(scores).cpu() == pb.same[:n]).sum())
                    total += n
        finally:
            self.train(was)
        return {"verification_acc": round(100 * correct / total, 4), "pairs": total, "seed": seed,
                "dataset": store.meta.get("name", "?")}

    def config_dict(self) -> dict[str, Any]:
        return {"loss": self.loss, "margin": self.margin, "squared": self.squared, "distort": self.distort,
                "input_shape": self.input_shape}
