"""mini-ImageNet in Ravi & Larochelle's layout, from the shared sample zip and from an extracted folder."""

from __future__ import annotations

import csv
import io
import os
import urllib.request
import zipfile
from pathlib import Path

import pytest
import torch

from metashot.data import load_split
from metashot.data import mini_imagenet as mi

SAMPLE = "mini_imagenet_sample.zip"


@pytest.fixture(scope="module")
def sample_zip() -> Path:
    p = Path(os.environ["METASHOT_DATA"]) / "mini_imagenet" / SAMPLE
    if not p.is_file():
        pytest.fail(f"test data missing: {p} (set METASHOT_DATA to the shared data folder)", pytrace=False)
    return p


@pytest.mark.slow
def test_sample_zip_splits(sample_zip: Path) -> None:
    root = sample_zip.parent.parent
    classes = {}
    for split, n in (("train", 64), ("val", 16), ("test", 20)):
        s = load_split("mini_imagenet", split, root)
        assert s.num_classes == n
        assert (s.counts == 60).all(), "the sample keeps 60 images per class"
        assert s.images.dtype == torch.uint8 and tuple(s.images.shape[1:]) == (3, 84, 84)
        assert all(name.startswith("n") and len(name) == 9 for name in s.class_names), "WordNet ids"
        assert s.meta["name"] == f"mini_imagenet/{split}"
        assert 30 < float(s.images[:200].float().mean()) < 220, "real photos, not blank"
        classes[split] = set(s.class_names)
    assert not (classes["train"] & classes["val"]) and not (classes["train"] & classes["test"])
    assert not (classes["val"] & classes["test"])


@pytest.mark.slow
def test_extracted_folder_gives_identical_images(sample_zip: Path, tmp_path: Path) -> None:
    target = tmp_path / "mini_imagenet"
    with zipfile.ZipFile(sample_zip) as zf:
        rows = list(csv.reader(io.StringIO(zf.read("mini_imagenet/val.csv").decode())))
        keep = sorted({r[1] for r in rows[1:] if r})[:4]  # 4 of the 16 val classes keep the test light
        rows = [rows[0]] + [r for r in rows[1:] if r and r[1] in keep]
        target.joinpath("images").mkdir(parents=True)
        for name in ("train.csv", "test.csv"):
            (target / name).write_bytes(zf.read(f"mini_imagenet/{name}"))
        with open(target / "val.csv", "w", newline="") as f:
            csv.writer(f).writerows(rows)
        for fn, _ in rows[1:]:
            (target / "images" / fn).write_bytes(zf.read(f"mini_imagenet/images/{fn}"))
    assert len(list((target / "images").iterdir())) == 4 * 60
    from_folder = mi.mini_imagenet("val", tmp_path, cache_dir=tmp_path / "cache")
    from_zip = mi.mini_imagenet("val", sample_zip.parent.parent).subset(keep)
    assert from_folder.class_names == keep
    assert torch.equal(from_folder.images, from_zip.images)
    # the nested layout <root>/mini_imagenet/mini_imagenet/images is found too
    nested = tmp_path / "nested" / "mini_imagenet"
    nested.mkdir(parents=True)
    target.rename(nested / "mini_imagenet")
    again = mi.mini_imagenet("val", tmp_path / "nested", cache_dir=tmp_path / "cache")
    assert torch.equal(again.images, from_zip.images)


def test_missing_data_gives_the_licence_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*a: object, **k: object) -> None:
        raise AssertionError("mini-ImageNet must never be downloaded")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    with pytest.raises(FileNotFoundError) as info:
        load_split("mini_imagenet", "train", tmp_path)
    msg = str(info.value)
    assert "licence" in msg and "cannot download" in msg
    assert str(tmp_path / "mini_imagenet") in msg and "train.csv" in msg and "images/" in msg
    with pytest.raises(ValueError, match="split must be one of"):
        mi.mini_imagenet("training", tmp_path)
