"""The ``runtime`` record of a saved classifier (what :func:`metashot.fitted.runtime_record` writes and
:mod:`metashot.lite` reads): its kind, its check, and the environment switches that turn the lite path off.
Imports no torch."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

RUNTIME_KIND, RUNTIME_VERSION = "onnx-simpleshot", 1


def lite_off() -> str | None:
    """Why the environment turns the lite path off, or None."""
    if os.environ.get("METASHOT_LITE", "").strip().lower() in ("0", "false", "no", "off"):
        return "METASHOT_LITE=0"
    env = os.environ.get("METASHOT_PRECISION", "").strip().lower()
    if env not in ("", "onnx"):
        return f"METASHOT_PRECISION={env}"
    return None


def _number(v: Any, positive: bool = False) -> bool:
    """A finite int or float (not a bool), > 0 when ``positive``."""
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    return ok and (v > 0 if positive else True)


def check_runtime(rt: Any) -> dict[str, Any]:
    """The ``runtime`` record of a classifier.json, checked (ValueError naming what is wrong): every value
    the arithmetic reads has its type and range, so a record that passes cannot crash it or answer
    nonsense."""
    if not isinstance(rt, dict):
        raise ValueError("it has no runtime record (saved by an older metashot, or not an ONNX photo model)")
    if rt.get("kind") != RUNTIME_KIND or rt.get("version") != RUNTIME_VERSION:
        raise ValueError(f"its runtime record is {rt.get('kind')!r} version {rt.get('version')!r}")
    members = rt.get("members")
    if not isinstance(members, list) or not members or (rt.get("ensemble") is False and len(members) != 1):
        raise ValueError("its runtime record's networks do not match its 'ensemble'")
    for m in members:
        name = m.get("file") if isinstance(m, dict) else None
        if not isinstance(name, str) or Path(name).name != name or not name.endswith(".onnx") \
                or not isinstance(m.get("sha256"), str) or not (isinstance(m.get("num_features"), int)
                                                                 and _number(m["num_features"], True)):
            raise ValueError(f"its runtime record's network {m!r} is malformed")
    for key in ("ensemble", "backbone_l2norm", "l2norm", "transductive"):
        if not isinstance(rt.get(key), bool):
            raise ValueError(f"its runtime record's {key!r} is {rt.get(key)!r}")
    for key in ("inductive_scale", "calibration_temperature"):
        if not _number(rt.get(key), positive=True):
            raise ValueError(f"its runtime record's {key!r} is {rt.get(key)!r}, not a positive number")
    if not (isinstance(rt.get("size"), int) and _number(rt["size"], True)):
        raise ValueError(f"its runtime record's input size is {rt.get('size')!r}")
    for key in ("mean", "std"):
        v = rt.get(key)
        if not (isinstance(v, list) and len(v) == 3 and all(_number(x, positive=key == "std") for x in v)):
            raise ValueError(f"its runtime record's {key!r} is {v!r}")
    if rt.get("power") is not None and not (_number(rt["power"], True) and rt["power"] <= 1):
        raise ValueError(f"its runtime record's power is {rt.get('power')!r}")
    if rt.get("centre") not in ("support", "none") or rt.get("head") not in ("ncm", "soft_kmeans"):
        raise ValueError(f"its runtime record's centre / head ({rt.get('centre')!r}, {rt.get('head')!r}) is "
                         f"not one the lite path runs")
    args = rt.get("head_args")
    steps = args.get("steps") if isinstance(args, dict) else None
    bad_steps = not (isinstance(steps, int) and _number(steps) and steps >= 0)
    if not isinstance(args, dict) or not _number(args.get("scale"), positive=True) \
            or (rt["head"] == "soft_kmeans" and bad_steps):
        raise ValueError(f"its runtime record's head_args {args!r} are malformed")
    t = rt.get("unknown_threshold")
    if t is not None and not _number(t):
        raise ValueError(f"its runtime record's unknown_threshold is {t!r}")
    return rt
