"""Episodes: N-way K-shot tasks drawn from a :class:`ClassStore` by index arithmetic.

Every batch is a pure function of ``(seed, batch_index)``: its generator is ``numpy.random.default_rng([seed,
batch_index])`` (PCG64, identical on every platform), so the same seed gives the same episodes on any machine
and in any process, a resumed run continues with the episodes it would have drawn, and distributed ranks can
take disjoint slices of one global meta-batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from metashot.data.preprocess import to_float
from metashot.data.store import ClassStore


@dataclass
class EpisodeBatch:
    """A batch of T episodes with N ways, K shots and Q queries per class.

    Shapes: support_x [T, N*K, *item], support_y [T, N*K], query_x [T, N*Q, *item], query_y [T, N*Q].
    Items are class-major (the K shots of label 0, then label 1, ...); labels are 0..N-1 within each
    episode; ``classes`` [T, N] holds the store's class index behind each label.
    """

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor
    classes: torch.Tensor
    ways: int
    shots: int
    queries: int

    @property
    def num_tasks(self) -> int:
        return int(self.support_x.shape[0])

    def to(self, device: torch.device | str = "cpu", non_blocking: bool = False) -> EpisodeBatch:
        """Move to ``device``; uint8 images become float32 in [0, 1] (on the device, after the copy)."""
        def mv(x: torch.Tensor) -> torch.Tensor:
            return to_float(x.to(device, non_blocking=non_blocking))

        return EpisodeBatch(mv(self.support_x), self.support_y.to(device), mv(self.query_x),
                            self.query_y.to(device), self.classes, self.ways, self.shots, self.queries)

    def task(self, t: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(support_x, support_y, query_x, query_y) of episode ``t``."""
        return self.support_x[t], self.support_y[t], self.query_x[t], self.query_y[t]

    def slice(self, start: int, stop: int) -> EpisodeBatch:
        return EpisodeBatch(self.support_x[start:stop], self.support_y[start:stop], self.query_x[start:stop],
                            self.query_y[start:stop], self.classes[start:stop], self.ways, self.shots,
                            self.queries)


class EpisodeSampler:
    """Draws batches of N-way K-shot episodes with Q queries per class from a store.

    Args:
        store: the classes to draw from.
        ways: classes per episode (N).
        shots: support items per class (K).
        queries: query items per class (Q).
        seed: base seed; batch ``i`` depends only on (seed, i).
        tasks_per_batch: episodes per batch (T, the meta-batch).
        within_group: fraction of episodes whose N classes all come from one class *group* (the default
            0.0 draws every episode's classes from the whole store). A group is the first ``group_depth``
            components of the class name (``Alphabet/character07`` -> ``Alphabet`` for Omniglot), so
            ``within_group=1.0`` gives Lake et al.'s within-alphabet episodes. Each such episode picks one
            group uniformly among those with at least N classes.
        group_depth: how many leading ``/``-separated name components form the group.
        imbalance: None (every class has ``queries`` queries) or alpha > 0: the realistic protocol of
            Veilleux et al. (NeurIPS 2021): each episode's class proportions are drawn from a symmetric
            Dirichlet(alpha), and its N * Q queries are split by them (a multinomial draw after one query per
            class; no class gets more than its items left after the shots). The total stays N * Q, so batches
            keep their shapes; the query labels then differ between episodes.

    Raises:
        ValueError: if ways exceeds the number of classes or a class has fewer than shots + queries items
            (the message names the class and the numbers); if within_group is outside [0, 1] or
            group_depth < 1; if within_group > 0 and no group has ``ways`` classes (groups with fewer classes
            are never used for within-group episodes).
    """

    def __init__(self, store: ClassStore, ways: int, shots: int, queries: int, seed: int = 0,
                 tasks_per_batch: int = 1, within_group: float = 0.0, group_depth: int = 1,
                 imbalance: float | None = None) -> None:
        for name, v, lo in (("ways", ways, 1), ("shots", shots, 1), ("queries", queries, 0),
                            ("tasks_per_batch", tasks_per_batch, 1)):
            if int(v) != v or v < lo:
                raise ValueError(f"EpisodeSampler: {name} must be an integer >= {lo}, got {v}")
        if ways > store.num_classes:
            raise ValueError(
                f"EpisodeSampler: ways={ways} but the store has only {store.num_classes} classes "
                f"({store.meta.get('name', 'dataset')}); lower ways or use a larger split"
            )
        need = shots + queries
        counts = store.counts
        short = np.flatnonzero(counts < need)
        if len(short):
            c = int(short[0])
            raise ValueError(
                f"EpisodeSampler: class {store.class_names[c]!r} has {int(counts[c])} items but "
                f"shots + queries = {shots} + {queries} = {need}; {len(short)} class(es) are this short. "
                f"Lower shots/queries or remove those classes"
            )
        if imbalance is not None and not float(imbalance) > 0:
            raise ValueError(f"EpisodeSampler: imbalance (a Dirichlet alpha) must be > 0, got {imbalance}")
        self.imbalance = None if imbalance is None else float(imbalance)
        if self.imbalance is not None and queries < 1:
            raise ValueError("EpisodeSampler: imbalanced queries need queries >= 1")
        self.store = store
        self.ways, self.shots, self.queries = int(ways), int(shots), int(queries)
        self.seed = int(seed)
        self.tasks_per_batch = int(tasks_per_batch)
        self._counts = counts
        self._offsets = store.offsets
        self._min_count = int(counts.min())
        self._max_count = int(counts.max())
        self._labels_s = torch.arange(self.ways).repeat_interleave(self.shots)
        self._labels_q = torch.arange(self.ways).repeat_interleave(self.queries)
        if not 0.0 <= float(within_group) <= 1.0:
            raise ValueError(f"EpisodeSampler: within_group must be in [0, 1], got {within_group}")
        if int(group_depth) != group_depth or group_depth < 1:
            raise ValueError(f"EpisodeSampler: group_depth must be an integer >= 1, got {group_depth}")
        self.within_group = float(within_group)
        self._groups: list[np.ndarray] = []
        if self.within_group > 0:
            members: dict[str, list[int]] = {}
            for c, name in enumerate(store.class_names):
                members.setdefault("/".join(name.split("/")[: int(group_depth)]), []).append(c)
            self._groups = [np.asarray(v, dtype=np.int64) for _, v in sorted(members.items())
                            if len(v) >= self.ways]
            if not self._groups:
                biggest = max(len(v) for v in members.values())
                raise ValueError(
                    f"EpisodeSampler: within_group={within_group} needs a class group with at least "
                    f"ways={ways} classes, but the largest of the {len(members)} groups (first {group_depth} "
                    f"name component(s), e.g. {next(iter(members))!r}) has {biggest}"
                )

    def indices(self, batch_index: int) -> tuple[np.ndarray, np.ndarray]:
        """Store classes [T, N] and store rows [T, N, K+Q] of batch ``batch_index`` (no image is touched)."""
        rng = np.random.default_rng([self.seed, int(batch_index)])
        T, N, m = self.tasks_per_batch, self.ways, self.shots + self.queries
        classes = _distinct(rng, T, N, np.full((T,), self.store.num_classes))
        if self.within_group > 0:  # extra draws only here: batches without groups stay as they were
            within = rng.random(T) < self.within_group
            picks = rng.integers(0, len(self._groups), size=T)
            for t in np.flatnonzero(within):
                g = self._groups[picks[t]]
                classes[t] = g[_distinct(rng, 1, N, np.full((1,), len(g)))[0]]
        counts = self._counts[classes]  # [T, N]
        if self._min_count == self._max_count:
            items = _distinct(rng, T * N, m, np.full((T * N,), self._min_count)).reshape(T, N, m)
        else:
            items = _distinct(rng, T * N, m, counts.reshape(-1)).reshape(T, N, m)
        rows = self._offsets[classes][..., None] + items
        return classes, rows

    def query_counts(self, rng: np.random.Generator, caps: np.ndarray) -> np.ndarray:
        """Dirichlet(alpha) query counts [T, N] summing to N * Q per task, each in [1, cap] (caps [T, N])."""
        T, N, total = caps.shape[0], self.ways, self.ways * self.queries
        if int(caps.sum(1).min()) < total:
            raise ValueError(f"EpisodeSampler: {total} queries do not fit in the classes' items after the "
                             f"shots")
        out = np.empty((T, N), dtype=np.int64)
        for t in range(T):
            p = rng.dirichlet(np.full(N, self.imbalance))
            c = 1 + rng.multinomial(total - N, p)
            while (c > caps[t]).any():  # give the overflow to the classes with room, by the same proportions
                extra = int((c - caps[t]).clip(min=0).sum())
                c = np.minimum(c, caps[t])
                room = c < caps[t]
                c += rng.multinomial(extra, p * room / (p * room).sum())
            out[t] = c
        return out

    def _sample_imbalanced(self, rng: np.random.Generator, classes: np.ndarray) -> EpisodeBatch:
        T, N, K = classes.shape[0], self.ways, self.shots
        sizes = self._counts[classes]  # [T, N]
        q = self.query_counts(rng, np.minimum(sizes - K, self.ways * self.queries))
        m = int(K + q.max())  # the first K + q[t, c] of a row are distinct items of class c (q <= size - K)
        items = _distinct(rng, T * N, m, sizes.reshape(-1)).reshape(T, N, -1)
        rows = self._offsets[classes][..., None] + items
        qrows = np.stack([np.concatenate([rows[t, c, K : K + q[t, c]] for c in range(N)]) for t in range(T)])
        qy = torch.from_numpy(np.stack([np.repeat(np.arange(N), q[t]) for t in range(T)]))
        imgs = self.store.images
        item = imgs.shape[1:]
        sx = imgs.index_select(0, torch.from_numpy(rows[:, :, :K].reshape(-1))).view(T, N * K, *item)
        qx = imgs.index_select(0, torch.from_numpy(qrows.reshape(-1))).view(T, N * self.queries, *item)
        return EpisodeBatch(sx, self._labels_s.expand(T, -1), qx, qy, torch.from_numpy(classes), N, K,
                            self.queries)

    def sample(self, batch_index: int, tasks: slice | None = None) -> EpisodeBatch:
        """Batch ``batch_index``; ``tasks`` selects a slice of its T episodes (distributed ranks)."""
        if self.imbalance is not None:
            rng = np.random.default_rng([self.seed, int(batch_index), 1])
            classes = _distinct(rng, self.tasks_per_batch, self.ways,
                                np.full((self.tasks_per_batch,), self.store.num_classes))
            batch = self._sample_imbalanced(rng, classes)
            return batch if tasks is None else batch.slice(tasks.start or 0, tasks.stop or batch.num_tasks)
        classes, rows = self.indices(batch_index)
        if tasks is not None:
            classes, rows = classes[tasks], rows[tasks]
        T, N = classes.shape
        K, Q = self.shots, self.queries
        flat = torch.from_numpy(rows.reshape(-1))
        x = self.store.images.index_select(0, flat).view(T, N, K + Q, *self.store.images.shape[1:])
        sx = x[:, :, :K].reshape(T, N * K, *x.shape[3:])
        qx = x[:, :, K:].reshape(T, N * Q, *x.shape[3:])
        return EpisodeBatch(sx, self._labels_s.expand(T, -1), qx, self._labels_q.expand(T, -1),
                            torch.from_numpy(classes), N, K, Q)

    def __iter__(self) -> Iterator[EpisodeBatch]:
        i = 0
        while True:
            yield self.sample(i)
            i += 1


def _distinct(rng: np.random.Generator, rows: int, k: int, n: np.ndarray) -> np.ndarray:
    """For each row r, k distinct integers drawn uniformly (in random order) from range(n[r]).

    Small draws use rejection (redraw rows with a repeat), which costs O(k) per row; large draws sort random
    keys. Both give every ordered k-subset the same probability.
    """
    n_min = int(n.min())
    if k * k <= n_min:  # a repeat is unlikely (< ~50%), so a few redraws finish it
        out = (rng.random((rows, k)) * n[:, None]).astype(np.int64)
        for _ in range(64):
            s = np.sort(out, axis=1)
            bad = np.flatnonzero((s[:, 1:] == s[:, :-1]).any(axis=1)) if k > 1 else np.empty(0, np.int64)
            if len(bad) == 0:
                return out
            out[bad] = (rng.random((len(bad), k)) * n[bad, None]).astype(np.int64)
        rows_left = bad
    else:
        out = np.empty((rows, k), dtype=np.int64)
        rows_left = np.arange(rows)
    n_max = int(n[rows_left].max())
    keys = rng.random((len(rows_left), n_max))
    keys[np.arange(n_max)[None, :] >= n[rows_left, None]] = 2.0  # never chosen: beyond the class size
    out[rows_left] = np.argsort(keys, axis=1)[:, :k]
    return out
