"""Backbone networks, built by name from configs and checkpoints.

Every backbone maps [B, C, H, W] (or [B, D] for ``mlp``) to [B, out_dim] unless a head is requested.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

_BACKBONES: dict[str, Callable[..., nn.Module]] = {}


def register_backbone(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _BACKBONES[name] = fn
        return fn
    return deco


def available_backbones() -> list[str]:
    return sorted(_BACKBONES)


def build_backbone(name: str, **kwargs: Any) -> nn.Module:
    if name not in _BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; available: {available_backbones()}")
    try:
        return _BACKBONES[name](**kwargs)
    except TypeError as e:
        raise ValueError(f"backbone {name!r}: bad arguments {kwargs}: {e}") from e


def conv_block(cin: int, cout: int, pool: bool = True, stride: int = 1) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.BatchNorm2d(cout),
                               nn.ReLU()]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


@register_backbone("conv4")
def conv4(in_channels: int = 1, hidden: int = 64, out_channels: int = 64, depth: int = 4) -> nn.Module:
    """Snell et al. 2017 / Vinyals et al. 2016 embedding: depth x [3x3 conv, BN, ReLU, 2x2 max-pool], flat.

    On 28x28 inputs with 64 channels the output is 64-d (1x1 spatial); on 84x84, 1600-d.
    """
    chans = [in_channels] + [hidden] * (depth - 1) + [out_channels]
    return nn.Sequential(*[conv_block(chans[i], chans[i + 1]) for i in range(depth)], nn.Flatten())


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


def output_dim(backbone: nn.Module, item_shape: tuple[int, ...]) -> int:
    """Flattened feature size of ``backbone`` on one item of ``item_shape`` (a dummy forward in eval mode).

    Works for backbones without parameters too (e.g. ``nn.Flatten()``); inputs then are float32 on the CPU.
    """
    was = backbone.training
    backbone.eval()
    p = next(iter(backbone.parameters()), None)
    kw = {"device": p.device, "dtype": p.dtype} if p is not None else {}
    with torch.no_grad():
        out = backbone(torch.zeros(2, *item_shape, **kw))
    backbone.train(was)
    return int(out.reshape(2, -1).shape[1])
