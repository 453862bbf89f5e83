"""A frozen timm trunk run by ONNX Runtime: the ``precision="onnx"`` fast path of :class:`TimmBackbone`.

Each member network is exported once to ONNX (float32, opset 17) for one input size and cached on disk under
:func:`metashot._env.cache_dir` ``("onnx")``, keyed by the member's name, weights digest and input size; a
cached file is verified (its recorded SHA-256 and key) before use and rebuilt, with one warning naming it,
when it fails. ONNX Runtime's CPU kernels run these depthwise-separable networks several times faster than
PyTorch's float32 path on a small CPU (``benchmarks/photos/precision_bench.py``); the arithmetic is float32
throughout, so the features agree with the float32 reference path to rounding (tests/test_precision.py
holds them to it).

TensorFlow-ported EfficientNets ('tf_' models) pad 'SAME' by the input's shape at every call; the export
needs that padding fixed for the one input size, so :func:`static_padding` replaces each such convolution by
explicit zero padding and a plain convolution with the same weights (the same function for that size).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from metashot._env import cache_dir


class StaticSame(nn.Module):
    """A TensorFlow 'SAME'-padded convolution at a fixed input size: explicit zero padding, then a plain
    convolution with the original's weights."""

    def __init__(self, conv: nn.Conv2d, pad: tuple[int, int, int, int]) -> None:
        super().__init__()
        self.pad = nn.ZeroPad2d(pad)
        self.conv = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, 0,
                              conv.dilation, conv.groups, conv.bias is not None)
        self.conv.load_state_dict(conv.state_dict())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.pad(x))


def static_padding(model: nn.Module, size: int) -> nn.Module:
    """A copy of ``model`` (eval mode, contiguous layout) with every timm ``Conv2dSame`` replaced by
    :class:`StaticSame` for size x size inputs; a model without one is copied unchanged."""
    from timm.layers.conv2d_same import Conv2dSame
    from timm.layers.padding import get_same_padding

    model = copy.deepcopy(model).eval().to(memory_format=torch.contiguous_format)
    shapes: dict[str, tuple[int, int]] = {}
    hooks = [m.register_forward_pre_hook(lambda m, a, n=n: shapes.__setitem__(n, tuple(a[0].shape[-2:])))
             for n, m in model.named_modules() if isinstance(m, Conv2dSame)]
    with torch.no_grad():
        model(torch.zeros(1, 3, size, size))
    for h in hooks:
        h.remove()
    for n, (ih, iw) in shapes.items():
        conv = model.get_submodule(n)
        ph = get_same_padding(ih, conv.kernel_size[0], conv.stride[0], conv.dilation[0])
        pw = get_same_padding(iw, conv.kernel_size[1], conv.stride[1], conv.dilation[1])
        parent, _, leaf = n.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, leaf,
                StaticSame(conv, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)))
    return model.eval()


def onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def export_member(model: nn.Module, size: int, path: Path, name: str = "the model") -> None:
    """Write ``model`` (normalised images [B, 3, size, size] -> features [B, D]) to ``path`` as ONNX.

    Raises:
        OSError: ``path``'s folder cannot be written.
        ValueError: the exporter cannot translate the model (one line naming it and the way around it).
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(static_padding(model, size), (torch.zeros(2, 3, size, size),), str(tmp),
                              input_names=["x"], output_names=["z"],
                              dynamic_axes={"x": {0: "b"}, "z": {0: "b"}}, dynamo=False, opset_version=17)
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
    except Exception as e:  # the exporter raises many types for a model it cannot translate
        tmp.unlink(missing_ok=True)
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ValueError(f"cannot export {name} to ONNX ({type(e).__name__}: {first}); run it with PyTorch: "
                         f"precision auto (or METASHOT_PRECISION=auto)") from e


def cached_export(model: nn.Module, key: str, size: int, folder: Path | None = None) -> Path:
    """The verified ONNX file of ``model`` at ``size`` (``key``: its name and weights digest), exported now
    if it is missing or fails verification (one warning naming it)."""
    from metashot.digest import file_digest

    folder = Path(folder) if folder is not None else cache_dir("onnx")
    stem = hashlib.sha256(f"{key}|size={size}|torch={torch.__version__}".encode()).hexdigest()[:24]
    path, record = folder / f"{stem}.onnx", folder / f"{stem}.json"
    want = {"key": key, "size": size}
    if path.exists() or record.exists():
        try:
            info = json.loads(record.read_text())
            if not isinstance(info, dict) or {k: info.get(k) for k in want} != want:
                raise ValueError(f"its record {record.name} is for {info}")
            if file_digest(path) != info.get("sha256"):
                raise ValueError("its bytes do not match the recorded SHA-256")
            return path
        except (OSError, ValueError) as e:
            warnings.warn(f"ONNX cache {path} failed verification ({e}); exporting it again", UserWarning,
                          stacklevel=3)
    name = key.split("|")[0]
    try:
        folder.mkdir(parents=True, exist_ok=True)
        export_member(model, size, path, name)
        tmp = record.with_name(f".{record.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(dict(want, sha256=file_digest(path))))
        os.replace(tmp, record)
    except OSError as e:  # a read-only or full cache: export for this process only
        scratch = Path(tempfile.mkdtemp(prefix="metashot-onnx-"))
        warnings.warn(f"cannot write the ONNX cache {folder} ({e}); exporting {name} to {scratch} for this "
                      f"process only. Set METASHOT_CACHE to a writable folder to export it once", UserWarning,
                      stacklevel=3)
        path = scratch / path.name
        export_member(model, size, path, name)
    return path


class OrtMember(nn.Module):
    """An ONNX Runtime session in place of a member network: normalised images [B, 3, S, S] -> [B, D]
    (float32; no gradients).

    The session runs ``chunk`` images at a time: ONNX Runtime's memory arena keeps the largest activations it
    has seen, so whole batches of 64 at 224 px held 2.2 GiB where chunks of 16 hold 1.3 GiB, at the same speed
    (measured on the bundled `photos`; the answers do not depend on the chunk)."""

    chunk = 16

    def __init__(self, path: Path, num_features: int, threads: int | None = None) -> None:
        super().__init__()
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads or torch.get_num_threads()
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        self.path, self.num_features = Path(path), int(num_features)
        self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xs = x.detach().float().contiguous().cpu().numpy()
        out = [self.session.run(None, {"x": xs[i:i + self.chunk]})[0] for i in range(0, len(xs), self.chunk)]
        z = np.concatenate(out) if out else np.zeros((0, self.num_features), np.float32)
        return torch.from_numpy(z).to(x.device)



def ort_members(members: list[nn.Module], keys: list[str], size: int) -> list[OrtMember]:
    """ONNX Runtime stand-ins for ``members`` (each exported once, see :func:`cached_export`).

    Raises:
        ValueError: onnxruntime is not installed (one line saying how to install it).
    """
    if not onnxruntime_available():
        raise ValueError("precision 'onnx' needs ONNX Runtime: pip install 'metashot[vision]' (or pip "
                         "install onnxruntime onnx), or set METASHOT_PRECISION=auto to use PyTorch")
    return [OrtMember(cached_export(m, k, size), int(m.num_features))
            for m, k in zip(members, keys, strict=True)]
