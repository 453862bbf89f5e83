"""Image folders (users' own data): classes from subfolders, any common format and mode, cached."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from metashot.data import load_split
from metashot.data.episodes import EpisodeSampler
from metashot.data.folder import image_folder, list_folder
from metashot.data.preprocess import ImageSpec

COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}


def make_folder(root: Path, per_class: int = 4) -> Path:
    """root/<colour>/img_i.<ext>: solid images of one colour per class, in several formats, sizes, modes."""
    for name, rgb in COLOURS.items():
        d = root / name
        d.mkdir(parents=True)
        for i in range(per_class):
            size = (20 + 7 * i, 30 + 3 * i)  # not square, not the target size
            im = Image.new("RGB", size, rgb)
            if i % 4 == 0:
                im.save(d / f"img_{i}.png")
            elif i % 4 == 1:
                im.save(d / f"img_{i}.JPG", quality=100)
            elif i % 4 == 2:
                im.convert("RGBA").save(d / f"img_{i}.png")
            else:
                im.save(d / f"img_{i}.bmp")
    return root


def test_folder_store_classes_and_pixels(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "data")
    s = load_split("folder", str(root), image_size=16, cache_dir=tmp_path / "cache")
    assert s.class_names == ["blue", "green", "red"]
    assert s.counts.tolist() == [4, 4, 4]
    assert s.images.dtype == torch.uint8 and tuple(s.images.shape) == (12, 3, 16, 16)
    for c, name in enumerate(s.class_names):
        mean = s.class_images(c).float().mean(dim=(0, 2, 3))
        assert torch.allclose(mean, torch.tensor(COLOURS[name], dtype=torch.float32), atol=3.0), (name, mean)
    gray = image_folder(root, ImageSpec(size=8, channels=1), cache_dir=tmp_path / "cache")
    assert tuple(gray.images.shape) == (12, 1, 8, 8)
    # relative split names resolve against root, and episodes come out of it
    rel = load_split("folder", "data", root=tmp_path, image_size=16, cache_dir=tmp_path / "cache")
    assert torch.equal(rel.images, s.images)
    b = EpisodeSampler(s, 3, 2, 2, seed=0).sample(0)
    assert b.support_x.shape == (1, 6, 3, 16, 16)


def test_folder_cache_follows_the_files(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "data")
    cache = tmp_path / "cache"
    first = image_folder(root, ImageSpec(size=12, channels=3), cache_dir=cache)
    Image.new("RGB", (12, 12), (255, 0, 0)).save(root / "red" / "img_new.png")
    second = image_folder(root, ImageSpec(size=12, channels=3), cache_dir=cache)
    assert first.counts.tolist() == [4, 4, 4] and second.counts.tolist() == [4, 4, 5]
    Image.new("RGB", (12, 12), (0, 0, 0)).save(root / "red" / "img_new.png")  # edited in place
    third = image_folder(root, ImageSpec(size=12, channels=3), cache_dir=cache)
    assert int(third.class_images(2)[-1].max()) == 0 and int(second.class_images(2)[-1].max()) == 255


def test_stray_entries_are_reported_not_silently_skipped(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "data", per_class=2)
    (root / "red" / "notes.txt").write_text("hello")
    (root / "red" / "sub").mkdir()
    (root / "README.md").write_text("my data")
    (root / "green" / ".DS_Store").write_bytes(b"\0")  # hidden entries are not data
    with pytest.warns(UserWarning) as rec:
        classes = list_folder(root)
    text = " ".join(str(w.message) for w in rec)
    assert "README.md" in text and "class 'red'" in text and "notes.txt" in text and "sub" in text
    assert "green" not in text
    assert {k: len(v) for k, v in classes.items()} == {"blue": 2, "green": 2, "red": 2}


def test_array_inputs_to_the_preprocessor() -> None:
    from metashot.data.preprocess import preprocess

    arr = np.zeros((10, 12, 3), np.uint8)
    arr[..., 1] = 200
    out = preprocess(arr, ImageSpec(size=5, channels=3, resize_filter="bilinear"))
    assert out.shape == (3, 5, 5) and out[1].min() == 200 and out[0].max() == 0
    chw = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))
    assert (preprocess(chw, ImageSpec(size=5, channels=3, resize_filter="bilinear")) == out).all()
    with pytest.raises(ValueError, match="must be uint8"):
        preprocess(arr.astype(np.float32), ImageSpec(size=5, channels=3))
