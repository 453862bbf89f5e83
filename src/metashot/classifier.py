"""FewShotClassifier: fit / predict / predict_proba on raw images, in scikit-learn's style.

    clf = metashot.load("protonet-omniglot")
    clf.fit(images, labels)          # a support set: PIL images, paths or uint8 arrays; any hashable labels
    clf.predict(new_images)          # -> labels
    clf.predict_proba(new_images)    # -> [n, n_classes], columns in the order of clf.classes_
    clf.score(images, labels)        # -> accuracy in [0, 1]

Images are preprocessed exactly as the checkpoint's training data (size, channels, ink polarity, filter).
Inputs that do not look like the checkpoint's domain (colour photos for a grayscale drawing model, drawings
that are already inverted) give one warning per call; already-inverted drawings are used as they are.

A checkpoint may record a ``temperature`` (config.json, fitted on validation episodes by
benchmarks/calibration.py): ``decision_function`` and ``predict_proba`` divide the logits by it, so the
probabilities are calibrated while the predicted labels (and the accuracy) stay the same.
"""

from __future__ import annotations

import math
import os
import sys
import warnings
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metashot.algorithms.base import MetaLearner, Predictor
from metashot.checkpoint import CheckpointError, load_checkpoint
from metashot.data.preprocess import (
    ImageSpec,
    to_float,
)
from metashot.estimator import EstimatorMixin, NotFittedError  # noqa: F401 (NotFittedError: re-exported)
from metashot.lite_heads import UNKNOWN, check_unknown
from metashot.predict_folder import predict_images_csv, query_images  # noqa: F401 (moved there)


class FewShotClassifier(EstimatorMixin):
    """A trained meta-learner wrapped as a classifier of new classes from a few examples each.

    scikit-learn's conventions (:mod:`metashot.estimator`): the constructor stores its parameters only,
    ``get_params``/``set_params``/``clone`` work, fitted state is in attributes ending in ``_`` (``classes_``;
    for metric learners also ``support_embeddings_`` [S, D], ``support_labels_`` [S], ``n_features_in_`` = D,
    the embedding length), ``partial_fit`` adds photos, ``save`` writes the fitted classifier, and it pickles.

    Args:
        learner: a trained MetaLearner.
        image_spec: preprocessing of raw images (from the checkpoint); None for inputs that are tensors.
        device: where to run.
        batch_size: images per forward pass in ``fit`` and ``predict``.
        meta: the checkpoint's config.json (algorithm, temperature, text encoder, weights digests...).
        source: the bundled name or folder the model was loaded from (for repr and ``save``).
    """

    def __init__(self, learner: MetaLearner, image_spec: ImageSpec | None, device: str | torch.device = "cpu",
                 batch_size: int = 64, meta: dict[str, Any] | None = None,
                 source: str | None = None) -> None:
        self.learner = learner
        self.image_spec = image_spec
        self.device = device
        self.batch_size = batch_size
        self.meta = {} if meta is None else meta
        self.source = source
        self._predictor: Predictor | None = None

    @property
    def text_encoder(self) -> str | None:
        """Text checkpoints (metashot.text): the sentence encoder that turns inputs into vectors."""
        return self.meta.get("text_encoder")

    @property
    def temperature(self) -> float:
        """The checkpoint's calibration temperature (logits are divided by it)."""
        return _temperature(self.meta.get("temperature", 1.0))

    def __repr__(self) -> str:
        m = self.meta
        model = m.get("config", {}).get("model", {}) if isinstance(m.get("config"), dict) else {}
        parts = [f"{k}={v!r}" for k, v in (("checkpoint", self.source), ("algorithm", m.get("algorithm")),
                                           ("backbone", model.get("backbone"))) if v is not None]
        if self.text_encoder is not None:
            parts.append(f"input=sentences ({self.text_encoder})")
        elif self.image_spec is not None:
            s = self.image_spec
            parts.append(f"input='{s.channels}x{s.size}x{s.size}{' inverted' if s.invert else ''}'")
        if self.temperature != 1.0:
            parts.append(f"temperature={self.temperature:g}")
        if "classes_" not in self.__dict__:
            parts.append("not fitted")
        else:
            shown = ", ".join(repr(c) for c in self.classes_[:5])
            shown += ", ..." if len(self.classes_) > 5 else ""
            parts.append(f"classes_=[{shown}] ({len(self.classes_)})")
        parts.append(f"device='{self.device}'")
        return f"FewShotClassifier({', '.join(parts)})"

    def _to_tensor(self, images: Any, what: str) -> torch.Tensor:
        if isinstance(images, torch.Tensor) and images.dtype != torch.uint8:
            return images.to(self.device)
        if self.text_encoder is not None:
            from metashot.text.glue import encode_sentences

            return encode_sentences(images, self.text_encoder, what).to(self.device)
        from metashot.data.decode import decode_images

        arr, notes = decode_images(images, self.image_spec, what)
        self._warn_domain(images, notes, what)
        return to_float(torch.from_numpy(arr)).to(self.device)

    def _warn_domain(self, images: Any, notes: list[set[str]], what: str) -> None:
        """One warning for the whole call, naming the inputs that do not look like the checkpoint's domain."""
        from metashot.data.decode import batch_domain_warning

        text = batch_domain_warning(images, notes, self.image_spec, what)
        if text:
            warnings.warn(text, UserWarning, stacklevel=_caller_level())

    def fit(self, images: Any, labels: Sequence[Hashable]) -> FewShotClassifier:
        """Adapt to a new support set (replacing any previous one): PIL images, paths or uint8 arrays (text
        checkpoints: sentences) and one hashable label each; at least 2 classes. Metric learners keep the
        support set as embeddings (``support_embeddings_``), so ``save`` and ``partial_fit`` need no photo
        again. Returns self."""
        from metashot.fitted import class_order, fit_support

        labels = list(labels)
        if len(labels) != len(images):
            raise ValueError(f"fit: {len(images)} images but {len(labels)} labels")
        classes = class_order(labels)
        if len(classes) < 2:
            raise ValueError(f"fit: need at least 2 classes, got {len(classes)} ({classes})")
        index = {c: i for i, c in enumerate(classes)}
        y = torch.tensor([index[label] for label in labels], device=self.device)
        self.learner.to(self.device).eval()
        x = self._to_tensor(images, "fit images")
        fit_support(self, x, y, classes, images)
        return self

    def fit_folder(self, support: str | Path) -> FewShotClassifier:
        """Adapt to a folder of class subfolders (the class names are the labels), with ``list_folder``'s
        rules. Returns self."""
        from metashot.data.folder import list_folder

        images, labels = [], []
        for name, files in list_folder(Path(support)).items():
            images += files
            labels += [name] * len(files)
        return self.fit(images, labels)

    def _scores(self, images: Any, transductive: bool | None,
                unknown: bool) -> tuple[torch.Tensor, torch.Tensor | None, float | None]:
        """(scores [n, N] divided by the temperature, known-class scores [n] or None, the unknown threshold
        or None) of one call's images, which are one unlabelled batch for a transductive head."""
        if self._predictor is None:
            raise NotFittedError("call fit(images, labels) with a support set before predicting")
        pred = self._predictor
        threshold = None
        if unknown:
            threshold = getattr(self.learner, "unknown_threshold", None)
            check_unknown(threshold, self.classes_, self.source, hasattr(pred, "scores_embedded"))
        x = self._to_tensor(images, "predict images")
        known = None
        if hasattr(pred, "scores_embedded"):  # embed in chunks, then score the whole call as one batch
            from metashot.fitted import embed

            z = embed(self, x)
            with self.learner.adapt_mode():
                logits, known = pred.scores_embedded(z, transductive, threshold)
            logits, known = logits.detach().float().cpu(), known.detach().float().cpu()
        else:
            out = []
            with self.learner.adapt_mode():
                for i in range(0, len(x), self.batch_size):
                    out.append(pred(x[i : i + self.batch_size]).detach().float().cpu())
            logits = torch.cat(out)
        check_finite(logits, f"predict with checkpoint {self.source or '(in memory)'}")
        return (logits / self.temperature if self.temperature != 1.0 else logits), known, threshold

    def classify(self, images: Any, *, transductive: bool | None = None,
                 unknown: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Labels [n] and class probabilities [n, n_classes] of ``images`` in one pass.

        With a transductive head (``photos``), the images of one call are classified together: each
        photo's answer can depend on the other photos of the call (that is what makes them more accurate).
        ``transductive=False``, or a single image, uses the inductive rule (nearest class mean) instead.
        ``unknown=True`` labels ``"unknown"`` the photos whose known-class score (cosine to the nearest
        class mean) is below the model's threshold, calibrated on validation classes; those photos are
        also kept out of the transductive batch. Their probabilities are still over the known classes.
        """
        scores, known, threshold = self._scores(images, transductive, unknown)
        proba = torch.softmax(scores, dim=-1).numpy()
        labels = self.classes_[proba.argmax(1)].copy()
        if threshold is not None and known is not None:
            labels[(known < threshold).numpy()] = UNKNOWN
        return labels, proba

    def decision_function(self, images: Any, *, transductive: bool | None = None) -> np.ndarray:
        """Scores (logits divided by the checkpoint's calibration temperature) [n, n_classes]; the call's
        images are one batch for a transductive head (see :meth:`classify`)."""
        return self._scores(images, transductive, False)[0].numpy()

    def predict_proba(self, images: Any, *, transductive: bool | None = None) -> np.ndarray:
        """Class probabilities [n, n_classes] (softmax of :meth:`decision_function`)."""
        return torch.softmax(torch.from_numpy(self.decision_function(images, transductive=transductive)),
                             dim=-1).numpy()

    def predict(self, images: Any, *, transductive: bool | None = None, unknown: bool = False) -> np.ndarray:
        """Labels [n] (``"unknown"`` for photos of none of the classes when ``unknown=True``); see
        :meth:`classify`."""
        return self.classify(images, transductive=transductive, unknown=unknown)[0]

    def score(self, images: Any, labels: Sequence[Hashable]) -> float:
        """Accuracy (a fraction in [0, 1]) of ``predict(images)`` against ``labels``, as in scikit-learn."""
        labels = list(labels)
        if len(labels) != len(images):
            raise ValueError(f"score: {len(images)} images but {len(labels)} labels")
        pred = self.predict(images)
        return float(np.mean([p == t for p, t in zip(pred, labels, strict=True)]))


def check_finite(logits: torch.Tensor, where: str) -> None:
    """Refuse scores that hold NaN/Inf (a diverged or damaged model): a label or accuracy from them would be
    meaningless. ``where`` names the call and the checkpoint in the one-line ValueError."""
    if not bool(torch.isfinite(logits).all()):
        bad = int((~torch.isfinite(logits)).sum())
        raise ValueError(f"{where}: the model's scores are not finite ({bad} of {logits.numel()} NaN/Inf); "
                         f"its weights or batch-norm statistics hold NaN/Inf (a diverged or damaged "
                         f"checkpoint), so its labels would be meaningless: use an earlier checkpoint or "
                         f"retrain")


def _caller_level() -> int:
    """The stacklevel that points a warning at the first frame outside this file (the user's call)."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename == __file__:
        frame, level = frame.f_back, level + 1
    return level


def bundled_models() -> list[dict[str, str]]:
    """The checkpoints shipped with metashot, loadable by name with :func:`load`: ``{name, card, path}``
    each, where the card reads domain | input | training | measured figure ("(no card)" when missing)."""
    import json

    from metashot.checkpoint import CONFIG, bundled_names, bundled_path

    rows = []
    for name in bundled_names():
        path = bundled_path(name)
        assert path is not None
        try:
            card = json.loads((path / CONFIG).read_text()).get("card", "")
        except (OSError, ValueError, AttributeError):
            card = ""
        rows.append({"name": name, "card": card or "(no card)", "path": str(path)})
    return rows


def _temperature(value: Any, where: str = "checkpoint") -> float:
    """The calibration temperature of a checkpoint's config.json: a positive finite number (default 1)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value <= 0:
        raise ValueError(f"{where}: config.json key 'temperature' must be a positive number, got {value!r}")
    return float(value)


def load(name_or_path: str | Path, device: str | torch.device = "cpu", *, pretrained: bool | str = True,
         model: str | None = None) -> FewShotClassifier:
    """Load a model: a checkpoint (a folder, a run folder, or a bundled name such as ``photos``); a saved
    fitted classifier (a folder written by ``clf.save`` or ``metashot fit``; returned fitted, its model
    rebuilt by name, or by ``model``, and checked against the recorded digest); or ``timm/<name>``, any timm
    model as a SimpleShot classifier (``pretrained``: True for the packaged or hub weights, a local weights
    file, or False; offline, a model that needs the hub fails at once)."""
    from metashot.devices import check_device
    from metashot.fitted import is_fitted_folder, load_fitted

    if isinstance(device, str):  # one line for a device this machine lacks, as the CLI's --device
        check_device(device, f"metashot.load({str(name_or_path)!r})", fix="use device='cpu'")
    if is_fitted_folder(name_or_path):
        return load_fitted(name_or_path, device, model, loader=load)
    source = str(name_or_path)
    if source.startswith("timm/") and not Path(source).exists():
        from metashot.timm_load import load_timm

        learner, meta = load_timm(source[len("timm/"):], pretrained, device)
        return FewShotClassifier(learner, ImageSpec.from_dict(meta["image_spec"]), device, meta=meta,
                                 source=source)
    learner, meta = load_checkpoint(name_or_path, device)
    if Path(source).exists() and not source.startswith("/"):
        from metashot.checkpoint import bundled_path, resolve

        if resolve(source) != bundled_path(source):  # a folder here, not a bundled name: keep where it is
            source = os.path.abspath(source)
    try:
        _temperature(meta.get("temperature", 1.0), f"checkpoint {name_or_path}")
    except ValueError as e:
        raise CheckpointError(str(e)) from e
    spec = ImageSpec.from_dict(meta["image_spec"]) if meta.get("image_spec") else None
    from metashot.text.glue import text_encoder_of

    if text_encoder_of(meta):
        meta = dict(meta, text_encoder=text_encoder_of(meta))
    return FewShotClassifier(learner, spec, device, meta=meta, source=source)
