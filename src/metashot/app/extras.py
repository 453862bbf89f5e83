"""The page's text-intent and drawing tabs, without Gradio.

Text: lines ``intent: sentence`` in, one prediction per query sentence out (the bundled sentence model).
Drawings: a tab keeps the drawings added to each class (a few small arrays); each "classify" fits the chosen
Omniglot model on them (a conv4 on 28x28 inputs: milliseconds).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from metashot.app.photos import AppError, ModelCache, one_line


def parse_examples(text: str) -> tuple[list[str], list[str]]:
    """``intent: sentence`` lines (a tab works as the separator too) -> (sentences, intents)."""
    sentences, intents = [], []
    for i, line in enumerate((text or "").splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        sep = "\t" if "\t" in line else ":"
        intent, _, sentence = line.partition(sep)
        if not sentence.strip() or not intent.strip():
            raise AppError(f"example line {i} ({line[:40]!r}) is not 'intent: sentence'")
        sentences.append(sentence.strip())
        intents.append(intent.strip())
    if len(set(intents)) < 2:
        raise AppError(f"give examples of at least 2 intents, one 'intent: sentence' per line (you have "
                       f"{len(set(intents))})")
    return sentences, intents


def classify_text(cache: ModelCache, model: str, examples: str, queries: str) -> list[list[Any]]:
    """Rows ``[sentence, intent, confidence]`` for each non-empty line of ``queries``."""
    sentences, intents = parse_examples(examples)
    todo = [q.strip() for q in (queries or "").splitlines() if q.strip()]
    if not todo:
        raise AppError("type the sentences to classify, one per line")
    clf = cache.fresh(model)
    if clf.text_encoder is None:
        raise AppError(f"model {model!r} does not read sentences; pick a text model")
    try:
        clf.fit(sentences, intents)
        proba = clf.predict_proba(todo)
    except (ValueError, RuntimeError, ImportError) as e:
        raise AppError(one_line(e)) from e
    return [[q, str(clf.classes_[int(p.argmax())]), round(float(p.max()), 4)] for q, p in zip(todo, proba,
                                                                                             strict=True)]


def drawing(value: Any) -> np.ndarray:
    """The drawing of a Gradio sketch pad's value (its composite, RGBA uint8), or an AppError when blank."""
    img = value.get("composite") if isinstance(value, dict) else value
    if img is None:
        raise AppError("draw something on the pad first")
    arr = np.asarray(img)
    if arr.dtype != np.uint8:
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    if arr.ndim == 3 and arr.shape[-1] == 4:
        ink = arr[..., 3] > 0
    else:
        ink = arr.reshape(arr.shape[0], arr.shape[1], -1).min(-1) < 128
    if not ink.any():
        raise AppError("the pad is blank: draw something first")
    return arr


@dataclass
class DrawingSession:
    """One tab's drawings per class."""

    drawings: dict[str, list[np.ndarray]] = field(default_factory=dict)

    def add(self, name: str, value: Any) -> str:
        name = (name or "").strip()
        if not name:
            raise AppError("give the drawing's class a name")
        self.drawings.setdefault(name, []).append(drawing(value))
        have = ", ".join(f"{k} ({len(v)})" for k, v in self.drawings.items())
        return f"Added a drawing to {name!r}: {have}"

    def classify(self, cache: ModelCache, model: str, value: Any) -> dict[str, float]:
        """Probability per class of the drawing on the pad."""
        if len(self.drawings) < 2:
            raise AppError(f"add drawings of at least 2 classes first (you have {len(self.drawings)})")
        query = drawing(value)
        clf = cache.fresh(model)
        if clf.image_spec is None or clf.text_encoder is not None:
            raise AppError(f"model {model!r} does not read drawings; pick a drawing model")
        images = [a for v in self.drawings.values() for a in v]
        labels = [k for k, v in self.drawings.items() for _ in v]
        try:
            clf.fit(images, labels)
            p = clf.predict_proba([query])[0]
        except (ValueError, RuntimeError) as e:
            raise AppError(one_line(e)) from e
        return {str(c): float(q) for c, q in zip(clf.classes_, p, strict=True)}
