"""Image folders: ``root/<class>/<image>`` for users' own data (png, jpg, jpeg, bmp, gif, tif, webp).

Every class subfolder of ``root`` becomes one class, named after the subfolder; its images are the files
with an image suffix directly inside it, in sorted order. Hidden entries (names starting with ".") are
ignored. Anything else found where images are expected (files with other suffixes, nested folders) is
reported with a warning naming it, and an image entry that cannot be read (a broken link, a corrupt file) is
an error naming the file: nothing is skipped silently.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from metashot.data.preprocess import DECODER_VERSION, ImageSpec, preprocess
from metashot.data.store import ClassStore, cached_store

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def list_folder(root: Path) -> dict[str, list[Path]]:
    """Class name -> sorted image paths.

    Raises:
        FileNotFoundError: ``root`` does not exist, or an image entry is a broken link.
        ValueError: ``root`` is empty, holds no class subfolders, or a class folder holds no images.
    """
    root = Path(root)
    if not root.is_dir():
        what = "is a file, not a folder" if root.exists() else "does not exist"
        raise FileNotFoundError(f"image folder {root} {what}; expected {root}/<class>/<image>.png")
    entries = sorted(p for p in root.iterdir() if not p.name.startswith("."))
    if not entries:
        raise ValueError(f"image folder {root} is empty; expected class subfolders "
                         f"{root}/<class>/<image>.png")
    classes = [p for p in entries if p.is_dir()]
    if not classes:
        loose = [p.name for p in entries if p.suffix.lower() in IMAGE_SUFFIXES]
        hint = (f" It holds {len(loose)} image file(s) directly (e.g. {loose[0]}): move each class's images "
                f"into its own subfolder.") if loose else ""
        raise ValueError(f"image folder {root} has no class subfolders; expected "
                         f"{root}/<class>/<image>.png.{hint}")
    stray = [p.name for p in entries if not p.is_dir()]
    if stray:
        warnings.warn(f"image folder {root}: ignoring {len(stray)} file(s) beside the class folders: "
                      f"{stray[:5]}", stacklevel=2)
    out: dict[str, list[Path]] = {}
    for c in classes:
        files, ignored = [], []
        for p in sorted(c.iterdir()):
            if p.name.startswith("."):
                continue
            if p.suffix.lower() in IMAGE_SUFFIXES and not p.is_dir():
                if not p.is_file():
                    raise FileNotFoundError(f"image folder {root}: class {c.name!r}: image {p} cannot be "
                                            f"read (a broken link or not a regular file); fix or remove it")
                files.append(p)
            else:
                ignored.append(p.name)
        if ignored:
            warnings.warn(f"image folder {root}: class {c.name!r}: ignoring {len(ignored)} entr(ies) that "
                          f"are not images ({sorted(IMAGE_SUFFIXES)}): {ignored[:5]}", stacklevel=2)
        if not files:
            raise ValueError(f"image folder {root}: class folder {c.name!r} holds no images "
                             f"(looked for {sorted(IMAGE_SUFFIXES)})")
        out[c.name] = files
    return out


def decode_files(files: list[Path], spec: ImageSpec, desc: str) -> np.ndarray:
    """Decode and preprocess ``files`` into uint8 [len(files), C, size, size]; errors name the file."""
    out = np.empty((len(files), spec.channels, spec.size, spec.size), dtype=np.uint8)
    for i, f in enumerate(tqdm(files, desc=desc, unit="img", leave=False, disable=len(files) < 500)):
        out[i] = preprocess(f, spec, source=str(f))
    return out


def image_folder(root: str | Path, spec: ImageSpec, cache_dir: Path | None = None) -> ClassStore:
    """A store of every class subfolder of ``root``, preprocessed by ``spec`` and cached.

    Classes are in sorted folder-name order. The cache is keyed by every image file's identity (path,
    size, modification time) and ``spec``, so editing, adding or removing an image rebuilds it.
    """
    classes = list_folder(Path(root))
    files = [f for fs in classes.values() for f in fs]
    names = list(classes)
    counts = [len(classes[n]) for n in names]

    def build() -> tuple[np.ndarray, list[int], list[str]]:
        return decode_files(files, spec, f"decode {Path(root).name}"), counts, names

    params = {"spec": spec.to_dict(), "root": str(Path(root).resolve()), "decoder": DECODER_VERSION}
    meta = {"dataset": "folder", "name": str(root), "image_spec": spec.to_dict()}
    return cached_store(f"folder-{spec.size}", files, params, build, meta=meta, cache_dir=cache_dir)
