"""Backbone networks, built by name from configs and checkpoints.

Every backbone maps [B, C, H, W] (or [B, D] for ``mlp``) to [B, out_dim] unless a head is requested.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from metashot.registry import Registry, call_with

# "timm" is registered by metashot.nn.pretrained, imported on its first use (it imports timm).
BACKBONES: Registry[Callable[..., nn.Module]] = Registry("backbone", lazy={"timm": "metashot.nn.pretrained"})


def register_backbone(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: ``fn(**args) -> nn.Module`` builds backbone ``name`` (a taken name is an error)."""
    return BACKBONES.register(name)


def available_backbones() -> list[str]:
    return BACKBONES.names()


def build_backbone(name: str, **kwargs: Any) -> nn.Module:
    """Backbone ``name`` built with ``kwargs``; an argument it does not take is an error naming both."""
    return call_with(BACKBONES.get(name), kwargs, lambda e: f"backbone {name!r}: bad arguments {kwargs}: {e}")


def conv_block(cin: int, cout: int, pool: bool = True, stride: int = 1,
               batch_norm: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, stride=stride, padding=1)]
    layers += [nn.BatchNorm2d(cout), nn.ReLU()] if batch_norm else [nn.ReLU()]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


@register_backbone("conv4")
def conv4(in_channels: int = 1, hidden: int = 64, out_channels: int = 64, depth: int = 4,
          batch_norm: bool = True) -> nn.Module:
    """Snell et al. 2017 / Vinyals et al. 2016 embedding: depth x [3x3 conv, BN, ReLU, 2x2 max-pool], flat.

    On 28x28 inputs with 64 channels the output is 64-d (1x1 spatial); on 84x84, 1600-d. ``batch_norm=False``
    drops the BN layers (an ablation).
    """
    chans = [in_channels] + [hidden] * (depth - 1) + [out_channels]
    return nn.Sequential(*[conv_block(chans[i], chans[i + 1], batch_norm=batch_norm) for i in range(depth)],
                         nn.Flatten())


@register_backbone("conv4_maps")
def conv4_maps(in_channels: int = 1, hidden: int = 64, depth: int = 4, pools: int = 2) -> nn.Module:
    """Relation Networks' embedding: depth x [3x3 conv, BN, ReLU], 2x2 max-pool after the first ``pools``.

    Returns feature maps, not vectors: [B, C, H, W] -> [B, hidden, H / 2^pools, W / 2^pools] (28x28 -> 7x7).
    """
    if not 0 <= pools <= depth:
        raise ValueError(f"conv4_maps: pools must be in 0..depth={depth}, got {pools}")
    chans = [in_channels] + [hidden] * depth
    return nn.Sequential(*[conv_block(chans[i], chans[i + 1], pool=i < pools) for i in range(depth)])


@register_backbone("mlp")
def mlp(in_features: int = 1, hidden: tuple[int, ...] | list[int] = (40, 40),
        out_features: int = 1) -> nn.Module:
    """Fully connected ReLU network (MAML's sinusoid regressor is ``mlp(1, (40, 40), 1)``)."""
    dims = [in_features, *hidden]
    layers: list[nn.Module] = []
    for a, b in zip(dims[:-1], dims[1:], strict=True):
        layers += [nn.Linear(a, b), nn.ReLU()]
    layers.append(nn.Linear(dims[-1], out_features))
    return nn.Sequential(*layers)


class MAMLConvNet(nn.Module):
    """Finn et al. (2017) classifier: ``features`` (4 conv blocks), a linear ``head`` with one output per way.

    The head is part of the meta-learned initialisation, so ``out_features`` must equal the number of ways the
    learner is trained and used with. ANIL adapts only the parameters named ``head.*``.
    Shapes: [B, C, H, W] -> logits [B, out_features].
    """

    def __init__(self, features: nn.Module, feature_dim: int, out_features: int, mean_pool: bool) -> None:
        super().__init__()
        self.features = features
        self.mean_pool = mean_pool
        self.head = nn.Linear(feature_dim, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.features(x)
        z = z.mean(dim=(2, 3)) if self.mean_pool else z.flatten(1)
        return self.head(z)


@register_backbone("maml_omniglot")
def maml_omniglot(in_channels: int = 1, hidden: int = 64, out_features: int = 5, depth: int = 4) -> nn.Module:
    """MAML's Omniglot net: depth x [3x3 conv ``hidden`` stride 2, BN, ReLU], spatial mean, linear head."""
    chans = [in_channels] + [hidden] * depth
    blocks = [conv_block(chans[i], chans[i + 1], pool=False, stride=2) for i in range(depth)]
    return MAMLConvNet(nn.Sequential(*blocks), hidden, out_features, mean_pool=True)


@register_backbone("maml_miniimagenet")
def maml_miniimagenet(in_channels: int = 3, hidden: int = 32, out_features: int = 5, depth: int = 4,
                      image_size: int = 84) -> nn.Module:
    """MAML's mini-ImageNet net: depth x [3x3 conv ``hidden``, BN, ReLU, 2x2 max-pool], flatten, linear head.

    ``image_size`` fixes the flattened size (84 -> 5x5x32 = 800).
    """
    chans = [in_channels] + [hidden] * depth
    side = image_size
    for _ in range(depth):
        side //= 2
    if side < 1:
        raise ValueError(f"maml_miniimagenet: image_size={image_size} is too small for {depth} pooling "
                         "blocks; use images of at least 2**depth pixels")
    blocks = [conv_block(chans[i], chans[i + 1]) for i in range(depth)]
    return MAMLConvNet(nn.Sequential(*blocks), hidden * side * side, out_features, mean_pool=False)


class ResidualAdapter(nn.Module):
    """A small trainable map on frozen sentence embeddings: z = x + W2 dropout(ReLU(W1 x + b1)) + b2.

    W2 and b2 start at zero, so the untrained adapter is the identity and a ProtoNet on it starts as nearest
    class mean on the frozen encoder. An optional linear ``head`` (for MAML/ANIL-style learners) maps z to
    ``head`` logits. Shapes: [B, dim] -> [B, dim] (or [B, head]).
    """

    def __init__(self, dim: int = 384, hidden: int = 256, dropout: float = 0.0,
                 head: int | None = None) -> None:
        super().__init__()
        self.dim, self.hidden = int(dim), int(hidden)
        self.up = nn.Linear(self.dim, self.hidden)
        self.act = nn.ReLU()
        self.drop = nn.Dropout(dropout)
        self.down = nn.Linear(self.hidden, self.dim)
        nn.init.zeros_(self.down.weight)
        nn.init.zeros_(self.down.bias)
        self.head = nn.Linear(self.dim, int(head)) if head else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        if x.shape[1] != self.dim:
            raise ValueError(f"ResidualAdapter: inputs have {x.shape[1]} features but the adapter expects "
                             f"{self.dim}; set backbone_args.dim to the encoder's size")
        z = x + self.down(self.drop(self.act(self.up(x))))
        return self.head(z) if self.head is not None else z


@register_backbone("adapter")
def adapter(dim: int = 384, hidden: int = 256, dropout: float = 0.0, head: int | None = None) -> nn.Module:
    """Residual MLP adapter for frozen sentence embeddings (text few-shot); identity at initialisation."""
    return ResidualAdapter(dim, hidden, dropout, head)


def output_dim(backbone: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Flattened feature size of ``backbone`` on one item of ``input_shape`` (a dummy forward in eval mode).

    Works for backbones without parameters too (e.g. ``nn.Flatten()``); inputs then are float32 on the CPU.
    """
    was = backbone.training
    backbone.eval()
    p = next(iter(backbone.parameters()), None)
    kw = {"device": p.device, "dtype": p.dtype} if p is not None else {}
    with torch.no_grad():
        out = backbone(torch.zeros(2, *input_shape, **kw))
    backbone.train(was)
    return int(out.reshape(2, -1).shape[1])


class ResNet12Block(nn.Module):
    """One ResNet-12 stage: three [3x3 conv, BN] layers with LeakyReLU(0.1) between them, a [1x1 conv, BN]
    shortcut added before the last LeakyReLU, then 2x2 max-pool (and dropout if ``drop_rate`` > 0).

    Shapes: [B, cin, H, W] -> [B, cout, H // 2, W // 2]. Convolutions have no bias (each is followed by BN).
    """

    def __init__(self, cin: int, cout: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv3 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))
        # Not in place: MAML's functional_call and vmap differentiate through every activation.
        self.act = nn.LeakyReLU(0.1)
        self.pool = nn.MaxPool2d(2)
        self.drop = nn.Dropout(drop_rate) if drop_rate > 0 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.act(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out = self.pool(self.act(out + self.shortcut(x)))
        return self.drop(out) if self.drop is not None else out


class ResNet12(nn.Module):
    """ResNet-12: ``features`` (:class:`ResNet12Block` stages), global average pool, optional linear ``head``.

    Shapes: [B, C, H, W] -> [B, widths[-1]] (``avg_pool``), the feature map [B, widths[-1], H/16, W/16]
    (``avg_pool=False``), or logits [B, out_features] with a head. Parameters are named ``features.*`` and
    ``head.*`` as in :class:`MAMLConvNet`, so ANIL adapts the head alone.
    """

    def __init__(self, in_channels: int, widths: tuple[int, ...], drop_rate: float, avg_pool: bool,
                 out_features: int | None) -> None:
        super().__init__()
        chans = [in_channels, *widths]
        self.features = nn.Sequential(*[ResNet12Block(chans[i], chans[i + 1], drop_rate)
                                        for i in range(len(widths))])
        self.avg_pool = avg_pool
        self.head = nn.Linear(widths[-1], out_features) if out_features is not None else None
        for m in self.features.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, a=0.1, mode="fan_out", nonlinearity="leaky_relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.features(x)
        if not self.avg_pool:
            return z
        z = z.mean(dim=(2, 3))
        return self.head(z) if self.head is not None else z


@register_backbone("resnet12")
def resnet12(in_channels: int = 3, widths: tuple[int, ...] | list[int] = (64, 160, 320, 640),
             drop_rate: float = 0.0, avg_pool: bool = True, out_features: int | None = None) -> nn.Module:
    """ResNet-12 (Oreshkin, Rodriguez & Lacoste, TADAM, NeurIPS 2018; Lee et al., MetaOptNet, CVPR 2019;
    Tian et al., RFS, ECCV 2020; Ye et al., FEAT, CVPR 2020): the standard mini-ImageNet backbone.

    Four residual stages of widths ``widths`` (64-160-320-640: 12,424,320 parameters), each three
    [3x3 conv, BN, LeakyReLU(0.1)] layers with a [1x1 conv, BN] shortcut and a 2x2 max-pool, then a global
    average pool. Shapes: [B, C, H, W] -> [B, widths[-1]] (84x84 reaches the pool as 5x5, 32x32 as 2x2).

    Args:
        in_channels: C of the input images.
        widths: channels of the four (or any number of) stages; each stage halves H and W.
        drop_rate: dropout after each stage (0 = none; the published models use DropBlock, not provided here).
        avg_pool: global average pool; ``False`` returns the last feature map [B, widths[-1], H/16, W/16],
            which is what Relation Networks need (``relation`` refuses flat embeddings; at 84x84 the map is
            5x5, enough for its relation module's two 2x2 pools, at 32x32 it is 2x2, too small).
        out_features: append a linear ``head`` of this many outputs on the pooled features, for MAML,
            Meta-SGD, ANIL and Reptile (set it to the number of ways). Needs ``avg_pool``.
    """
    widths = tuple(int(w) for w in widths)
    if not widths or min(widths) < 1:
        raise ValueError(f"resnet12: widths must be a non-empty list of positive channel counts, got "
                         f"{widths}")
    if not 0.0 <= drop_rate < 1.0:
        raise ValueError(f"resnet12: drop_rate must be in [0, 1), got {drop_rate}")
    if out_features is not None and not avg_pool:
        raise ValueError("resnet12: out_features (a linear head) needs avg_pool=True; the head reads the "
                         f"pooled {widths[-1]}-d features")
    if out_features is not None and out_features < 1:
        raise ValueError(f"resnet12: out_features must be >= 1 (the number of ways), got {out_features}")
    return ResNet12(int(in_channels), widths, float(drop_rate), bool(avg_pool), out_features)
