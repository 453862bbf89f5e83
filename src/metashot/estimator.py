"""scikit-learn conventions for :class:`~metashot.classifier.FewShotClassifier`, without scikit-learn.

* ``__init__`` stores its parameters only; :meth:`get_params` / :meth:`set_params` read and write them, so
  ``sklearn.base.clone`` makes an unfitted copy and ``cross_val_score`` works over a list of image paths.
* Fitted state lives in attributes ending in ``_`` (``classes_``, ``support_embeddings_``,
  ``support_labels_``, ``n_features_in_``); before ``fit`` reading one raises :class:`NotFittedError`,
  which is a ``ValueError`` and an ``AttributeError`` as scikit-learn's is (``hasattr(clf, "classes_")``
  is False).
* Pickling (``pickle``, ``joblib``) keeps the learner and the support embeddings; the predictor is rebuilt
  from the embeddings on unpickling, so it works whatever the algorithm's predictor is. metashot itself
  never loads a pickle: :meth:`save` writes safetensors + JSON (:mod:`metashot.fitted`).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

PARAMS = ("learner", "image_spec", "device", "batch_size", "meta", "source")
FITTED = ("classes_", "n_features_in_", "support_embeddings_", "support_labels_")


class NotFittedError(ValueError, AttributeError):
    """The classifier was used before ``fit`` (a ValueError and an AttributeError, as in scikit-learn)."""


class EstimatorMixin:
    """get_params / set_params / tags / pickling / partial_fit / save / transform of a FewShotClassifier."""

    _estimator_type = "classifier"  # scikit-learn < 1.6 reads this; newer versions read __sklearn_tags__

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The constructor's parameters by name (``deep`` is accepted for scikit-learn; none is nested)."""
        return {name: self.__dict__.get(name) for name in PARAMS}

    def set_params(self, **params: Any) -> EstimatorMixin:
        """Set constructor parameters by name (e.g. ``batch_size=64``); returns self. A fitted classifier
        keeps its support set: call ``fit`` again after changing ``learner`` or ``device``."""
        for name, value in params.items():
            if name not in PARAMS:
                raise ValueError(f"set_params: FewShotClassifier has no parameter {name!r} (it has "
                                 f"{', '.join(PARAMS)})")
            self.__dict__[name] = value
        return self

    def __sklearn_tags__(self) -> Any:
        """scikit-learn >= 1.6: a classifier whose inputs are images (not a 2-D array) and that needs y."""
        from sklearn.utils import ClassifierTags, InputTags, Tags, TargetTags

        return Tags(estimator_type="classifier", target_tags=TargetTags(required=True),
                    classifier_tags=ClassifierTags(), input_tags=InputTags(two_d_array=False))

    def __getattr__(self, name: str) -> Any:
        # Only called when normal lookup fails: a fitted attribute before fit, or a real typo.
        if name in FITTED:
            raise NotFittedError(f"this FewShotClassifier is not fitted yet ({name} is set by fit): call "
                                 f"fit(images, labels) or partial_fit with a support set first")
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __getstate__(self) -> dict[str, Any]:
        state = {k: v for k, v in self.__dict__.items() if not k.startswith("_cache")}
        state["_support_items"] = None  # the caller's photos (PIL images, paths) are not the classifier's
        pred = state.get("_predictor")
        if pred is not None and "support_embeddings_" in state and _can_rebuild(self.learner):
            state["_predictor"] = None  # rebuilt by __setstate__ from the embeddings
        elif pred is not None and "<locals>" in getattr(pred, "__qualname__", ""):
            raise TypeError(f"cannot pickle this fitted FewShotClassifier: algorithm "
                            f"{self.learner.algorithm_name!r} has no adapt_embedded and its predictor "
                            f"{pred.__qualname__} is a local function; pickle it before fit, or refit after "
                            f"loading")
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if self.__dict__.get("_predictor") is None and "support_embeddings_" in state:
            from metashot.fitted import rebuild_predictor

            rebuild_predictor(self)

    def transform(self, images: Any) -> np.ndarray:
        """The embeddings [n, D] (float32) that the classifier's head compares, one row per image; needs an
        algorithm with ``embed`` (the metric learners: SimpleShot, ProtoNet, ...)."""
        from metashot.fitted import embed

        return embed(self, self._to_tensor(images, "transform images")).cpu().numpy()  # type: ignore[attr-defined]

    def partial_fit(self, images: Any, labels: Sequence[Hashable]) -> EstimatorMixin:
        """Add photos to existing classes or new classes, embedding only the new photos (the old ones are
        kept as embeddings). A first call on an unfitted classifier may hold one class; predictions need
        two. Needs an algorithm with ``adapt_embedded`` (SimpleShot, ProtoNet). Returns self."""
        from metashot.fitted import add_support

        add_support(self, images, labels)
        return self

    def save(self, path: str | Path, copy_photos: bool = False) -> Path:
        """Write the fitted classifier into folder ``path``: the support embeddings as safetensors and a
        JSON description (the model by name and digest, classes and counts, preprocessing, fit date). The
        photos are copied into ``path/photos`` only with ``copy_photos=True`` (file paths given to fit).
        ``metashot.load(path)`` reads it back. Returns the folder."""
        from metashot.fitted import save_fitted

        return save_fitted(self, path, copy_photos=copy_photos)


def _can_rebuild(learner: Any) -> bool:
    return callable(getattr(learner, "adapt_embedded", None)) and callable(getattr(learner, "embed", None))
