"""Prototypical Networks."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from metashot.algorithms.base import Batch, BatchedEpisodesMixin, MetaLearner, Predictor, register
from metashot.nn.prototypes import class_means, class_sums, sq_euclidean  # noqa: F401 (re-exported)


@register("protonet")
class ProtoNet(BatchedEpisodesMixin, MetaLearner):
    """Prototypical Networks (Snell, Swersky & Zemel, NeurIPS 2017).

    Each class k gets a prototype c_k = 1/|S_k| sum_{(x_i, y_i) in S_k} f(x_i), the mean embedding of its
    support examples; a query x is classified by p(y = k | x) = softmax_k(-d(f(x), c_k)) with d the squared
    Euclidean distance (Eq. 1-2 of the paper). Training minimises the query negative log-likelihood.

    Args:
        backbone: embedding network f, [B, *item] -> [B, D] (any shape; flattened).
        distance: ``sqeuclidean`` (the paper) or ``cosine`` (scaled by ``temperature``).
    """

    def __init__(self, backbone: nn.Module, distance: str = "sqeuclidean", temperature: float = 10.0) -> None:
        super().__init__()
        if distance not in ("sqeuclidean", "cosine"):
            raise ValueError(f"ProtoNet: distance must be 'sqeuclidean' or 'cosine', got {distance!r}")
        self.backbone = backbone
        self.distance = distance
        self.temperature = temperature

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x).flatten(1)

    def _scores(self, zq: torch.Tensor, protos: torch.Tensor) -> torch.Tensor:
        if self.distance == "cosine":
            return self.temperature * F.normalize(zq, dim=-1) @ F.normalize(protos, dim=-1).transpose(-1, -2)
        return -sq_euclidean(zq, protos)

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor) -> Predictor:
        ways = int(support_y.max()) + 1
        protos = class_means(self.embed(support_x), support_y, ways)

        def predictor(query_x: torch.Tensor) -> torch.Tensor:
            return self._scores(self.embed(query_x), protos)

        return predictor

    def adapt_embedded(self, zs: torch.Tensor, ys: torch.Tensor) -> Predictor:
        """A predictor from support embeddings zs [S, D] (from :meth:`embed`) and labels ys [S] (0..N-1): what
        a saved or extended classifier (metashot.fitted) uses, so old photos are never embedded again."""
        return EmbeddedPredictor(self, class_means(zs, ys, int(ys.max()) + 1))

    def batched_logits(self, batch: Batch) -> torch.Tensor:
        # One forward over every task's support and query items. Equal to the per-task path when the
        # backbone's batch norm uses running statistics (eval) and up to BN's batch statistics in training,
        # where the paper's implementation also normalises over the whole episode.
        zs, zq = self.embed_episodes(self.embed, batch)
        protos = class_means(zs, batch.support_y, batch.ways)
        return self._scores(zq, protos)

    def config_dict(self) -> dict[str, Any]:
        return {"distance": self.distance, "temperature": self.temperature}


class EmbeddedPredictor:
    """``predictor(query_x) -> scores [M, N]`` against fixed prototypes [N, D]; a plain (picklable) object."""

    def __init__(self, learner: ProtoNet, protos: torch.Tensor) -> None:
        self.learner, self.protos = learner, protos

    def __call__(self, query_x: torch.Tensor) -> torch.Tensor:
        return self.learner._scores(self.learner.embed(query_x), self.protos)
