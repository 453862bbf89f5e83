"""The torch-free half of :mod:`metashot.fitted`: a saved classifier's file names, its checked description,
and what ``metashot info`` prints of it (read without importing torch, by :mod:`metashot.lite` too)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from metashot.checkpoint_files import CheckpointError
from metashot.digest import file_digest

FORMAT = "metashot-fitted-1"
DESCRIPTION = "classifier.json"
SUPPORT = "support.safetensors"
PHOTOS = "photos"


def is_fitted_folder(path: str | Path) -> bool:
    """True when ``path`` is a folder written by :func:`save_fitted`."""
    return (Path(path) / DESCRIPTION).is_file()


def read_description(path: str | Path) -> dict[str, Any]:
    """The checked ``classifier.json`` of a saved classifier."""
    path = Path(path)
    f = path / DESCRIPTION
    try:
        desc = json.loads(f.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path} is not a saved classifier (no {DESCRIPTION}); save one with "
                              f"clf.save(folder) or metashot fit") from None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"saved classifier {path}: {DESCRIPTION} is unreadable ({e})") from e
    if not isinstance(desc, dict) or desc.get("format") != FORMAT:
        got = desc.get("format") if isinstance(desc, dict) else type(desc).__name__
        raise CheckpointError(f"saved classifier {path}: format {got!r} is not {FORMAT!r}")
    for key in ("model", "classes", "support"):
        if key not in desc:
            raise CheckpointError(f"saved classifier {path}: {DESCRIPTION} lacks {key!r}; save it again")
    sup = desc["support"]
    name = sup.get("file", SUPPORT) if isinstance(sup, dict) else None
    if not isinstance(name, str) or not name or Path(name).name != name \
            or not isinstance(desc["classes"], list):
        raise CheckpointError(f"saved classifier {path}: {DESCRIPTION}'s support record or classes are "
                              f"malformed (the support file must be a plain name inside the folder); save it "
                              f"again")
    return desc


def read_support(path: str | Path, desc: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """The support embeddings [S, D] float32 and labels [S] int64 of saved classifier ``path`` (its checked
    ``desc``): verified by the recorded SHA-256 and against the classes, one-line CheckpointError otherwise.
    Read with NumPy (no torch), for both the full path and :mod:`metashot.lite`."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    path = Path(path)
    sup = desc["support"]
    f = path / str(sup.get("file", SUPPORT))
    if not f.is_file() or file_digest(f, "sha256") != sup.get("sha256"):
        raise CheckpointError(f"saved classifier {path}: {f.name} is missing or does not match the SHA-256 "
                              f"in {DESCRIPTION} (modified or truncated); save it again")
    try:
        t = load_file(str(f))
        z, y = t["embeddings"].astype(np.float32), t["labels"].astype(np.int64)
    except (SafetensorError, OSError, KeyError, ValueError) as e:
        raise CheckpointError(f"saved classifier {path}: {f.name} cannot be read ({e})") from e
    n = len(desc["classes"])
    if z.ndim != 2 or y.ndim != 1 or len(y) != len(z) or (len(y) and (y.min() < 0 or y.max() >= n)):
        raise CheckpointError(f"saved classifier {path}: {f.name} does not match its {n} classes")
    return z, y


def describe(path: str | Path) -> dict[str, Any]:
    """What ``metashot info`` prints: the description of a saved classifier, without loading its model."""
    desc = read_description(path)
    counts = desc.get("class_counts") or []
    classes = desc["classes"]
    model = desc["model"]
    return {"path": str(path), "model": model.get("name"), "algorithm": model.get("algorithm"),
            "model_digest": model.get("digest"), "classes": len(classes),
            "photos": int(sum(counts)), "per_class": dict(zip(map(str, classes), counts, strict=False)),
            "embedding_dim": (desc["support"].get("embeddings") or [0, 0])[-1],
            "fitted_at": desc.get("fitted_at"), "saved_at": desc.get("saved_at"),
            "photos_copied": desc.get("photos") is not None, "metashot_version": desc.get("metashot_version")}
