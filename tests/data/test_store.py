"""ClassStore and its on-disk cache: built once, memory-mapped later, keyed by sources and preprocessing."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from metashot.data import omniglot as omniglot_mod
from metashot.data import store as store_mod
from metashot.data.store import ClassStore, cached_store, fingerprint

from ._helpers import child_report


def _toy(counts: list[int], size: int = 4) -> tuple[np.ndarray, list[int], list[str]]:
    """uint8 images [M, 1, size, size] whose pixels all hold the row index (mod 256)."""
    m = sum(counts)
    images = (np.arange(m, dtype=np.int64) % 256).astype(np.uint8)[:, None, None, None]
    images = np.ascontiguousarray(np.broadcast_to(images, (m, 1, size, size)))
    return images, counts, [f"c{i}" for i in range(len(counts))]


class _Builder:
    """A build() callable that counts its calls."""

    def __init__(self, counts: list[int], size: int = 4) -> None:
        self.calls = 0
        self.counts, self.size = counts, size

    def __call__(self) -> tuple[np.ndarray, list[int], list[str]]:
        self.calls += 1
        return _toy(self.counts, self.size)


def _mapped_files() -> set[str]:
    """Files memory-mapped into this process (Linux /proc/self/maps)."""
    maps = Path("/proc/self/maps")
    if not maps.exists():
        pytest.fail("this test needs /proc/self/maps (Linux) to see memory maps")
    lines = [line.split(maxsplit=5) for line in maps.read_text().splitlines()]
    return {parts[5].strip() for parts in lines if len(parts) == 6}


@pytest.fixture()
def source(tmp_path: Path) -> Path:
    p = tmp_path / "src.bin"
    p.write_bytes(b"version 1")
    return p


def test_classstore_layout_and_validation() -> None:
    images, counts, names = _toy([2, 3, 1])
    s = ClassStore(torch.from_numpy(images), np.concatenate([[0], np.cumsum(counts)]), names)
    assert s.num_classes == 3 and len(s) == 6
    assert s.counts.tolist() == [2, 3, 1]
    assert s.class_images(1)[:, 0, 0, 0].tolist() == [2, 3, 4]
    assert s.index("c2") == 2
    with pytest.raises(KeyError, match="'nope' is not in this store \\(3 classes\\)"):
        s.index("nope")
    sub = s.subset(["c2", "c0"])
    assert sub.class_names == ["c2", "c0"] and sub.counts.tolist() == [1, 2]
    assert sub.images[:, 0, 0, 0].tolist() == [5, 0, 1]
    with pytest.raises(ValueError, match="3 class names but 3 offsets"):
        ClassStore(torch.from_numpy(images), np.array([0, 2, 6]), names)
    with pytest.raises(ValueError, match="offsets span 0..5 but there are 6 images"):
        ClassStore(torch.from_numpy(images), np.array([0, 2, 4, 5]), names)
    with pytest.raises(ValueError, match="non-decreasing"):
        ClassStore(torch.from_numpy(images), np.array([0, 4, 2, 6]), names)


def test_built_once_then_memory_mapped(tmp_path: Path, source: Path) -> None:
    build = _Builder([3, 4, 5])
    first = cached_store("toy", [source], {"size": 4}, build, cache_dir=tmp_path / "cache")
    assert build.calls == 1
    npy = Path(first.meta["cache"])
    assert npy.is_file() and npy.with_suffix(".json").is_file()
    second = cached_store("toy", [source], {"size": 4}, build, cache_dir=tmp_path / "cache")
    assert build.calls == 1, "the second load must come from the cache, not rebuild"
    assert torch.equal(first.images, second.images)
    assert second.class_names == ["c0", "c1", "c2"] and second.counts.tolist() == [3, 4, 5]
    assert str(npy.resolve()) in _mapped_files(), "the cached images must be memory-mapped, not read into RAM"
    # copy-on-write: writing into the loaded tensor never changes the cache file
    second.images[0].fill_(77)
    third = cached_store("toy", [source], {"size": 4}, build, cache_dir=tmp_path / "cache")
    assert int(third.images[0, 0, 0, 0]) == 0
    assert not list((tmp_path / "cache").glob("*.tmp")), "atomic writes must leave no temporary file"


def test_cache_key_follows_params_and_sources(tmp_path: Path, source: Path) -> None:
    k28 = fingerprint([source], {"size": 28})
    assert fingerprint([source], {"size": 28}) == k28
    assert fingerprint([source], {"size": 32}) != k28
    source.write_bytes(b"version 2, longer")  # content and size change
    k_changed = fingerprint([source], {"size": 28})
    assert k_changed != k28
    st = source.stat()
    os.utime(source, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # same bytes, new modification time
    assert fingerprint([source], {"size": 28}) != k_changed

    build = _Builder([2, 2])
    cached_store("toy", [source], {"size": 4}, build, cache_dir=tmp_path)
    cached_store("toy", [source], {"size": 5}, _Builder([2, 2], size=5), cache_dir=tmp_path)
    source.write_bytes(b"version 3")
    cached_store("toy", [source], {"size": 4}, build, cache_dir=tmp_path)
    assert build.calls == 2, "a changed source file must rebuild the store"
    assert len(list(tmp_path.glob("toy-*.npy"))) == 3


def _good_entry(tmp_path: Path, source: Path) -> tuple[_Builder, torch.Tensor, Path, Path]:
    """A freshly built cache entry: its builder, its images, and its .npy / .json files."""
    build = _Builder([3, 4])
    good = cached_store("toy", [source], {}, build, cache_dir=tmp_path)
    npy = Path(good.meta["cache"])
    return build, good.images.clone(), npy, npy.with_suffix(".json")


@pytest.mark.parametrize("damage", ["truncate_npy", "garbage_npy", "garbage_json", "bad_offsets", "no_json"])
def test_corrupt_cache_entry_is_rebuilt(tmp_path: Path, source: Path, damage: str) -> None:
    build, expected, npy, js = _good_entry(tmp_path, source)
    if damage == "truncate_npy":
        data = npy.read_bytes()
        npy.write_bytes(data[: len(data) // 2])
    elif damage == "garbage_npy":
        npy.write_bytes(b"\x00garbage" * 10)
    elif damage == "garbage_json":
        js.write_text("{not json")
    elif damage == "bad_offsets":
        info = json.loads(js.read_text())
        info["offsets"] = [0, 1, 2]
        js.write_text(json.dumps(info))
    else:
        js.unlink()
    again = cached_store("toy", [source], {}, build, cache_dir=tmp_path)
    assert build.calls == 2, f"a cache entry with {damage} must be rebuilt"
    assert torch.equal(again.images, expected)
    assert again.counts.tolist() == [3, 4]
    # and the rebuilt entry is good again
    cached_store("toy", [source], {}, build, cache_dir=tmp_path)
    assert build.calls == 2


@pytest.mark.parametrize("empty", ["npy", "json", "both"])
def test_zero_byte_cache_files_are_rebuilt_with_one_warning(tmp_path: Path, source: Path, empty: str) -> None:
    """A zero-byte .npy (full disk, killed copy) gave an EOFError traceback on every run (issue 27, 11)."""
    build, expected, npy, js = _good_entry(tmp_path, source)
    for f in {"npy": [npy], "json": [js], "both": [npy, js]}[empty]:
        f.write_bytes(b"")
    with pytest.warns(UserWarning, match=f"store cache {npy} .* failed verification") as seen:
        again = cached_store("toy", [source], {}, build, cache_dir=tmp_path)
    assert len(seen) == 1 and build.calls == 2 and torch.equal(again.images, expected)
    cached_store("toy", [source], {}, build, cache_dir=tmp_path)
    assert build.calls == 2, "the rebuilt entry verifies"


@pytest.mark.slow
def test_omniglot_cache_keyed_by_image_size(data_root: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    s28 = omniglot_mod.omniglot("background_small1", data_root, 28, cache_dir=tmp_path)
    s20 = omniglot_mod.omniglot("background_small1", data_root, 20, cache_dir=tmp_path)
    assert s28.images.shape[-2:] == (28, 28) and s20.images.shape[-2:] == (20, 20)
    assert len(list(tmp_path.glob("*.npy"))) == 2

    def no_decode(*a: object, **k: object) -> None:
        raise AssertionError("decoded again although the cache holds this store")

    monkeypatch.setattr(omniglot_mod, "_decode_part", no_decode)
    again = omniglot_mod.omniglot("background_small1", data_root, 28, cache_dir=tmp_path)
    assert torch.equal(again.images, s28.images) and again.class_names == s28.class_names


@pytest.mark.slow
def test_full_omniglot_second_load_is_fast(omniglot_train: ClassStore) -> None:
    """Target: a cached load of full Omniglot at 28x28 in < 3 s; asserted loosely (< 10 s, shared CPU).

    Timed in a fresh process (the fixture has built or found the cache), excluding interpreter start-up."""
    assert omniglot_train.num_classes == 4112
    report = child_report()
    assert report["classes"] == 4112
    print(f"cached Omniglot train load: {report['load_s']:.3f} s (import {report['import_s']:.3f} s)")
    assert report["load_s"] < 10.0


def test_unwritable_cache_still_gives_the_store(tmp_path: Path, source: Path) -> None:
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the cache folder should be")
    with pytest.warns(UserWarning, match="cannot write the store cache"):
        s = cached_store("toy", [source], {}, _Builder([2, 3]), cache_dir=blocker / "cache")
    assert s.counts.tolist() == [2, 3] and len(s) == 5


def test_mmap_switch_reads_into_memory_with_identical_content(tmp_path, monkeypatch):
    src = tmp_path / "src.bin"
    src.write_bytes(b"x")
    imgs = np.arange(2 * 3 * 4 * 4, dtype=np.uint8).reshape(6, 1, 4, 4)

    def build():
        return imgs, [2, 4], ["a", "b"]

    first = cached_store("t", [src], {"p": 1}, build, cache_dir=tmp_path / "c")
    monkeypatch.setenv("METASHOT_MMAP", "0")
    second = cached_store("t", [src], {"p": 1}, lambda: pytest.fail("must come from the cache"),
                          cache_dir=tmp_path / "c")
    assert torch.equal(first.images, second.images)
    assert "cache" in second.meta
    cache_files = list((tmp_path / "c").iterdir())
    assert cache_files and all(p.stat().st_mode & 0o044 == 0o044 for p in cache_files)  # readable by others


def _flip_byte(path: Path, pos: int) -> None:
    data = bytearray(path.read_bytes())
    data[pos] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["bit_flip", "dtype", "shifted_offsets", "renamed_classes",
                                    "unsorted_offsets", "no_digest"])
def test_cache_content_is_verified(tmp_path: Path, source: Path, damage: str) -> None:
    """Damage that keeps the entry loadable (same shape, same file size) must still be caught and rebuilt."""
    build, expected, npy, js = _good_entry(tmp_path, source)
    info = json.loads(js.read_text())
    if damage == "bit_flip":
        _flip_byte(npy, npy.stat().st_size - 5)  # a pixel, not the header
    elif damage == "dtype":
        data = npy.read_bytes()
        assert b"'|u1'" in data[:128]
        npy.write_bytes(data.replace(b"'|u1'", b"'|i1'", 1))
    elif damage == "shifted_offsets":
        info["offsets"] = [0, 2, 7]
    elif damage == "renamed_classes":
        info["class_names"] = ["c1", "c0"]
    elif damage == "unsorted_offsets":
        info["offsets"] = [0, 8, 7]
        info["digest"] = store_mod._info_digest(info)  # consistent digest: only the offsets check can see it
    else:  # an entry written before digests existed
        for k in ("digest", "npy_digest", "dtype"):
            info.pop(k)
    if damage not in ("bit_flip", "dtype"):
        js.write_text(json.dumps(info))
    with pytest.warns(UserWarning, match=f"store cache {npy} .* failed verification"):
        again = cached_store("toy", [source], {}, build, cache_dir=tmp_path)
    assert build.calls == 2, f"a cache entry with {damage} must be rebuilt"
    assert torch.equal(again.images, expected) and again.images.dtype == torch.uint8
    assert again.class_names == ["c0", "c1"] and again.counts.tolist() == [3, 4]
    cached_store("toy", [source], {}, build, cache_dir=tmp_path)
    assert build.calls == 2, "the rebuilt entry verifies"


def test_verified_stamp_skips_hashing_until_the_file_changes(tmp_path: Path, source: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    hashed: list[Path] = []
    real = store_mod._file_digest

    def counting(path: Path) -> str:
        hashed.append(path)
        return real(path)

    monkeypatch.setattr(store_mod, "_file_digest", counting)
    build = _Builder([2, 3])
    npy = Path(cached_store("toy", [source], {}, build, cache_dir=tmp_path).meta["cache"])
    stamp = npy.with_suffix(".verified")
    cached_store("toy", [source], {}, build, cache_dir=tmp_path)
    assert len(hashed) == 2 and not stamp.exists(), "a file written within the racy window gets no stamp"
    monkeypatch.setattr(store_mod, "_RACY_NS", -(10**18))  # as if the file were old
    cached_store("toy", [source], {}, build, cache_dir=tmp_path)
    assert len(hashed) == 3 and stamp.is_file()
    cached_store("toy", [source], {}, build, cache_dir=tmp_path)
    assert len(hashed) == 3, "a stamped, unchanged file is not hashed again"
    copy = npy.with_name("copy.tmp")
    copy.write_bytes(npy.read_bytes())
    _flip_byte(copy, copy.stat().st_size - 1)
    os.replace(copy, npy)
    with pytest.warns(UserWarning, match="digest .* does not match"):
        cached_store("toy", [source], {}, build, cache_dir=tmp_path)
    assert build.calls == 2


@pytest.mark.slow
def test_omniglot_reload_verifies_and_stays_fast(data_root: Path, tmp_path: Path) -> None:
    """A verified reload (json checks plus one hash of the .npy) of an Omniglot store takes well under 1 s."""
    first = omniglot_mod.omniglot("background_small1", data_root, cache_dir=tmp_path)
    t0 = time.perf_counter()
    again = omniglot_mod.omniglot("background_small1", data_root, cache_dir=tmp_path)
    elapsed = time.perf_counter() - t0
    assert torch.equal(again.images, first.images) and elapsed < 1.0, elapsed
