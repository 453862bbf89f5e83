"""Where metashot looks for data and caches (environment variables, with user defaults)."""

from __future__ import annotations

import os
from pathlib import Path


def data_root() -> Path:
    """Root folder of datasets: ``$METASHOT_DATA``, else ``~/.cache/metashot/data`` (downloads land there)."""
    env = os.environ.get("METASHOT_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "metashot" / "data"


def cache_root() -> Path:
    """Folder of decoded-image stores: ``$METASHOT_CACHE``, else ``~/.cache/metashot/stores``."""
    env = os.environ.get("METASHOT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "metashot" / "stores"


def cache_dir(kind: str) -> Path:
    """Folder of another cache (``features``, ``pretrained``): ``$METASHOT_CACHE/<kind>``, else
    ``~/.cache/metashot/<kind>``: every cache stays under ``$METASHOT_CACHE`` when it is set."""
    env = os.environ.get("METASHOT_CACHE")
    return (Path(env).expanduser() if env else Path.home() / ".cache" / "metashot") / kind


def quiet() -> bool:
    """True when ``$METASHOT_QUIET`` is set (``metashot ... --quiet`` sets it): no progress bars anywhere,
    including the one-off decoding of a dataset into its store and the text encoder's loading bars."""
    return os.environ.get("METASHOT_QUIET", "").strip().lower() not in ("", "0", "false", "no")


PRECISIONS = ("auto", "fp32", "bf16", "onnx")


def cpu_has_bf16() -> bool:
    """True when this CPU computes bfloat16 natively (AVX512-BF16 or AMX-BF16 in /proc/cpuinfo, and oneDNN
    agrees); detected, never assumed. Elsewhere bfloat16 is emulated and slower than float32."""
    try:
        flags = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return False
    if "avx512_bf16" not in flags and "amx_bf16" not in flags:
        return False
    try:
        import torch

        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:  # an old or CPU-less torch build: no native bf16
        return False


def precision_override() -> str | None:
    """``$METASHOT_PRECISION`` (``fp32``, ``bf16``, ``onnx`` or ``auto``) if set: forces the inference path of
    pretrained backbones everywhere (``fp32`` is the reference path)."""
    env = os.environ.get("METASHOT_PRECISION", "").strip().lower()
    if not env:
        return None
    if env not in PRECISIONS:
        raise ValueError(f"METASHOT_PRECISION must be one of {', '.join(PRECISIONS)}, got {env!r}")
    return env
