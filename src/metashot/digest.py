"""File digests, in one place (downloads, caches, checkpoints, fitted classifiers)."""

from __future__ import annotations

import hashlib
from pathlib import Path


def file_digest(path: Path, algorithm: str = "sha256", chunk: int = 1 << 20) -> str:
    """Hex digest (``hashlib`` algorithm name) of the file at ``path``, read in ``chunk``-byte blocks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
