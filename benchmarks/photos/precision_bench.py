"""Embedding throughput of the bundled `photos` backbone in each precision, and its agreement with float32.

Variants (each gives the trunk features ``TimmBackbone.features`` gives, [B, D] float32):

- ``fp32``: the reference path (``precision="fp32"``, channels-last);
- ``bf16``: ``precision="bf16"`` (CPU autocast: oneDNN bfloat16 kernels where the CPU has AVX512-BF16 / AMX);
- ``int8_fx``: torch FX post-training static quantization (oneDNN backend: per-channel int8 weights, uint8
  activations with histogram observers), after making the network traceable: TensorFlow 'SAME' padding made
  static for the model's input size, timm's BatchNormAct2d split so convolution and batch norm fold, ReLU6
  written as ReLU + clamp so the ReLU fuses into the convolution;
- ``int8_pt2e``: PT2E static quantization (torchao's X86InductorQuantizer: int8 per-channel weights, uint8
  activations), compiled by inductor with freezing; needs ``pip install torchao`` (not a metashot
  dependency) and a C++ compiler; the first call of each batch size compiles (not timed);
- ``ort_fp32`` / ``ort_int8``: each member exported to ONNX (static padding as above) and run by ONNX Runtime
  on the CPU; int8 is ONNX Runtime's static quantization (QOperator, per-channel int8 weights, uint8
  activations, MinMax calibration). Needs ``pip install onnxruntime onnx`` (not a metashot dependency).

int8 variants are calibrated on ``--calib`` mini-ImageNet *train* images (never Flowers). An ensemble's
members are quantized / exported one by one and combined by the same :class:`ConcatTrunk` arithmetic.

Throughput: images/s on batches of ``--batch`` preprocessed tensors (real Flowers photos) with ``--threads``
torch / ONNX Runtime threads; the variants are timed in turns (``--rounds`` rounds, each variant at least
``--seconds`` per round), the median round reported, so a change of load hits them all alike.

Agreement with fp32, on Flowers-102 `val` classes (numbered 1 mod 4; the first ``--per-class`` photos of
each, at least 20): the minimum and mean feature cosine over all photos, and 5-way 1- and 5-shot accuracy
(15 queries) of the bundled head on ``--episodes`` fixed episodes of those photos (seed ``--seed``), with a
95 % CI and the fraction of query labels equal to fp32's. A variant that fails is reported as
``"tried": {name: "error ..."}``.

    python benchmarks/photos/precision_bench.py --out results/photos/precision.jsonl

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import tempfile
import time
import traceback
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

import metashot
from metashot._env import cpu_has_bf16, data_root
from metashot.data.preprocess import preprocess, to_float
from metashot.nn.onnx_trunk import OrtMember, export_member, static_padding
from metashot.nn.pretrained import ConcatTrunk, TimmBackbone

Features = Callable[[torch.Tensor], torch.Tensor]


# --- data ------------------------------------------------------------------------------------------------

def flowers_val(spec: Any, per_class: int) -> tuple[torch.Tensor, np.ndarray]:
    """uint8 [N, 3, S, S] and class indices of the first ``per_class`` photos of each Flowers `val` class."""
    path = data_root() / "flowers102" / "flowers102_odd.zip"
    if not path.is_file():
        raise SystemExit(f"{path} is missing: set METASHOT_DATA to the shared data folder")
    z = zipfile.ZipFile(path)
    by: dict[str, list[str]] = {}
    for n in sorted(z.namelist()):
        parts = n.split("/")
        if len(parts) == 3 and parts[2].endswith(".jpg") and int(parts[1][:3]) % 4 == 1:
            by.setdefault(parts[1], []).append(n)
    ims, ys = [], []
    for ci, c in enumerate(sorted(by)):
        for n in by[c][:per_class]:
            ims.append(preprocess(Image.open(io.BytesIO(z.read(n))), spec, source=f"{path}:{n}"))
            ys.append(ci)
    return torch.from_numpy(np.stack(ims)), np.array(ys)


def mini_imagenet_train(spec: Any, n: int) -> torch.Tensor:
    """uint8 [n, 3, S, S]: calibration images, spread over the mini-ImageNet `train` classes."""
    path = data_root() / "mini_imagenet" / "mini_imagenet_sample.zip"
    if not path.is_file():
        raise SystemExit(f"{path} is missing: set METASHOT_DATA to the shared data folder")
    z = zipfile.ZipFile(path)
    rows = z.read("mini_imagenet/train.csv").decode().splitlines()[1:]
    by: dict[str, list[str]] = {}
    for r in rows:
        f, label = r.split(",")
        by.setdefault(label, []).append(f)
    per = max(1, -(-n // len(by)))
    files = [f for label in sorted(by) for f in sorted(by[label])[:per]][:n]
    return torch.from_numpy(np.stack([preprocess(Image.open(io.BytesIO(z.read(f"mini_imagenet/images/{f}"))),
                                                 spec) for f in files]))


# --- making a tf_ EfficientNet traceable / exportable at a fixed input size --------------------------------

class ReLUClamp6(nn.Module):
    """ReLU6 as ReLU (which FX fuses into the convolution before it) followed by a clamp at 6."""

    def __init__(self) -> None:
        super().__init__()
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp(self.relu(x), max=6.0)


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)


def fx_friendly(model: nn.Module) -> nn.Module:
    """BatchNormAct2d -> BatchNorm2d + its activation (so convolution and batch norm fold); ReLU6 ->
    :class:`ReLUClamp6` (so the ReLU fuses into the convolution)."""
    from timm.layers.norm_act import BatchNormAct2d

    for n, m in list(model.named_modules()):
        if isinstance(m, BatchNormAct2d):
            bn = nn.BatchNorm2d(m.num_features, m.eps, m.momentum, m.affine, m.track_running_stats)
            bn.load_state_dict(m.state_dict(), strict=False)
            _replace(model, n, nn.Sequential(bn, m.act))
    for n, m in list(model.named_modules()):
        if isinstance(m, nn.ReLU6):
            _replace(model, n, ReLUClamp6())
    return model.eval()


# --- the variants ----------------------------------------------------------------------------------------

def members_of(bb: TimmBackbone) -> list[nn.Module]:
    return list(bb.trunk.members) if isinstance(bb.trunk, ConcatTrunk) else [bb.trunk]


def combined(bb: TimmBackbone, members: list[nn.Module], channels_last: bool) -> Features:
    """Trunk features from replacement members, combined as the bundled trunk combines its own."""
    trunk = ConcatTrunk(members, bb.trunk.power) if isinstance(bb.trunk, ConcatTrunk) else members[0]

    def features(x: torch.Tensor) -> torch.Tensor:
        x = (x - bb.mean) / bb.std
        x = x.contiguous(memory_format=torch.channels_last) if channels_last else x.contiguous()
        with torch.no_grad():
            return trunk(x).float()

    return features


def int8_fx(bb: TimmBackbone, calib: torch.Tensor, size: int) -> Features:
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = "onednn"
    x = (to_float(calib) - bb.mean) / bb.std
    out = []
    for m in members_of(bb):
        mm = fx_friendly(static_padding(m, size))
        prepared = prepare_fx(mm, get_default_qconfig_mapping("onednn"), example_inputs=(x[:2],))
        with torch.no_grad():
            for i in range(0, len(x), 32):
                prepared(x[i : i + 32])
        q = convert_fx(prepared)
        q.num_features = m.num_features
        out.append(q)
    return combined(bb, out, channels_last=True)


def int8_pt2e(bb: TimmBackbone, calib: torch.Tensor, size: int) -> Features:
    """PT2E static quantization (torchao's X86InductorQuantizer, its default config), compiled by inductor
    with freezing (which lowers the quantized convolutions to oneDNN int8 kernels)."""
    import torch._inductor.config as inductor_config
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq

    inductor_config.freezing = True
    x = (to_float(calib) - bb.mean) / bb.std
    out = []
    for m in members_of(bb):
        batch = torch.export.Dim("batch", min=1, max=4096)
        exported = torch.export.export(static_padding(m, size), (x[:2],), dynamic_shapes=({0: batch},))
        quantizer = xiq.X86InductorQuantizer().set_global(xiq.get_default_x86_inductor_quantization_config())
        prepared = prepare_pt2e(exported.module(), quantizer)
        with torch.no_grad():
            for i in range(0, len(x), 32):
                prepared(x[i : i + 32])
        q = torch.compile(convert_pt2e(prepared))
        q.num_features = m.num_features
        out.append(q)
    return combined(bb, out, channels_last=True)


def onnx_members(bb: TimmBackbone, size: int, folder: Path) -> list[str]:
    paths = []
    for i, m in enumerate(members_of(bb)):
        path = folder / f"member{i}.onnx"
        export_member(m, size, path)  # the library's export (metashot.nn.onnx_trunk)
        paths.append(str(path))
    return paths


def ort_int8_paths(bb: TimmBackbone, paths: list[str], calib: torch.Tensor) -> list[str]:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    x = ((to_float(calib) - bb.mean) / bb.std).numpy()

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"x": x[i : i + 32]} for i in range(0, len(x), 32)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    out = []
    for p in paths:
        pre, q = p.replace(".onnx", "_pre.onnx"), p.replace(".onnx", "_int8.onnx")
        quant_pre_process(p, pre)
        quantize_static(pre, q, Reader(), quant_format=QuantFormat.QOperator, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        out.append(q)
    return out


# --- measuring -------------------------------------------------------------------------------------------

def embed_all(f: Features, images: torch.Tensor, batch: int) -> torch.Tensor:
    return torch.cat([f(to_float(images[i : i + batch])) for i in range(0, len(images), batch)])


def throughput(f: Features, x: torch.Tensor, seconds: float) -> float:
    n, t = 0, time.perf_counter()
    while n < 2 * len(x) or time.perf_counter() - t < seconds:
        f(x)
        n += len(x)
    return n / (time.perf_counter() - t)


def episodes(ys: np.ndarray, count: int, shots: int, seed: int, ways: int = 5,
             queries: int = 15) -> tuple[np.ndarray, np.ndarray]:
    """Fixed episodes: support and query row indices [count, ways * shots] / [count, ways * queries],
    class-major (the labels are the position // shots resp. // queries)."""
    rng = np.random.RandomState(seed)
    classes = np.unique(ys)
    rows = {c: np.flatnonzero(ys == c) for c in classes}
    sup, qry = [], []
    for _ in range(count):
        cs = rng.choice(classes, ways, replace=False)
        picks = [rng.choice(rows[c], shots + queries, replace=False) for c in cs]
        sup.append(np.concatenate([p[:shots] for p in picks]))
        qry.append(np.concatenate([p[shots:] for p in picks]))
    return np.stack(sup), np.stack(qry)


def episode_predictions(clf: Any, feats: torch.Tensor, sup: np.ndarray, qry: np.ndarray,
                        shots: int, ways: int = 5) -> np.ndarray:
    """The bundled head's query labels [T, ways * queries] on trunk features."""
    learner, bb = clf.learner, clf.learner.backbone
    with torch.no_grad(), bb.on_features():
        z = learner.embed(feats)
    T = len(sup)
    ys = torch.arange(ways).repeat_interleave(shots).expand(T, -1)
    scores = learner.scores(z[torch.from_numpy(sup)], ys, z[torch.from_numpy(qry)], ways)
    return scores.argmax(-1).numpy()


def ci95(a: np.ndarray) -> float:
    return float(1.96 * a.std(ddof=1) / np.sqrt(len(a))) if len(a) > 1 else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="photos")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=4.0, help="least time per variant per round")
    ap.add_argument("--calib", type=int, default=256, help="mini-ImageNet train images for int8 calibration")
    ap.add_argument("--per-class", type=int, default=30, help="Flowers val photos per class for agreement")
    ap.add_argument("--episodes", type=int, default=300)
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--variants", default="fp32,bf16,int8_fx,int8_pt2e,ort_fp32,ort_int8")
    ap.add_argument("--out", help="append the JSON line to this file")
    a = ap.parse_args()
    if a.per_class < 20:
        raise SystemExit("--per-class must be at least 20 (5 shots + 15 queries per class)")
    torch.set_num_threads(a.threads)
    warnings.filterwarnings("ignore", category=UserWarning)  # torch.ao's deprecation notices, per module
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    clf = metashot.load(a.model)
    bb = clf.learner.backbone
    if not isinstance(bb, TimmBackbone):
        raise SystemExit(f"{a.model}: its backbone is not a pretrained timm network")
    spec = clf.image_spec
    images, ys = flowers_val(spec, a.per_class)
    calib = mini_imagenet_train(spec, a.calib)
    out: dict[str, Any] = {
        "command": " ".join(["python benchmarks/photos/precision_bench.py", *sys.argv[1:]]),
        "model": a.model, "trunk": bb.model_name, "input_size": spec.size, "threads": a.threads,
        "batch": a.batch, "cpus": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
        "cpu_has_bf16": cpu_has_bf16(), "torch": torch.__version__,
        "eval_set": f"flowers102 val, first {a.per_class} photos of each class ({len(images)})",
        "calibration": f"{len(calib)} mini-ImageNet train images", "episodes": a.episodes, "seed": a.seed,
    }
    tmp = tempfile.TemporaryDirectory()
    variants: dict[str, Features] = {}
    tried: dict[str, str] = {}
    build_s: dict[str, float] = {}
    onnx_paths: list[str] | None = None
    for name in a.variants.split(","):
        t = time.perf_counter()
        try:
            if name in ("fp32", "bf16"):
                def f(x: torch.Tensor, p: str = name) -> torch.Tensor:
                    bb.precision = p
                    with torch.no_grad():
                        return bb.features(x)
                variants[name] = f
            elif name == "int8_fx":
                variants[name] = int8_fx(bb, calib, spec.size)
            elif name == "int8_pt2e":
                import torchao

                out["torchao"] = torchao.__version__
                variants[name] = int8_pt2e(bb, calib, spec.size)
            elif name in ("ort_fp32", "ort_int8"):
                import onnxruntime

                out["onnxruntime"] = onnxruntime.__version__
                if onnx_paths is None:
                    onnx_paths = onnx_members(bb, spec.size, Path(tmp.name))
                paths = onnx_paths if name == "ort_fp32" else ort_int8_paths(bb, onnx_paths, calib)
                variants[name] = combined(bb, [OrtMember(Path(p), int(m.num_features), a.threads)
                                               for p, m in zip(paths, members_of(bb), strict=True)],
                                          channels_last=False)
            else:
                raise ValueError(f"unknown variant {name!r}")
            tried[name] = "ok"
        except Exception as e:  # a variant that cannot be built is reported, not fatal
            first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
            tried[name] = f"error {type(e).__name__}: {first}"
            traceback.print_exc()
        build_s[name] = round(time.perf_counter() - t, 1)
    out["tried"], out["build_s"] = tried, build_s

    x = to_float(images[: a.batch])
    rates: dict[str, list[float]] = {n: [] for n in variants}
    for f in variants.values():
        f(x)  # warm-up: first-call allocations, oneDNN kernel creation, compilation (int8_pt2e)
    for _ in range(a.rounds):
        for n, f in variants.items():
            rates[n].append(throughput(f, x, a.seconds))
    out["images_per_s"] = {n: round(float(np.median(r)), 1) for n, r in rates.items()}
    out["images_per_s_rounds"] = {n: [round(v, 1) for v in r] for n, r in rates.items()}
    if "fp32" in rates:
        out["speedup_vs_fp32"] = {n: round(float(np.median(r)) / float(np.median(rates["fp32"])), 2)
                                  for n, r in rates.items()}

    feats = {n: embed_all(f, images, a.batch) for n, f in variants.items()}
    bb.precision = "auto"
    agreement: dict[str, Any] = {}
    eps = {k: episodes(ys, a.episodes, k, a.seed + k) for k in (1, 5)}
    truth = np.arange(5).repeat(15)
    ref = {k: episode_predictions(clf, feats["fp32"], *eps[k], k) for k in eps} if "fp32" in feats else None
    for n, z in feats.items():
        row: dict[str, Any] = {}
        if "fp32" in feats:
            cos = F.cosine_similarity(z, feats["fp32"], dim=-1)
            row.update(cos_min=round(float(cos.min()), 5), cos_mean=round(float(cos.mean()), 5))
        for k in eps:
            pred = episode_predictions(clf, z, *eps[k], k)
            acc = (pred == truth).mean(1) * 100
            row[f"acc_{k}shot"] = round(float(acc.mean()), 2)
            row[f"ci95_{k}shot"] = round(ci95(acc), 2)
            if ref is not None:
                row[f"same_labels_{k}shot"] = round(float((pred == ref[k]).mean()), 4)
        agreement[n] = row
    out["agreement_with_fp32"] = agreement
    out["wall_s"] = round(time.perf_counter() - t0, 1)
    out["loadavg_start"] = [round(v, 2) for v in load0]
    out["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    tmp.cleanup()
    print(json.dumps(out))
    if a.out:
        with open(a.out, "a") as fh:
            fh.write(json.dumps(out) + "\n")


if __name__ == "__main__":
    main()
