"""FewShotClassifier: fit / predict / predict_proba on raw images, in scikit-learn's style.

    clf = metashot.load("protonet-omniglot")
    clf.fit(images, labels)          # a support set: PIL images, paths or uint8 arrays; any hashable labels
    clf.predict(new_images)          # -> labels
    clf.predict_proba(new_images)    # -> [n, n_classes], columns in the order of clf.classes_

Images are preprocessed exactly as the checkpoint's training data (size, channels, ink polarity, filter).
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metashot.algorithms.base import MetaLearner, Predictor
from metashot.checkpoint import load_checkpoint
from metashot.data.preprocess import ImageSpec, preprocess, to_float


class NotFittedError(RuntimeError):
    pass


class FewShotClassifier:
    """A trained meta-learner wrapped as a classifier of new classes from a few examples each.

    Args:
        learner: a trained MetaLearner.
        image_spec: preprocessing of raw images (from the checkpoint); None for inputs that are tensors.
        device: where to run.
        batch_size: images per forward pass in ``predict``.
    """

    def __init__(self, learner: MetaLearner, image_spec: ImageSpec | None, device: str | torch.device = "cpu",
                 batch_size: int = 256, meta: dict[str, Any] | None = None) -> None:
        self.learner = learner.to(device).eval()
        self.image_spec = image_spec
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.meta = meta or {}
        self.classes_: np.ndarray | None = None
        self._predictor: Predictor | None = None
        # Text checkpoints (metashot.text): inputs are sentences, encoded by this sentence encoder.
        self.text_encoder: str | None = self.meta.get("text_encoder")

    def _to_tensor(self, images: Any, what: str) -> torch.Tensor:
        if isinstance(images, torch.Tensor) and images.dtype != torch.uint8:
            return images.to(self.device)
        if self.text_encoder is not None:
            from metashot.text.glue import encode_sentences

            return encode_sentences(images, self.text_encoder, what).to(self.device)
        if isinstance(images, (str, Path)) or not isinstance(images, (Sequence, np.ndarray, torch.Tensor)):
            raise TypeError(f"{what}: expected a sequence of images (PIL images, paths or uint8 arrays)")
        if len(images) == 0:
            raise ValueError(f"{what}: no images given")
        if self.image_spec is None:
            raise ValueError(f"{what}: this checkpoint has no image preprocessing; pass float tensors")
        spec = self.image_spec

        def one(i: int) -> np.ndarray:
            return preprocess(images[i], spec, source=f"{what}[{i}]")

        # Decoding and resizing release the GIL: a few threads overlap them (a 12-megapixel JPEG takes ~10 ms
        # even at 1/8 scale). map() keeps the order and re-raises the first error, which names the file.
        workers = min(4, os.cpu_count() or 1, len(images))
        if workers > 1:
            with ThreadPoolExecutor(workers) as pool:
                arr = np.stack(list(pool.map(one, range(len(images)))))
        else:
            arr = np.stack([one(i) for i in range(len(images))])
        return to_float(torch.from_numpy(arr)).to(self.device)

    def fit(self, images: Any, labels: Sequence[Hashable]) -> FewShotClassifier:
        """Adapt to a new support set (replacing any previous one). Returns self."""
        labels = list(labels)
        if len(labels) != len(images):
            raise ValueError(f"fit: {len(images)} images but {len(labels)} labels")
        try:
            classes = sorted(set(labels))
        except TypeError:  # unorderable mix of label types: keep first-appearance order
            classes = list(dict.fromkeys(labels))
        if len(classes) < 2:
            raise ValueError(f"fit: need at least 2 classes, got {len(classes)} ({classes})")
        index = {c: i for i, c in enumerate(classes)}
        y = torch.tensor([index[label] for label in labels], device=self.device)
        x = self._to_tensor(images, "fit images")
        if self.learner.adapt_needs_grad:
            predictor = self.learner.adapt(x, y)
        else:
            with torch.inference_mode():
                predictor = self.learner.adapt(x, y)
        self._predictor = predictor
        arr = np.empty(len(classes), dtype=object)
        arr[:] = classes
        self.classes_ = arr
        return self

    def decision_function(self, images: Any) -> np.ndarray:
        """Raw scores (logits) [n, n_classes]."""
        if self._predictor is None:
            raise NotFittedError("call fit(images, labels) with a support set before predicting")
        x = self._to_tensor(images, "predict images")
        out = []
        ctx = torch.enable_grad if self.learner.adapt_needs_grad else torch.inference_mode
        with ctx():
            for i in range(0, len(x), self.batch_size):
                out.append(self._predictor(x[i : i + self.batch_size]).detach().float().cpu())
        return torch.cat(out).numpy()

    def predict_proba(self, images: Any) -> np.ndarray:
        logits = torch.from_numpy(self.decision_function(images))
        return torch.softmax(logits, dim=-1).numpy()

    def predict(self, images: Any) -> np.ndarray:
        scores = self.decision_function(images)
        return self.classes_[scores.argmax(1)]


def load(name_or_path: str | Path, device: str | torch.device = "cpu") -> FewShotClassifier:
    """Load a checkpoint (a folder, a run folder, or a bundled name such as ``protonet-omniglot``)."""
    learner, meta = load_checkpoint(name_or_path, device)
    spec = ImageSpec.from_dict(meta["image_spec"]) if meta.get("image_spec") else None
    from metashot.text.glue import text_encoder_of

    if text_encoder_of(meta):
        meta = dict(meta, text_encoder=text_encoder_of(meta))
    return FewShotClassifier(learner, spec, device, meta=meta)
