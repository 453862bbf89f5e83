"""``metashot.load("timm/<model>")``: any timm model as a SimpleShot classifier, no config, no training.

The model's pooled pre-logits features, L2-normalised and centred on the support set, nearest class mean
(the head of the bundled ``photos`` model, without its power transform, which needs non-negative features).
Weights: ``pretrained=True`` takes the packaged ImageNet weights for ``tf_efficientnet_lite0/1/2`` and
timm's hub for every other model (internet, or the hub's local cache); ``pretrained="/path/w.safetensors"``
a local file; ``False`` a random initialisation. Offline, a model whose weights are neither packaged nor
cached fails at once with one line (instead of waiting for the hub's retries).
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

HUB_TIMEOUT_S = 3.0
HEAD = {"algorithm": "simpleshot",
        "algorithm_args": {"centre": "support", "l2norm": True, "temperature": 10.0}}


def hub_reachable(timeout: float = HUB_TIMEOUT_S) -> bool:
    """Whether timm's hub (Hugging Face, or ``$HF_ENDPOINT``) answers a TCP connection within ``timeout``
    seconds; False at once under ``HF_HUB_OFFLINE=1``. The name lookup runs in a thread, so a resolver that
    hangs costs ``timeout`` too, not minutes."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co").hostname or "huggingface.co"
    ok: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, 443), timeout=timeout).close()
            ok.append(True)
        except OSError:
            pass

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout)
    return bool(ok)


def _cached(model: str) -> bool:
    """Whether the hub's local cache already holds ``model``'s pretrained weights."""
    try:
        import timm
        from huggingface_hub import try_to_load_from_cache

        repo = getattr(timm.models.get_pretrained_cfg(model), "hf_hub_id", None)
    except Exception:  # no hub client, or a model without a hub entry
        return False
    if not repo:
        return False
    files = ("model.safetensors", "open_clip_pytorch_model.bin", "open_clip_model.safetensors",
             "pytorch_model.bin")
    return any(isinstance(try_to_load_from_cache(repo.split("@")[0], f), str) for f in files)


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    """The hub client in offline mode (weights from its cache, no request) for the duration of the block."""
    old = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        import huggingface_hub.constants as c

        before, c.HF_HUB_OFFLINE = c.HF_HUB_OFFLINE, True
    except (ImportError, AttributeError):
        c, before = None, None
    try:
        yield
    finally:
        if c is not None:
            c.HF_HUB_OFFLINE = before
        if old is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old


def load_timm(model: str, pretrained: bool | str = True,
              device: str | torch.device = "cpu") -> tuple[Any, dict[str, Any]]:
    """(SimpleShot learner on timm ``model`` in eval mode, checkpoint-like meta) for :func:`metashot.load`."""
    from metashot.checkpoint import build_learner, external_state
    from metashot.nn.packaged import PACKAGED, require_timm

    timm = require_timm()
    if not model or model not in timm.list_models():
        raise ValueError(f"timm/{model}: timm {timm.__version__} has no model {model!r}; see "
                         f"timm.list_models('*{model or 'convnext'}*')")
    if isinstance(pretrained, (str, Path)):
        pretrained = str(Path(pretrained).expanduser().resolve())
        if not Path(pretrained).is_file():
            raise FileNotFoundError(f"timm/{model}: pretrained weights file {pretrained} does not exist")
    offline = contextlib.nullcontext()
    if pretrained is True and model not in PACKAGED and not hub_reachable():
        if not _cached(model):
            raise RuntimeError(f"timm/{model}: no internet to fetch its pretrained weights from the hub, "
                               f"and they are not in its local cache; pass pretrained='/path/w.safetensors', "
                               f"or use an offline model: 'photos' or timm/{'|'.join(sorted(PACKAGED))}")
        offline = _offline()
    model_cfg = {**HEAD, "backbone": "timm", "backbone_args": {"model": model, "pretrained": pretrained}}
    with offline:
        learner = build_learner(model_cfg)
    spec = learner.backbone.image_spec
    meta = {"algorithm": "simpleshot", "config": {"model": model_cfg}, "learner_args": learner.config_dict(),
            "image_spec": spec.to_dict(), "external_weights": external_state(learner)[1],
            "load_args": {"pretrained": pretrained},
            "card": f"natural photos | RGB, {spec.size} px | timm {model} "
                    f"({'pretrained' if pretrained else 'random init'}) + SimpleShot head | not measured"}
    return learner.to(device).eval(), meta
