"""Why metashot's batch norm is explicit: vmap path vs per-task loop, float64, second-order MAML, BN included.

Prints one JSON object with the relative error of the meta-gradient for 1 and 5 inner steps, with metashot's
explicit batch norm (mean/variance written with plain ops) and with torch's fused batch-norm kernel
swapped in.

    python benchmarks/maml_bn_vmap.py
"""

from __future__ import annotations

import json

import torch
from torch import nn

import metashot.nn.functional as mf
from metashot.algorithms.maml import MAML
from metashot.data.episodes import EpisodeBatch
from metashot.nn.backbones import maml_omniglot


def fused(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
          eps: float) -> torch.Tensor:
    return torch.batch_norm(x, weight, bias, None, None, True, 0.0, eps, False)


def meta_grad(steps: int, vectorized: bool, batch: EpisodeBatch) -> torch.Tensor:
    torch.manual_seed(0)
    net = maml_omniglot(1, 4, 3).double()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
    learner = MAML(net, inner_lr=0.1, inner_steps=steps, vectorized=vectorized).double()
    loss, _ = learner.meta_loss(batch)
    grads = torch.autograd.grad(loss, list(learner.parameters()))
    return torch.cat([g.reshape(-1) for g in grads])


def main() -> dict:
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    T, N, K, Q = 4, 3, 2, 2
    batch = EpisodeBatch(torch.randn(T, N * K, 1, 8, 8, generator=g, dtype=torch.float64),
                         torch.arange(N).repeat_interleave(K).expand(T, -1),
                         torch.randn(T, N * Q, 1, 8, 8, generator=g, dtype=torch.float64),
                         torch.arange(N).repeat_interleave(Q).expand(T, -1), torch.zeros(T, N), N, K, Q)
    out = {}
    explicit = mf.batch_norm_batch_stats
    for name, fn in (("explicit", explicit), ("torch_fused", fused)):
        mf.batch_norm_batch_stats = fn
        try:
            for steps in (1, 5):
                ref, vec = meta_grad(steps, False, batch), meta_grad(steps, True, batch)
                out[f"{name}_steps{steps}_rel_err"] = float((ref - vec).norm() / ref.norm())
        finally:
            mf.batch_norm_batch_stats = explicit
    out["torch"] = torch.__version__
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
