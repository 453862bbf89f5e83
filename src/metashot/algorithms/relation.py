"""Relation Networks (Sung, Yang, Zhang, Xiang, Torr & Hospedales, CVPR 2018)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from metashot.algorithms.base import Batch, BatchedEpisodesMixin, MetaLearner, Predictor, register
from metashot.nn.backbones import conv_block
from metashot.nn.prototypes import class_sums


class RelationModule(nn.Module):
    """g_phi: concatenated feature maps [P, 2C, h, w] -> relation scores in (0, 1), [P].

    Two [3x3 conv, BN, ReLU, 2x2 max-pool] blocks, then FC-ReLU-FC-sigmoid (the paper's module).
    """

    def __init__(self, channels: int, map_shape: tuple[int, int], hidden: int = 8) -> None:
        super().__init__()
        self.convs = nn.Sequential(conv_block(2 * channels, channels), conv_block(channels, channels))
        with torch.no_grad():
            flat = self.convs.eval()(torch.zeros(1, 2 * channels, *map_shape)).numel()
        self.convs.train()
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(flat, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, pairs: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.fc(self.convs(pairs))).squeeze(-1)


@register("relation")
class RelationNet(BatchedEpisodesMixin, MetaLearner):
    """Relation Networks (Sung et al., CVPR 2018).

    r_{i,j} = g_phi(C(f(x_i), f(x_j))) (Eq. 1): the relation score of query x_j and class i, with f the
    embedding (feature maps), C the channel-wise concatenation and x_i the class's support feature map (for
    K > 1 shots, the element-wise sum of the class's support feature maps). Trained with the mean squared
    error against one-hot targets, sum_i sum_j (r_{i,j} - 1(y_i == y_j))^2 (Eq. 2, averaged here). The
    predictor returns the scores [M, N].

    Args:
        backbone: feature-map embedding (e.g. ``conv4_maps``), [B, *item] -> [B, C, h, w].
        input_shape: item shape [C, H, W], used to size the relation module.
        hidden: width of the relation module's hidden FC layer (8 in the paper).
    """

    def __init__(self, backbone: nn.Module, input_shape: list[int] | tuple[int, ...] = (1, 28, 28),
                 hidden: int = 8) -> None:
        super().__init__()
        self.backbone = backbone
        self.input_shape = [int(v) for v in input_shape]
        self.hidden = int(hidden)
        was = backbone.training
        with torch.no_grad():
            p = next(iter(backbone.parameters()), None)
            dev = {"device": p.device} if p is not None else {}
            out = backbone.eval()(torch.zeros(2, *self.input_shape, **dev))
        backbone.train(was)
        if out.dim() != 4:
            raise ValueError(f"RelationNet: the backbone must return feature maps [B, C, h, w], got shape "
                             f"{tuple(out.shape)}; use a map backbone such as conv4_maps")
        self.relation = RelationModule(out.shape[1], (out.shape[2], out.shape[3]), self.hidden)

    def _scores(self, fs: torch.Tensor, support_y: torch.Tensor, fq: torch.Tensor, ways: int) -> torch.Tensor:
        """fs [T, S, C, h, w], support_y [T, S], fq [T, M, C, h, w] -> relation scores [T, M, N]."""
        T, M = fq.shape[:2]
        sums, _ = class_sums(fs.flatten(2), support_y, ways, "RelationNet")  # the sum over each class's shots
        protos = sums.view(*sums.shape[:2], *fs.shape[2:])  # [T, N, C, h, w]
        pairs = torch.cat([protos.unsqueeze(1).expand(T, M, *protos.shape[1:]),
                           fq.unsqueeze(2).expand(T, M, ways, *fq.shape[2:])], dim=3)  # [T, M, N, 2C, h, w]
        return self.relation(pairs.flatten(0, 2)).view(T, M, ways)

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor) -> Predictor:
        return self.one_task_predictor(self.backbone, self._scores, support_x, support_y)

    def task_loss(self, logits: torch.Tensor, query_y: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(logits, F.one_hot(query_y, logits.shape[-1]).to(logits.dtype))

    def batched_logits(self, batch: Batch) -> torch.Tensor:
        fs, fq = self.embed_episodes(self.backbone, batch, flat=False)
        return self._scores(fs, batch.support_y, fq, batch.ways)

    def config_dict(self) -> dict[str, Any]:
        return {"input_shape": self.input_shape, "hidden": self.hidden}
