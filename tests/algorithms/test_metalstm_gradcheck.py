"""Meta-LSTM's meta-gradient against finite differences, every entry (``fast_mode=False``), in float64.

The full second-order meta-gradient (``second_order=True``: the gradients the LSTM reads are differentiated
too) must match central differences of the query loss with respect to every meta-parameter: layer 1 of the
LSTM, the update cell and the learner's initialisation c_0. The paper's first-order path (gradients and
losses enter the LSTM as constants) computes the same loss but drops those terms, so the same check must
reject it: that control proves the check can see a missing second-order term.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.gradcheck import GradcheckError

from metashot.algorithms import metalstm
from metashot.algorithms.metalstm import MetaLSTM
from metashot.nn.backbones import build_backbone

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: a second thread only spins

# Tight enough to resolve the smallest second-order path (through the gradient the LSTM reads, about 1e-6 of
# the meta-gradient here; the usual 1e-6 / 1e-4 does not see it). The preprocessing's slope e^10 below
# |grad| = e^-10 makes central differences rough: with eps = 1e-7 the full gradient is within 0.11 of this
# tolerance (0.41 with eps = 1e-6).
GRADCHECK = {"eps": 1e-7, "atol": 1e-8, "rtol": 1e-6, "fast_mode": False}


class _QueryLoss(nn.Module):
    """Query cross-entropy after adapting on the support set, as a module so that ``functional_call`` can
    substitute every meta-parameter of the learner."""

    def __init__(self, learner: MetaLSTM, query_x: torch.Tensor, query_y: torch.Tensor) -> None:
        super().__init__()
        self.learner = learner
        self.query_x, self.query_y = query_x, query_y

    def forward(self, support_x: torch.Tensor, support_y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.learner.adapt(support_x, support_y)(self.query_x), self.query_y)


def _tiny_learner(second_order: bool) -> MetaLSTM:
    """A 2-2 MLP learner (no head: its output is the 2-way logits), a 2-unit LSTM, 2 inner steps; float64.
    The weights depend only on the seed, not on ``second_order``."""
    torch.manual_seed(2)
    backbone = build_backbone("mlp", in_features=2, hidden=[3], out_features=2)
    return MetaLSTM(backbone, ways=2, input_shape=(2,), inner_steps=2, hidden_size=2,
                    second_order=second_order, head=False).double().train()


def _task() -> tuple[torch.Tensor, ...]:
    """2-way 2-shot support, 3 queries per class: (support_x [4, 2], support_y [4], query_x [6, 2], [6])."""
    g = torch.Generator().manual_seed(5)
    sx = torch.randn(4, 2, generator=g, dtype=torch.float64)
    qx = torch.randn(6, 2, generator=g, dtype=torch.float64)
    return sx, torch.tensor([0, 0, 1, 1]), qx, torch.tensor([0, 0, 0, 1, 1, 1])


def _loss_of_meta_parameters(learner: MetaLSTM):
    """(f, values): f(*values) is the query loss as a function of every meta-parameter (float64 copies)."""
    sx, sy, qx, qy = _task()
    wrapped = _QueryLoss(learner, qx, qy)
    names = [f"learner.{n}" for n, _ in learner.named_parameters()]
    values = tuple(p.detach().clone().requires_grad_(True) for _, p in learner.named_parameters())

    def f(*flat: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(wrapped, dict(zip(names, flat, strict=True)), (sx, sy), strict=True)

    return f, values


def test_second_order_meta_gradient_passes_a_full_gradcheck():
    f, values = _loss_of_meta_parameters(_tiny_learner(second_order=True))
    assert sum(v.numel() for v in values) > 50  # LSTM layer 1, the update cell and c_0 all take part
    assert torch.autograd.gradcheck(f, values, **GRADCHECK)
    grads = torch.autograd.grad(f(*values), values)
    assert all(bool(g.abs().sum() > 0) for g in grads), "every meta-parameter must receive a gradient"


def test_first_order_path_fails_the_same_gradcheck():
    """Control: same weights, same loss, but the first-order meta-gradient; finite differences see the
    difference, so the check above would catch a lost second-order term."""
    full, first = _tiny_learner(second_order=True), _tiny_learner(second_order=False)
    for (n, a), (_, b) in zip(full.state_dict().items(), first.state_dict().items(), strict=True):
        assert torch.equal(a, b), n
    f_full, v_full = _loss_of_meta_parameters(full)
    f_first, v_first = _loss_of_meta_parameters(first)
    loss_full, loss_first = f_full(*v_full), f_first(*v_first)
    assert torch.equal(loss_full.detach(), loss_first.detach())  # the forward pass is the same

    g_full = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss_full, v_full)])
    g_first = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss_first, v_first)])
    # gradcheck's per-entry test is |analytic - numeric| <= atol + rtol * |numeric|; the first-order gradient
    # misses the full one by over 10 such tolerances (thousands here, on c_0), so the failure below is no
    # rounding accident
    tol = GRADCHECK["atol"] + GRADCHECK["rtol"] * g_full.abs()
    assert ((g_full - g_first).abs() / tol).max() > 10

    assert not torch.autograd.gradcheck(f_first, v_first, raise_exception=False, **GRADCHECK)
    with pytest.raises(GradcheckError, match="Jacobian mismatch"):
        torch.autograd.gradcheck(f_first, v_first, **GRADCHECK)


def test_check_sees_the_gradient_the_lstm_reads(monkeypatch):
    """Control: the second-order path with only the term through the LSTM's gradient input lost (the
    preprocessed gradient detached; the update's -i_t * grad_t term keeps its second derivative) fails too."""
    real = metalstm.preprocess_gradient
    monkeypatch.setattr(metalstm, "preprocess_gradient", lambda x, p=10.0: real(x.detach(), p))
    f, values = _loss_of_meta_parameters(_tiny_learner(second_order=True))
    assert not torch.autograd.gradcheck(f, values, raise_exception=False, **GRADCHECK)
