"""ANIL (Raghu et al. 2020): only the head adapts in the inner loop; the body still gets a meta-gradient."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from metashot.algorithms.maml import ANIL
from metashot.nn.backbones import maml_omniglot
from metashot.nn.functional import functional_forward, params_and_buffers

from ._helpers import _batch

pytestmark = pytest.mark.usefixtures("one_thread")


def test_anil_adapts_only_the_head() -> None:
    torch.manual_seed(0)
    net = maml_omniglot(in_channels=1, hidden=4, out_features=3).double()
    learner = ANIL(net, inner_lr=0.5, inner_steps=1).double()
    assert learner.adapted_names == ["head.weight", "head.bias"]
    batch = _batch(T=1, N=3, K=2, Q=1)
    params, buffers = params_and_buffers(net)
    sx, sy, _, _ = batch.task(0)
    adapted = learner.adapt_params(params, buffers, sx, sy, 1, True, False)
    g = torch.autograd.grad(F.cross_entropy(functional_forward(net, params, buffers, sx), sy),
                            [params["head.weight"], params["head.bias"]])
    for k, v in adapted.items():
        if k.startswith("head."):
            expect = params[k] - 0.5 * g[0 if k.endswith("weight") else 1]
            assert torch.allclose(v, expect, atol=1e-14)
        else:
            assert v is params[k]
    # the body still receives a meta-gradient through the query loss
    loss, _ = learner.meta_loss(batch)
    loss.backward()
    assert float(net.features[0][0].weight.grad.abs().sum()) > 0
