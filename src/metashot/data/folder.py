"""Image folders: ``root/<class>/<image>`` for users' own data (png, jpg, jpeg, bmp, gif, tif, webp)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from metashot.data.preprocess import ImageSpec, preprocess
from metashot.data.store import ClassStore, cached_store

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def list_folder(root: Path) -> dict[str, list[Path]]:
    """Class name -> sorted image paths. Errors for a missing or empty folder, or a class without images."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ValueError(f"image folder {root} has no class subfolders; expected {root}/<class>/<image>.png")
    out = {}
    for c in classes:
        files = sorted(p for p in c.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ValueError(f"image folder {root}: class folder {c.name!r} holds no images "
                             f"(looked for {sorted(IMAGE_SUFFIXES)})")
        out[c.name] = files
    return out


def decode_files(files: list[Path], spec: ImageSpec, desc: str) -> np.ndarray:
    out = np.empty((len(files), spec.channels, spec.size, spec.size), dtype=np.uint8)
    for i, f in enumerate(tqdm(files, desc=desc, unit="img", leave=False, disable=len(files) < 500)):
        out[i] = preprocess(f, spec, source=str(f))
    return out


def image_folder(root: str | Path, spec: ImageSpec, cache_dir: Path | None = None) -> ClassStore:
    """A store of every class subfolder of ``root``, preprocessed by ``spec`` and cached."""
    classes = list_folder(Path(root))
    files = [f for fs in classes.values() for f in fs]
    names = list(classes)
    counts = [len(classes[n]) for n in names]

    def build() -> tuple[np.ndarray, list[int], list[str]]:
        return decode_files(files, spec, f"decode {Path(root).name}"), counts, names

    return cached_store(f"folder-{spec.size}", files, {"spec": spec.to_dict(), "root": str(Path(root).resolve())},
                        build, meta={"dataset": "folder", "name": str(root), "image_spec": spec.to_dict()},
                        cache_dir=cache_dir)
