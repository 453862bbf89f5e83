"""metashot.nn.backbones. ResNet-12: shapes, parameter count, gradients, and one meta-training step with every
algorithm that takes a backbone (small widths, random episodes: the loss and every meta-gradient are finite
and non-trivial). Relation Networks' feature-map conv net; the residual adapter for sentence embeddings."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from metashot.algorithms.base import algorithm_class
from metashot.algorithms.maml import MAML
from metashot.data.episodes import EpisodeBatch
from metashot.nn.backbones import available_backbones, build_backbone, resnet12

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = (4, 8, 8, 8)  # small widths: every test below runs in well under a second


def _batch(T: int = 2, N: int = 3, K: int = 1, Q: int = 2, side: int = 32, seed: int = 0,
           dtype: torch.dtype = torch.float32) -> EpisodeBatch:
    g = torch.Generator().manual_seed(seed)
    sx = torch.randn(T, N * K, 3, side, side, generator=g, dtype=dtype)
    qx = torch.randn(T, N * Q, 3, side, side, generator=g, dtype=dtype)
    sy = torch.arange(N).repeat_interleave(K).expand(T, -1)
    qy = torch.arange(N).repeat_interleave(Q).expand(T, -1)
    classes = torch.stack([torch.randperm(6, generator=g)[:N] for _ in range(T)])  # store classes 0..5
    return EpisodeBatch(sx, sy, qx, qy, classes, N, K, Q)


@pytest.mark.parametrize(("side", "spatial"), [(84, 5), (32, 2)])
def test_output_shapes(side: int, spatial: int) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, side, side)
    assert resnet12(widths=TINY)(x).shape == (2, 8)
    assert resnet12(widths=TINY, avg_pool=False)(x).shape == (2, 8, spatial, spatial)
    assert resnet12(widths=TINY, out_features=5)(x).shape == (2, 5)
    assert build_backbone("resnet12", in_channels=1, widths=[4, 8])(torch.randn(2, 1, 28, 28)).shape == (2, 8)


def test_default_shape_and_parameter_count() -> None:
    net = resnet12()
    # Per stage cin -> cout (no conv biases, each conv is followed by BN): 3x3 convs cin*cout*9 + 2*cout^2*9,
    # 1x1 shortcut cin*cout, four BNs 4 * 2 * cout (weight and bias):
    #   3 -> 64:        1,728 +    73,728 +   192 +   512 =    76,160
    #   64 -> 160:     92,160 +   460,800 + 10,240 + 1,280 =   564,480
    #   160 -> 320:   460,800 + 1,843,200 + 51,200 + 2,560 = 2,357,760
    #   320 -> 640: 1,843,200 + 7,372,800 + 204,800 + 5,120 = 9,425,920
    # total 12,424,320: the "12.4M" usually quoted for this backbone (DropBlock adds no parameters).
    assert sum(p.numel() for p in net.parameters()) == 12_424_320
    head = resnet12(out_features=5)
    assert sum(p.numel() for p in head.parameters()) == 12_424_320 + 640 * 5 + 5
    assert [k for k, _ in head.named_parameters() if k.startswith("head.")] == ["head.weight", "head.bias"]
    net.eval()
    with torch.no_grad():
        assert net(torch.zeros(1, 3, 84, 84)).shape == (1, 640)


def test_gradient_reaches_every_parameter() -> None:
    torch.manual_seed(0)
    net = resnet12(widths=TINY, drop_rate=0.1, out_features=3)
    net(torch.randn(4, 3, 32, 32)).pow(2).sum().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and bool(torch.isfinite(p.grad).all()), name
        assert float(p.grad.abs().sum()) > 0, f"{name}: zero gradient"


def test_bad_arguments_are_errors() -> None:
    with pytest.raises(ValueError, match="avg_pool"):
        resnet12(avg_pool=False, out_features=5)
    with pytest.raises(ValueError, match="widths"):
        resnet12(widths=())
    with pytest.raises(ValueError, match="drop_rate"):
        resnet12(drop_rate=1.0)
    from metashot.algorithms.relation import RelationNet

    with pytest.raises(ValueError, match="feature maps"):  # Relation Networks need avg_pool=False
        RelationNet(resnet12(widths=TINY), input_shape=(3, 84, 84))


# (algorithm, backbone_args, algorithm_args, image side): every algorithm that takes an image backbone.
# MAML-family networks end in the N-way head (out_features); Relation Networks read the feature map, which
# at 64x64 is 4x4, enough for the relation module's two 2x2 max-pools (at 32x32 it would be 2x2).
CASES: list[tuple[str, dict[str, Any], dict[str, Any], int]] = [
    ("protonet", {}, {}, 32),
    ("protonet", {}, {"distance": "cosine"}, 32),
    ("matching", {}, {}, 32),
    ("matching", {}, {"fce": True, "fce_steps": 2, "input_shape": [3, 32, 32]}, 32),
    ("relation", {"avg_pool": False}, {"input_shape": [3, 64, 64]}, 64),
    ("siamese", {}, {}, 32),
    ("siamese", {}, {"loss": "koch", "input_shape": [3, 32, 32]}, 32),
    ("baseline", {}, {"num_classes": 6, "input_shape": [3, 32, 32]}, 32),
    ("maml", {"out_features": 3}, {"inner_lr": 0.1, "inner_steps": 1}, 32),
    ("maml", {"out_features": 3}, {"inner_lr": 0.1, "inner_steps": 1, "first_order": True}, 32),
    ("metasgd", {"out_features": 3}, {"inner_lr": 0.1, "inner_steps": 1}, 32),
    ("anil", {"out_features": 3}, {"inner_lr": 0.1, "inner_steps": 2}, 32),
    ("reptile", {"out_features": 3}, {"inner_lr": 0.1, "inner_steps": 2}, 32),
    ("metalstm", {}, {"ways": 3, "input_shape": [3, 32, 32], "inner_steps": 2}, 32),
]


@pytest.mark.parametrize(("algorithm", "backbone_args", "algorithm_args", "side"), CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_one_meta_training_step_with_every_algorithm(algorithm: str, backbone_args: dict[str, Any],
                                                     algorithm_args: dict[str, Any], side: int) -> None:
    """Trainable from scratch: one meta_loss on a random 3-way 1-shot batch gives a finite loss and a finite
    meta-gradient for every parameter (every backbone parameter's non-zero), and one Adam step moves it."""
    torch.manual_seed(0)
    backbone = resnet12(widths=TINY, **backbone_args)
    learner = algorithm_class(algorithm)(backbone, **algorithm_args)
    learner.train()
    batch = _batch(side=side)
    loss, metrics = learner.meta_loss(batch)
    assert bool(torch.isfinite(loss)) and 0.0 <= metrics.get("acc", 0.0) <= 1.0
    loss.backward()
    for name, p in learner.named_parameters():
        if not p.requires_grad:
            continue
        assert p.grad is not None, f"{algorithm}: no gradient reaches {name}"
        assert bool(torch.isfinite(p.grad).all()), f"{algorithm}: non-finite gradient in {name}"
        if name.startswith("backbone.") and name.endswith("conv1.weight"):
            assert float(p.grad.abs().sum()) > 0, f"{algorithm}: zero gradient in {name}"
    before = backbone.features[0].conv1.weight.detach().clone()
    torch.optim.Adam(learner.parameters(), lr=1e-3).step()
    assert not torch.equal(before, backbone.features[0].conv1.weight)
    learner.eval()  # and it adapts to a new task at test time
    sx, sy, qx, _ = batch.task(0)
    assert learner.adapt(sx, sy)(qx).shape == (qx.shape[0], 3)


def test_anil_adapts_only_the_head() -> None:
    learner = algorithm_class("anil")(resnet12(widths=TINY, out_features=3))
    assert learner.adapted_names == ["head.weight", "head.bias"]


def test_maml_vectorized_equals_loop_in_float64() -> None:
    """vmap fast path == per-task loop (second order, batch statistics through the residual blocks)."""
    grads = []
    for vectorized in (False, True):
        torch.manual_seed(0)
        net = resnet12(widths=(2, 3), out_features=3).double()
        with torch.no_grad():  # non-trivial batch-norm affine parameters
            for m in net.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.uniform_(-0.3, 0.3)
        learner = MAML(net, inner_lr=0.1, inner_steps=2, vectorized=vectorized).double()
        loss, _ = learner.meta_loss(_batch(T=3, N=3, K=2, Q=2, side=8, dtype=torch.float64))
        params = [p for p in learner.parameters() if p.requires_grad]
        grads.append((loss.detach(), torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)])))
    (l_loop, g_loop), (l_vec, g_vec) = grads
    assert abs(float(l_loop - l_vec)) <= 1e-12 * abs(float(l_loop))
    assert float(g_loop.norm()) > 0
    assert float((g_loop - g_vec).norm() / g_loop.norm()) <= 1e-9


def test_relations_map_backbone_lives_with_the_backbones() -> None:
    from metashot.nn import backbones

    assert "conv4_maps" in available_backbones()
    assert backbones.conv4_maps.__module__ == "metashot.nn.backbones"
    out = build_backbone("conv4_maps", in_channels=1, hidden=4)(torch.zeros(2, 1, 28, 28))
    assert out.shape == (2, 4, 7, 7)


def test_adapter_is_identity_at_init_and_has_head() -> None:
    torch.manual_seed(0)
    a = build_backbone("adapter", dim=8, hidden=4)
    x = torch.randn(3, 8)
    torch.testing.assert_close(a(x), x)
    h = build_backbone("adapter", dim=8, hidden=4, head=5)
    assert h(x).shape == (3, 5) and "head.weight" in dict(h.named_parameters())
    with pytest.raises(ValueError, match="expects 8"):
        a(torch.randn(2, 9))


def test_conv4_without_batch_norm():
    with_bn, without = build_backbone("conv4", hidden=4, out_channels=4), build_backbone(
        "conv4", hidden=4, out_channels=4, batch_norm=False)
    assert any(isinstance(m, nn.BatchNorm2d) for m in with_bn.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in without.modules())
    assert without(torch.zeros(2, 1, 28, 28)).shape == with_bn(torch.zeros(2, 1, 28, 28)).shape == (2, 4)
