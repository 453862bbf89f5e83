"""The converted pretrained-weights cache is verified and rebuilt (issue 27 item 10), readable by every user,
and an unwritable cache folder is a warning, never a traceback."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from metashot.nn import packaged as K


def _writer(calls: list[int]):
    def build(tmp: Path) -> None:
        calls.append(1)
        tmp.write_bytes(b"converted weights " * 100)
    return build


def _damage(out: Path, how: str) -> None:
    record = K.record_path(out)
    if how == "flipped_bit":
        data = bytearray(out.read_bytes())
        data[len(data) // 2] ^= 0x01
        out.write_bytes(bytes(data))
    elif how == "truncated":
        out.write_bytes(out.read_bytes()[:10])
    elif how == "empty":
        out.write_bytes(b"")
    elif how == "no_record":
        record.unlink()
    elif how == "garbage_record":
        record.write_text("not a digest")
    elif how == "folder_in_its_place":
        out.unlink()
        out.mkdir()
    else:
        raise AssertionError(how)


@pytest.mark.parametrize("how", ["flipped_bit", "truncated", "empty", "no_record", "garbage_record",
                                 "folder_in_its_place"])
def test_a_damaged_cache_file_is_rebuilt_with_one_warning(tmp_path: Path, how: str) -> None:
    calls: list[int] = []
    out = tmp_path / "w.safetensors"
    assert K.verified_cache_file(out, _writer(calls), "test weights") == out
    good = out.read_bytes()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a good entry is used as it is
        assert K.verified_cache_file(out, _writer(calls), "test weights") == out and len(calls) == 1
    _damage(out, how)
    with pytest.warns(UserWarning, match=rf"test weights cache {out} failed verification .*; rebuilding it"):
        assert K.verified_cache_file(out, _writer(calls), "test weights") == out
    assert len(calls) == 2 and out.read_bytes() == good
    assert oct(out.stat().st_mode & 0o777) == "0o644"


def test_an_unwritable_cache_folder_is_a_warning_and_the_file_still_comes(tmp_path: Path) -> None:
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache folder should be")
    calls: list[int] = []
    with pytest.warns(UserWarning, match=rf"cannot write the test weights cache {blocker / 'w.st'} .*"
                                         r"METASHOT_CACHE"):
        got = K.verified_cache_file(blocker / "w.st", _writer(calls), "test weights")
    assert got.is_file() and got.read_bytes() == b"converted weights " * 100


@pytest.mark.slow
def test_packaged_weights_with_a_flipped_bit_are_converted_again(tmp_path: Path) -> None:
    out = K.packaged_weights("tf_efficientnet_lite0", cache_dir=tmp_path)
    ref = {k: v.clone() for k, v in load_file(str(out)).items()}  # (load_file maps the file)
    assert oct(out.stat().st_mode & 0o777) == "0o644"
    data = bytearray(out.read_bytes())
    data[-1000] ^= 0x10
    out.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="failed verification"):
        again = K.packaged_weights("tf_efficientnet_lite0", cache_dir=tmp_path)
    got = load_file(str(again))
    assert set(got) == set(ref) and all(torch.equal(got[k], ref[k]) for k in ref)
