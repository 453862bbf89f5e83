"""Embedding cache: sentences encoded once into a :class:`ClassStore` of float32 [M, D], then memory-mapped.

The cache key is the identity of the source files (path, size, mtime), the selection of sentences (``params``)
and the encoder's fingerprint (model, package version, pooling), so a changed file or encoder never reuses
stale vectors. A later load reads only the ``.npy``/``.json`` pair and never constructs the encoder.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from metashot.data.store import ClassStore, cached_store, group_by_label
from metashot.text.encoder import DEFAULT_ENCODER, TextEncoder, encoder_fingerprint, get_encoder


def embedding_store(tag: str, sources: Sequence[Path], pairs: Sequence[tuple[str, str]],
                    encoder: TextEncoder | None = None, params: dict[str, Any] | None = None,
                    meta: dict[str, Any] | None = None, cache_dir: Path | None = None,
                    batch_size: int = 64) -> ClassStore:
    """The cached store of ``pairs`` = [(text, label)], grouped by label (names sorted, file order within).

    Args:
        tag: readable prefix of the cache file (e.g. ``text-banking77-train``).
        sources: files whose identity keys the cache.
        pairs: the labelled sentences (non-empty).
        encoder: defaults to all-MiniLM-L6-v2, loaded only if the cache is missing.
        params: what selects ``pairs`` from the sources (part, rows); part of the key.

    Returns:
        ClassStore with ``images`` float32 [M, D]; ``meta`` records the encoder and, after a fresh build,
        ``encode_seconds``.
    """
    if not pairs:
        raise ValueError(f"embedding_store {tag}: no sentences")
    name = encoder.name if encoder is not None else DEFAULT_ENCODER
    fp = encoder.fingerprint() if encoder is not None else encoder_fingerprint(name)
    texts, names, counts = group_by_label(list(pairs))
    key = {"kind": "text-embeddings", "encoder": fp, "n": len(texts), **(params or {})}
    built: dict[str, float] = {}

    def build() -> tuple[np.ndarray, list[int], list[str]]:
        enc = encoder if encoder is not None else get_encoder(name)
        t0 = time.perf_counter()
        z = np.asarray(enc.encode(texts, batch_size=batch_size), dtype=np.float32)
        built["encode_seconds"] = round(time.perf_counter() - t0, 2)
        if z.shape != (len(texts), enc.dim):
            raise ValueError(f"encoder {name} returned shape {z.shape} for {len(texts)} sentences")
        return z, counts, names

    store = cached_store(f"{tag}-{name}", sources, key, build,
                         meta=dict(meta or {}, text_encoder=name, encoder=fp), cache_dir=cache_dir)
    store.meta.update(built)
    return store
