"""Saved photo classifiers answered without PyTorch: ``metashot.load(folder).predict(photos)``, fast in a new
process.

Importing torch takes 2-4 s on a small CPU, longer than a person waits for one answer. A classifier saved
from a photo model whose frozen trunk runs through ONNX Runtime (``precision: onnx``, the bundled ``photos``)
records in its ``classifier.json`` (``runtime``) everything after the images: each member network's cached
ONNX file and its SHA-256, the power transform and normalisations, the centring, the head (nearest class
mean or soft k-means), its scales, the calibration temperature and the "unknown" threshold.
``metashot.load(folder)`` then returns a :class:`LiteClassifier`, which answers ``predict``,
``predict_proba``, ``classify``, ``decision_function`` and ``score`` with PIL, NumPy and ONNX Runtime only:
the same decoding as :mod:`metashot.data.preprocess`, the same arithmetic as
:class:`~metashot.algorithms.simpleshot.SimpleShot` (float32; tests/test_lite.py holds its answers to the
PyTorch path's). ``metashot predict FOLDER --query DIR`` (no ``--support``) goes through it too
(:meth:`LiteClassifier.classify_pixels`).

Anything else (``partial_fit``, ``save``, ``transform``, ``support_embeddings_``, ``get_params``, setting an
attribute, torch tensors as input, pickling) loads the full :class:`~metashot.classifier.FewShotClassifier`
once (torch, the model, the digest check) and hands the call to it; from then on every call goes to it, so
nothing answers from stale state. ``clf.full()`` does that explicitly.

The lite path is used only when every recorded ONNX file is in this machine's cache
(``$METASHOT_CACHE/onnx``) with the recorded SHA-256 and ONNX Runtime is installed; otherwise, or with
``metashot.load(folder, lite=False)``, ``METASHOT_LITE=0`` or ``METASHOT_PRECISION`` other than ``onnx``,
the full classifier is loaded (which exports the ONNX files again where they are missing). Its one
difference: the lite path does not recompute the model's digest (that needs the model); it trusts the
recorded ONNX digests, which name the exact networks the support set was embedded with.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from metashot._env import cache_dir
from metashot.digest import file_digest
from metashot.fitted_files import read_description, read_support
from metashot.lite_heads import UNKNOWN, check_unknown, l2n, power_transform, scores_embedded, softmax
from metashot.lite_record import check_runtime, lite_off

_CHUNK = 16  # images per ONNX Runtime call (as metashot.nn.onnx_trunk.OrtMember: bounded memory)


def open_lite(path: str | Path) -> tuple[LiteClassifier | None, str]:
    """(the lite classifier of saved folder ``path``, "") or (None, why not). A damaged folder (no or a bad
    classifier.json, a support file that does not match its digest) raises the same one-line
    :class:`~metashot.checkpoint_files.CheckpointError` as the full path."""
    path = Path(path)
    off = lite_off()
    if off:
        return None, f"{off} is set"
    desc = read_description(path)
    try:
        rt = check_runtime(desc.get("runtime"))
    except ValueError as e:
        return None, f"{path}: {e}"
    try:
        from metashot.data.preprocess import ImageSpec

        spec = ImageSpec.from_dict(desc.get("image_spec"))  # type: ignore[arg-type]
    except (ValueError, TypeError, AttributeError) as e:
        return None, f"{path}: its image preprocessing is unreadable ({e})"
    if spec.size != rt["size"] or spec.channels != 3:
        return None, (f"{path}: its image preprocessing ({spec.size} px) is not its networks' "
                      f"({rt['size']} px)")
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return None, "ONNX Runtime is not installed (pip install 'metashot[vision]')"
    folder = cache_dir("onnx")
    files = []
    for m in rt["members"]:
        f = folder / m["file"]
        try:
            ok = f.is_file() and file_digest(f, "sha256") == m["sha256"]
        except OSError:
            ok = False
        if not ok:
            return None, f"{f} is missing or does not match the SHA-256 in {path}'s classifier.json"
        files.append(f)
    z, y = read_support(path, desc)
    if z.shape[1] != sum(m["num_features"] for m in rt["members"]):
        return None, f"{path}: its support embeddings do not match its networks' widths"
    if len(set(y.tolist())) < 2 or len(set(y.tolist())) != len(desc["classes"]):
        return None, f"{path}: it needs a photo of each of at least 2 classes to predict"
    return LiteClassifier(path, desc, rt, z, y, files, spec), ""


def _same(obj: Any) -> Any:
    """What an unpickled LiteClassifier becomes: the full classifier it pickled."""
    return obj


class LiteClassifier:
    """A saved fitted photo classifier answered with ONNX Runtime and NumPy (see the module docstring).

    ``classes_`` and ``n_features_in_`` are as the full classifier's; ``predict``, ``predict_proba``,
    ``classify``, ``decision_function`` and ``score`` take the same arguments and give the same answers.
    Any other attribute or method loads the full :class:`~metashot.classifier.FewShotClassifier` once and
    hands the call to it (``clf.full()``)."""

    _OWN = frozenset({"classes_", "n_features_in_", "source"})
    _estimator_type = "classifier"

    def __init__(self, path: Path, desc: dict[str, Any], runtime: dict[str, Any], z: np.ndarray,
                 y: np.ndarray, files: list[Path], spec: Any) -> None:
        d = self.__dict__
        d["_path"], d["_desc"], d["_rt"], d["_files"] = Path(path), desc, runtime, files
        d["_zs"], d["_ys"], d["_full"], d["_sessions"] = z, y, None, None
        d["_spec"] = spec
        classes = np.empty(len(desc["classes"]), dtype=object)
        classes[:] = list(desc["classes"])
        d["classes_"], d["n_features_in_"] = classes, int(z.shape[1])
        d["source"] = desc["model"].get("name") if isinstance(desc["model"], dict) else None

    # -- the full classifier, for everything else -------------------------------------------------------

    def full(self) -> Any:
        """The full FewShotClassifier of this folder (imports torch and loads the model, once); from then on
        every call of this object goes to it."""
        if self.__dict__["_full"] is None:
            from metashot.classifier import load

            self.__dict__["_full"] = load(self._path)
            self.__dict__["_sessions"] = None
            for name in self._OWN:  # from now on the full classifier's (partial_fit changes classes_)
                self.__dict__.pop(name, None)
        return self.__dict__["_full"]

    def __getattr__(self, name: str) -> Any:
        # only called when normal lookup fails: every attribute the lite path does not hold. Probes for
        # optional protocols (dunders; Jupyter's _repr_*_ and _ipython_*) are answered without loading.
        if "_path" not in self.__dict__:  # not initialised (never by metashot): no recursion through full()
            raise AttributeError(name)
        if self._full is None and ((name.startswith("__") and name.endswith("__"))
                                   or name.startswith(("_repr_", "_ipython_"))):
            raise AttributeError(f"'LiteClassifier' object has no attribute {name!r}")
        return getattr(self.full(), name)

    @property
    def is_lite(self) -> bool:
        """True while the answers come from the lite path (before :meth:`full` was needed)."""
        return self._full is None

    def __copy__(self) -> Any:
        import copy

        return copy.copy(self.full())

    def __sklearn_tags__(self) -> Any:
        from metashot.estimator import EstimatorMixin

        return EstimatorMixin.__sklearn_tags__(self)  # type: ignore[arg-type]

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self.full(), name, value)

    def __reduce_ex__(self, protocol: Any) -> Any:
        return _same, (self.full(),)  # pickles (and copies) as the full classifier

    def __sklearn_clone__(self) -> Any:
        from sklearn.base import clone

        return clone(self.full())

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(dir(type(self.full()))) if self._full is not None
                      else super().__dir__())

    def __repr__(self) -> str:
        if self._full is not None:
            return repr(self._full)
        shown = ", ".join(repr(c) for c in self.classes_[:5]) + (", ..." if len(self.classes_) > 5 else "")
        return (f"LiteClassifier(saved={str(self._path)!r}, model={self.source!r}, classes_=[{shown}] "
                f"({len(self.classes_)}), runtime='onnxruntime+numpy, no torch')")

    @property
    def image_spec(self) -> Any:
        """The preprocessing of the model's photos (an ImageSpec)."""
        return self._full.image_spec if self._full is not None else self._spec

    def set_unknown_threshold(self, threshold: float) -> None:
        """Replace the model's "unknown" threshold for this object (``metashot predict --threshold``)."""
        if self._full is not None:
            self._full.learner.unknown_threshold = float(threshold)
        else:
            self.__dict__["_rt"] = dict(self._rt, unknown_threshold=float(threshold))

    @property
    def text_encoder(self) -> None:
        return None  # a photo model

    def _warn_domain(self, images: Any, notes: list[set[str]], what: str) -> None:
        """One warning for a batch (as FewShotClassifier._warn_domain; ``metashot predict`` calls it)."""
        from metashot.data.decode import batch_domain_warning

        text = batch_domain_warning(images, notes, self.image_spec, what)
        if text:
            warnings.warn(text, UserWarning, stacklevel=3)

    # -- embedding ---------------------------------------------------------------------------------------

    def _session_list(self) -> list[Any]:
        if self._sessions is None:
            import onnxruntime as ort

            so = ort.SessionOptions()
            cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
            so.intra_op_num_threads = max(1, min(cpus or 1, 16))
            so.inter_op_num_threads = 1
            so.log_severity_level = 3
            self.__dict__["_sessions"] = [ort.InferenceSession(str(f), so, providers=["CPUExecutionProvider"])
                                          for f in self._files]
        return self._sessions

    def _pixels(self, images: Any, what: str) -> np.ndarray:
        """uint8 [n, 3, S, S] of ``images`` (paths, PIL images, uint8 arrays), decoded as the full path."""
        from metashot.data.decode import decode_images

        arr, notes = decode_images(images, self._spec, what)
        self._warn_domain(images, notes, what)
        return arr

    def _embed(self, pixels: np.ndarray) -> np.ndarray:
        """Embeddings [n, D] of preprocessed uint8 pixels [n, 3, S, S], as SimpleShot.embed gives them."""
        rt = self._rt
        x = pixels.astype(np.float32) / np.float32(255.0)
        mean = np.asarray(rt["mean"], np.float32).reshape(1, -1, 1, 1)
        std = np.asarray(rt["std"], np.float32).reshape(1, -1, 1, 1)
        x = np.ascontiguousarray((x - mean) / std)
        parts = []
        for s, m in zip(self._session_list(), rt["members"], strict=True):
            z = np.concatenate([s.run(None, {"x": x[i:i + _CHUNK]})[0] for i in range(0, len(x), _CHUNK)])
            z = z.reshape(len(x), -1).astype(np.float32)
            if z.shape[1] != m["num_features"]:
                raise ValueError(f"saved classifier {self._path}: network {m['file']} gives {z.shape[1]} "
                                 f"features, its record says {m['num_features']}; load it with lite=False")
            parts.append(power_transform(z, rt["power"]))  # per network (ConcatTrunk), or the one network's
        if rt["ensemble"]:
            z = np.concatenate([l2n(p) for p in parts], -1) / np.float32(len(parts) ** 0.5)
        else:
            z = parts[0]
        if rt["backbone_l2norm"]:
            z = l2n(z)
        return l2n(z) if rt["l2norm"] else z

    def _scores(self, images: Any, transductive: bool | None, unknown: bool,
                pixels: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, float | None]:
        threshold = None
        if unknown:
            threshold = self._rt.get("unknown_threshold")
            check_unknown(threshold, self.classes_, self.source)
        zq = self._embed(self._pixels(images, "predict images") if pixels is None else pixels)
        logits, known = scores_embedded(self._zs, self._ys, zq, self._rt, transductive, threshold)
        if not np.isfinite(logits).all():
            bad = int((~np.isfinite(logits)).sum())
            raise ValueError(f"predict with checkpoint {self.source}: the model's scores are not finite "
                             f"({bad} of {logits.size} NaN/Inf); the saved classifier {self._path} is "
                             f"damaged: fit and save it again")
        t = float(self._rt["calibration_temperature"])
        return (logits / np.float32(t) if t != 1.0 else logits), known, threshold

    # -- the public answers ------------------------------------------------------------------------------

    def _delegate(self, images: Any) -> bool:
        if self._full is not None:
            return True
        torch = sys.modules.get("torch")
        return torch is not None and (isinstance(images, torch.Tensor)
                                      or (isinstance(images, (list, tuple))
                                          and any(isinstance(i, torch.Tensor) for i in images)))

    def classify(self, images: Any, *, transductive: bool | None = None,
                 unknown: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Labels [n] and class probabilities [n, n_classes] of ``images`` in one pass; the images of one
        call are one unlabelled batch for a transductive head (see FewShotClassifier.classify)."""
        if self._delegate(images):
            return self.full().classify(images, transductive=transductive, unknown=unknown)
        return self._labels(*self._scores(images, transductive, unknown))

    def _labels(self, scores: np.ndarray, known: np.ndarray,
                threshold: float | None) -> tuple[np.ndarray, np.ndarray]:
        proba = softmax(scores)
        labels = self.classes_[proba.argmax(1)].copy()
        if threshold is not None:
            labels[known < threshold] = UNKNOWN
        return labels, proba

    def classify_pixels(self, pixels: np.ndarray, *, transductive: bool | None = None,
                        unknown: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`classify` of images already preprocessed by :attr:`image_spec`: uint8 [n, 3, S, S] (what
        ``metashot predict`` decodes ahead in threads)."""
        if self._full is not None:
            import torch

            from metashot.data.preprocess import to_float

            return self._full.classify(to_float(torch.from_numpy(pixels)), transductive=transductive,
                                       unknown=unknown)
        if pixels.dtype != np.uint8 or pixels.ndim != 4 or pixels.shape[1:] != (3, self._spec.size,
                                                                                 self._spec.size):
            raise ValueError(f"classify_pixels: expected uint8 [n, 3, {self._spec.size}, {self._spec.size}], "
                             f"got {pixels.dtype} {list(pixels.shape)}")
        return self._labels(*self._scores(None, transductive, unknown, pixels))

    def decision_function(self, images: Any, *, transductive: bool | None = None) -> np.ndarray:
        """Scores (logits divided by the calibration temperature) [n, n_classes]."""
        if self._delegate(images):
            return self.full().decision_function(images, transductive=transductive)
        return self._scores(images, transductive, False)[0]

    def predict_proba(self, images: Any, *, transductive: bool | None = None) -> np.ndarray:
        """Class probabilities [n, n_classes], columns in the order of ``classes_``."""
        if self._delegate(images):
            return self.full().predict_proba(images, transductive=transductive)
        return softmax(self._scores(images, transductive, False)[0])

    def predict(self, images: Any, *, transductive: bool | None = None, unknown: bool = False) -> np.ndarray:
        """Labels [n] (``"unknown"`` for photos of none of the classes when ``unknown=True``)."""
        return self.classify(images, transductive=transductive, unknown=unknown)[0]

    def score(self, images: Any, labels: Sequence[Hashable]) -> float:
        """Accuracy (a fraction in [0, 1]) of ``predict(images)`` against ``labels``."""
        if self._delegate(images):
            return self.full().score(images, labels)
        labels = list(labels)
        if len(labels) != len(images):
            raise ValueError(f"score: {len(images)} images but {len(labels)} labels")
        pred = self.predict(images)
        return float(np.mean([p == t for p, t in zip(pred, labels, strict=True)]))


__all__ = ["UNKNOWN", "LiteClassifier", "lite_off", "open_lite"]
