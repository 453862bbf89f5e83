"""Matching Networks (Vinyals, Blundell, Lillicrap, Kavukcuoglu & Wierstra, NeurIPS 2016)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from metashot.algorithms.base import Batch, BatchedEpisodesMixin, MetaLearner, Predictor, register
from metashot.data.augment import random_affine
from metashot.nn.backbones import output_dim


def cosine_attention(zq: torch.Tensor, zs: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """a(x, x_i) = softmax_i(temperature * cos(f(x), g(x_i))): zq [..., M, D], zs [..., S, D] -> [..., M, S].

    Each row sums to one; as ``temperature`` grows it tends to the one-hot of the most similar support item
    (nearest neighbour in cosine similarity).
    """
    cos = F.normalize(zq, dim=-1) @ F.normalize(zs, dim=-1).transpose(-1, -2)
    return torch.softmax(temperature * cos, dim=-1)


class FullContextEmbedding(nn.Module):
    """The full context embeddings of Matching Networks (Vinyals et al. 2016, appendix A.2).

    g: a bidirectional LSTM over the support embeddings g'(x_i), g(x_i) = h_fwd_i + h_bwd_i + g'(x_i).
    f: an attention LSTM run for ``steps`` steps on each query embedding f'(x):
    (h^_k, c_k) = LSTM([f'(x), r_{k-1}], (h_{k-1}, c_{k-1})), h_k = h^_k + f'(x),
    r_k = sum_i softmax_i(h_k . g(x_i)) g(x_i); f(x) = h_K. The read-out r enters as LSTM input (concatenated
    with f'(x)) rather than as part of the hidden state, an equivalent-capacity arrangement.
    """

    def __init__(self, dim: int, steps: int = 5) -> None:
        super().__init__()
        if steps < 1:
            raise ValueError(f"FullContextEmbedding: steps must be >= 1, got {steps}")
        self.dim, self.steps = dim, steps
        self.g_lstm = nn.LSTM(dim, dim, batch_first=True, bidirectional=True)
        self.f_cell = nn.LSTMCell(2 * dim, dim)

    def support(self, zs: torch.Tensor) -> torch.Tensor:
        """g: zs [T, S, D] -> [T, S, D] (the support set is read as a sequence, in its given order)."""
        out, _ = self.g_lstm(zs)  # [T, S, 2D]
        return out[..., : self.dim] + out[..., self.dim :] + zs

    def query(self, zq: torch.Tensor, gs: torch.Tensor) -> torch.Tensor:
        """f: zq [T, M, D] attending over gs [T, S, D] -> [T, M, D]; each query independently."""
        T, M, D = zq.shape
        x = zq.reshape(T * M, D)
        h = torch.zeros_like(x)
        c = torch.zeros_like(x)
        r = torch.zeros_like(x)
        g = gs.unsqueeze(1).expand(T, M, *gs.shape[1:]).reshape(T * M, gs.shape[1], D)
        for _ in range(self.steps):
            h_hat, c = self.f_cell(torch.cat([x, r], -1), (h, c))
            h = h_hat + x
            a = torch.softmax((g @ h.unsqueeze(-1)).squeeze(-1), dim=-1)  # [T*M, S]
            r = (a.unsqueeze(-1) * g).sum(1)
        return h.view(T, M, D)


@register("matching")
class MatchingNet(BatchedEpisodesMixin, MetaLearner):
    """Matching Networks (Vinyals et al., NeurIPS 2016).

    P(y | x, S) = sum_{i=1..k} a(x, x_i) y_i with a(x, x_i) = softmax_i(c(f(x), g(x_i))), c the cosine
    similarity (Eq. 1-2); f = g = the backbone, or with ``fce`` the full context embeddings
    (:class:`FullContextEmbedding`). Training minimises -log P(y | x, S) of the query labels. The predictor
    returns log P (so its softmax is P).

    Args:
        backbone: embedding network, [B, *item] -> [B, D] (flattened).
        fce: use full context embeddings (needs ``input_shape`` to size the LSTMs).
        fce_steps: processing steps K of the attention LSTM.
        temperature: scale of the cosine before the softmax (1 = the paper).
        input_shape: item shape [C, H, W] (only used with ``fce``).
        distort: augment training episodes with Koch et al.'s random affine distortions (each image
            independently; ``meta_loss`` in training mode only), for small training sets.
    """

    def __init__(self, backbone: nn.Module, fce: bool = False, fce_steps: int = 5, temperature: float = 1.0,
                 input_shape: list[int] | tuple[int, ...] = (1, 28, 28), distort: bool = False) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"MatchingNet: temperature must be positive, got {temperature}")
        self.backbone = backbone
        self.fce, self.fce_steps, self.temperature = bool(fce), int(fce_steps), float(temperature)
        self.input_shape = [int(v) for v in input_shape]
        self.distort = bool(distort)
        dim = output_dim(backbone, tuple(self.input_shape)) if fce else 0
        self.context = FullContextEmbedding(dim, self.fce_steps) if fce else None

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x).flatten(1)

    def _log_probs(self, zs: torch.Tensor, support_y: torch.Tensor, zq: torch.Tensor,
                   ways: int) -> torch.Tensor:
        """log P(y | x, S): zs [T, S, D], support_y [T, S], zq [T, M, D] -> [T, M, N]."""
        if self.context is not None:
            zs = self.context.support(zs)
            zq = self.context.query(zq, zs)
        att = cosine_attention(zq, zs, self.temperature)  # [T, M, S]
        probs = att @ F.one_hot(support_y, ways).to(att.dtype)
        return probs.clamp_min(1e-12).log()

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor) -> Predictor:
        return self.one_task_predictor(self.embed, self._log_probs, support_x, support_y)

    def batched_logits(self, batch: Batch) -> torch.Tensor:
        # log-probabilities: cross-entropy on them (the default task_loss) is their negative log-likelihood
        distort = self.distort and self.training
        zs, zq = self.embed_episodes(self.embed, batch, random_affine if distort else None)
        return self._log_probs(zs, batch.support_y, zq, batch.ways)

    def config_dict(self) -> dict[str, Any]:
        return {"fce": self.fce, "fce_steps": self.fce_steps, "temperature": self.temperature,
                "input_shape": self.input_shape, "distort": self.distort}
