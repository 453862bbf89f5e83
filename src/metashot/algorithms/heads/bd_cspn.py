"""BD-CSPN: prototype rectification (Liu, Song & Qin, ECCV 2020, "Prototype rectification for few-shot
learning", eq. 5-8)."""

from __future__ import annotations

import torch

from metashot.algorithms.heads import Head, cosine, prototypes, register_head


@register_head("bd_cspn")
class BDCSPN(Head):
    """Transductive: reduce the cross-class bias, then the intra-class bias of the prototypes.

    Cross-class bias (eq. 8): every query is shifted by xi = mean(support) - mean(queries).
    Intra-class bias (eq. 5-6): with pseudo-labels of the shifted queries by cosine to the support means
    p_k, each class's set X'_k = its support features and the queries pseudo-labelled k, and

        p'_k = sum_{x in X'_k} w_x x,   w_x = exp(eps cos(x, p_k)) / sum_{x' in X'_k} exp(eps cos(x', p_k)).

    Scores: s * cos(q + xi, p'_k).

    Args:
        eps: the weighting sharpness epsilon (the paper: 10).
        scale: s, the sharpness of the scores.
        shift: apply the cross-class shift xi.
    """

    transductive = True

    def __init__(self, eps: float = 10.0, scale: float = 10.0, shift: bool = True) -> None:
        super().__init__(eps=eps, scale=scale, shift=shift)
        self.eps, self.scale, self.shift = float(eps), float(scale), bool(shift)

    def __call__(self, zs: torch.Tensor, ys: torch.Tensor, zq: torch.Tensor, ways: int) -> torch.Tensor:
        if self.shift:
            zq = zq + (zs.mean(-2, keepdim=True) - zq.mean(-2, keepdim=True))
        p = prototypes(zs, ys, ways)
        pseudo = cosine(zq, p).argmax(-1)  # [T, M]
        x = torch.cat([zs, zq], -2)  # [T, S+M, D]
        member = torch.nn.functional.one_hot(torch.cat([ys, pseudo], -1), ways).to(x.dtype)  # [T, S+M, N]
        logit_w = self.eps * cosine(x, p)  # [T, S+M, N]
        logit_w = logit_w.masked_fill(member == 0, float("-inf"))
        w = logit_w.softmax(-2)  # over the members of each class (every class has its support)
        rectified = w.transpose(-1, -2) @ x  # [T, N, D]
        return self.scale * cosine(zq, rectified)
