"""What the page does with photos, without Gradio: one :class:`PhotoSession` per browser tab.

A session keeps, per class, the embeddings of its photos (embedded once, when they are added) and the
photos' paths; "classify" embeds only the query photos. The models are loaded once per process
(:class:`ModelCache`) and shared by every session, which never fits them: each call builds a classifier
that shares the model's learner and holds that session's support set only.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metashot.classifier import FewShotClassifier, load
from metashot.csv_safe import write_rows
from metashot.data.folder import IMAGE_SUFFIXES
from metashot.fitted import set_support

MAX_PHOTO_MB = 25.0
LOW_CONFIDENCE = 0.5  # photos whose top probability is below this are marked in the gallery and the CSV
BROWSER_SHOWS = {".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp"}  # other photos get a JPEG thumbnail
Progress = Callable[[float, str], None]


class AppError(ValueError):
    """A mistake the page shows as one line (not an image, too large, one class only, no photos...)."""


class ModelCache:
    """The models of this process, each loaded once (thread-safe) and never fitted."""

    def __init__(self, device: str = "cpu") -> None:
        self.device = device
        self._lock = threading.Lock()
        self._models: dict[str, FewShotClassifier] = {}

    def base(self, name: str) -> FewShotClassifier:
        name = (name or "").strip()
        if not name:
            raise AppError("pick a model first")
        with self._lock:
            if name not in self._models:
                try:
                    self._models[name] = load(name, self.device)
                except Exception as e:  # the page shows why in one line
                    raise AppError(f"cannot load model {name!r}: {one_line(e)}") from e
            return self._models[name]

    def fresh(self, name: str) -> FewShotClassifier:
        """An unfitted classifier on the cached model (shares its learner; cheap)."""
        return FewShotClassifier(**self.base(name).get_params())


def one_line(e: BaseException) -> str:
    """The first line of an error message, at most 300 characters, never a traceback."""
    text = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return text if len(text) <= 300 else text[:297] + "..."


@dataclass
class PhotoSession:
    """One tab's support set: model name, class -> photo paths and (for metric models) their embeddings
    [n, D], a temp folder. A model without ``adapt_embedded`` (e.g. MAML) is fitted on the paths instead."""

    model: str = "photos"
    embeddings: dict[str, torch.Tensor] = field(default_factory=dict)
    files: dict[str, list[str]] = field(default_factory=dict)
    tmp: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="metashot-app-"))

    def summary(self) -> list[list[Any]]:
        """Rows ``[class, photos]`` for the page's table."""
        return [[name, len(files)] for name, files in self.files.items()]

    def classifier(self, cache: ModelCache) -> FewShotClassifier:
        """A classifier fitted on this session's support set (from the kept embeddings; >= 2 classes)."""
        if len(self.files) < 2:
            have = f"you have {len(self.files)}" + (f": {next(iter(self.files))}" if self.files else "")
            raise AppError(f"add at least 2 classes before classifying ({have})")
        clf = cache.fresh(self.model)
        clf.learner.to(clf.device).eval()
        names = list(self.files)
        if set(self.embeddings) != set(names):
            clf.fit([f for n in names for f in self.files[n]], [n for n in names for _ in self.files[n]])
            return clf
        z = torch.cat([self.embeddings[n] for n in names])
        y = torch.cat([torch.full((len(self.embeddings[n]),), k, dtype=torch.int64)
                       for k, n in enumerate(names)])
        items = [f for n in names for f in self.files[n]]
        set_support(clf, z, y, names, items if all(items) else None)  # "": a loaded photo, not kept
        return clf


def check_photo(path: str | Path, max_mb: float = MAX_PHOTO_MB) -> Path:
    """``path`` if it is an image file of at most ``max_mb`` MB, else an AppError naming it."""
    p = Path(path)
    if p.suffix.lower() not in IMAGE_SUFFIXES:
        raise AppError(f"{p.name} is not an image (expected {', '.join(sorted(IMAGE_SUFFIXES))})")
    size = p.stat().st_size / 1e6
    if size > max_mb:
        raise AppError(f"{p.name} is too large ({size:.1f} MB; the limit is {max_mb:g} MB)")
    return p


def gather(files: Sequence[str] | None, folder: str | None, class_name: str, tmp: str,
           max_mb: float = MAX_PHOTO_MB) -> dict[str, list[Path]]:
    """The photos to add, by class: dropped files (a .zip among them is unpacked) and a folder on this
    computer. Files inside a zip's or the folder's subfolders go to classes named by those subfolders; loose
    photos go to ``class_name``."""
    name = (class_name or "").strip()
    out: dict[str, list[Path]] = {}
    roots: list[Path] = []
    for f in files or []:
        p = Path(f)
        if p.suffix.lower() == ".zip":
            roots.append(unzipped(p, tmp, "zip-"))
        else:
            out.setdefault(name, []).append(check_photo(p, max_mb))
    if folder and folder.strip():
        root = Path(folder.strip()).expanduser()
        if not root.is_dir():
            raise AppError(f"folder {root} does not exist on this computer")
        roots.append(root)
    for root in roots:
        for p in sorted(root.rglob("*")):
            rel = p.relative_to(root).parts
            if not p.is_file() or any(part.startswith((".", "__MACOSX")) for part in rel):
                continue
            if p.suffix.lower() not in IMAGE_SUFFIXES:
                continue  # notes, thumbnail databases...: folders and zips hold other files too
            out.setdefault(rel[-2] if len(rel) > 1 else name, []).append(check_photo(p, max_mb))
    if not out:
        raise AppError(f"no photos given for class {name!r}: drop photos, a zip, or give a folder"
                       if name else "no photos given: drop photos, a zip, or give a folder")
    if "" in out:
        raise AppError(f"give a class name for the {len(out[''])} photo(s) dropped")
    return out


def add_photos(session: PhotoSession, cache: ModelCache, photos: dict[str, list[Path]],
               progress: Progress | None = None, chunk: int = 16) -> str:
    """Embed the new photos (in chunks, reporting progress) and add them to their classes; a status line."""
    clf = cache.fresh(session.model)
    clf.learner.to(clf.device).eval()
    keep = callable(getattr(clf.learner, "adapt_embedded", None)) and callable(getattr(clf.learner, "embed",
                                                                                       None))
    todo = [(name, p) for name, ps in photos.items() for p in ps]
    done: dict[str, list[torch.Tensor]] = {}
    for i in range(0, len(todo), chunk):
        if progress is not None:
            progress(i / len(todo), f"Embedding photos {i + 1}-{min(i + chunk, len(todo))} of {len(todo)}")
        part = todo[i : i + chunk]
        try:
            if keep:
                z = torch.from_numpy(clf.transform([str(p) for _, p in part]))
            else:  # only check that they decode: this model is fitted on the photos at each "classify"
                clf._to_tensor([str(p) for _, p in part], "photos")
                z = torch.zeros(len(part), 0)
        except (ValueError, FileNotFoundError, OSError) as e:
            raise AppError(_bad_photo(e, [p for _, p in part])) from e
        for (name, _), row in zip(part, z, strict=True):
            done.setdefault(name, []).append(row)
    for name, rows in done.items():
        if keep:
            old = session.embeddings.get(name)
            new = torch.stack(rows)
            session.embeddings[name] = new if old is None else torch.cat([old, new])
        session.files.setdefault(name, []).extend(str(p) for n, p in todo if n == name)
    added = ", ".join(f"{len(v)} to {k!r}" for k, v in done.items())
    total = sum(len(f) for f in session.files.values())
    return f"Added {added}; {len(session.files)} class(es), {total} photos."


def _bad_photo(e: Exception, paths: list[Path]) -> str:
    """'NAME is not an image or is damaged' for a decoding error, naming the file by its own name."""
    msg = one_line(e)
    for p in paths:
        if str(p) in msg:
            return f"{p.name} is not an image or is damaged; remove it and try again"
    return msg


def classify(session: PhotoSession, cache: ModelCache, queries: Sequence[str] | None, unknown: bool = False,
             progress: Progress | None = None, max_mb: float = MAX_PHOTO_MB) -> list[dict[str, Any]]:
    """Rows ``{file, path, label, confidence, flag}``, most confident first; ``flag`` is "unknown" (no
    support class, with ``unknown``) or "low confidence" (top probability < LOW_CONFIDENCE)."""
    clf = session.classifier(cache)
    paths = [check_photo(q, max_mb) for q in queries or []]
    if not paths:
        raise AppError("drop the photos to classify first")
    if progress is not None:
        progress(0.0, f"Classifying {len(paths)} photos")
    try:
        if hasattr(clf, "classify"):
            labels, proba = clf.classify([str(p) for p in paths], unknown=unknown)
        else:
            proba = clf.predict_proba([str(p) for p in paths])
            labels = clf.classes_[proba.argmax(1)]
    except (ValueError, FileNotFoundError, OSError) as e:
        raise AppError(_bad_photo(e, paths)) from e
    proba = np.asarray(proba)
    rows = []
    for p, label, pr in zip(paths, labels, proba, strict=True):
        conf = float(pr.max())
        flag = "unknown" if str(label) == "unknown" and "unknown" not in session.files else \
            ("low confidence" if conf < LOW_CONFIDENCE else "")
        rows.append({"file": p.name, "path": str(p), "label": str(label), "confidence": conf, "flag": flag})
    rows.sort(key=lambda r: -r["confidence"])
    return rows


def write_csv(rows: list[dict[str, Any]], folder: str) -> str:
    """The rows as ``predictions.csv`` (file,label,confidence,flag; spreadsheet-safe) in ``folder``."""
    out = Path(tempfile.mkdtemp(dir=folder, prefix="csv-")) / "predictions.csv"
    with open(out, "w", newline="") as f:
        write_rows(f, ([r["file"], r["label"], f"{r['confidence']:.4f}", r["flag"]] for r in rows),
                   ["file", "label", "confidence", "flag"])
    return str(out)


def thumbnail(path: str, folder: str) -> str:
    """A photo the browser can show: the file itself, or a JPEG thumbnail of a HEIC/TIFF/AVIF photo."""
    p = Path(path)
    if p.suffix.lower() in BROWSER_SHOWS:
        return path
    from metashot.data.preprocess import to_pil

    im = to_pil(path, p.name).convert("RGB")
    im.thumbnail((256, 256))
    out = Path(tempfile.mkdtemp(dir=folder, prefix="thumb-")) / (p.stem + ".jpg")
    im.save(out, quality=85)
    return str(out)


def save_zip(session: PhotoSession, cache: ModelCache, copy_photos: bool = False) -> str:
    """The session's classifier saved (``clf.save``) and zipped for download; the zip's path."""
    clf = session.classifier(cache)
    work = Path(tempfile.mkdtemp(dir=session.tmp, prefix="save-"))
    clf.save(work / "my-classifier", copy_photos=copy_photos)
    return shutil.make_archive(str(work / "my-classifier"), "zip", work, "my-classifier")


def unzipped(p: Path, tmp: str, prefix: str) -> Path:
    """A new folder under ``tmp`` holding what zip file ``p`` holds; AppError if it cannot be read."""
    dest = Path(tempfile.mkdtemp(dir=tmp, prefix=prefix))
    try:
        with zipfile.ZipFile(p) as z:
            z.extractall(dest)
    except (zipfile.BadZipFile, OSError) as e:
        raise AppError(f"{p.name} is not a readable zip file ({one_line(e)})") from e
    return dest


def load_saved(cache: ModelCache, source: str, tmp: str) -> PhotoSession:
    """A session from a saved classifier: a zip downloaded from this page, or a folder on this computer."""
    from metashot.fitted import DESCRIPTION, load_fitted, read_description

    p = Path(source.strip()).expanduser()
    if p.suffix.lower() == ".zip" and p.is_file():
        dest = unzipped(p, tmp, "load-")
        found = sorted(dest.rglob(DESCRIPTION))
        if not found:
            raise AppError(f"{p.name} holds no saved classifier ({DESCRIPTION} is missing)")
        p = found[0].parent
    try:
        name = str(read_description(p)["model"].get("name"))
        clf = load_fitted(p, cache.device, base=cache.base(name))
    except AppError:
        raise
    except Exception as e:
        raise AppError(one_line(e)) from e
    s = PhotoSession(model=name, tmp=tmp)
    items = clf.__dict__.get("_support_items")
    for k, c in enumerate(clf.classes_):
        rows = clf.support_labels_ == k
        s.embeddings[str(c)] = clf.support_embeddings_[rows].cpu()
        idx = rows.nonzero().flatten().tolist()
        s.files[str(c)] = [str(items[i]) for i in idx] if items else [""] * len(idx)
    return s
