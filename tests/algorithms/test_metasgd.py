"""Meta-SGD (Li et al. 2017): the learned per-parameter inner learning rates, checked by hand."""

from __future__ import annotations

import pytest
import torch

from metashot.algorithms.maml import MetaSGD

from ._helpers import _reg_batch, _Scalar

pytestmark = pytest.mark.usefixtures("one_thread")


def test_meta_sgd_update_hand_computed() -> None:
    """Meta-SGD, y = w x + b, one support point (x=1, y=3), one query point (x=2, y=1), from w=1, b=0:
    support residual r = w + b - 3 = -2, grads (dw, db) = (2 r x, 2 r) = (-4, -4);
    with alpha = (0.1, 0.2): w' = 1.4, b' = 0.8; query residual r_q = 2 w' + b' - 1 = 2.6, L_q = 6.76;
    dL_q/d alpha_w = 2 r_q * 2 * (-dw) = 41.6, dL_q/d alpha_b = 2 r_q * 1 * (-db) = 20.8."""
    learner = MetaSGD(_Scalar(1.0, 0.0), inner_lr=0.1, inner_steps=1, loss="mse", vectorized=False).double()
    with torch.no_grad():
        learner.inner_lrs["head__bias"].fill_(0.2)
    loss, _ = learner.meta_loss(_reg_batch([1.0], [3.0], [2.0], [1.0]))
    assert float(loss.detach()) == pytest.approx(6.76, rel=1e-12)
    lrs = learner.inner_lrs
    ga_w, ga_b = torch.autograd.grad(loss, [lrs["head__weight"], lrs["head__bias"]])
    assert float(ga_w) == pytest.approx(41.6, rel=1e-12)
    assert float(ga_b) == pytest.approx(20.8, rel=1e-12)
