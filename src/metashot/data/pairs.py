"""Balanced, seeded same/different pairs from a store (verification accuracy of Siamese networks)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from metashot.data.store import ClassStore


@dataclass
class PairBatch:
    """Pairs of items: x1, x2 [P, *item] (uint8 or float), same [P] bool (True = same class)."""

    x1: torch.Tensor
    x2: torch.Tensor
    same: torch.Tensor


class PairSampler:
    """Balanced, seeded same/different pairs from a store: batch ``i`` is a pure function of (seed, i).

    Each batch has ``pairs // 2`` same-class pairs (two distinct items of one uniformly drawn class) and
    ``pairs - pairs // 2`` different-class pairs (one item each of two distinct classes), shuffled.

    Raises:
        ValueError: fewer than 2 classes, or no class with 2 items.
    """

    def __init__(self, store: ClassStore, pairs: int = 64, seed: int = 0) -> None:
        if pairs < 2:
            raise ValueError(f"PairSampler: pairs must be >= 2, got {pairs}")
        if store.num_classes < 2:
            raise ValueError(f"PairSampler: the store has {store.num_classes} class(es); pairs need >= 2")
        self.store, self.pairs, self.seed = store, int(pairs), int(seed)
        self._counts = store.counts
        self._multi = np.flatnonzero(self._counts >= 2)
        if len(self._multi) == 0:
            raise ValueError("PairSampler: no class has 2 items, so no same-class pair exists")

    def indices(self, batch_index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Store rows a [P], b [P] and same [P] bool of batch ``batch_index`` (no image touched)."""
        rng = np.random.default_rng([self.seed, int(batch_index)])
        n_same = self.pairs // 2
        n_diff = self.pairs - n_same
        off, cnt = self.store.offsets, self._counts
        c = self._multi[rng.integers(0, len(self._multi), n_same)]
        i = rng.integers(0, cnt[c])
        j = (i + rng.integers(1, cnt[c])) % cnt[c]  # a different item of the same class
        c1 = rng.integers(0, self.store.num_classes, n_diff)
        c2 = (c1 + rng.integers(1, self.store.num_classes, n_diff)) % self.store.num_classes
        a = np.concatenate([off[c] + i, off[c1] + rng.integers(0, cnt[c1])])
        b = np.concatenate([off[c] + j, off[c2] + rng.integers(0, cnt[c2])])
        same = np.concatenate([np.ones(n_same, bool), np.zeros(n_diff, bool)])
        order = rng.permutation(self.pairs)
        return a[order], b[order], same[order]

    def sample(self, batch_index: int) -> PairBatch:
        a, b, same = self.indices(batch_index)
        imgs = self.store.images
        return PairBatch(imgs[torch.from_numpy(a)], imgs[torch.from_numpy(b)], torch.from_numpy(same))
