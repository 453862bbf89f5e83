"""The bundled `photos` model: loads offline, classifies real photos through fit/predict/predict_proba and
the CLI, and its figures on a small fixed set are pinned so that any drift (weights, preprocessing, head)
fails."""

from __future__ import annotations

import csv
import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import metashot
from metashot.cli import main

pytestmark = pytest.mark.slow


def _flowers(data_root: Path, classes: int, per: int, first: int = 0) -> dict[str, list[Image.Image]]:
    """The first ``per`` photos of ``classes`` Flowers-102 `test` classes (class numbers 3 mod 4)."""
    z = zipfile.ZipFile(data_root / "flowers102" / "flowers102_odd.zip")
    by: dict[str, list[str]] = {}
    for n in sorted(z.namelist()):
        parts = n.split("/")
        if len(parts) == 3 and parts[2].endswith(".jpg") and int(parts[1][:3]) % 4 == 3:
            by.setdefault(parts[1], []).append(n)
    out = {}
    for c in sorted(by)[first : first + classes]:
        ims = []
        for n in by[c][:per]:
            im = Image.open(io.BytesIO(z.read(n)))
            im.load()
            ims.append(im)
        out[c] = ims
    return out


@pytest.fixture(scope="module")
def photos():
    return metashot.load("photos")


@pytest.fixture(scope="module")
def flowers(data_root: Path) -> dict[str, list[Image.Image]]:
    if not (data_root / "flowers102" / "flowers102_odd.zip").is_file():
        pytest.fail(f"test data missing: {data_root}/flowers102/flowers102_odd.zip", pytrace=False)
    return _flowers(data_root, classes=5, per=8)


def test_photos_is_the_pretrained_photo_pipeline(photos):
    spec = photos.image_spec
    assert spec.channels == 3 and spec.crop_pct is not None and spec.mean is not None
    assert photos.learner.algorithm_name == "simpleshot"
    assert not any(p.requires_grad for p in photos.learner.parameters())


def test_pinned_five_way_three_shot_on_flowers(photos, flowers):
    """5 Flowers-102 test classes, 3 support and 5 query photos each: predictions and probabilities pinned."""
    # (print(correct, proba[:3].round(4).tolist()) gives the pinned values after a deliberate change)
    sx, sy, qx, qy = [], [], [], []
    for c, ims in flowers.items():
        sx += ims[:3]
        sy += [c] * 3
        qx += ims[3:8]
        qy += [c] * 5
    photos.fit(sx, sy)
    pred = photos.predict(qx)
    proba = photos.predict_proba(qx)
    assert proba.shape == (25, 5) and np.allclose(proba.sum(1), 1)
    assert list(photos.classes_) == sorted(flowers)
    correct = int((pred == np.array(qy, dtype=object)).sum())
    assert correct == PINNED_CORRECT
    np.testing.assert_allclose(proba[:3].round(4), PINNED_PROBA, atol=2e-4)


PINNED_CORRECT = 23  # of 25
PINNED_PROBA = np.array([[0.9284, 0.0012, 0.0542, 0.0003, 0.0158],
                         [0.9844, 0.0017, 0.0130, 0.0000, 0.0009],
                         [0.8995, 0.0010, 0.0948, 0.0000, 0.0047]])


def test_cli_predict_on_a_folder_of_mixed_photos(tmp_path, flowers, capsys):
    """`metashot predict photos` on a support folder with RGBA PNG, palette GIF, grayscale and big JPEGs."""
    sup, qry = tmp_path / "support", tmp_path / "query"
    names = sorted(flowers)[:3]
    for ci, c in enumerate(names):
        (sup / c).mkdir(parents=True)
        ims = [im.convert("RGB") for im in flowers[c]]
        ims[0].convert("RGBA").save(sup / c / "a.png")
        ims[1].convert("P").save(sup / c / "b.gif")
        ims[2].resize((1500, 2000)).save(sup / c / "c.jpg")
        ims[3].convert("L").save(sup / c / "d.jpg")
        qry.mkdir(exist_ok=True)
        ims[5].save(qry / f"{ci}.jpg")
    out = tmp_path / "pred.csv"
    assert main(["predict", "photos", "--support", str(sup), "--query", str(qry), "--output", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert [Path(r["file"]).name for r in rows] == ["0.jpg", "1.jpg", "2.jpg"]
    assert all(r["label"] in names and 0 < float(r["confidence"]) <= 1 for r in rows)
    assert sum(r["label"] == names[int(Path(r["file"]).stem)] for r in rows) >= 2


def test_a_corrupt_photo_is_named(photos, tmp_path, flowers):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff not a jpeg")
    ims = [im for c in sorted(flowers)[:2] for im in flowers[c][:2]]
    with pytest.raises(ValueError, match="broken.jpg"):
        photos.fit([*ims[:3], bad], ["a", "a", "b", "b"])
