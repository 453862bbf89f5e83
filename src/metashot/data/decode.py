"""A caller's batch of images (paths, PIL images, uint8 arrays) decoded by a checkpoint's :class:`ImageSpec`
in a few threads, with one domain warning for the whole batch: what ``fit`` / ``predict`` of the full
classifier and of the torch-free :mod:`metashot.lite` share. Imports no torch."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from metashot.data.preprocess import COLOUR, LIGHT_ON_DARK, ImageSpec, domain_warning, preprocess_checked


def decode_images(images: Any, spec: ImageSpec | None, what: str) -> tuple[np.ndarray, list[set[str]]]:
    """(uint8 [n, C, S, S], each image's notes of :func:`preprocess_checked`) of ``images``; one-line errors
    for a single path or another type where a sequence belongs, an empty batch, no ``spec`` (a checkpoint
    without image preprocessing) and a file that cannot be decoded (named)."""
    torch = sys.modules.get("torch")
    kinds = (Sequence, np.ndarray) + ((torch.Tensor,) if torch is not None else ())
    if isinstance(images, (str, Path)) or not isinstance(images, kinds):
        raise TypeError(f"{what}: expected a sequence of images (PIL images, paths or uint8 arrays)")
    if len(images) == 0:
        raise ValueError(f"{what}: no images given")
    if spec is None:
        raise ValueError(f"{what}: this checkpoint has no image preprocessing; pass float tensors")

    def one(i: int) -> tuple[np.ndarray, set[str]]:
        return preprocess_checked(images[i], spec, source=f"{what}[{i}]")

    # Decoding and resizing release the GIL: a few threads overlap them (a 12-megapixel JPEG takes ~10 ms
    # even at 1/8 scale). map() keeps the order and re-raises the first error, which names the file.
    workers = min(4, os.cpu_count() or 1, len(images))
    if workers > 1:  # a lazily opened PIL image may appear twice: load it before threads share it
        for im in images:
            if isinstance(im, Image.Image):
                im.load()
        with ThreadPoolExecutor(workers) as pool:
            done = list(pool.map(one, range(len(images))))
    else:
        done = [one(i) for i in range(len(images))]
    return np.stack([a for a, _ in done]), [n for _, n in done]


def batch_domain_warning(images: Any, notes: list[set[str]], spec: ImageSpec, what: str) -> str | None:
    """The one warning for a batch whose images got ``notes``, naming a few of those that do not look like
    the checkpoint's domain (by path, else by index), or None."""
    hits: dict[str, list[str]] = {}
    counts: dict[str, int] = {}
    for note in (COLOUR, LIGHT_ON_DARK):
        hit = [i for i, n in enumerate(notes) if note in n]
        counts[note] = len(hit)
        hits[note] = [str(images[i]) if isinstance(images[i], (str, Path)) else f"{what}[{i}]"
                      for i in hit[:5]]
    return domain_warning(spec, hits, counts, len(notes), what)
