"""FEAT: few-shot embedding adaptation with a set-to-set function (Ye, Hu, Zhan & Sha, CVPR 2020,
"Few-shot learning via embedding adaptation with set-to-set functions", eq. 3-5, the Transformer variant).

The class prototypes of a task are adapted together by one self-attention layer before the queries are scored,
so each prototype moves in view of the other classes of the same task:

    P = [p_1 .. p_N],  p_k = mean_{i: y_i = k} z_i,
    A = softmax_rows((P W_q)(P W_k)^T / sqrt(d_k)),
    p'_k = p_k + (A (P W_v) W_o)_k,
    score_k(q) = -s ||q - p'_k||^2.

W_q, W_k: D x d_k; the value path W_v W_o (D x r, r x D) is of low rank r so that the layer stays small over
wide features (the paper uses full-rank values and a LayerNorm over the sum; here the features are already
centred and L2-normalised, so no LayerNorm). W_o starts at zero: an untrained FEAT head is the
nearest-class-mean rule exactly. It is meta-trained on cached features of base classes
(``benchmarks/photos/feat_train.py``, the cheap form of P>M>F's second stage: the backbone stays frozen),
without the paper's auxiliary contrastive term. ``steps`` > 0 refines the adapted prototypes with soft
k-means over the unlabelled queries (Ren et al. 2018), which makes the head transductive.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from metashot.algorithms.heads import Head, distance_logits, prototypes, register_head


class SetAttention(nn.Module):
    """The set-to-set function of FEAT over prototypes P [..., N, D] -> P' [..., N, D] (module docstring)."""

    def __init__(self, dim: int, key_dim: int = 64, rank: int = 64, seed: int = 0) -> None:
        super().__init__()
        if min(dim, key_dim, rank) < 1:
            raise ValueError(f"SetAttention: dim, key_dim and rank must be >= 1, got {dim}, {key_dim}, "
                             f"{rank}")
        gen = torch.Generator().manual_seed(seed)
        self.dim, self.key_dim, self.rank = int(dim), int(key_dim), int(rank)
        self.w_q = nn.Parameter(torch.randn(dim, key_dim, generator=gen) / math.sqrt(dim))
        self.w_k = nn.Parameter(torch.randn(dim, key_dim, generator=gen) / math.sqrt(dim))
        self.w_v = nn.Parameter(torch.randn(dim, rank, generator=gen) / math.sqrt(dim))
        self.w_o = nn.Parameter(torch.zeros(rank, dim))

    def forward(self, p: torch.Tensor) -> torch.Tensor:
        w_q, w_k, w_v, w_o = (w.to(p.dtype) for w in (self.w_q, self.w_k, self.w_v, self.w_o))
        a = ((p @ w_q) @ (p @ w_k).transpose(-1, -2) / math.sqrt(self.key_dim)).softmax(-1)
        return p + a @ (p @ w_v) @ w_o


def load_set_attention(path: str | Path) -> SetAttention:
    """A :class:`SetAttention` from a safetensors file written by :func:`save_set_attention`.

    Raises:
        ValueError: one line naming the file, when it is missing, unreadable or not a FEAT layer.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such FEAT weights file; train one with benchmarks/photos/feat_train.py")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable safetensors file ({e}); re-create it") from e
    names = {"w_q", "w_k", "w_v", "w_o"}
    if set(tensors) != names or tensors["w_q"].dim() != 2:
        raise ValueError(f"{path}: not a FEAT layer (expected tensors {sorted(names)}, found "
                         f"{sorted(tensors)})")
    dim, key_dim = tensors["w_q"].shape
    rank = tensors["w_v"].shape[1]
    layer = SetAttention(dim, key_dim, rank)
    try:
        layer.load_state_dict(tensors)
    except RuntimeError as e:
        raise ValueError(f"{path}: FEAT tensors of inconsistent shapes ({e}); re-create it") from e
    if not all(bool(t.isfinite().all()) for t in tensors.values()):
        raise ValueError(f"{path}: FEAT weights hold NaN or Inf; re-create it")
    return layer.requires_grad_(False)


def save_set_attention(layer: SetAttention, path: str | Path, metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().float().contiguous() for k, v in layer.state_dict().items()}, str(path),
              metadata=metadata or {})


@register_head("feat")
class FEAT(Head):
    """FEAT's adapted prototypes scored by -s ||q - p'_k||^2 (module docstring).

    Args:
        weights: a safetensors file of a meta-trained layer (``benchmarks/photos/feat_train.py``); None: an
            untrained layer (the nearest-class-mean rule until it is trained), built at the first call.
        scale: s.
        steps: soft k-means refinement steps over the queries after the adaptation (0: inductive): the
            class means are refined as in ``soft_kmeans`` and the adaptation p'_k - p_k is added back.
        key_dim, rank: sizes of an untrained layer.
    """

    def __init__(self, weights: str | None = None, scale: float = 10.0, steps: int = 0,
                 key_dim: int = 64, rank: int = 64) -> None:
        super().__init__(weights=weights, scale=scale, steps=steps, key_dim=key_dim, rank=rank)
        self.scale, self.steps = float(scale), int(steps)
        if self.steps < 0:
            raise ValueError(f"feat: steps must be >= 0, got {steps}")
        self.transductive = self.steps > 0
        self.key_dim, self.rank = int(key_dim), int(rank)
        self.layer: SetAttention | None = None if weights is None else load_set_attention(weights)

    def module(self, dim: int) -> SetAttention:
        """The set-to-set layer over features of width ``dim`` (built untrained at the first call)."""
        if self.layer is None:
            self.layer = SetAttention(dim, self.key_dim, self.rank)
        if self.layer.dim != dim:
            raise ValueError(f"feat: the layer was trained on {self.layer.dim}-wide features, these are "
                             f"{dim} wide; train it on this model's features "
                             f"(benchmarks/photos/feat_train.py)")
        return self.layer

    def __call__(self, zs: torch.Tensor, ys: torch.Tensor, zq: torch.Tensor, ways: int) -> torch.Tensor:
        p = self.module(zs.shape[-1])(prototypes(zs, ys, ways))
        if self.steps:
            onehot = torch.nn.functional.one_hot(ys, ways).to(zs.dtype)
            sums, counts = onehot.transpose(-1, -2) @ zs, onehot.sum(-2).unsqueeze(-1)
            anchor = p - sums / counts.clamp_min(1)  # the adaptation, kept through the refinement
            for _ in range(self.steps):
                w = distance_logits(zq, p, self.scale).softmax(-1)
                p = (sums + w.transpose(-1, -2) @ zq) / (counts + w.sum(-2).unsqueeze(-1)) + anchor
        return distance_logits(zq, p, self.scale)
