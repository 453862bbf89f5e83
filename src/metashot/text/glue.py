"""Glue between text and the shared fit/predict classifier and CLI: which checkpoints take sentences, encoding
them, and reading sentence files (plain text or CSV, UTF-8).
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Any

import torch

from metashot.text.encoder import DEFAULT_ENCODER, check_texts, get_encoder

TEXT_COLUMNS = ("text", "sentence", "utterance")
LABEL_COLUMNS = ("label", "category", "intent")


def text_encoder_of(meta: dict[str, Any]) -> str | None:
    """The sentence encoder a checkpoint's inputs go through, or None for non-text checkpoints.

    A checkpoint is a text model if its meta names ``text_encoder`` or it was trained on a dataset registered
    with modality "text" (then ``data.options.encoder`` or the default encoder).
    """
    from metashot.data import DATASETS

    if meta.get("text_encoder"):
        return str(meta["text_encoder"])
    data = (meta.get("config") or {}).get("data") or {}
    name = data.get("dataset")
    if isinstance(name, str) and name in DATASETS and DATASETS.entry(name).modality == "text":
        return str((data.get("options") or {}).get("encoder") or DEFAULT_ENCODER)
    return None


def encode_sentences(texts: Any, encoder: str, what: str = "texts") -> torch.Tensor:
    """Sentences -> float32 [n, D] with the named encoder (validated: non-empty strings)."""
    texts = check_texts(texts, what)
    return torch.from_numpy(get_encoder(encoder).encode(texts))


def _read(path: Path) -> str:
    if path.is_dir():
        raise ValueError(f"{path} is a folder; a text checkpoint expects a sentence file (a CSV with a text "
                         f"column, or a text file with one sentence per line)")
    if not path.is_file():
        raise FileNotFoundError(f"sentence file {path} does not exist")
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason}); re-save it as UTF-8") from e


def _column(header: list[str], names: tuple[str, ...], path: Path, what: str) -> int:
    low = [h.strip().lower() for h in header]
    for n in names:
        if n in low:
            return low.index(n)
    raise ValueError(f"{path}: no {what} column; the header must name one of {names}, got {header}")


def read_sentences(path: str | Path) -> list[str]:
    """Sentences of a ``.csv`` (its ``text`` column) or of any other file (one per non-blank line)."""
    path = Path(path)
    raw = _read(path)
    if path.suffix.lower() == ".csv":
        rows = list(csv.reader(raw.splitlines()))
        if not rows:
            raise ValueError(f"{path}: empty CSV file")
        col = _column(rows[0], TEXT_COLUMNS, path, "text")
        texts = [r[col] if col < len(r) else "" for r in rows[1:]]
        for i, t in enumerate(texts):
            if not t.strip():
                raise ValueError(f"{path}: row {i + 2} has an empty text")
        return texts
    texts = [line.strip() for line in raw.splitlines() if line.strip()]
    if not texts:
        raise ValueError(f"{path}: no sentences (the file is empty)")
    return texts


def read_labelled(path: str | Path) -> tuple[list[str], list[str]]:
    """(texts, labels) of a support CSV: a text column and a ``label``/``category``/``intent`` column."""
    path = Path(path)
    raw = _read(path)
    rows = list(csv.reader(raw.splitlines()))
    if len(rows) < 2:
        raise ValueError(f"{path}: a support CSV needs a header (text,label) and at least one row per class")
    tc = _column(rows[0], TEXT_COLUMNS, path, "text")
    lc = _column(rows[0], LABEL_COLUMNS, path, "label")
    texts, labels = [], []
    for i, r in enumerate(rows[1:]):
        if len(r) <= max(tc, lc) or not r[tc].strip() or not r[lc].strip():
            raise ValueError(f"{path}: row {i + 2} needs a non-empty text and label, got {r}")
        texts.append(r[tc])
        labels.append(r[lc].strip())
    return texts, labels


def predict_text_cli(clf: Any, support: str | Path | None, query: str | Path,
                     output: str | Path | None = None, threshold: float | None = None,
                     oos_label: str = "oos") -> int:
    """``metashot predict`` for a text checkpoint: fit on a support CSV, write ``text,label,confidence`` rows.

    With ``threshold``, a sentence whose confidence (largest softmax probability) is below it is labelled
    ``oos_label``.
    """
    from metashot.csv_safe import write_rows

    if support is not None:  # None: a saved classifier, already fitted
        clf.fit(*read_labelled(support))
    queries = read_sentences(query)
    proba = clf.predict_proba(queries)
    out = open(output, "w", newline="", encoding="utf-8") if output else sys.stdout
    try:
        rows = []
        for t, p in zip(queries, proba, strict=True):
            k = int(p.argmax())
            label = oos_label if threshold is not None and p[k] < threshold else clf.classes_[k]
            rows.append([t, label, f"{p[k]:.4f}"])
        write_rows(out, rows, ["text", "label", "confidence"])
    finally:
        if output:
            out.close()
    return 0
