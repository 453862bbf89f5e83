"""The on-disk cache of frozen-trunk features is verified like the image store (issue 27 item 2): a damaged
entry (shuffled or zeroed rows, truncated, not an array, empty, a NaN) is rebuilt with one warning naming
it, never used and never a traceback."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from metashot.data.store import ClassStore
from metashot.nn import pretrained as P


def _store() -> ClassStore:
    g = torch.Generator().manual_seed(3)
    imgs = torch.randint(0, 256, (12, 3, 32, 32), generator=g).to(torch.uint8)
    return ClassStore(imgs, np.arange(0, 13, 4), ["a", "b", "c"], {"name": "toy"})


@pytest.fixture(scope="module")
def backbone() -> P.TimmBackbone:
    torch.manual_seed(0)
    return P.TimmBackbone("test_efficientnet", pretrained=False, image_size=32)


def _damage(npy: Path, how: str) -> None:
    arr = np.load(npy)
    if how == "shuffled":
        np.save(npy, arr[::-1].copy())
    elif how == "zeroed":
        np.save(npy, np.zeros_like(arr))
    elif how == "nan":
        arr[2, 5] = np.nan
        np.save(npy, arr)
    elif how == "truncated":
        npy.write_bytes(npy.read_bytes()[: npy.stat().st_size // 2])
    elif how == "not_an_array":
        npy.write_bytes(b"these are not features\n" * 20)
    elif how == "empty":
        npy.write_bytes(b"")
    elif how == "float64":
        np.save(npy, arr.astype(np.float64))
    else:
        raise AssertionError(how)


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("how", ["shuffled", "zeroed", "nan", "truncated", "not_an_array", "empty",
                                 "float64"])
def test_a_damaged_feature_cache_is_rebuilt_with_one_warning(tmp_path: Path, backbone: P.TimmBackbone,
                                                              how: str) -> None:
    store = _store()
    first = P.feature_store(backbone, store, progress=False, cache_dir=tmp_path).images.clone()
    (npy,) = tmp_path.glob("*.npy")
    _damage(npy, how)
    with pytest.warns(UserWarning, match=rf"feature cache {npy} .*; rebuilding it") as seen:
        again = P.feature_store(backbone, store, progress=False, cache_dir=tmp_path).images
    assert len([w for w in seen if "feature cache" in str(w.message)]) == 1
    torch.testing.assert_close(again, first, rtol=0, atol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the rebuilt entry verifies
        third = P.feature_store(backbone, store, progress=False, cache_dir=tmp_path).images
    torch.testing.assert_close(third, first, rtol=0, atol=0)


@pytest.mark.usefixtures("one_thread")
def test_the_feature_cache_records_what_it_holds(tmp_path: Path, backbone: P.TimmBackbone) -> None:
    P.feature_store(backbone, _store(), progress=False, cache_dir=tmp_path)
    (npy,) = tmp_path.glob("*.npy")
    info = json.loads(npy.with_suffix(".json").read_text())
    assert info["shape"] == [12, backbone.feature_dim] and info["dtype"] == "<f4"
    assert info["npy_digest"].startswith("blake2b:") and info["trunk"] == backbone.trunk_signature
    assert oct(npy.stat().st_mode & 0o777) == "0o644"


@pytest.mark.usefixtures("one_thread")
def test_an_entry_without_its_record_is_rebuilt(tmp_path: Path, backbone: P.TimmBackbone) -> None:
    """A .npy from before the cache was verified (no .json beside it) is rebuilt once, not trusted."""
    store = _store()
    first = P.feature_store(backbone, store, progress=False, cache_dir=tmp_path).images.clone()
    (npy,) = tmp_path.glob("*.npy")
    npy.with_suffix(".json").unlink()
    np.save(npy, np.zeros((12, backbone.feature_dim), np.float32))
    with pytest.warns(UserWarning, match=rf"feature cache {npy} .*; rebuilding it"):
        again = P.feature_store(backbone, store, progress=False, cache_dir=tmp_path).images
    torch.testing.assert_close(again, first, rtol=0, atol=0)
