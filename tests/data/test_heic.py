"""HEIC/HEIF photos (the iPhone default) through pillow-heif, and AVIF through Pillow (issue 28 item 2): read
like any photo by fit/predict, listed in folders, checked by the header pass; without pillow-heif, one line
that says what to install."""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, features

from metashot.data.folder import list_folder, list_images
from metashot.predict_folder import header_problem, query_images

P = importlib.import_module("metashot.data.preprocess")  # (metashot.data.preprocess is also a function)


def photo(path: Path, colour: tuple[int, int, int]) -> Path:
    im = Image.new("RGB", (96, 64), colour)
    im.paste((255, 255, 255), (10, 10, 40, 30))
    im.save(path)
    return path


def test_heic_photos_are_read_listed_and_checked(tmp_path):
    assert P.HEIF, "pillow-heif (the vision extra) is installed in this environment"
    heic = photo(tmp_path / "IMG_0001.HEIC", (200, 30, 30))
    im = P.to_pil(heic)
    assert im.size == (96, 64)
    arr = np.asarray(im.convert("RGB"), dtype=np.int16)
    assert abs(int(arr[50, 80, 0]) - 200) < 12 and abs(int(arr[20, 20, 1]) - 255) < 12  # lossy, close
    assert header_problem(heic) is None
    assert query_images(heic) == [heic]
    (tmp_path / "support" / "red").mkdir(parents=True)
    (tmp_path / "support" / "blue").mkdir(parents=True)
    photo(tmp_path / "support" / "red" / "a.heic", (200, 30, 30))
    photo(tmp_path / "support" / "blue" / "b.HEIF", (30, 30, 200))
    assert {k: [p.name for p in v] for k, v in list_folder(tmp_path / "support").items()} == \
        {"blue": ["b.HEIF"], "red": ["a.heic"]}
    assert [p.name for p in list_images(tmp_path / "support")] == ["b.HEIF", "a.heic"]
    x = P.preprocess(heic, P.ImageSpec(size=32, channels=3))
    assert x.shape == (3, 32, 32)


@pytest.mark.skipif(not features.check("avif"), reason="this Pillow was built without libavif")
def test_avif_photos_are_read(tmp_path):
    avif = photo(tmp_path / "x.avif", (30, 200, 30))
    assert P.to_pil(avif).size == (96, 64) and header_problem(avif) is None


def test_without_pillow_heif_a_heic_photo_is_one_line_saying_what_to_install(tmp_path, monkeypatch):
    heic = photo(tmp_path / "IMG_0002.heic", (10, 10, 10))
    monkeypatch.setattr(P, "HEIF", False)
    assert P.decode_hint(heic) == "; HEIC/HEIF photos need pillow-heif: pip install 'metashot[vision]'"
    assert P.decode_hint(tmp_path / "x.jpg") == ""
    broken = tmp_path / "IMG_0003.heic"
    broken.write_bytes(b"\x00\x00\x00\x18ftypheic" + b"\x00" * 16)
    with pytest.raises(ValueError, match=r"cannot decode image file .*IMG_0003.heic: .*need pillow-heif: pip "
                                         r"install 'metashot\[vision\]'$"):
        P.to_pil(broken)
    assert header_problem(broken).endswith("need pillow-heif: pip install 'metashot[vision]'")
