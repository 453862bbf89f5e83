"""ClassStore: a dataset decoded once into one uint8 tensor, grouped by class, cached and memory-mapped.

Layout: ``images`` is [M, C, H, W] with the images of class ``c`` at rows ``offsets[c]:offsets[c+1]``.
Episode sampling is then index arithmetic on ``offsets`` plus one gather; no image is decoded per episode.

The on-disk cache is a ``.npy`` file (the image block) plus a ``.json`` file (class names, offsets,
preprocessing, source fingerprint) under :func:`metashot._env.cache_root`. The file name is a hash of the
source files (path, size, modification time) and the preprocessing, so a changed source or a different
image size never reuses a stale cache. Later loads memory-map the ``.npy`` (copy-on-write), which takes
milliseconds whatever the dataset size. ``METASHOT_MMAP=0`` reads the cache into memory instead, for file
systems where memory-mapped reads are slow.

Verification: the ``.json`` records the array's dtype and shape, the BLAKE2b digest of the whole ``.npy`` file
and the digest of its own content (offsets, class names, meta), so bit flips, a changed dtype or header,
shifted offsets or renamed classes are detected. The json is checked on every load (cheap); the ``.npy`` is
hashed on its first use after it changed (~15 ms for Omniglot's 10 MB test store): a successful check writes
a ``.verified`` stamp with the file's size, mtime, ctime and inode, and later loads skip hashing while those
are unchanged. A stamp is written only once the file is a few seconds old (as git does against "racily clean"
files), since a write in the same timestamp tick would leave size and times unchanged. An entry that fails
any check is rebuilt with a warning that names it, never used. Entries written before digests existed have
no digest to check against, so they are rebuilt once (trusting them would vouch for possibly corrupt files).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metashot._env import cache_root
from metashot.digest import file_digest

CACHE_FORMAT = 1  # part of every cache key: bumping it orphans all caches, so verification did not bump it
_DIGEST = "blake2b"
# A stamp is written only for a .npy whose ctime is this much older than now (clock ticks of file times can be
# coarse, up to 2 s on some file systems), so a later same-size write in the same tick cannot hide behind it.
_RACY_NS = 3 * 10**9


@dataclass
class ClassStore:
    """Images grouped by class.

    Attributes:
        images: uint8 (or float) tensor [M, C, H, W] (or [M, D] for feature stores).
        offsets: int64 numpy array [num_classes + 1]; class c owns rows offsets[c]:offsets[c+1].
        class_names: one name per class, e.g. "Angelic/character01/rot090".
        meta: free-form description (dataset, split, preprocessing) carried into checkpoints.
    """

    images: torch.Tensor
    offsets: np.ndarray
    class_names: list[str]
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.offsets = np.asarray(self.offsets, dtype=np.int64)
        if len(self.offsets) != len(self.class_names) + 1:
            raise ValueError(
                f"ClassStore: {len(self.class_names)} class names but {len(self.offsets)} offsets "
                f"(expected {len(self.class_names) + 1})"
            )
        if self.offsets[0] != 0 or self.offsets[-1] != self.images.shape[0]:
            raise ValueError(
                f"ClassStore: offsets span 0..{self.offsets[-1]} but there are {self.images.shape[0]} images"
            )
        if np.any(np.diff(self.offsets) < 0):
            raise ValueError("ClassStore: offsets must be non-decreasing")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def counts(self) -> np.ndarray:
        """Number of images of each class, int64 [num_classes]."""
        return np.diff(self.offsets)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def class_images(self, c: int) -> torch.Tensor:
        """Images of class ``c``: [count_c, C, H, W]."""
        return self.images[int(self.offsets[c]) : int(self.offsets[c + 1])]

    def index(self, name: str) -> int:
        try:
            return self._name_to_index()[name]
        except KeyError:
            raise KeyError(f"class {name!r} is not in this store ({self.num_classes} classes)") from None

    def _name_to_index(self) -> dict[str, int]:
        cached = getattr(self, "_n2i", None)
        if cached is None:
            cached = {n: i for i, n in enumerate(self.class_names)}
            self._n2i = cached
        return cached

    def subset(self, classes: Sequence[int] | Sequence[str],
               meta: dict[str, Any] | None = None) -> ClassStore:
        """A new store holding only ``classes`` (indices or names), in the order given."""
        idx = [self.index(c) if isinstance(c, str) else int(c) for c in classes]
        if not idx:
            raise ValueError("ClassStore.subset: no classes selected")
        counts = self.counts[idx]
        rows = np.concatenate([np.arange(self.offsets[i], self.offsets[i + 1]) for i in idx])
        images = self.images[torch.from_numpy(rows)]
        offsets = np.concatenate([[0], np.cumsum(counts)])
        return ClassStore(images, offsets, [self.class_names[i] for i in idx], dict(meta or self.meta))

    def with_rotations(self, angles: Sequence[int] = (0, 90, 180, 270),
                       fmt: str = "{name}/rot{angle:03d}") -> ClassStore:
        """Rotations as new classes, applied per CLASS: every image of a new class has that class's rotation.

        Returns a store with ``len(angles) * num_classes`` classes; class ``name`` rotated by ``a`` degrees
        (counter-clockwise, ``torch.rot90``) is named ``fmt.format(name=name, angle=a)``. Classes are ordered
        base class major, angle minor.
        """
        for a in angles:
            if a % 90 != 0:
                raise ValueError(f"with_rotations: angle {a} is not a multiple of 90 degrees")
        rotated = [torch.rot90(self.images, k=(a // 90) % 4, dims=(-2, -1)) for a in angles]
        counts = self.counts
        blocks, names = [], []
        for c, name in enumerate(self.class_names):
            lo, hi = int(self.offsets[c]), int(self.offsets[c + 1])
            for a, r in zip(angles, rotated, strict=True):
                blocks.append(r[lo:hi])
                names.append(fmt.format(name=name, angle=a))
        images = torch.cat(blocks)
        new_counts = np.repeat(counts, len(angles))
        offsets = np.concatenate([[0], np.cumsum(new_counts)])
        meta = dict(self.meta, rotations=list(angles))
        return ClassStore(images, offsets, names, meta)


def fingerprint(paths: Sequence[Path], params: dict[str, Any]) -> str:
    """Hash of the source files' identity (resolved path, size, mtime) and the preprocessing parameters."""
    h = hashlib.sha256()
    h.update(json.dumps({"format": CACHE_FORMAT, "params": params}, sort_keys=True).encode())
    for p in sorted(Path(p).resolve() for p in paths):
        st = p.stat()
        h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:24]


def cached_store(
    tag: str,
    sources: Sequence[Path],
    params: dict[str, Any],
    build: Callable[[], tuple[np.ndarray, Sequence[int], list[str]]],
    meta: dict[str, Any] | None = None,
    cache_dir: Path | None = None,
) -> ClassStore:
    """Load the store for (sources, params) from the cache, or ``build()`` it once and cache it.

    Args:
        tag: readable prefix of the cache file name (e.g. "omniglot-28").
        sources: files whose identity keys the cache.
        params: preprocessing parameters that key the cache.
        build: returns (uint8 images [M, C, H, W], per-class counts, class names).
        cache_dir: defaults to ``$METASHOT_CACHE`` or ``~/.cache/metashot/stores``.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else cache_root()
    key = fingerprint(sources, params)
    npy = cache_dir / f"{tag}-{key}.npy"
    js = cache_dir / f"{tag}-{key}.json"
    if npy.is_file() and js.is_file():
        try:
            return _load_verified(npy, js)
        except ENTRY_ERRORS as e:
            # a broken cache entry is rebuilt below, never trusted
            warnings.warn(f"store cache {npy} (with {js.name}) failed verification ({e}); rebuilding it",
                          stacklevel=2)
    images, counts, names = build()
    images = np.ascontiguousarray(images)
    offsets = np.concatenate([[0], np.cumsum(np.asarray(counts, dtype=np.int64))])
    info = {"offsets": offsets.tolist(), "class_names": list(names), "meta": meta or {}, "params": params}
    try:
        write_entry(npy, js, images, info)
    except OSError as e:  # read-only or full disk: still usable, only not cached
        warnings.warn(f"cannot write the store cache {npy} ({e}); using it from memory. Set METASHOT_CACHE "
                      f"to a writable folder to decode it only once", stacklevel=2)
        return ClassStore(torch.from_numpy(images), offsets, list(names), dict(meta or {}))
    arr = _load_npy(npy)
    return ClassStore(torch.from_numpy(arr), offsets, list(names), dict(meta or {}, cache=str(npy)))


# What reading a damaged cache entry can raise (np.load of a zero-byte file: EOFError): such an entry is
# rebuilt, never a traceback.
ENTRY_ERRORS = (ValueError, OSError, EOFError, KeyError, TypeError, IndexError)


def write_entry(npy: Path, js: Path, array: np.ndarray, info: dict[str, Any]) -> None:
    """Write ``array`` to ``npy`` and ``info`` to ``js`` (both atomically, readable by every user), with the
    array's shape and dtype, the digest of the ``.npy`` file and the digest of the json's own content, which
    :func:`read_entry` checks. Raises OSError (read-only or full disk)."""
    npy.parent.mkdir(parents=True, exist_ok=True)
    _stamp_path(npy).unlink(missing_ok=True)
    _atomic_save_npy(npy, array)
    info = dict(info, shape=list(array.shape), dtype=array.dtype.str, npy_digest=_file_digest(npy))
    info["digest"] = _info_digest(info)
    _atomic_write_text(js, json.dumps(info))


def read_entry(npy: Path, js: Path) -> tuple[np.ndarray, dict[str, Any]]:
    """The array (memory-mapped, copy-on-write) and json of an entry :func:`write_entry` wrote, checked:
    json digest, shape, dtype and the ``.npy`` file's digest. Raises one of :data:`ENTRY_ERRORS` saying
    what is wrong."""
    info = json.loads(js.read_text())
    if not isinstance(info, dict) or "digest" not in info or "npy_digest" not in info:
        raise ValueError("its json records no digest (written by an older metashot)")
    if info["digest"] != _info_digest(info):
        raise ValueError("the json's content does not match its recorded digest")
    arr = _load_npy(npy)
    if list(arr.shape) != info["shape"] or arr.dtype != np.dtype(info["dtype"]):
        raise ValueError(f"the .npy holds {arr.dtype} {list(arr.shape)}, "
                         f"the json records {info['dtype']} {info['shape']}")
    _verify_npy(npy, info["npy_digest"])
    return arr, info


def _load_verified(npy: Path, js: Path) -> ClassStore:
    """The store of a cache entry, checked against its json; raises ValueError saying what is wrong."""
    arr, info = read_entry(npy, js)
    offsets, names = np.asarray(info["offsets"], dtype=np.int64), info["class_names"]
    if (offsets.ndim != 1 or len(offsets) != len(names) + 1 or offsets[0] != 0 or offsets[-1] != len(arr)
            or np.any(np.diff(offsets) < 0)):
        raise ValueError(f"inconsistent offsets ({len(offsets)} offsets, {offsets[:1]}..{offsets[-1:]}) for "
                         f"{len(names)} classes and {len(arr)} rows")
    return ClassStore(torch.from_numpy(arr), offsets, names, dict(info.get("meta", {}), cache=str(npy)))


def _info_digest(info: dict[str, Any]) -> str:
    body = {k: v for k, v in info.items() if k != "digest"}
    return hashlib.new(_DIGEST, json.dumps(body, sort_keys=True).encode()).hexdigest()


def _file_digest(path: Path) -> str:
    return f"{_DIGEST}:{file_digest(path, _DIGEST)}"


def _stamp_path(npy: Path) -> Path:
    return npy.with_suffix(".verified")


def _verify_npy(npy: Path, digest: str) -> None:
    """Hash ``npy`` unless its stamp says this exact file (size, times, inode) already matched ``digest``."""
    st = npy.stat()
    ident = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "ino": st.st_ino,
             "digest": digest}
    stamp = _stamp_path(npy)
    try:
        if json.loads(stamp.read_text()) == ident:
            return
    except (OSError, ValueError):
        pass  # no stamp or a broken one: hash the file
    actual = _file_digest(npy)
    if actual != digest:
        raise ValueError(f"the .npy's digest {actual} does not match the recorded {digest}")
    if time.time_ns() - st.st_ctime_ns > _RACY_NS:
        try:
            _atomic_write_text(stamp, json.dumps(ident))
        except OSError:
            pass  # a read-only cache is verified on every load instead


def _load_npy(path: Path) -> np.ndarray:
    """Memory-map (copy-on-write) unless ``METASHOT_MMAP=0``; either way the array is writable."""
    if os.environ.get("METASHOT_MMAP", "1") == "0":
        return np.load(path)
    return np.load(path, mmap_mode="c")


def _atomic_save_npy(path: Path, array: np.ndarray) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, array)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a cache folder may be shared between users
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def group_by_label(pairs: Sequence[tuple[str, str]]) -> tuple[list[str], list[str], list[int]]:
    """Order (item, label) pairs for a store: classes sorted by name, file order within a class.

    Returns (texts in store order, class names, per-class counts).
    """
    by: dict[str, list[str]] = {}
    for t, y in pairs:
        by.setdefault(y, []).append(t)
    names = sorted(by)
    texts = [t for n in names for t in by[n]]
    return texts, names, [len(by[n]) for n in names]
