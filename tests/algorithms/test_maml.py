"""MAML (and Meta-SGD / ANIL where they share its inner loop): exactness of the vectorised path, finite
differences, first vs second order. The update rules of Meta-SGD, ANIL and Reptile are checked by hand in
test_metasgd.py, test_anil.py and test_reptile.py.

All gradient checks run in float64 on tiny networks so that they are exact to rounding and fast.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from metashot.algorithms.maml import ANIL, MAML, MetaSGD
from metashot.data.episodes import EpisodeBatch
from metashot.nn.functional import (
    _BatchNormalize,
    batch_norm_batch_stats,
    batch_norm_batch_stats_analytic,
    functional_forward,
    params_and_buffers,
)

from ._helpers import _batch, _meta_grad, _tiny_conv

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize(("cls", "steps"), [(MAML, 1), (MAML, 5), (MetaSGD, 2), (ANIL, 2)])
def test_vectorized_equals_loop_with_batch_norm(cls: type[MAML], steps: int) -> None:
    """Second-order meta-loss and meta-gradient: vmap path == per-task loop (rel. err <= 1e-9), with BN."""
    batch = _batch(T=4, N=3, K=2, Q=2)
    results = []
    for vectorized in (False, True):
        learner = cls(_tiny_conv(), inner_lr=0.1, inner_steps=steps, vectorized=vectorized).double()
        learner.train()
        results.append(_meta_grad(learner, batch))
    (l_loop, g_loop), (l_vec, g_vec) = results
    assert abs(float(l_loop - l_vec)) <= 1e-12 * abs(float(l_loop))
    rel = float((g_loop - g_vec).norm() / g_loop.norm())
    assert rel <= 1e-9, f"{cls.__name__} steps={steps}: meta-gradient rel. err {rel:.2e}"
    assert float(g_loop.norm()) > 0


def test_analytic_batch_norm_equals_plain_formula_to_second_order() -> None:
    """The analytic-backward batch norm (vectorised fast path) == the plain formula under vmap, float64:
    values, first derivatives inside torch.func.grad, and second derivatives through them; gradgradcheck."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 4, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    w = (torch.rand(3, 4, generator=g, dtype=torch.float64) + 0.5).requires_grad_()
    b = torch.randn(3, 4, generator=g, dtype=torch.float64, requires_grad=True)

    def second_order(bn: object) -> tuple[torch.Tensor, ...]:
        def inner(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, ...]:
            def f(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
                return (torch.relu(bn(x, w, b, 1e-5)) ** 3).sum()  # type: ignore[operator]
            return torch.func.grad(f, argnums=(0, 1, 2))(x, w, b)

        first = torch.vmap(inner)(x, w, b)
        second = torch.autograd.grad(sum((t * t).sum() for t in first), (x, w, b))
        return (torch.vmap(bn, in_dims=(0, 0, 0, None))(x, w, b, 1e-5), *first, *second)  # type: ignore[arg-type]

    plains, analytics = second_order(batch_norm_batch_stats), second_order(batch_norm_batch_stats_analytic)
    for plain, analytic in zip(plains, analytics, strict=True):
        assert torch.allclose(plain, analytic, rtol=1e-10, atol=1e-10 * float(plain.abs().max()))
    normalize = lambda t: _BatchNormalize.apply(t, [0, 2, 3], 1e-5)  # noqa: E731
    assert torch.autograd.gradcheck(normalize, (x[0],))
    assert torch.autograd.gradgradcheck(normalize, (x[0],))


@pytest.mark.parametrize("first_order", [False, True])
def test_vectorized_analytic_batch_norm_equals_plain_path(first_order: bool) -> None:
    """MAML's vectorised path with the analytic batch norm (default) == plain formula == the loop, float64."""
    batch = _batch(T=4, N=3, K=2, Q=2)
    results = []
    for vectorized, analytic in ((False, False), (True, False), (True, True)):
        learner = MAML(_tiny_conv(), inner_lr=0.1, inner_steps=2, vectorized=vectorized,
                       first_order=first_order).double()
        learner.analytic_bn = analytic
        learner.train()
        results.append(_meta_grad(learner, batch))
    (l_loop, g_loop), *others = results
    for l_vec, g_vec in others:
        assert abs(float(l_loop - l_vec)) <= 1e-12 * abs(float(l_loop))
        rel = float((g_loop - g_vec).norm() / g_loop.norm())
        assert rel <= 1e-9, f"first_order={first_order}: meta-gradient rel. err {rel:.2e}"


@pytest.mark.parametrize(("cls", "steps", "vectorized"),
                         [(MAML, 1, True), (MAML, 5, True), (MAML, 2, False), (MetaSGD, 2, True),
                          (ANIL, 2, True)])
def test_task_workers_equal_one_worker(cls: type[MAML], steps: int, vectorized: bool) -> None:
    """task_workers=3 (uneven chunks of 7 tasks, in threads) == one worker: loss, meta-gradient, outputs."""
    batch = _batch(T=7, N=3, K=2, Q=2)
    results, preds = [], []
    for workers in (1, 3):
        learner = cls(_tiny_conv(), inner_lr=0.1, inner_steps=steps, vectorized=vectorized,
                      task_workers=workers).double()
        learner.train()
        loss, grad = _meta_grad(learner, batch)
        # .backward() on the returned loss fills .grad the same way
        learner.zero_grad()
        learner.meta_loss(batch)[0].backward()
        via_backward = torch.cat([p.grad.reshape(-1) if p.grad is not None else torch.zeros(p.numel(),
                                  dtype=p.dtype) for p in learner.parameters() if p.requires_grad])
        assert torch.equal(via_backward, grad)
        results.append((loss, grad))
        learner.eval()
        preds.append(learner.predict_batch(batch))
    (l1, g1), (l3, g3) = results
    assert abs(float(l1 - l3)) <= 1e-12 * abs(float(l1))
    rel = float((g1 - g3).norm() / g1.norm())
    assert rel <= 1e-9, f"{cls.__name__}: task_workers meta-gradient rel. err {rel:.2e}"
    assert float((preds[0] - preds[1]).abs().max()) <= 1e-10
    assert preds[1].shape == (7, 6, 3)


@pytest.mark.parametrize("vectorized", [False, True])
def test_bf16_autocast_reaches_task_workers(vectorized: bool) -> None:
    """Under CPU bf16 autocast (train.precision bf16) the worker threads run their chunks under the caller's
    autocast (it is thread-local in torch): the meta-gradient with 2 workers is the one computed in the
    calling thread up to bf16 rounding, far closer to it than to the fp32 one."""
    import threading

    b64 = _batch(T=4, N=3, K=2, Q=2)
    batch = EpisodeBatch(b64.support_x.float(), b64.support_y, b64.query_x.float(), b64.query_y, b64.classes,
                         3, 2, 2)
    grads = {}
    for workers, precision in ((1, "bf16"), (2, "bf16"), (2, "fp32")):
        learner = MAML(_tiny_conv().float(), inner_lr=0.1, inner_steps=2, vectorized=vectorized,
                       task_workers=workers)
        seen = []
        forward = learner.forward_with

        def spy(params, buffers, x, forward=forward, seen=seen, **kw):  # noqa: ANN001, ANN003, ANN202
            seen.append((threading.current_thread().name, torch.is_autocast_enabled("cpu")))
            return forward(params, buffers, x, **kw)

        learner.forward_with = spy
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            grads[workers, precision] = _meta_grad(learner, batch)[1]
        in_workers = [on for name, on in seen if name.startswith("metashot-task")]  # (the ways probe: caller)
        if workers == 2:
            assert len(in_workers) >= 2 and all(on == (precision == "bf16") for on in in_workers)
    g1, g2, g32 = grads[1, "bf16"], grads[2, "bf16"], grads[2, "fp32"]
    # bf16 rounds differently when the loss is split into chunks (about 1 % here), but far less than it
    # departs from fp32 (second-order MAML through batch norm in bf16 is a poor approximation: tens of %)
    chunking, vs_fp32 = float((g1 - g2).norm() / g1.norm()), float((g2 - g32).norm() / g32.norm())
    assert chunking < 0.1 * vs_fp32


def test_task_workers_leave_module_alone_and_refuse_dropout() -> None:
    learner = MAML(_tiny_conv(), inner_lr=0.1, task_workers=2).double()
    before = {k: v.clone() for k, v in learner.state_dict().items()}
    learner.meta_loss(_batch(T=4, N=3, K=1, Q=2))[0].backward()
    assert all(torch.equal(before[k], v) for k, v in learner.state_dict().items())
    assert set(learner.state_dict()) == set(before)  # the worker replicas are not part of the state
    assert learner.config_dict()["task_workers"] == 2
    assert len(learner._replicas) == 2
    import copy
    import pickle
    import threading
    assert copy.deepcopy(learner)._replicas == []
    assert pickle.loads(pickle.dumps(learner))._replicas == []
    # the chunks really run in the worker threads, each through its own replica of the network
    seen = []
    forward = learner.forward_with

    def spy(params, buffers, x, **kw):  # noqa: ANN001, ANN003, ANN202
        seen.append(threading.current_thread().name)
        return forward(params, buffers, x, **kw)

    learner.forward_with = spy
    loss, _ = learner.meta_loss(_batch(T=4, N=3, K=1, Q=2))
    assert seen and all(n.startswith("metashot-task") for n in seen)
    # the returned loss carries first derivatives only: a double backward raises instead of giving zeros
    params = [p for p in learner.parameters() if p.requires_grad]
    (g0,) = torch.autograd.grad(loss, params[:1], create_graph=True)
    with pytest.raises(RuntimeError):
        torch.autograd.grad(g0.sum(), params[:1])
    # without grad mode (or nothing to differentiate) the chunks are not differentiated
    seen.clear()
    with torch.no_grad():
        value, _ = learner.meta_loss(_batch(T=4, N=3, K=1, Q=2))
    assert not value.requires_grad and "MainThread" in seen
    with pytest.raises(ValueError, match="task_workers must be an integer >= 1"):
        MAML(_tiny_conv(), task_workers=0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.Dropout(0.1), nn.Linear(8, 3))
    with pytest.raises(ValueError, match="dropout"):
        MAML(net, task_workers=2)
    MAML(net, task_workers=1)  # fine without workers


@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.slow
def test_compiled_meta_loss_equals_eager_with_batch_norm(first_order: bool) -> None:
    """train.compile: torch.compile of the vectorised meta-loss with batch norm traces (the batch norm must
    take its explicit plain form while dynamo traces, also where eager first order uses the analytic
    backward) and gives the eager loss and meta-gradient."""
    batch = _batch(T=2, N=3, K=1, Q=2)
    learner = MAML(_tiny_conv(), inner_lr=0.1, inner_steps=1, vectorized=True,
                   first_order=first_order).double()
    loss, grad = _meta_grad(learner, batch)
    compiled = torch.compile(learner.meta_loss, backend="eager", fullgraph=False)
    c_loss, _ = compiled(batch)
    params = [p for p in learner.parameters() if p.requires_grad]
    c_grad = torch.cat([g.reshape(-1) for g in torch.autograd.grad(c_loss, params)])
    assert abs(float(c_loss.detach() - loss)) <= 1e-12 * abs(float(loss))
    assert float((c_grad - grad).norm() / grad.norm()) <= 1e-9


def test_second_order_gradient_matches_finite_differences() -> None:
    """Central differences of the 2-step second-order MAML meta-loss (tiny MLP with batch norm)."""
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3), nn.Tanh(), nn.Linear(3, 2)).double()
    learner = MAML(net, inner_lr=0.3, inner_steps=2, vectorized=False).double()
    batch = _batch(T=2, N=2, K=2, Q=2, seed=1)
    batch.support_x = torch.randn(2, 4, 2, dtype=torch.float64)
    batch.query_x = torch.randn(2, 4, 2, dtype=torch.float64)
    _, analytic = _meta_grad(learner, batch)
    params = list(learner.parameters())
    numeric = []
    h = 1e-6
    with torch.no_grad():
        for p in params:
            flat = p.view(-1)
            for i in range(flat.numel()):
                old = float(flat[i])
                flat[i] = old + h
                lp = float(learner.meta_loss(batch)[0])
                flat[i] = old - h
                lm = float(learner.meta_loss(batch)[0])
                flat[i] = old
                numeric.append((lp - lm) / (2 * h))
    numeric_t = torch.tensor(numeric, dtype=torch.float64)
    assert torch.allclose(analytic, numeric_t, rtol=1e-6, atol=1e-8), (analytic - numeric_t).abs().max()


def test_first_order_is_second_order_without_hessian_term() -> None:
    """One step: d/dtheta L_q(theta - a g_s(theta)) = (I - a H_s) g_q(theta'); first order: g_q(theta')."""
    net = _tiny_conv(seed=2)
    batch = _batch(T=1, N=3, K=2, Q=2, seed=5)
    a = 0.2
    so = MAML(net, inner_lr=a, inner_steps=1, vectorized=False, first_order=False).double()
    fo = MAML(net, inner_lr=a, inner_steps=1, vectorized=False, first_order=True).double()
    _, g_so = _meta_grad(so, batch)
    _, g_fo = _meta_grad(fo, batch)

    params, buffers = params_and_buffers(net)
    names = list(params)
    sx, sy, qx, qy = batch.task(0)

    def ls(p: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.cross_entropy(functional_forward(net, p, buffers, sx), sy)

    g_s = torch.autograd.grad(ls(params), [params[k] for k in names], create_graph=True)
    adapted = {k: (params[k] - a * g).detach().requires_grad_() for k, g in zip(names, g_s, strict=True)}
    g_q = torch.autograd.grad(F.cross_entropy(functional_forward(net, adapted, buffers, qx), qy),
                              [adapted[k] for k in names])
    hvp = torch.autograd.grad(g_s, [params[k] for k in names], grad_outputs=g_q)
    flat_gq = torch.cat([g.reshape(-1) for g in g_q])
    flat_hvp = torch.cat([h.reshape(-1) for h in hvp])
    assert torch.allclose(g_fo, flat_gq, rtol=1e-10, atol=1e-13)
    assert torch.allclose(g_so, flat_gq - a * flat_hvp, rtol=1e-9, atol=1e-12)
    assert float((g_so - g_fo).norm()) > 1e-6  # the Hessian term is not negligible here


def test_wrong_number_of_ways_is_a_clear_error() -> None:
    learner = MAML(_tiny_conv(ways=3), inner_steps=1)
    learner.eval()
    batch = _batch(T=1, N=5, K=1, Q=1)
    with pytest.raises(ValueError, match="outputs 3 logits but the task has 5 classes"):
        learner.adapt(*batch.task(0)[:2])
    with pytest.raises(ValueError, match="out_features=5"):
        learner.meta_loss(batch)


def test_adapt_does_not_touch_module_state() -> None:
    net = _tiny_conv()
    learner = MAML(net, inner_steps=3).double()
    before = {k: v.clone() for k, v in learner.state_dict().items()}
    learner.eval()
    sx, sy, qx, _ = _batch(T=1, N=3, K=2, Q=2).task(0)
    out = learner.adapt(sx, sy)(qx)
    assert out.shape == (6, 3) and not out.requires_grad
    for k, v in learner.state_dict().items():
        assert torch.equal(v, before[k]), k
    # eval-mode predict_batch (vmap) agrees with adapt (loop)
    pb = learner.predict_batch(_batch(T=1, N=3, K=2, Q=2))
    assert torch.allclose(pb[0], out, atol=1e-10)


def test_checkpoint_inner_and_bad_arguments() -> None:
    with pytest.raises(ValueError, match="checkpoint_inner=True needs vectorized=False"):
        MAML(_tiny_conv(), checkpoint_inner=True)
    with pytest.raises(ValueError, match="adapt must be 'all' or 'head'"):
        MAML(_tiny_conv(), adapt="body")
    with pytest.raises(ValueError, match="no parameter whose name starts with"):
        ANIL(nn.Sequential(nn.Linear(2, 2)))
    batch = _batch(T=2, N=3, K=1, Q=1)
    a = MAML(_tiny_conv(), inner_steps=3, vectorized=False).double()
    b = MAML(_tiny_conv(), inner_steps=3, vectorized=False, checkpoint_inner=True).double()
    (la, ga), (lb, gb) = _meta_grad(a, batch), _meta_grad(b, batch)
    assert float(la) == pytest.approx(float(lb), rel=1e-12)
    assert float((ga - gb).norm() / ga.norm()) < 1e-12
