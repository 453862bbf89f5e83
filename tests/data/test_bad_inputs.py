"""Every bad input is a clear error naming the file or class and the numbers: no hang, no silent skip."""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from metashot.data import load_split
from metashot.data import mini_imagenet as mi
from metashot.data import omniglot as om
from metashot.data.episodes import EpisodeSampler
from metashot.data.folder import image_folder
from metashot.data.preprocess import ImageSpec

SPEC = ImageSpec(size=8, channels=3)


def _png(colour: int = 128) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (10, 10), (colour, 0, 0)).save(buf, format="PNG")
    return buf.getvalue()


def _folder(root: Path, counts: dict[str, int]) -> Path:
    for name, n in counts.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            (root / name / f"{i}.png").write_bytes(_png(10 * i))
    return root


# -------------------------------------------------------------------------------------------- image folders


def test_corrupt_image_names_the_file(tmp_path: Path) -> None:
    root = _folder(tmp_path / "d", {"cat": 3, "dog": 3})
    bad = root / "dog" / "1.png"
    bad.write_bytes(b"\x89PNG this is not really a png" * 3)
    with pytest.raises(ValueError, match=f"cannot decode image file {bad}"):
        image_folder(root, SPEC, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").glob("*.npy")), "nothing cached"
    bad.write_bytes(_png()[:40])  # a truncated file
    with pytest.raises(ValueError, match=f"cannot decode image file {bad}"):
        image_folder(root, SPEC, cache_dir=tmp_path / "cache")
    bad.write_bytes(_png())  # fixed: now it loads
    assert image_folder(root, SPEC, cache_dir=tmp_path / "cache").counts.tolist() == [3, 3]


def test_missing_image_names_the_file_and_class(tmp_path: Path) -> None:
    root = _folder(tmp_path / "d", {"cat": 3, "dog": 3})
    (root / "cat" / "9.png").symlink_to(tmp_path / "gone.png")  # a dangling link: the image is missing
    with pytest.raises(FileNotFoundError, match=r"class 'cat': image .*9.png cannot be read"):
        image_folder(root, SPEC, cache_dir=tmp_path / "cache")


def test_fifo_named_like_an_image_does_not_hang(tmp_path: Path) -> None:
    root = _folder(tmp_path / "d", {"cat": 2})
    os.mkfifo(root / "cat" / "pipe.png")  # reading it would block forever
    with pytest.raises(FileNotFoundError, match=r"pipe.png cannot be read \(a broken link or not a regular"):
        image_folder(root, SPEC, cache_dir=tmp_path / "cache")


def test_empty_and_structureless_folders(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=f"image folder {empty} is empty"):
        image_folder(empty, SPEC)
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(3):
        (flat / f"{i}.png").write_bytes(_png())
    with pytest.raises(ValueError, match=r"has no class subfolders.* holds 3 image file\(s\) directly"):
        image_folder(flat, SPEC)
    no_images = _folder(tmp_path / "ni", {"a": 2})
    (no_images / "b").mkdir()
    (no_images / "b" / "readme.txt").write_text("x")
    with pytest.raises(ValueError, match="class folder 'b' holds no images"), pytest.warns(UserWarning):
        image_folder(no_images, SPEC)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        image_folder(tmp_path / "nowhere", SPEC)
    (tmp_path / "file.png").write_bytes(_png())
    with pytest.raises(FileNotFoundError, match="is a file, not a folder"):
        image_folder(tmp_path / "file.png", SPEC)


def test_too_few_images_and_too_many_ways(tmp_path: Path) -> None:
    root = _folder(tmp_path / "d", {"cat": 6, "dog": 3, "eel": 6})
    store = load_split("folder", str(root), image_size=8, cache_dir=tmp_path / "cache")
    with pytest.raises(ValueError, match=r"class 'dog' has 3 items but shots \+ queries = 2 \+ 2 = 4"):
        EpisodeSampler(store, 3, 2, 2)
    with pytest.raises(ValueError, match=r"ways=4 but the store has only 3 classes"):
        EpisodeSampler(store, 4, 1, 1)
    EpisodeSampler(store, 3, 1, 2).sample(0)  # exactly enough is fine


# ------------------------------------------------------------------------------------------------ zips


def test_unreadable_zips(tmp_path: Path) -> None:
    (tmp_path / "omniglot").mkdir()
    bad = tmp_path / "omniglot" / "images_background.zip"
    bad.write_bytes(b"PK\x03\x04 but not really a zip" * 20)
    with pytest.raises(ValueError, match=f"Omniglot: {bad} is not a readable zip file"):
        om.omniglot("background", tmp_path, cache_dir=tmp_path / "cache")
    (tmp_path / "mini_imagenet").mkdir()
    bad_mi = tmp_path / "mini_imagenet" / "mini_imagenet.zip"
    bad_mi.write_bytes(b"garbage")
    with pytest.raises(ValueError, match=f"mini-ImageNet: {bad_mi} is not a readable zip file"):
        mi.mini_imagenet("train", tmp_path, cache_dir=tmp_path / "cache")


def test_truncated_and_corrupt_omniglot_zip(tmp_path: Path) -> None:
    folder = tmp_path / "omniglot"
    folder.mkdir()
    good = io.BytesIO()
    with zipfile.ZipFile(good, "w") as zf:
        for d in range(1, 4):
            zf.writestr(f"images_evaluation/Alpha/character01/0001_{d:02d}.png", _png(d))
        zf.writestr("images_evaluation/Alpha/character02/0002_01.png", b"not a png at all")
    data = good.getvalue()
    (folder / "images_evaluation.zip").write_bytes(data)
    with pytest.raises(ValueError, match=r"cannot decode images_evaluation/Alpha/character02/0002_01.png"):
        om.omniglot("evaluation", tmp_path, cache_dir=tmp_path / "cache")
    (folder / "images_evaluation.zip").write_bytes(data[: len(data) // 2])  # cut: no central directory
    with pytest.raises(ValueError, match="is not a readable zip file"):
        om.omniglot("evaluation", tmp_path, cache_dir=tmp_path / "cache")


def _mini_zip(path: Path, val_csv: str, images: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("mini_imagenet/train.csv", "filename,label\n")
        zf.writestr("mini_imagenet/test.csv", "filename,label\n")
        zf.writestr("mini_imagenet/val.csv", val_csv)
        for name, data in images.items():
            zf.writestr(f"mini_imagenet/images/{name}", data)


def test_mini_imagenet_bad_contents(tmp_path: Path) -> None:
    (tmp_path / "mini_imagenet").mkdir()
    z = tmp_path / "mini_imagenet" / "mini_imagenet.zip"
    ok = {"a1.jpg": _png(), "a2.jpg": _png()}
    _mini_zip(z, "filename,label\na1.jpg,n01\na2.jpg,n01\na3.jpg,n01\n", ok)
    with pytest.raises(FileNotFoundError, match=r"image .*images/a3.jpg listed in the csv is missing"):
        mi.mini_imagenet("val", tmp_path, cache_dir=tmp_path / "c1")
    _mini_zip(z, "filename,label\na1.jpg,n01\na2.jpg,n01\n", {"a1.jpg": _png(), "a2.jpg": b"garbage"})
    with pytest.raises(ValueError, match=r"cannot decode .*images/a2.jpg"):
        mi.mini_imagenet("val", tmp_path, cache_dir=tmp_path / "c2")
    _mini_zip(z, "name,class\na1.jpg,n01\n", ok)
    with pytest.raises(ValueError, match=r"val.csv must start with the header 'filename,label'"):
        mi.mini_imagenet("val", tmp_path, cache_dir=tmp_path / "c3")
    _mini_zip(z, "filename,label\na1.jpg,n01\na2.jpg\n", ok)
    with pytest.raises(ValueError, match=r"val.csv line 3 is 'a2.jpg'; expected 'filename,label'"):
        mi.mini_imagenet("val", tmp_path, cache_dir=tmp_path / "c4")
    _mini_zip(z, "filename,label\n", ok)
    with pytest.raises(ValueError, match="val.csv in .* lists no images"):
        mi.mini_imagenet("val", tmp_path, cache_dir=tmp_path / "c5")
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("something/else.txt", "x")
    with pytest.raises(ValueError, match="has no train.csv"):
        mi.mini_imagenet("val", tmp_path, cache_dir=tmp_path / "c6")
