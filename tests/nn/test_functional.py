"""The functional core: pure calls of a module on a parameter dict, explicit batch norm, inner SGD paths."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from metashot.nn.functional import functional_forward, inner_sgd, params_and_buffers, sgd_step

pytestmark = pytest.mark.usefixtures("one_thread")


def _net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 4 * 4, 3)).double()


def _flat(gs: tuple[torch.Tensor, ...] | list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in gs])


def test_forward_matches_module_and_does_not_mutate() -> None:
    torch.manual_seed(0)
    net = _net()
    with torch.no_grad():
        net[1].weight.uniform_(0.5, 1.5)
        net[1].bias.uniform_(-0.5, 0.5)
    params, buffers = params_and_buffers(net)
    before = {k: v.clone() for k, v in buffers.items()}
    x = torch.randn(6, 1, 8, 8, dtype=torch.float64)
    y = functional_forward(net, params, buffers, x)
    for k, v in buffers.items():
        assert torch.equal(v, before[k]), f"buffer {k} was modified"
    ref = net(x)  # training mode: batch statistics (this call does update the module's running stats)
    assert torch.allclose(y, ref, atol=1e-12)
    # bn="running" uses the (now updated) running statistics, like eval mode
    net.eval()
    params, buffers = params_and_buffers(net)
    assert torch.allclose(functional_forward(net, params, buffers, x, bn="running"), net(x), atol=1e-12)
    with pytest.raises(ValueError, match="bn must be"):
        functional_forward(net, params, buffers, x, bn="nope")


def test_sgd_step_hand_computed() -> None:
    # loss = 0.5 * w^2 * c: grad = w * c; step w - lr * w * c. Meta-SGD: elementwise lr tensor.
    w = torch.tensor([1.0, -2.0], dtype=torch.float64, requires_grad=True)
    c = 3.0
    out = sgd_step(lambda p: 0.5 * c * (p["w"] ** 2).sum(), {"w": w}, 0.1)
    assert torch.allclose(out["w"], torch.tensor([0.7, -1.4], dtype=torch.float64))
    lr = {"w": torch.tensor([0.1, 0.2], dtype=torch.float64)}
    out = sgd_step(lambda p: 0.5 * c * (p["w"] ** 2).sum(), {"w": w}, lr)
    assert torch.allclose(out["w"], torch.tensor([0.7, -0.8], dtype=torch.float64))


@pytest.mark.parametrize("first_order", [False, True])
def test_vmap_equals_loop_and_checkpoint(first_order: bool) -> None:
    torch.manual_seed(1)
    net = _net()
    params, buffers = params_and_buffers(net)
    T = 3
    sx, qx = torch.randn(2, T, 6, 1, 8, 8, dtype=torch.float64)
    sy, qy = torch.randint(0, 3, (2, T, 6))

    def task(p, sx, sy, qx, qy, vectorized, checkpoint=False):
        def support_loss(q):
            return F.cross_entropy(functional_forward(net, q, buffers, sx), sy)
        a = inner_sgd(support_loss, p, 0.4, 2, first_order=first_order, vectorized=vectorized,
                      checkpoint=checkpoint)
        return F.cross_entropy(functional_forward(net, a, buffers, qx), qy)

    names = list(params)
    ref = torch.stack([task(params, sx[t], sy[t], qx[t], qy[t], False) for t in range(T)]).mean()
    g_ref = _flat(torch.autograd.grad(ref, [params[k] for k in names]))
    vec = torch.vmap(lambda *a: task(params, *a, True), randomness="different")(sx, sy, qx, qy).mean()
    g_vec = _flat(torch.autograd.grad(vec, [params[k] for k in names]))
    ck = torch.stack([task(params, sx[t], sy[t], qx[t], qy[t], False, True) for t in range(T)]).mean()
    g_ck = _flat(torch.autograd.grad(ck, [params[k] for k in names]))
    assert abs(float((ref - vec).detach())) <= 1e-12 * abs(float(ref.detach()))
    assert float((g_ref - g_vec).norm() / g_ref.norm()) <= 1e-9
    assert float((g_ref - g_ck).norm() / g_ref.norm()) <= 1e-12
