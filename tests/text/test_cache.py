"""The embedding cache: built once, memory-mapped later with no encoder call; splits drawn from it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from metashot.data import EpisodeSampler, load_split
from metashot.data import text as T
from metashot.text import cache as C


def test_second_load_needs_no_model(tmp_path: Path, hashing, monkeypatch) -> None:
    src = tmp_path / "src.txt"
    src.write_text("x")
    pairs = [("book a table", "restaurant"), ("wake me at six", "alarm"), ("cancel my alarm", "alarm")]
    s1 = C.embedding_store("t", [src], pairs, hashing, params={"p": 1}, cache_dir=tmp_path)
    assert hashing.calls == 1
    assert s1.class_names == ["alarm", "restaurant"] and s1.counts.tolist() == [2, 1]
    assert s1.images.dtype == torch.float32 and tuple(s1.images.shape) == (3, 64)
    # Rows follow the store order: classes sorted, file order within a class.
    np.testing.assert_allclose(s1.images[0].numpy(), hashing.encode(["wake me at six"])[0], atol=1e-6)
    calls = hashing.calls
    s2 = C.embedding_store("t", [src], pairs, hashing, params={"p": 1}, cache_dir=tmp_path)
    assert hashing.calls == calls
    assert torch.equal(s1.images, s2.images)
    # Default encoder (encoder=None): built lazily on a cache miss, never constructed on a hit.
    loads = []

    def fake_get_encoder(name: str):
        loads.append(name)
        return hashing

    monkeypatch.setattr(C, "get_encoder", fake_get_encoder)
    d1 = C.embedding_store("d", [src], pairs, None, cache_dir=tmp_path)
    assert loads == ["all-MiniLM-L6-v2"] and d1.meta["text_encoder"] == "all-MiniLM-L6-v2"
    monkeypatch.setattr(C, "get_encoder", lambda name: (_ for _ in ()).throw(AssertionError("model loaded")))
    d2 = C.embedding_store("d", [src], pairs, None, cache_dir=tmp_path)
    assert torch.equal(d1.images, d2.images)
    calls = hashing.calls
    # A changed selection is a different cache entry.
    C.embedding_store("t", [src], pairs[:2], hashing, params={"p": 2}, cache_dir=tmp_path)
    assert hashing.calls == calls + 1


@pytest.mark.slow
def test_text_split_from_cache(text_data_root: Path, tmp_path: Path, hashing) -> None:
    test = T.text_split("banking77", "test", text_data_root, fold=2, encoder=hashing, cache_dir=tmp_path)
    train = T.text_split("banking77", "train", text_data_root, fold=2, encoder=hashing, cache_dir=tmp_path)
    assert hashing.calls == 2  # the two parts of the episodic pool, encoded once for both splits
    assert len(list(tmp_path.glob("text-banking77-*.npy"))) == 2
    assert set(test.class_names) == set(T.protaugment_labels("banking77", 2, "test"))
    assert not set(test.class_names) & set(train.class_names)
    assert test.meta["text_encoder"] == "hashing-bow" and test.meta["fold"] == 2
    # every class has all its sentences from train.csv and test.csv (40 test sentences each)
    pool = [p for part in ("train", "test") for p in T.read_part("banking77", part, text_data_root)]
    want = sum(1 for _, y in pool if y in set(test.class_names))
    assert len(test) == want
    batch = EpisodeSampler(test, 5, 5, 5, seed=0).sample(0)
    assert tuple(batch.support_x.shape) == (1, 25, 64) and batch.support_x.dtype == torch.float32
    full = T.text_split("banking77", "fullway_train_5", text_data_root, encoder=hashing, cache_dir=tmp_path)
    assert full.num_classes == 77 and set(full.counts.tolist()) == {5}


@pytest.mark.slow
def test_registered_and_short_classes(text_data_root: Path, text_cache: Path, monkeypatch) -> None:
    monkeypatch.setenv("METASHOT_CACHE", str(text_cache))
    store = load_split("hwu64", "test", text_data_root, fold=1, encoder="hashing-bow")
    assert store.num_classes == len(T.protaugment_labels("hwu64", 1, "test"))
    with pytest.raises(ValueError, match="shots \\+ queries"):
        EpisodeSampler(store, 5, 5, 1000)
    mixed = load_split("intents", "train", text_data_root, fold=1, encoder="hashing-bow")
    assert any(n.startswith("clinc150/") for n in mixed.class_names)
    assert any(n.startswith("hwu64/") for n in mixed.class_names)
