"""Meta-LSTM (Ravi & Larochelle 2017): update rule, preprocessing, meta-gradients, shapes, run, checkpoint."""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from metashot.algorithms.metalstm import MetaLSTM, preprocess_gradient
from metashot.nn.backbones import build_backbone

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
PINNED_FORGET_BIAS = 50.0  # sigmoid(50) == 1.0 exactly in float64 (1 - 2e-22 rounds to 1)


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Many small ops: on a loaded 2-core machine a second thread spins far more than it computes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _single_thread() -> Iterator[None]:
    with _one_thread():
        yield


def _pin_gates(learner: MetaLSTM, lr: float) -> torch.Tensor:
    """Zero the gate weights, forget bias 50 (f = 1 exactly), input bias logit(lr). Returns i = sigmoid(.)."""
    cell = learner.meta_lstm.cell
    with torch.no_grad():
        cell.w_forget.zero_()
        cell.w_input.zero_()
        cell.b_forget.fill_(PINNED_FORGET_BIAS)
        cell.b_input.fill_(math.log(lr / (1 - lr)))
    return torch.sigmoid(cell.b_input.detach())


def _toy_task(item: tuple[int, ...], ways: int = 3, shots: int = 2, queries: int = 4, seed: int = 0,
              dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    sx = torch.randn(ways * shots, *item, generator=g, dtype=dtype)
    qx = torch.randn(ways * queries, *item, generator=g, dtype=dtype)
    sy = torch.arange(ways).repeat_interleave(shots)
    qy = torch.arange(ways).repeat_interleave(queries)
    return sx, sy, qx, qy


def _small_conv_learner(**kw: object) -> MetaLSTM:
    backbone = build_backbone("conv4", in_channels=1, hidden=3, out_channels=3, depth=2)
    return MetaLSTM(backbone, ways=3, input_shape=(1, 8, 8), hidden_size=4, **kw)


# -- preprocessing ----------------------------------------------------------------------------------------

def test_preprocessing_on_hand_computed_values():
    # p = 10: threshold exp(-10) = 4.54e-5
    x = torch.tensor([math.exp(2), -math.exp(-3), 1e-5, -2e-5, 0.0], dtype=torch.float64)
    expected = torch.tensor([[0.2, 1.0], [-0.3, -1.0], [-1.0, math.exp(10) * 1e-5],
                             [-1.0, -math.exp(10) * 2e-5], [-1.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(preprocess_gradient(x, 10.0), expected, rtol=1e-12, atol=1e-12)
    # p = 1: threshold exp(-1) = 0.368; 0.5 is above it, 0.1 below
    y = torch.tensor([0.5, 0.1], dtype=torch.float64)
    want = torch.tensor([[math.log(0.5), 1.0], [-1.0, math.e * 0.1]], dtype=torch.float64)
    torch.testing.assert_close(preprocess_gradient(y, 1.0), want)
    assert preprocess_gradient(torch.zeros(2, 3)).shape == (2, 3, 2)
    with pytest.raises(ValueError, match="p must be > 0"):
        preprocess_gradient(y, 0.0)


def test_preprocessing_has_finite_gradient_at_zero():
    x = torch.tensor([0.0, 1e-8, 3.0], requires_grad=True)
    preprocess_gradient(x).sum().backward()
    assert torch.isfinite(x.grad).all()


# -- the update rule ----------------------------------------------------------------------------------------

def test_pinned_gates_give_plain_sgd_exactly():
    """f = 1, i = lr: c_t = c_{t-1} - lr * grad_t, i.e. T steps of SGD on the support loss, bit for bit."""
    torch.manual_seed(0)
    learner = _small_conv_learner(inner_steps=4).double().train()
    lr = _pin_gates(learner, 0.1)
    sx, sy, _, _ = _toy_task((1, 8, 8))
    trace: list[dict[str, torch.Tensor]] = []
    theta_lstm = learner.inner_loop(sx, sy, trace=trace)

    theta = learner.initial_theta().detach()
    for _ in range(4):
        leaf = theta.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(learner.learner_forward(leaf, sx, 3), sy), leaf)
        theta = theta - lr * g
    assert torch.equal(theta_lstm.detach(), theta)
    assert len(trace) == 4 and all(bool((t["forget"] == 1).all()) for t in trace)
    assert all(torch.equal(t["input"], lr.expand_as(t["input"])) for t in trace)
    assert not torch.equal(theta, learner.initial_theta().detach())  # the steps did move the learner

    # the same SGD run on an ordinary copy of the network with torch.optim.SGD (an independent reference)
    net = nn.Sequential(copy.deepcopy(learner.backbone), nn.Flatten(), copy.deepcopy(learner.head)).train()
    opt = torch.optim.SGD(net.parameters(), lr=float(lr))
    for _ in range(4):
        opt.zero_grad()
        F.cross_entropy(net(sx), sy).backward()
        opt.step()
    ref = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
    torch.testing.assert_close(theta_lstm.detach(), ref, rtol=1e-12, atol=1e-14)


def test_first_order_meta_gradient_of_the_initialisation():
    """T = 1 with pinned gates: theta_1 = theta_0 - lr * g_0 with g_0 a constant, so d L_query / d theta_0
    equals the query-loss gradient at theta_1 (the first-order MAML identity)."""
    torch.manual_seed(1)
    learner = _small_conv_learner(inner_steps=1).double().train()
    lr = _pin_gates(learner, 0.2)
    sx, sy, qx, qy = _toy_task((1, 8, 8), seed=3)
    learner.zero_grad()
    F.cross_entropy(learner.adapt(sx, sy)(qx), qy).backward()
    got = torch.cat([p.grad.reshape(-1) for _, p in learner.learner_parameters()])

    theta0 = learner.initial_theta().detach().requires_grad_(True)
    (g0,) = torch.autograd.grad(F.cross_entropy(learner.learner_forward(theta0, sx, 3), sy), theta0)
    theta1 = (theta0 - lr * g0).detach().requires_grad_(True)
    (want,) = torch.autograd.grad(F.cross_entropy(learner.learner_forward(theta1, qx, 3), qy), theta1)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_second_order_meta_gradient_matches_finite_differences():
    """float64 gradcheck of the query loss after T = 2 LSTM updates w.r.t. every meta-parameter (LSTM layer 1,
    the update cell, and the learner's initialisation c_0), differentiating through the gradients too."""
    torch.manual_seed(2)
    backbone = build_backbone("mlp", in_features=2, hidden=[3], out_features=2)
    learner = MetaLSTM(backbone, ways=2, input_shape=(2,), inner_steps=2, hidden_size=2,
                       second_order=True, head=False).double().train()
    sx, sy, qx, qy = _toy_task((2,), ways=2, shots=2, queries=3, seed=5)
    names = [n for n, _ in learner.named_parameters()]
    values = tuple(p.detach().clone().requires_grad_(True) for _, p in learner.named_parameters())

    def query_loss(*flat: torch.Tensor) -> torch.Tensor:
        params = dict(zip(names, flat, strict=True))
        logits = torch.func.functional_call(learner, params, (sx, sy), strict=True)
        return F.cross_entropy(logits, qy)

    # call adapt through a thin forward so functional_call can swap every parameter
    learner.forward = lambda a, b: learner.adapt(a, b)(qx)  # type: ignore[method-assign]
    assert torch.autograd.gradcheck(query_loss, values, eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True)
    grads = torch.autograd.grad(query_loss(*values), values)
    assert all(bool(g.abs().sum() > 0) for g in grads), "every meta-parameter must receive a gradient"


def test_training_mode_reaches_every_meta_parameter_and_eval_builds_no_graph():
    torch.manual_seed(3)
    learner = _small_conv_learner(inner_steps=2).train()
    sx, sy, qx, qy = _toy_task((1, 8, 8), dtype=torch.float32)
    F.cross_entropy(learner.adapt(sx, sy)(qx), qy).backward()
    missing = [n for n, p in learner.named_parameters() if p.grad is None or not bool(p.grad.abs().sum() > 0)]
    assert not missing
    learner.eval()
    out = learner.adapt(sx, sy)(qx)
    assert not out.requires_grad  # adaptation at test time needs the learner's gradients only
    with torch.no_grad():  # and works under no_grad too (the gradients are taken internally)
        out2 = learner.adapt(sx, sy)(qx)
    torch.testing.assert_close(out, out2)


# -- shapes and arguments -----------------------------------------------------------------------------------

@pytest.mark.parametrize("backbone,args,item,head", [
    ("conv4", {"in_channels": 1, "hidden": 4, "out_channels": 4}, (1, 28, 28), True),
    ("conv4", {"in_channels": 3, "hidden": 4, "out_channels": 4}, (3, 84, 84), True),
    ("mlp", {"in_features": 10, "hidden": [8], "out_features": 6}, (10,), True),
    ("maml_omniglot", {"in_channels": 1, "hidden": 4, "out_features": 5}, (1, 28, 28), False),
])
def test_shapes_for_any_backbone(backbone, args, item, head):
    torch.manual_seed(0)
    learner = MetaLSTM(build_backbone(backbone, **args), ways=5, input_shape=item, inner_steps=2,
                       hidden_size=4, head=head)
    sx, sy, qx, _ = _toy_task(item, ways=5, shots=1, queries=2, dtype=torch.float32)
    assert learner.initial_theta().shape == (sum(p.numel() for _, p in learner.learner_parameters()),)
    assert learner.adapt(sx, sy)(qx).shape == (10, 5)
    sx3, sy3, qx3, _ = _toy_task(item, ways=3, shots=2, queries=2, dtype=torch.float32)
    assert learner.adapt(sx3, sy3)(qx3).shape == (6, 3)  # fewer classes than the head: its first rows
    state = learner.state_dict()
    assert not any("running" in k or "num_batches" in k for k in state)  # batch statistics only


def test_argument_errors_name_the_problem():
    with pytest.raises(ValueError, match="support set has 6 classes but the learner's head has 5"):
        learner = MetaLSTM(build_backbone("mlp", in_features=4, hidden=[4], out_features=4), input_shape=(4,))
        learner.adapt(torch.randn(6, 4), torch.arange(6))
    with pytest.raises(ValueError, match="head=False but the backbone outputs 4"):
        MetaLSTM(build_backbone("mlp", in_features=4, hidden=[4], out_features=4), input_shape=(4,),
                 head=False)
    with pytest.raises(ValueError, match="input_shape"):
        MetaLSTM(build_backbone("conv4", in_channels=3), input_shape=(1, 28, 28))
    with pytest.raises(ValueError, match="inner_steps must be an integer >= 1"):
        MetaLSTM(build_backbone("mlp", in_features=4, hidden=[4], out_features=4), input_shape=(4,),
                 inner_steps=0)


def test_gate_bias_initialisation_ranges():
    def learner(**kw: object) -> MetaLSTM:
        torch.manual_seed(0)
        backbone = build_backbone("mlp", in_features=4, hidden=[4], out_features=4)
        return MetaLSTM(backbone, input_shape=(4,), **kw)

    paper, other = learner(), learner(input_bias_init=[-2.5, -2.0], forget_bias_init=[7.0, 7.0])
    assert 4.0 <= paper.meta_lstm.cell.b_forget.item() <= 6.0
    assert -5.0 <= paper.meta_lstm.cell.b_input.item() <= -4.0
    assert -2.5 <= other.meta_lstm.cell.b_input.item() <= -2.0
    assert other.meta_lstm.cell.b_forget.item() == 7.0
    # the same random draws: only the ranges differ
    assert torch.equal(paper.meta_lstm.cell.w_input, other.meta_lstm.cell.w_input)
    assert other.config_dict()["input_bias_init"] == [-2.5, -2.0]
    assert paper.config_dict()["forget_bias_init"] == [4.0, 6.0]
    with pytest.raises(ValueError, match=r"input_bias_init must be \[low, high\]"):
        learner(input_bias_init=[-2.0, -2.5])


# -- a short real run, then the checkpoint round trip -------------------------------------------------------


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, omniglot_train):
    from metashot.config import load_config
    from metashot.train import train_from_config

    out = tmp_path_factory.mktemp("metalstm-run")
    cfg = load_config(CONFIGS / "metalstm-omniglot-5w1s-paper.yaml", [
        "model.backbone_args={in_channels: 1, hidden: 8, out_channels: 8}",
        "model.algorithm_args.inner_steps=3",
        "train.steps=150", "train.lr=0.005", "train.val_every=0", "train.log_every=50", "train.threads=null",
        f"train.out_dir={out}"])
    with _one_thread():
        summary = train_from_config(cfg, progress=False)
    return out, summary


@pytest.mark.slow
def test_short_omniglot_run_learns(trained_run, omniglot_test):
    from metashot.checkpoint import build_learner, load_checkpoint
    from metashot.evaluate import evaluate

    out, summary = trained_run
    assert summary["steps"] == 150
    learner, meta = load_checkpoint(out / "final")
    assert meta["config"]["train"]["grad_clip"] == 0.25
    torch.manual_seed(0)
    untrained = build_learner(meta["config"]["model"])
    with _one_thread():
        after = evaluate(learner, omniglot_test, 5, 1, 5, episodes=60, seed=1234, progress=False)["acc"]
        before = evaluate(untrained, omniglot_test, 5, 1, 5, episodes=60, seed=1234, progress=False)["acc"]
    assert after > 40.0, f"chance is 20%; got {after:.1f}% after 150 meta-steps (untrained {before:.1f}%)"
    assert after > before + 10.0


@pytest.mark.slow
def test_checkpoint_round_trip_through_load_fit_predict(trained_run, omniglot_test):
    from PIL import Image

    import metashot

    out, _ = trained_run
    clf = metashot.load(out)  # run folder -> final/
    assert clf.learner.algorithm_name == "metalstm" and clf.learner.adapt_needs_grad
    store = omniglot_test
    classes = [0, 7, 19, 23, 42]
    rows = [(c, int(store.offsets[c]) + i) for c in classes for i in range(6)]
    # raw images as a user would have them (black ink on white): preprocessing must give back the store's
    images = [Image.fromarray(255 - store.images[r, 0].numpy()) for _, r in rows]
    labels = [f"char{c}" for c, _ in rows]
    support = [i for i in range(len(rows)) if i % 6 == 0]
    query = [i for i in range(len(rows)) if i % 6 != 0]
    clf.fit([images[i] for i in support], [labels[i] for i in support])
    pred = clf.predict([images[i] for i in query])
    proba = clf.predict_proba([images[i] for i in query])
    assert proba.shape == (25, 5) and np.allclose(proba.sum(1), 1.0, atol=1e-5)
    acc = float(np.mean(pred == np.array([labels[i] for i in query])))
    assert acc > 0.2

    # the loaded model computes exactly what the trained learner computes on the same tensors
    x = store.images[[r for _, r in rows]].float() / 255
    sy = torch.tensor([list(clf.classes_).index(labels[i]) for i in support])
    learner = clf.learner
    want = learner.adapt(x[support], sy)(x[query]).argmax(1).numpy()
    assert (clf.classes_[want] == pred).all()


@pytest.mark.slow
def test_bundled_omniglot_model_loads_and_classifies(omniglot_test):
    """The shipped `metalstm-omniglot` (96.32 % on 1000 test episodes, RESULTS.md) on 10 of those episodes."""
    import metashot
    from metashot.evaluate import evaluate

    clf = metashot.load("metalstm-omniglot")
    learner = clf.learner
    assert learner.algorithm_name == "metalstm" and learner.inner_steps == 5
    assert clf.image_spec is not None and clf.image_spec.invert  # raw images get the training preprocessing
    res = evaluate(learner, omniglot_test, 5, 1, 15, episodes=10, seed=1234, progress=False)
    assert res["acc"] > 90.0, res


def test_checkpoints_that_say_item_shape_still_load(tmp_path):
    """``item_shape`` was the name of ``input_shape`` before the rename; old checkpoints keep loading."""
    import shutil

    from metashot.checkpoint import bundled_path, load_checkpoint

    old = tmp_path / "old"
    shutil.copytree(bundled_path("metalstm-omniglot"), old)
    cfg = old / "config.json"
    cfg.write_text(cfg.read_text().replace('"input_shape"', '"item_shape"'))
    learner, meta = load_checkpoint(old)
    assert "item_shape" in meta["learner_args"] and learner.input_shape == (1, 28, 28)
    assert learner.config_dict()["input_shape"] == [1, 28, 28]
    new, _ = load_checkpoint("metalstm-omniglot")
    for (k, a), (_, b) in zip(learner.state_dict().items(), new.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    mlp = build_backbone("mlp", in_features=4, hidden=[4], out_features=4)
    assert MetaLSTM(mlp, item_shape=(4,)).input_shape == (4,)
    with pytest.raises(ValueError, match="item_shape .* disagree"):
        MetaLSTM(mlp, input_shape=(4,), item_shape=(5,))
