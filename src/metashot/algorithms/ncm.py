"""Nearest class mean: a training-free few-shot baseline, e.g. on frozen sentence embeddings.

It has nothing to meta-train, so the shared evaluator and the full-way protocol run it exactly like any
trained learner.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from metashot.algorithms.base import MetaLearner, Predictor, register
from metashot.nn.prototypes import class_means


@register("ncm")
class NearestClassMean(MetaLearner):
    """Nearest class mean, cosine (Mensink et al., TPAMI 2013; the ProtoNet rule, Snell et al. 2017).

    c_k = mean of the support embeddings of class k; logits_k(x) = s * cos(f(x), c_k) with s = ``temperature``
    (a fixed scale that only sharpens the softmax; the argmax is the nearest mean). f is the ``backbone``
    (the identity on frozen embeddings by default).
    """

    def __init__(self, backbone: nn.Module | None = None, temperature: float = 10.0) -> None:
        super().__init__()
        self.backbone = backbone if backbone is not None else nn.Identity()
        self.temperature = float(temperature)

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor) -> Predictor:
        """support_x [S, D], support_y [S] (0..N-1) -> predictor(query_x [M, D]) -> logits [M, N]."""
        ways = int(support_y.max()) + 1
        protos = F.normalize(class_means(self.backbone(support_x).flatten(1), support_y, ways), dim=-1)

        def predictor(query_x: torch.Tensor) -> torch.Tensor:
            return self.temperature * F.normalize(self.backbone(query_x).flatten(1), dim=-1) @ protos.T

        return predictor

    def config_dict(self) -> dict[str, Any]:
        return {"temperature": self.temperature}
