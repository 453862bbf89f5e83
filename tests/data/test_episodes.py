"""EpisodeSampler: shapes, labels, determinism (also across processes), distinctness, uniformity, slicing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from metashot.data.episodes import EpisodeBatch, EpisodeSampler
from metashot.data.store import ClassStore

from ._helpers import (
    CHILD_ARGS,
    CHILD_BATCHES,
    CHILD_SIZES,
    child_digests,
    child_report,
    digest,
    tagged_store,
)


def check_structure(b: EpisodeBatch, store: ClassStore) -> None:
    """Every invariant of an episode batch built from a tagged store."""
    T, N, K, Q = b.num_tasks, b.ways, b.shots, b.queries
    assert b.support_x.shape == (T, N * K, 3) and b.query_x.shape == (T, N * Q, 3)
    assert b.support_y.shape == (T, N * K) and b.query_y.shape == (T, N * Q)
    assert torch.equal(b.support_y, torch.arange(N).repeat_interleave(K).expand(T, -1))
    assert torch.equal(b.query_y, torch.arange(N).repeat_interleave(Q).expand(T, -1))
    assert b.classes.shape == (T, N)
    for t in range(T):
        cls = b.classes[t]
        assert len(set(cls.tolist())) == N, "a class appears twice in one episode"
        for label in range(N):
            c = int(cls[label])
            s = b.support_x[t, label * K:(label + 1) * K]
            q = b.query_x[t, label * Q:(label + 1) * Q]
            items = torch.cat([s, q])
            assert (items[:, 0] == c).all(), "an item's class does not match its label"
            idx = items[:, 1].tolist()
            assert len(set(idx)) == K + Q, "an image is repeated within a class's support + query"
            assert all(0 <= i < int(store.counts[c]) for i in idx)
            assert (items[:, 2] == items[:, 1] + int(store.offsets[c])).all()


@pytest.mark.parametrize(("ways", "shots", "queries", "tasks"), [(5, 1, 1, 4), (5, 5, 15, 2), (20, 1, 3, 3),
                                                                  (3, 2, 0, 5), (60, 1, 5, 1)])
def test_shapes_labels_and_distinctness(ways: int, shots: int, queries: int, tasks: int) -> None:
    store = tagged_store([20] * 64)
    sampler = EpisodeSampler(store, ways, shots, queries, seed=3, tasks_per_batch=tasks)
    for i in range(5):
        check_structure(sampler.sample(i), store)


def test_same_seed_same_episodes_different_seed_differs() -> None:
    store = tagged_store([20] * 50)
    a = EpisodeSampler(store, 5, 1, 2, seed=11, tasks_per_batch=8)
    b = EpisodeSampler(store, 5, 1, 2, seed=11, tasks_per_batch=8)
    c = EpisodeSampler(store, 5, 1, 2, seed=12, tasks_per_batch=8)
    for i in (0, 1, 7, 1000):
        assert digest(a.sample(i)) == digest(b.sample(i))
        assert digest(a.sample(i)) != digest(c.sample(i))
    assert digest(a.sample(0)) != digest(a.sample(1)), "different batches of one seed must differ"
    # batch i is a pure function of (seed, i): order of calls does not matter
    late_first = [digest(b.sample(i)) for i in (5, 2, 9)]
    assert late_first == [digest(a.sample(i)) for i in (5, 2, 9)]
    it = iter(a)
    assert digest(next(it)) == digest(a.sample(0)) and digest(next(it)) == digest(a.sample(1))


@pytest.mark.slow
def test_same_episodes_in_another_process(omniglot_train: ClassStore) -> None:
    """A fresh interpreter with another hash seed draws exactly these episodes."""
    assert child_report()["digests"] == child_digests()


def _chi2(counts: np.ndarray) -> float:
    expected = counts.sum() / len(counts)
    return float(((counts - expected) ** 2 / expected).sum())


@pytest.mark.parametrize(("num_classes", "ways"), [(20, 5), (100, 3)])  # argsort path and rejection path
def test_classes_are_uniform(num_classes: int, ways: int) -> None:
    store = tagged_store([4] * num_classes)
    s = EpisodeSampler(store, ways, 1, 1, seed=0, tasks_per_batch=500)
    counts = np.zeros(num_classes)
    pos = np.zeros((ways, num_classes))  # which class gets which label
    for i in range(20):
        cls = s.indices(i)[0]
        np.add.at(counts, cls.reshape(-1), 1)
        for label in range(ways):
            np.add.at(pos[label], cls[:, label], 1)
    # chi-square with num_classes-1 degrees of freedom: mean df, sd sqrt(2 df); 8 sd is a loose bound
    df = num_classes - 1
    assert _chi2(counts) < df + 8 * np.sqrt(2 * df), counts
    for label in range(ways):
        assert _chi2(pos[label]) < df + 8 * np.sqrt(2 * df)


@pytest.mark.parametrize("m", [2, 5])  # shots + queries: rejection path (m*m <= n) and argsort path
def test_items_are_uniform_with_variable_class_sizes(m: int) -> None:
    sizes = [5, 6, 9, 13, 20, 31]
    store = tagged_store(sizes)
    s = EpisodeSampler(store, len(sizes), 1, m - 1, seed=5, tasks_per_batch=400)
    counts = [np.zeros(n) for n in sizes]
    for i in range(10):
        b = s.sample(i)
        if i == 0:
            check_structure(b, store)
        items = torch.cat([b.support_x, b.query_x], dim=1).reshape(-1, 3).numpy()
        for c, n in enumerate(sizes):
            sel = items[items[:, 0] == c, 1]
            assert sel.max() < n
            np.add.at(counts[c], sel, 1)
    for n, cnt in zip(sizes, counts, strict=True):
        df = n - 1
        assert cnt.min() > 0
        assert _chi2(cnt) < df + 8 * np.sqrt(2 * df), (n, cnt)


def test_task_slices_partition_the_batch() -> None:
    store = tagged_store([20] * 30)
    s = EpisodeSampler(store, 5, 1, 2, seed=9, tasks_per_batch=8)
    full = s.sample(4)
    parts = [s.sample(4, tasks=slice(a, a + 2)) for a in range(0, 8, 2)]
    for a, p in zip(range(0, 8, 2), parts, strict=True):
        assert digest(p) == digest(full.slice(a, a + 2))
        assert p.num_tasks == 2
    assert torch.equal(torch.cat([p.support_x for p in parts]), full.support_x)
    assert torch.equal(torch.cat([p.classes for p in parts]), full.classes)


@pytest.mark.slow
def test_episode_on_real_omniglot(omniglot_train: ClassStore) -> None:
    s = EpisodeSampler(omniglot_train, 5, 1, 1, seed=0, tasks_per_batch=4)
    b = s.sample(0)
    assert b.support_x.shape == (4, 5, 1, 28, 28) and b.support_x.dtype == torch.uint8
    f = b.to("cpu")
    assert f.support_x.dtype == torch.float32
    assert 0.0 <= float(f.support_x.min()) <= float(f.support_x.max()) <= 1.0
    assert torch.equal(f.support_x, b.support_x.float() / 255)
    # each support image is the store's image of its class
    for t in range(4):
        for label in range(5):
            imgs = omniglot_train.class_images(int(b.classes[t, label]))
            assert (imgs == b.support_x[t, label]).flatten(1).all(1).any()


def test_sampler_errors_name_the_numbers() -> None:
    store = tagged_store([20, 20, 3, 20])
    with pytest.raises(ValueError, match=r"ways=5 but the store has only 4 classes \(tagged\)"):
        EpisodeSampler(store, 5, 1, 1)
    with pytest.raises(ValueError, match=r"class 'class002' has 3 items but shots \+ queries = 2 \+ 2 = 4"):
        EpisodeSampler(store, 2, 2, 2)
    for bad in ({"ways": 0}, {"shots": 0}, {"queries": -1}, {"ways": 2.5}):
        args = {"ways": 2, "shots": 1, "queries": 1} | bad
        with pytest.raises(ValueError, match=f"{next(iter(bad))} must be an integer"):
            EpisodeSampler(store, **args)


def _grouped_store(sizes: list[int]) -> ClassStore:
    """A tagged store whose classes are named ``g{group}/c{index}`` with ``sizes[g]`` classes in group g."""
    base = tagged_store([6] * sum(sizes))
    names = [f"g{g}/c{i:02d}" for g, n in enumerate(sizes) for i in range(n)]
    return ClassStore(base.images, base.offsets, names, {"name": "grouped"})


def test_within_group_episodes_stay_in_one_group_and_cover_the_eligible_groups() -> None:
    sizes = [8, 3, 12, 5, 20]  # group 1 (3 classes) is too small for 5-way episodes
    store = _grouped_store(sizes)
    group_of = np.repeat(np.arange(len(sizes)), sizes)
    sampler = EpisodeSampler(store, 5, 1, 2, seed=4, tasks_per_batch=16, within_group=1.0)
    seen = []
    for i in range(40):
        b = sampler.sample(i)
        check_structure(b, store)
        g = group_of[b.classes.numpy()]
        assert (g == g[:, :1]).all(), "a within-group episode mixes groups"
        seen.extend(g[:, 0].tolist())
    counts = np.bincount(seen, minlength=len(sizes))
    assert counts[1] == 0, "a group with fewer classes than ways was used"
    # groups are picked uniformly (640 episodes over 4 eligible groups: 160 expected each)
    assert all(110 < c < 210 for c in counts[[0, 2, 3, 4]]), counts


def test_within_group_fraction_and_reproducibility() -> None:
    sizes = [10] * 6
    store = _grouped_store(sizes)
    group_of = np.repeat(np.arange(len(sizes)), sizes)
    a = EpisodeSampler(store, 5, 1, 1, seed=9, tasks_per_batch=50, within_group=0.5)
    b = EpisodeSampler(store, 5, 1, 1, seed=9, tasks_per_batch=50, within_group=0.5)
    mixed = 0
    for i in range(10):
        assert digest(a.sample(i)) == digest(b.sample(i))
        g = group_of[a.sample(i).classes.numpy()]
        mixed += int((g != g[:, :1]).any(axis=1).sum())
    # half the 500 episodes are drawn from all 60 classes, and such a 5-class draw is single-group with
    # probability 6 * C(10, 5) / C(60, 5) ~ 3e-4, so about 250 episodes mix groups
    assert 190 < mixed < 310, mixed


# Digests of CHILD_BATCHES drawn by the sampler as it was before within_group existed (commit 6ad67ff): the
# default sampler, and within_group=0 with any group_depth, must keep drawing exactly these episodes.
DIGESTS_BEFORE_GROUPS = [
    "9908c69cc16e7590b329b483d9410993c815f0826d486e3bb483da0625245ceb",
    "5eba6a64316d2aaaf71c8c3c0beadc3b917cdcf90c07b58639c60ad59db4fb97",
    "d8296304ee9e2f26166d6f820150f2b58a0d350909a0341018dfec599c28e709",
]


@pytest.mark.parametrize("extra", [{}, {"within_group": 0.0, "group_depth": 3}])
def test_without_groups_the_episodes_are_those_drawn_before_groups_existed(extra: dict) -> None:
    s = EpisodeSampler(tagged_store(CHILD_SIZES), **CHILD_ARGS, **extra)
    assert [digest(s.sample(i)) for i in CHILD_BATCHES] == DIGESTS_BEFORE_GROUPS


def test_within_group_errors() -> None:
    store = _grouped_store([3, 4])
    with pytest.raises(ValueError, match="largest of the 2 groups"):
        EpisodeSampler(store, 5, 1, 1, within_group=1.0)
    with pytest.raises(ValueError, match="within_group must be in"):
        EpisodeSampler(store, 2, 1, 1, within_group=1.5)
    with pytest.raises(ValueError, match="group_depth"):
        EpisodeSampler(store, 2, 1, 1, within_group=0.5, group_depth=0)
