"""``metashot.load``: the one entry point, importable without torch.

A saved photo classifier whose networks run through ONNX Runtime comes back as a
:class:`~metashot.lite.LiteClassifier` (no torch import: a new process answers in about a second); everything
else, and that too with ``lite=False``, is :func:`metashot.classifier.load`'s
:class:`~metashot.classifier.FewShotClassifier`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def load(name_or_path: str | Path, device: Any = "cpu", *, pretrained: bool | str = True,
         model: str | None = None, lite: bool | None = None) -> Any:
    """Load a model: a checkpoint (a folder, a run folder, or a bundled name such as ``photos``); a saved
    fitted classifier (a folder written by ``clf.save`` or ``metashot fit``; returned fitted, its model
    rebuilt by name, or by ``model``, and checked against the recorded digest); or ``timm/<name>``, any timm
    model as a SimpleShot classifier (``pretrained``: True for the packaged or hub weights, a local weights
    file, or False; offline, a model that needs the hub fails at once).

    ``lite``: for a saved classifier on the CPU, None (default) answers without torch where the folder allows
    it (:mod:`metashot.lite`: a :class:`~metashot.lite.LiteClassifier`, which loads the full classifier
    itself the first time it is asked for more than predictions), True insists on it (a one-line ValueError
    says why it cannot), False always loads the full :class:`~metashot.classifier.FewShotClassifier`."""
    from metashot.fitted_files import is_fitted_folder

    plain = model is None and pretrained is True and isinstance(device, str) and device == "cpu"
    if lite is not False and isinstance(name_or_path, (str, Path)) and is_fitted_folder(name_or_path):
        if lite and not plain:
            raise ValueError("metashot.load(lite=True) runs on the CPU with the recorded model: leave "
                             "device, model and pretrained out")
        if plain:
            from metashot.lite import open_lite

            clf, why = open_lite(name_or_path)
            if clf is not None:
                return clf
            if lite:
                raise ValueError(f"metashot.load({str(name_or_path)!r}, lite=True): {why}; load it with "
                                 f"lite=False")
    from metashot.classifier import load as load_full

    return load_full(name_or_path, device, pretrained=pretrained, model=model)
