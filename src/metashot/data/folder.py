"""Image folders: ``root/<class>/<image>`` for users' own data (png, jpg, jpeg, bmp, gif, tif, webp).

Every class subfolder of ``root`` becomes one class, named after the subfolder; its images are the files
with an image suffix directly inside it, in sorted order. Hidden entries (names starting with ".") are
ignored. Anything else found where images are expected (files with other suffixes, nested folders) is
reported with a warning naming it, and an image entry that cannot be read (a broken link, a corrupt file) is
an error naming the file: nothing is skipped silently.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm.auto import tqdm

from metashot._env import quiet
from metashot.data.preprocess import (
    COLOUR,
    DECODER_VERSION,
    LIGHT_ON_DARK,
    ImageSpec,
    domain_warning,
    preprocess,
    preprocess_checked,
)

if TYPE_CHECKING:
    from metashot.data.store import ClassStore

# HEIC/HEIF through pillow-heif (the vision extra), AVIF where Pillow has libavif (metashot.data.preprocess)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".heic", ".heif",
                  ".avif"}


def list_folder(root: Path, unreadable: list[Path] | None = None) -> dict[str, list[Path]]:
    """Class name -> sorted image paths.

    ``unreadable``: when given, an image entry that cannot be read (a broken link) is appended to it and
    left out instead of raising, so a caller can name every such file at once.

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
    # Everything skipped goes into ONE warning that names every entry (as `metashot predict`'s query side).
    skipped = [f"beside the class folders: {stray}"] if stray else []
    n_skipped = len(stray)

    def warn_skipped() -> None:
        if skipped:
            warnings.warn(f"image folder {root}: ignoring {n_skipped} entr(ies) that are not images "
                          f"({sorted(IMAGE_SUFFIXES)}): {'; '.join(skipped)}", stacklevel=3)

    out: dict[str, list[Path]] = {}
    for c in classes:
        files, ignored = [], []
        for p in sorted(c.iterdir()):
            if p.name.startswith("."):
                continue
            if p.suffix.lower() in IMAGE_SUFFIXES and not p.is_dir():
                if not p.is_file():
                    if unreadable is not None:
                        unreadable.append(p)
                        continue
                    raise FileNotFoundError(f"image folder {root}: class {c.name!r}: image {p} cannot be "
                                            f"read (a broken link or not a regular file); fix or remove it")
                files.append(p)
            else:
                ignored.append(p.name)
        if ignored:
            skipped.append(f"in class {c.name!r}: {ignored}")
            n_skipped += len(ignored)
        if not files:
            warn_skipped()  # what was seen so far, before the error
            raise ValueError(f"image folder {root}: class folder {c.name!r} holds no images "
                             f"(looked for {sorted(IMAGE_SUFFIXES)})")
        out[c.name] = files
    warn_skipped()
    return out


def list_images(root: Path, unreadable: list[Path] | None = None) -> list[Path]:
    """Every image file under ``root`` (any depth), sorted: the query side of ``metashot predict``.

    The same rules as :func:`list_folder`: hidden entries are not data; files with other suffixes are skipped
    with ONE warning that names every one of them; an image entry that cannot be read (a broken link, not a
    regular file) is an error naming it, and so is a corrupt image when it is decoded, and a subfolder that
    cannot be listed (no permission). With ``unreadable`` given, such entries (and such subfolders) are
    appended to it (in sorted order) instead of raising, and not returned.

    Raises:
        FileNotFoundError: ``root`` is not a folder, or an image entry is a broken link / not a regular file.
        PermissionError: ``root``, or (without ``unreadable``) a subfolder, cannot be listed.
        ValueError: ``root`` holds no images.
    """
    root = Path(root)
    if not root.is_dir():
        what = "is a file, not a folder" if root.exists() else "does not exist"
        raise FileNotFoundError(f"query folder {root} {what}")
    images, skipped = [], []
    blocked: list[OSError] = []  # folders that cannot be listed (no permission): never skipped silently
    found: list[Path] = []
    for top, dirs, files in os.walk(root, onerror=blocked.append):  # (links to folders are not followed)
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [Path(top) / name for name in files + dirs if not name.startswith(".")]
    closed: set[Path] = set()
    for e in blocked:
        where = Path(e.filename) if e.filename else root
        if where == root:  # (one line as it is: no errno, so the CLI prints it unchanged)
            raise PermissionError(f"query folder {root} cannot be read ({e.strerror}); give read and search "
                                  f"permission to it (chmod u+rx)")
        if unreadable is None:
            raise PermissionError(f"query folder {root}: subfolder {where} cannot be read ({e.strerror}); "
                                  f"give read permission to it (chmod u+rx) or move it out")
        closed.add(where)
    for p in sorted(found):
        if p in closed:
            unreadable.append(p)  # type: ignore[union-attr]  (named with the unreadable files)
        elif p.is_dir():
            continue
        elif p.suffix.lower() not in IMAGE_SUFFIXES:
            skipped.append(str(p.relative_to(root)))
        elif not p.is_file() and unreadable is not None:
            unreadable.append(p)
        elif not p.is_file():
            raise FileNotFoundError(f"query folder {root}: image {p} cannot be read (a broken link or not a "
                                    f"regular file); fix or remove it")
        else:
            images.append(p)
    if skipped:
        warnings.warn(f"query folder {root}: ignoring {len(skipped)} file(s) that are not images "
                      f"({sorted(IMAGE_SUFFIXES)}): {skipped}", stacklevel=2)
    if not images:
        raise ValueError(f"query folder {root} holds no images (looked for {sorted(IMAGE_SUFFIXES)})")
    return images


def decode_files(files: list[Path], spec: ImageSpec, desc: str,
                 notes: list[set[str]] | None = None) -> np.ndarray:
    """Decode and preprocess ``files`` into uint8 [len(files), C, size, size]; errors name the file.

    ``notes``: when given, users' images are checked as ``metashot predict`` checks them
    (:func:`~metashot.data.preprocess.preprocess_checked`: an already-inverted drawing is not inverted
    again, a colour photo for a grayscale model is noted); each file's notes are appended to it."""
    out = np.empty((len(files), spec.channels, spec.size, spec.size), dtype=np.uint8)
    bar = tqdm(files, desc=desc, unit="img", leave=False, disable=len(files) < 500 or quiet())
    for i, f in enumerate(bar):
        if notes is None:
            out[i] = preprocess(f, spec, source=str(f))
        else:
            out[i], n = preprocess_checked(f, spec, source=str(f))
            notes.append(n)
    return out


def image_folder(root: str | Path, spec: ImageSpec, cache_dir: Path | None = None) -> ClassStore:
    """A store of every class subfolder of ``root``, preprocessed by ``spec`` and cached.

    Classes are in sorted folder-name order. The cache is keyed by every image file's identity (path,
    size, modification time) and ``spec``, so editing, adding or removing an image rebuilds it.
    """
    from metashot.data.store import cached_store  # (torch: imported by the one function that needs it)

    classes = list_folder(Path(root))
    files = [f for fs in classes.values() for f in fs]
    names = list(classes)
    counts = [len(classes[n]) for n in names]

    meta: dict = {"dataset": "folder", "name": str(root), "image_spec": spec.to_dict()}

    def build() -> tuple[np.ndarray, list[int], list[str]]:
        notes: list[set[str]] = []
        images = decode_files(files, spec, f"decode {Path(root).name}", notes)
        # kept with the cached store, so every later run warns as the first one did
        meta["input_notes"] = {note: {"count": sum(note in n for n in notes),
                                      "examples": [str(f) for f, n in zip(files, notes, strict=True)
                                                   if note in n][:5]}
                               for note in (COLOUR, LIGHT_ON_DARK)}
        return images, counts, names

    # ("checks": users' images are decoded with predict's input checks; older stores are rebuilt)
    params = {"spec": spec.to_dict(), "root": str(Path(root).resolve()), "decoder": DECODER_VERSION,
              "checks": 1}
    store = cached_store(f"folder-{spec.size}", files, params, build, meta=meta, cache_dir=cache_dir)
    found = store.meta.get("input_notes") or {}
    text = domain_warning(spec, {k: v["examples"] for k, v in found.items()},
                          {k: v["count"] for k, v in found.items()}, len(files), f"images of {root}")
    if text:
        warnings.warn(text, UserWarning, stacklevel=2)
    return store
