"""The on-disk cache of frozen-trunk features: every image of a store embedded once, verified on every use.

A frozen pretrained trunk is a fixed function of the image, so evaluation and SimpleShot statistics embed
each image once (:func:`feature_store`) and run their episodes on the features. An entry is a ``.npy``
(float32 [M, D]) and a ``.json`` written by :func:`metashot.data.store.write_entry`, the image store's own
format: the array's shape and dtype, the BLAKE2b digest of the ``.npy`` and of the json itself, plus the
trunk's signature and the store's identity. Shuffled, zeroed or NaN rows, a truncated, empty or foreign
file, a changed dtype or a missing record are all caught; such an entry is rebuilt with one warning that
names it, never used.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

from metashot._env import cache_dir as cache_folder
from metashot._env import quiet

if TYPE_CHECKING:
    from metashot.data.store import ClassStore


class FeatureBackbone(Protocol):
    """What the cache reads of a pretrained backbone (a :class:`metashot.nn.pretrained.TimmBackbone`)."""

    model_name: str
    feature_dim: int
    training: bool
    trunk_signature: Any

    def features(self, x: torch.Tensor) -> torch.Tensor: ...

    def eval(self) -> Any: ...

    def train(self, mode: bool = True) -> Any: ...


def store_identity(store: ClassStore) -> str:
    """A hash of what a store's rows are: its class layout always (a subset or a rotation of a cached split
    shares the cache file but not its rows), plus its cache file's identity, or the pixels themselves for
    an in-memory store."""
    h = hashlib.sha256(json.dumps([store.offsets.tolist(), store.class_names]).encode())
    src = store.meta.get("cache")
    if src and Path(src).is_file():
        st = Path(src).stat()
        h.update(f"{Path(src).resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
    else:
        h.update(np.ascontiguousarray(store.images.numpy()).tobytes())
    return h.hexdigest()


def feature_store(backbone: FeatureBackbone, store: ClassStore, device: str | torch.device = "cpu",
                  batch_size: int = 64, progress: bool = True, cache_dir: Path | None = None) -> ClassStore:
    """The store with every image replaced by its frozen trunk features [M, D] (float32), cached on disk.

    The cache is keyed by the trunk's signature (models, weights digest, and whatever else decides the
    features) and the store's identity (:func:`store_identity`), so other weights or other images never
    reuse it. Rows, offsets and class names are those of ``store``, so episodes drawn with the same seed are
    the same tasks. The default folder is :func:`metashot._env.cache_dir` ``("features")``.

    Raises:
        ValueError: ``store`` is not an image store, or the trunk's features are not finite (its weights
            hold NaN/Inf).
    """
    from metashot.data.store import ClassStore

    if store.images.dim() != 4:
        raise ValueError(f"feature_store: expected an image store [M, C, H, W], got "
                         f"{tuple(store.images.shape)}")
    signature, identity = backbone.trunk_signature, store_identity(store)
    key = hashlib.sha256(f"{signature}|{identity}".encode()).hexdigest()[:24]
    folder = Path(cache_dir) if cache_dir is not None else cache_folder("features")
    npy = folder / f"{backbone.model_name}-{key}.npy"
    record = {"trunk": signature, "store": identity, "rows": len(store), "dim": backbone.feature_dim}
    meta = dict(store.meta, features_of=backbone.model_name, feature_cache=str(npy))
    arr = _read(npy, record)
    if arr is None:
        arr = _embed(backbone, store, device, batch_size, progress)
        _write(npy, arr, record)
    return ClassStore(torch.from_numpy(arr), store.offsets, list(store.class_names), meta)


def _read(npy: Path, record: dict[str, Any]) -> np.ndarray | None:
    """The verified features of entry ``npy``; None (after one warning naming it, if it exists but fails a
    check) when it must be built."""
    from metashot.data.store import ENTRY_ERRORS, read_entry

    js = npy.with_suffix(".json")
    if not npy.exists() and not js.exists():
        return None
    try:
        if not js.is_file():
            raise ValueError(f"its record {js.name} is missing (written by an older metashot?)")
        arr, info = read_entry(npy, js)
        wrong = {k: info.get(k) for k, v in record.items() if info.get(k) != v}
        if wrong:
            raise ValueError(f"its record says {wrong}, expected {({k: record[k] for k in wrong})}")
        if arr.shape != (record["rows"], record["dim"]) or arr.dtype != np.float32:
            raise ValueError(f"it holds {arr.dtype} {list(arr.shape)}, expected float32 "
                             f"{[record['rows'], record['dim']]}")
        return arr
    except ENTRY_ERRORS as e:
        warnings.warn(f"feature cache {npy} failed verification ({e}); rebuilding it", UserWarning,
                      stacklevel=3)
        return None


def _embed(backbone: FeatureBackbone, store: ClassStore, device: str | torch.device, batch_size: int,
           progress: bool) -> np.ndarray:
    """Trunk features of every image of ``store``: float32 [M, D]; ValueError if any is NaN/Inf."""
    from tqdm.auto import tqdm

    from metashot.data.preprocess import to_float

    was = backbone.training
    backbone.eval()
    out = np.empty((len(store), backbone.feature_dim), dtype=np.float32)
    try:
        with torch.inference_mode():
            for i in tqdm(range(0, len(store), batch_size), desc=f"embed {store.meta.get('name', 'images')}",
                          unit="batch", disable=not progress or quiet(), leave=False):
                x = to_float(store.images[i : i + batch_size]).to(device)
                out[i : i + len(x)] = backbone.features(x).float().cpu().numpy()
    finally:
        backbone.train(was)
    bad = ~np.isfinite(out).all(axis=1)
    if bad.any():
        raise ValueError(f"feature_store: the {backbone.model_name} trunk gives NaN/Inf features for "
                         f"{int(bad.sum())} of {len(out)} images (e.g. row {int(np.argmax(bad))}): its "
                         f"pretrained weights hold NaN/Inf or are damaged; reinstall or re-download them")
    return out


def _write(npy: Path, arr: np.ndarray, record: dict[str, Any]) -> None:
    from metashot.data.store import write_entry

    try:
        write_entry(npy, npy.with_suffix(".json"), arr, record)
    except OSError as e:  # read-only or full disk: the features are still used, only not kept
        warnings.warn(f"cannot write the feature cache {npy} ({e}); using the features from memory. Set "
                      f"METASHOT_CACHE to a writable folder to embed them only once", UserWarning,
                      stacklevel=3)
