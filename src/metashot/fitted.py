"""Fitted classifiers that last: the support set kept as embeddings, saved as safetensors + JSON.

A saved classifier is a folder::

    my-classifier/
      classifier.json        the model (name, algorithm, digest), classes, per-class counts, preprocessing,
                             fit date, the SHA-256 of support.safetensors; written last
      support.safetensors    embeddings [S, D] float32 and labels [S] int64 (indices into classes)
      photos/                the support photos, only when saved with copy_photos=True

``metashot.load(folder)`` rebuilds the model by its name, refuses it when its digest differs from the one
recorded (other weights or preprocessing give other embeddings), and rebuilds the predictor from the
embeddings with ``learner.adapt_embedded``: no photo is read or embedded again. Never pickle.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from metashot.checkpoint import CheckpointError
from metashot.digest import file_digest
from metashot.fitted_files import (  # noqa: F401 (re-exported: the torch-free half of this module)
    DESCRIPTION,
    FORMAT,
    PHOTOS,
    SUPPORT,
    describe,
    is_fitted_folder,
    read_description,
    read_support,
)


def _algorithm(clf: Any) -> str:
    return str(getattr(clf.learner, "algorithm_name", type(clf.learner).__name__))


def require_embedded(clf: Any, what: str) -> None:
    """One-line error unless the learner keeps its support set as embeddings (embed + adapt_embedded)."""
    learner = clf.learner
    if not (callable(getattr(learner, "embed", None)) and callable(getattr(learner, "adapt_embedded", None))):
        raise ValueError(f"{what}: algorithm {_algorithm(clf)!r} cannot keep its support set as embeddings "
                         f"(it has no embed/adapt_embedded), so it cannot be saved or extended; fit it again "
                         f"on all the photos, or use a metric model such as 'photos' or 'protonet-omniglot'")


def class_order(labels: Sequence[Hashable]) -> list[Hashable]:
    """The classes of ``labels``: sorted when they can be, else in order of first appearance."""
    try:
        return sorted(set(labels))  # type: ignore[type-var]
    except TypeError:  # an unorderable mix of label types
        return list(dict.fromkeys(labels))


def embed(clf: Any, x: torch.Tensor) -> torch.Tensor:
    """``learner.embed`` of the preprocessed inputs ``x`` in batches of ``clf.batch_size``: [n, D] float32."""
    learner = clf.learner
    if not callable(getattr(learner, "embed", None)):
        raise ValueError(f"algorithm {_algorithm(clf)!r} has no embed(): it gives no embeddings")
    out = []
    with learner.adapt_mode():
        for i in range(0, len(x), clf.batch_size):
            out.append(learner.embed(x[i : i + clf.batch_size]).detach().float())
        z = torch.cat(out)
    return z.clone()  # a normal tensor (not an inference-mode one), usable anywhere


def rebuild_predictor(clf: Any) -> None:
    """``clf._predictor`` from ``support_embeddings_`` / ``support_labels_`` (None while < 2 classes)."""
    if len(clf.classes_) < 2:
        clf._predictor = None
        return
    dev = torch.device(clf.device)
    with clf.learner.adapt_mode():
        clf._predictor = clf.learner.adapt_embedded(clf.support_embeddings_.to(dev),
                                                    clf.support_labels_.to(dev))


def set_support(clf: Any, z: torch.Tensor, y: torch.Tensor, classes: Sequence[Hashable],
                items: list[Any] | None, fitted_at: str | None = None) -> None:
    """Make ``clf`` fitted on embeddings ``z`` [S, D] with labels ``y`` [S] (indices into ``classes``)."""
    arr = np.empty(len(classes), dtype=object)
    arr[:] = list(classes)
    dev = torch.device(clf.device)
    clf.support_embeddings_ = z.to(dev)
    clf.support_labels_ = y.to(dev, torch.int64)
    clf.classes_ = arr
    clf.n_features_in_ = int(z.shape[1])
    clf._support_items = items
    clf._fitted_at = fitted_at or _now()
    rebuild_predictor(clf)


def fit_support(clf: Any, x: torch.Tensor, y: torch.Tensor, classes: list[Hashable], items: Any) -> None:
    """``fit``'s adaptation: through embeddings when the learner keeps them, else ``learner.adapt``."""
    learner = clf.learner
    if callable(getattr(learner, "embed", None)) and callable(getattr(learner, "adapt_embedded", None)):
        kept = list(items) if isinstance(items, (list, tuple)) and len(items) == len(y) else None
        set_support(clf, embed(clf, x), y, classes, kept)
        return
    for name in ("support_embeddings_", "support_labels_", "n_features_in_"):
        clf.__dict__.pop(name, None)
    with learner.adapt_mode():
        clf._predictor = learner.adapt(x, y)
    arr = np.empty(len(classes), dtype=object)
    arr[:] = classes
    clf.classes_ = arr
    clf._support_items, clf._fitted_at = None, _now()


def add_support(clf: Any, images: Any, labels: Sequence[Hashable]) -> None:
    """``partial_fit``: embed only the new photos, append them, rebuild the predictor."""
    require_embedded(clf, "partial_fit")
    labels = list(labels)
    if len(labels) != len(images):
        raise ValueError(f"partial_fit: {len(images)} images but {len(labels)} labels")
    fitted = "support_embeddings_" in clf.__dict__
    old_classes = list(clf.classes_) if fitted else []
    classes = class_order(old_classes + labels)
    index = {c: i for i, c in enumerate(classes)}
    clf.learner.to(clf.device).eval()
    z_new = embed(clf, clf._to_tensor(images, "partial_fit images"))
    y_new = torch.tensor([index[c] for c in labels], dtype=torch.int64)
    if fitted:
        remap = torch.tensor([index[c] for c in old_classes], dtype=torch.int64)
        z = torch.cat([clf.support_embeddings_.cpu(), z_new.cpu()])
        y = torch.cat([remap[clf.support_labels_.cpu()], y_new])
        old_items = clf.__dict__.get("_support_items")
    else:
        z, y, old_items = z_new.cpu(), y_new, []
    new_items = list(images) if isinstance(images, (list, tuple)) else None
    items = old_items + new_items if old_items is not None and new_items is not None else None
    set_support(clf, z, y, classes, items)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def model_digest(clf: Any) -> str:
    """SHA-256 of what decides the embeddings and the head: the algorithm and its arguments, the weights'
    recorded digests (the checkpoint's file and any pretrained trunk), the preprocessing, the text encoder."""
    meta = clf.meta or {}
    spec = clf.image_spec.to_dict() if clf.image_spec is not None else None
    args = clf.learner.config_dict() if hasattr(clf.learner, "config_dict") else {}
    ident = {"algorithm": _algorithm(clf), "learner_args": args, "weights_sha256": meta.get("weights_sha256"),
             "external_weights": meta.get("external_weights"), "image_spec": spec,
             "text_encoder": meta.get("text_encoder")}
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()


def _json_label(c: Any) -> Any:
    """A class label as JSON keeps it (str, int, float, bool; numpy scalars as their Python value)."""
    if isinstance(c, np.generic):
        c = c.item()
    if isinstance(c, (str, bool, int, float)):
        return c
    raise ValueError(f"save: class label {c!r} ({type(c).__name__}) cannot be written to JSON; use str or "
                     f"int labels")


def save_fitted(clf: Any, path: str | Path, copy_photos: bool = False) -> Path:
    """Write ``clf``'s support embeddings and description into folder ``path`` (see the module docstring)."""
    require_embedded(clf, "save")
    z, y = clf.support_embeddings_, clf.support_labels_  # NotFittedError before fit
    if not clf.source:
        raise ValueError("save: this classifier's model has no name or folder (make it with metashot.load, "
                         "or set source= to the checkpoint it was built from)")
    path = Path(path)
    if path.exists() and (not path.is_dir() or (any(path.iterdir()) and not is_fitted_folder(path))):
        raise FileExistsError(f"save: {path} exists and is not a saved classifier; give a new folder")
    classes = [_json_label(c) for c in clf.classes_]
    counts = torch.bincount(y.cpu(), minlength=len(classes)).tolist()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        save_file({"embeddings": z.detach().cpu().float().contiguous(),
                   "labels": y.detach().cpu().to(torch.int64).contiguous()}, str(tmp / SUPPORT))
        photos = _copy_photos(clf, tmp, classes) if copy_photos else None
        meta = clf.meta or {}
        desc = {
            "format": FORMAT, "metashot_version": _version(),
            "model": {"name": clf.source, "algorithm": _algorithm(clf), "digest": model_digest(clf),
                      "card": meta.get("card"), **({"load_args": meta["load_args"]} if "load_args" in meta
                                                    else {})},
            "classes": classes, "class_counts": counts,
            "support": {"file": SUPPORT, "sha256": file_digest(tmp / SUPPORT, "sha256"),
                        "embeddings": list(z.shape), "dtype": "float32"},
            "image_spec": clf.image_spec.to_dict() if clf.image_spec is not None else None,
            "text_encoder": meta.get("text_encoder"),
            "fitted_at": clf.__dict__.get("_fitted_at") or _now(), "saved_at": _now(), "photos": photos,
            "runtime": runtime_record(clf),
        }
        (tmp / DESCRIPTION).write_text(json.dumps(desc, indent=2))
        for f in tmp.rglob("*"):
            os.chmod(f, 0o755 if f.is_dir() else 0o644)
        os.chmod(tmp, 0o755)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def runtime_record(clf: Any) -> dict[str, Any] | None:
    """What :mod:`metashot.lite` needs to answer ``predict`` without importing torch, or None where it cannot:
    a SimpleShot photo model whose frozen timm trunk runs through ONNX Runtime (``precision: onnx``), with
    the nearest-class-mean or soft k-means head and no base-class centre. The record names each member's
    cached ONNX file and its SHA-256, and every number of the arithmetic after it; the lite path uses it only
    when every file is in this machine's cache with that digest (else the full model is loaded)."""
    from metashot.algorithms.simpleshot import SimpleShot
    from metashot.nn.pretrained import ConcatTrunk, TimmBackbone

    learner, spec = clf.learner, clf.image_spec
    if type(learner) is not SimpleShot or spec is None or clf.text_encoder is not None:
        return None
    bb = learner.backbone
    if not isinstance(bb, TimmBackbone) or not bb.runs_onnx() or bb.centre is not None \
            or learner.head_name not in ("ncm", "soft_kmeans") or spec.channels != 3:
        return None
    size = int(bb.pretrained_cfg["input_size"][-1])
    if spec.size != size:
        return None
    try:
        trunk = bb._onnx_trunk(size)
    except (OSError, ValueError):  # no onnxruntime, or the export failed: the full path says why when used
        return None
    members = list(trunk.members) if isinstance(trunk, ConcatTrunk) else [trunk]
    from metashot.lite_record import RUNTIME_KIND, RUNTIME_VERSION

    return {"kind": RUNTIME_KIND, "version": RUNTIME_VERSION, "size": size,
            "members": [{"file": m.path.name, "sha256": file_digest(m.path, "sha256"),
                         "num_features": int(m.num_features)} for m in members],
            "ensemble": isinstance(bb.trunk, ConcatTrunk), "power": bb.power, "backbone_l2norm": bb.l2norm,
            "mean": [float(v) for v in bb.mean.flatten()], "std": [float(v) for v in bb.std.flatten()],
            "l2norm": learner.l2norm, "centre": learner.centre, "head": learner.head_name,
            "head_args": {k: float(v) if k == "scale" else int(v) for k, v in learner.head.args.items()},
            "inductive_scale": learner.temperature, "transductive": learner.transductive,
            "unknown_threshold": learner.unknown_threshold, "calibration_temperature": clf.temperature}


def _copy_photos(clf: Any, folder: Path, classes: list[Any]) -> list[str]:
    """Copy (or, for in-memory images, write as PNG) each support photo to photos/<class>/; their paths."""
    from metashot.data.preprocess import to_pil

    items = clf.__dict__.get("_support_items")
    if items is None:
        raise ValueError("save(copy_photos=True): the support photos are not known (the classifier was "
                         "loaded without photos, or fitted on tensors); save without copy_photos")
    out: list[str] = []
    labels = clf.support_labels_.cpu().tolist()
    for i, (item, k) in enumerate(zip(items, labels, strict=True)):
        sub = folder / PHOTOS / f"{k:03d}_{_slug(str(classes[k]))}"
        sub.mkdir(parents=True, exist_ok=True)
        if isinstance(item, (str, Path)) and Path(item).is_file():
            dest = sub / f"{i:05d}_{Path(item).name}"
            shutil.copyfile(item, dest)
        else:
            dest = sub / f"{i:05d}.png"
            to_pil(item, f"support photo {i}").save(dest)
        out.append(dest.relative_to(folder).as_posix())
    return out


def _slug(text: str) -> str:
    keep = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)[:40].strip("._")
    return keep or "class"


def _version() -> str:
    from metashot import __version__

    return __version__


def load_fitted(path: str | Path, device: str | torch.device = "cpu", model: str | None = None,
                base: Any = None, loader: Callable[..., Any] | None = None) -> Any:
    """Rebuild a saved classifier: its model by name (or ``model``) loaded with ``loader``
    (:func:`metashot.classifier.load`), or the already loaded unfitted classifier ``base``, whose learner is
    shared; checked against the recorded digest."""
    path = Path(path)
    desc = read_description(path)
    rec = desc["model"]
    name = model or rec.get("name")
    if base is not None:
        base = type(base)(**dict(base.get_params(), device=device))
    elif loader is not None:
        base = loader(name, device, **(rec.get("load_args") or {}))
    else:
        raise ValueError("load_fitted: give the loaded model (base=) or how to load it (loader=)")
    digest = model_digest(base)
    if digest != rec.get("digest"):
        raise CheckpointError(f"saved classifier {path} was fitted on model {rec.get('name')!r} with "
                              f"digest {str(rec.get('digest'))[:12]}..., but {name!r} here has digest "
                              f"{digest[:12]}... (other weights or preprocessing): use the model it was made "
                              f"with, or fit again")
    zs, ys = read_support(path, desc)
    z, y = torch.from_numpy(zs), torch.from_numpy(ys)
    classes = list(desc["classes"])
    require_embedded(base, f"load {path}")
    photos = desc.get("photos")
    items = [path / p for p in photos] if isinstance(photos, list) and len(photos) == len(y) else None
    base.learner.to(base.device).eval()
    set_support(base, z, y, classes, items, desc.get("fitted_at"))
    base._saved_path = str(path)
    return base
