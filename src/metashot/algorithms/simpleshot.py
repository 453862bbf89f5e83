"""SimpleShot: nearest class mean on normalised features."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from metashot.algorithms.base import Batch, BatchedEpisodesMixin, MetaLearner, Predictor, register
from metashot.algorithms.protonet import class_means, sq_euclidean


@register("simpleshot")
class SimpleShot(BatchedEpisodesMixin, MetaLearner):
    """SimpleShot (Wang, Chao, Weinberger & van der Maaten, arXiv:1911.04623, 2019).

    A query is assigned to the nearest class mean of transformed embeddings,
    y(x) = argmin_k || t(f(x)) - c_k ||^2,  c_k = 1/|S_k| sum_{x_i in S_k} t(f(x_i)),
    where t is the paper's CL2N map: centre, then L2-normalise. The paper centres on the mean feature of the
    base (training) classes; a backbone can do that itself (``TimmBackbone(centre=True)``).
    ``centre="support"`` centres on the mean of the task's own L2-normalised support embeddings instead,
    t(z) = n(n(z) - 1/|S| sum_{x_i in S} n(f(x_i))),  n(v) = v / ||v||,
    which needs no base classes, so it suits a photo domain unlike the base classes (it uses the support set
    only: the rule stays inductive, each query is classified on its own). ``centre="none"`` is the paper's
    L2N.

    Args:
        backbone: embedding network f, [B, *item] -> [B, D]; usually a frozen pretrained network.
        centre: ``support`` or ``none``.
        l2norm: L2-normalise (the paper's L2N); False with ``centre="none"`` is plain nearest class mean.
        temperature: scores are ``-temperature * d^2``; it changes no prediction, only how sharp
            ``predict_proba`` is (calibration).
    """

    def __init__(self, backbone: nn.Module, centre: str = "support", l2norm: bool = True,
                 temperature: float = 1.0) -> None:
        super().__init__()
        if centre not in ("support", "none"):
            raise ValueError(f"SimpleShot: centre must be 'support' or 'none', got {centre!r}")
        if centre == "support" and not l2norm:
            raise ValueError("SimpleShot: centre='support' centres L2-normalised embeddings; "
                             "set l2norm: true")
        self.backbone = backbone
        self.centre = centre
        self.l2norm = bool(l2norm)
        if not temperature > 0:
            raise ValueError(f"SimpleShot: temperature must be positive, got {temperature}")
        self.temperature = float(temperature)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        z = self.backbone(x).flatten(1)
        return F.normalize(z, dim=-1) if self.l2norm else z

    def _transform(self, z: torch.Tensor, support_mean: torch.Tensor | None) -> torch.Tensor:
        """z [..., M, D] (already L2N if ``l2norm``), support_mean [..., 1, D] or None."""
        if support_mean is None:
            return z
        return F.normalize(z - support_mean, dim=-1)

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor) -> Predictor:
        ways = int(support_y.max()) + 1
        zs = self.embed(support_x)
        mu = zs.mean(0, keepdim=True) if self.centre == "support" else None
        protos = class_means(self._transform(zs, mu), support_y, ways)

        def predictor(query_x: torch.Tensor) -> torch.Tensor:
            return -self.temperature * sq_euclidean(self._transform(self.embed(query_x), mu), protos)

        return predictor

    def batched_logits(self, batch: Batch) -> torch.Tensor:
        T, S = batch.support_x.shape[:2]
        Q = batch.query_x.shape[1]
        z = self.embed(torch.cat([batch.support_x.flatten(0, 1), batch.query_x.flatten(0, 1)]))
        zs, zq = z[: T * S].view(T, S, -1), z[T * S :].view(T, Q, -1)
        mu = zs.mean(1, keepdim=True) if self.centre == "support" else None
        protos = class_means(self._transform(zs, mu), batch.support_y, batch.ways)
        return -self.temperature * sq_euclidean(self._transform(zq, mu), protos)

    def config_dict(self) -> dict[str, Any]:
        return {"centre": self.centre, "l2norm": self.l2norm, "temperature": self.temperature}
