"""``metashot predict`` on image folders of any size: checked first, then streamed in chunks to a CSV.

1. Every support and query file is listed (``data/folder.py``'s rules) and its header read (PIL ``open`` +
   ``verify``; a JPEG without its end marker is decoded at 1/8 scale to be sure) before anything is embedded:
   all unreadable files are named in ONE error, or with ``skip_unreadable`` in one warning and in the CSV.
2. Queries go through in chunks of ``batch_size``: a thread pool decodes and preprocesses the next chunk
   while the network embeds the current one; each chunk's rows are written and flushed, so memory stays
   bounded by two chunks and an interruption loses at most the chunk in flight.
3. ``resume`` continues an existing CSV: rows already written (by their ``file`` cell) are skipped, a
   truncated last line is dropped and rewritten; without it an existing, non-empty output is refused.
"""

from __future__ import annotations

import csv
import io
import os
import sys
import warnings
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TextIO

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from metashot._env import quiet
from metashot.csv_safe import spreadsheet_safe, write_rows
from metashot.data.folder import IMAGE_SUFFIXES, list_folder, list_images
from metashot.data.preprocess import ImageSpec, decode_hint, preprocess_checked, to_float

# (a metashot.classifier.FewShotClassifier; typed loosely: the classifier module re-exports this one's names)
FewShotClassifier = Any

HEADER = ["file", "label", "confidence", "note"]
UNREADABLE = "unreadable"
SHOWN = 5  # unreadable files named in the error / warning line
_BROKEN = "a broken link or not a regular file"


def query_images(query: str | Path, unreadable: list[Path] | None = None) -> list[Path]:
    """The images to classify: one image file, or the images of a folder (``list_images``' rules: other
    files skipped with one warning naming them all, broken links fail, or go to ``unreadable`` if given)."""
    q = Path(query)
    if q.is_file():
        if q.suffix.lower() not in IMAGE_SUFFIXES:
            raise ValueError(f"query {q} is a file but not an image (expected one of "
                             f"{', '.join(sorted(IMAGE_SUFFIXES))}); give an image or a folder of images")
        return [q]
    if not q.exists():
        raise FileNotFoundError(f"query {q} does not exist (give an image file or a folder of images)")
    return list_images(q, unreadable)


def header_problem(path: Path) -> str | None:
    """Why ``path`` cannot be read as an image (a short reason), or None when its header checks out.

    Cheap: PIL reads the header and ``verify`` walks the file's structure (PNG chunk checksums); a JPEG that
    does not end with its end-of-image marker (truncated, or trailing bytes) is decoded at reduced scale.
    """
    try:
        if not path.is_file():
            return _BROKEN
        with Image.open(path) as im:
            fmt = im.format
            if im.width < 1 or im.height < 1:
                return f"empty image ({im.width}x{im.height} pixels)"
            im.verify()
        if fmt == "JPEG":
            with open(path, "rb") as f:
                f.seek(max(0, path.stat().st_size - 2))
                ends = f.read(2) == b"\xff\xd9"
            if not ends:
                with Image.open(path) as im:
                    im.draft(im.mode, (64, 64))
                    im.load()
    except Exception as e:  # PIL raises several types for bad files
        reason = str(e).replace(f"'{path}'", "").replace(str(path), "").strip() or type(e).__name__
        return reason + decode_hint(path)
    return None


def check_files(files: Sequence[Path], what: str = "check") -> dict[Path, str]:
    """``header_problem`` of every file (a few threads; a bar from 500 files): {path: reason} of bad ones."""
    workers = min(4, os.cpu_count() or 1, max(1, len(files)))
    with ThreadPoolExecutor(workers) as pool:
        done = pool.map(header_problem, files)
        bar = tqdm(done, total=len(files), desc=what, unit="img", leave=False,
                   disable=len(files) < 500 or quiet(), file=sys.stderr)
        return {f: r for f, r in zip(files, bar, strict=True) if r is not None}


def _unreadable_line(bad: dict[Path, str], n_files: int) -> str:
    shown = "; ".join(f"{p} ({r})" for p, r in list(bad.items())[:SHOWN])
    more = f"; and {len(bad) - SHOWN} more" if len(bad) > SHOWN else ""
    return f"{len(bad)} of {n_files} image file(s) cannot be read: {shown}{more}"


def classify_chunk(clf: FewShotClassifier, x: Any, transductive: bool | None,
                   unknown: bool) -> tuple[np.ndarray, np.ndarray]:
    """(labels, proba [n, n_classes]) of one chunk of preprocessed images ``x``: uint8 pixels [n, C, S, S]
    (NumPy) or a float tensor. A :class:`~metashot.lite.LiteClassifier` takes the pixels as they are (no
    torch); otherwise ``clf.classify`` where the classifier has it, else the argmax of ``predict_proba``
    (inductive, no ``unknown`` label)."""
    if isinstance(x, np.ndarray):
        by_pixels = getattr(clf, "classify_pixels", None)
        if by_pixels is not None:
            return by_pixels(x, transductive=transductive, unknown=unknown)
        import torch

        x = to_float(torch.from_numpy(x))
    classify = getattr(clf, "classify", None)
    if classify is not None:
        return classify(x, transductive=transductive, unknown=unknown)
    if unknown or transductive:
        raise ValueError("--unknown and transductive classification need FewShotClassifier.classify, which "
                         "this version of metashot lacks; leave the flag out")
    proba = clf.predict_proba(x)
    return clf.classes_[proba.argmax(1)], proba


def read_done(output: Path) -> tuple[set[str], int]:
    """The ``file`` cells of the rows already in ``output`` and the byte length of its complete part (a
    truncated or malformed last line is not part of it). A file without one complete line gives (set(), 0)."""
    data = output.read_bytes()
    keep = data[: data.rfind(b"\n") + 1]  # a last line without its newline was cut mid-write
    try:
        text = keep.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"--resume: {output} is not UTF-8 text ({e}); it was not written by metashot "
                         f"predict: choose another --output") from None
    rows = list(csv.reader(io.StringIO(text, newline="")))
    if not rows:
        return set(), 0
    if rows[0] != HEADER:
        raise ValueError(f"--resume: {output} starts with {rows[0]}, not the columns {HEADER} of metashot "
                         f"predict on images; choose another --output")
    if len(rows) > 1 and len(rows[-1]) != len(HEADER):  # a complete line, but cut (e.g. inside quotes)
        rows.pop()
        keep = keep[: keep.rstrip(b"\r\n").rfind(b"\n") + 1]
    for i, r in enumerate(rows[1:], start=2):
        if len(r) != len(HEADER):
            raise ValueError(f"--resume: {output} row {i} has {len(r)} cells, not {len(HEADER)}; the file "
                             f"was edited or is damaged: fix it or choose another --output")
    return {r[0] for r in rows[1:]}, len(keep)


def _open_output(output: Path, keep: int) -> TextIO:
    """``output`` opened for appending after its first ``keep`` bytes (a fresh file with the header if 0)."""
    if keep == 0:
        out = open(output, "w", newline="", encoding="utf-8")
        write_rows(out, [], HEADER)
        out.flush()
        return out
    if output.stat().st_size != keep:
        with open(output, "r+b") as f:
            f.truncate(keep)
    return open(output, "a", newline="", encoding="utf-8")


def _support(classes: dict[str, list[Path]], bad: dict[Path, str]) -> tuple[list[Path], list[str]]:
    """The readable support images and their labels; a class left with none is an error."""
    images, labels = [], []
    for name, files in classes.items():
        good = [f for f in files if f not in bad]
        if not good:
            raise ValueError(f"support class {name!r} has no readable image ({files[0].parent}); add one or "
                             f"remove the class folder")
        images += good
        labels += [name] * len(good)
    return images, labels


def _decode(path: Path, spec: ImageSpec) -> tuple[np.ndarray | None, set[str], str]:
    """(uint8 [C, H, W], domain notes, "") for a photo, or (None, set(), reason) when it cannot be decoded."""
    try:
        arr, notes = preprocess_checked(path, spec, source=str(path))
        return arr, notes, ""
    except (ValueError, OSError) as e:
        return None, set(), str(e).replace(f"cannot decode image file {path}: ", "")


def predict_images_csv(clf: FewShotClassifier, support: str | Path | None, query: str | Path,
                       output: str | Path | None = None, *, batch_size: int = 256, resume: bool = False,
                       skip_unreadable: bool = False, transductive: bool | None = None,
                       unknown: bool = False, progress: bool = True, threshold: float | None = None) -> int:
    """``metashot predict`` for an image checkpoint: fit on a folder of class subfolders, then write
    ``file,label,confidence,note`` rows for the query image or folder to ``output`` (default: standard
    output), in the query's sorted order, ``batch_size`` photos at a time. Returns the exit code (130 when
    interrupted; the rows written so far stay, and ``resume`` continues from them). ``threshold`` replaces
    the model's 'unknown' threshold and implies ``unknown``. ``support`` None: ``clf`` is already fitted (a
    saved classifier) and is used as it is."""
    if clf.image_spec is None:
        raise ValueError("this checkpoint has no image preprocessing; metashot predict needs an image model")
    if threshold is not None and getattr(clf, "is_lite", False):  # a LiteClassifier: no torch needed
        clf.set_unknown_threshold(threshold)
        unknown = True
    elif threshold is not None:  # the threshold of the 'unknown' label
        if not callable(getattr(clf.learner, "known_scores", None)):
            raise ValueError(f"--threshold: model {clf.source or '(in memory)'} gives no known-class score "
                             f"for an 'unknown' label (photo models such as `photos` do); leave --threshold "
                             f"out")
        clf.learner.unknown_threshold = float(threshold)
        unknown = True
    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    out_path = Path(output) if output else None
    if resume and out_path is None:
        raise ValueError("--resume continues an --output file; give --output PATH")
    if out_path is not None and out_path.is_dir():
        raise ValueError(f"--output {out_path} is a folder; give a CSV file path")
    broken_s: list[Path] = []
    # the support side first, as before: its errors come first
    classes = list_folder(Path(support), broken_s) if support is not None else {}
    support_files = [f for fs in classes.values() for f in fs]
    broken_q: list[Path] = []
    queries = sorted([*query_images(query, broken_q), *broken_q])
    exists = out_path is not None and out_path.is_file() and out_path.stat().st_size > 0
    done, keep = read_done(out_path) if exists and resume else (set(), 0)
    todo = [q for q in queries if spreadsheet_safe(q) not in done]
    if done and len(todo) == len(queries):
        raise ValueError(f"--resume: none of the {len(done)} rows of {out_path} names an image of {query} "
                         f"(written for another query, or the query spelled differently?); choose another "
                         f"--output or give --query as before")
    pending = set(todo)
    bad = {p: _BROKEN for p in [*broken_s, *broken_q] if p in pending or p in broken_s}
    bad.update(check_files([*support_files, *[q for q in todo if q not in bad]]))
    n_checked = len(support_files) + len(broken_s) + len(todo)
    if bad and not skip_unreadable:
        raise ValueError(f"{_unreadable_line(bad, n_checked)}; fix or remove them, or pass --skip-unreadable "
                         f"to go on without them (their rows get an empty label and the note {UNREADABLE!r})")
    if exists and not resume:
        raise ValueError(f"output {out_path} exists; pass --resume to continue it (its rows are kept and "
                         f"skipped) or choose another --output")
    if bad:
        warnings.warn(f"{_unreadable_line(bad, n_checked)}; going on without them (--skip-unreadable)",
                      UserWarning, stacklevel=2)
    if not todo:
        return 0
    if support is not None:
        clf.fit(*_support(classes, bad))
    out = _open_output(out_path, keep) if out_path is not None else sys.stdout
    if out_path is None:
        write_rows(out, [], HEADER)
    try:
        return _stream(clf, todo, bad, out, batch_size, skip_unreadable, transductive, unknown,
                       progress, initial=len(queries) - len(todo), total=len(queries), output=out_path)
    finally:
        if out_path is not None:
            out.close()


def _stream(clf: FewShotClassifier, todo: list[Path], bad: dict[Path, str], out: TextIO, batch_size: int,
            skip_unreadable: bool, transductive: bool | None, unknown: bool, progress: bool, *,
            initial: int, total: int, output: Path | None) -> int:
    """Decode (threads, one chunk ahead), classify and write ``todo`` chunk by chunk."""
    spec = clf.image_spec
    assert spec is not None
    # Chunks of near-equal size (at most batch_size): with a transductive head each chunk is one unlabelled
    # batch, so no chunk is left with a few photos only.
    size = -(-len(todo) // -(-len(todo) // batch_size))
    chunks = [todo[i : i + size] for i in range(0, len(todo), size)]
    pool = ThreadPoolExecutor(min(4, os.cpu_count() or 1))

    def submit(chunk: list[Path]) -> list[tuple[Path, Future[Any] | None]]:
        return [(p, None if p in bad else pool.submit(_decode, p, spec)) for p in chunk]

    bar = tqdm(total=total, initial=initial, desc="predict", unit="img", file=sys.stderr,
               disable=not progress or quiet(), dynamic_ncols=True)
    seen: list[Path] = []  # decoded photos and their domain notes, for one warning at the end
    notes: list[set[str]] = []
    failed: dict[Path, str] = {}
    written = 0
    where = f" in {output}" if output is not None else ""
    nxt = submit(chunks[0])
    try:
        for i in range(len(chunks)):
            cur, nxt = nxt, (submit(chunks[i + 1]) if i + 1 < len(chunks) else [])
            arrs: list[np.ndarray] = []
            rows: list[list[str] | tuple[Path, int]] = []
            for p, fut in cur:
                arr, note, reason = fut.result() if fut is not None else (None, set(), bad[p])
                if arr is None and fut is not None:
                    if not skip_unreadable:
                        raise ValueError(f"image {p} cannot be decoded ({reason}); the {written} rows before "
                                         f"its chunk are{where}: fix or remove it and rerun with --resume, "
                                         f"or add --skip-unreadable")
                    failed[p] = reason
                if arr is None:
                    rows.append([spreadsheet_safe(p), "", "", f"{UNREADABLE} ({reason})"])
                    continue
                rows.append((p, len(arrs)))
                arrs.append(arr)
                seen.append(p)
                notes.append(note)
            buf, lines = io.StringIO(), []
            if arrs:
                labels, proba = classify_chunk(clf, np.stack(arrs), transductive, unknown)
                col = {c: k for k, c in enumerate(clf.classes_)}
            for r in rows:
                if isinstance(r, tuple):
                    p, j = r
                    k = col.get(labels[j])  # "unknown" (open set) has no column: its largest probability
                    conf = proba[j, k] if k is not None else proba[j].max()
                    lines.append([p, labels[j], f"{conf:.4f}", ""])
                else:
                    lines.append(r)
            write_rows(buf, lines)
            out.write(buf.getvalue())
            out.flush()
            written += len(cur)
            bar.update(len(cur))
    except KeyboardInterrupt:
        pool.shutdown(wait=False, cancel_futures=True)
        bar.close()
        print(f"metashot predict: interrupted after {written} new row(s){where}; rerun with --resume to "
              f"continue", file=sys.stderr)
        return 130
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        bar.close()
    if failed:
        warnings.warn(f"{_unreadable_line(failed, len(todo))} when decoded; their rows note {UNREADABLE!r}",
                      UserWarning, stacklevel=3)
    if any(notes):
        clf._warn_domain(seen, notes, "predict images")
    return 0
