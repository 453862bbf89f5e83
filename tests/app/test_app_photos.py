"""The page's photo logic without a browser (metashot.app.photos), on the small bundled drawing model so it
stays fast: classes added by photos, zip and folder; classify; CSV; save/load; every mistake is one line."""

from __future__ import annotations

import csv
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from metashot.app.photos import (
    AppError,
    ModelCache,
    PhotoSession,
    add_photos,
    classify,
    gather,
    load_saved,
    save_zip,
    write_csv,
)

pytestmark = pytest.mark.filterwarnings("ignore:.*look like colour photos:UserWarning")
MODEL = "protonet-omniglot"  # fast: it reads photos as 28x28 grayscale, which is all these tests need


@pytest.fixture(scope="module")
def cache() -> ModelCache:
    return ModelCache()


def _session(cache: ModelCache, flowers: dict[str, list[Path]], tmp_path: Path, n: int = 3) -> PhotoSession:
    s = PhotoSession(model=MODEL, tmp=str(tmp_path))
    a, b = list(flowers)[:2]
    add_photos(s, cache, gather([str(p) for p in flowers[a][:n]], None, a, s.tmp))
    add_photos(s, cache, gather([str(p) for p in flowers[b][:n]], None, b, s.tmp))
    return s


def test_classes_classify_and_csv(cache, flowers, tmp_path):
    s = _session(cache, flowers, tmp_path)
    a, b = list(flowers)[:2]
    assert s.summary() == [[a, 3], [b, 3]]
    queries = [str(p) for p in flowers[a][3:5] + flowers[b][3:5]]
    seen: list[str] = []
    rows = classify(s, cache, queries, progress=lambda f, d: seen.append(d))
    assert seen and "4 photos" in seen[0]
    assert sorted(r["file"] for r in rows) == sorted(Path(q).name for q in queries)
    conf = [r["confidence"] for r in rows]
    assert conf == sorted(conf, reverse=True) and all(0 < c <= 1 for c in conf)
    assert {r["label"] for r in rows} <= {a, b}
    assert all(r["flag"] == ("low confidence" if r["confidence"] < 0.5 else "") for r in rows)
    with open(write_csv(rows, s.tmp)) as f:
        got = list(csv.reader(f))
    assert got[0] == ["file", "label", "confidence", "flag"]
    assert [(r[0], r[1]) for r in got[1:]] == [(r["file"], r["label"]) for r in rows]


def test_adding_to_a_class_embeds_only_the_new_photos(cache, flowers, tmp_path):
    s = _session(cache, flowers, tmp_path, n=2)
    a = list(flowers)[0]
    before = s.embeddings[a].clone()
    add_photos(s, cache, gather([str(flowers[a][2])], None, a, s.tmp))
    assert len(s.embeddings[a]) == 3 and np.allclose(s.embeddings[a][:2], before)
    assert s.files[a][-1] == str(flowers[a][2])


def test_zip_and_folder_subfolders_are_classes(flowers, tmp_path):
    names = list(flowers)[:2]
    z = tmp_path / "support.zip"
    with zipfile.ZipFile(z, "w") as out:
        for c in names:
            for p in flowers[c][:2]:
                out.write(p, f"top/{c}/{p.name}")
        out.writestr("top/notes.txt", "not a photo")  # other files inside zips and folders are skipped
        out.writestr("__MACOSX/._x.jpg", "resource fork")
    got = gather([str(z)], None, "", str(tmp_path))
    assert sorted(got) == sorted(names) and all(len(v) == 2 for v in got.values())
    folder = tmp_path / "folder"
    for c in names:
        shutil.copytree(flowers[c][0].parent, folder / c)
    got = gather(None, str(folder), "", str(tmp_path))
    assert {k: len(v) for k, v in got.items()} == {c: 8 for c in names}


def test_mistakes_are_one_line_and_the_session_keeps_working(cache, flowers, tmp_path):
    s = _session(cache, flowers, tmp_path)
    a = list(flowers)[0]
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    fake = tmp_path / "broken.jpg"
    fake.write_bytes(b"not really a jpeg")
    cases = {
        "is not an image": lambda: gather([str(notes)], None, a, s.tmp),
        "is too large": lambda: gather([str(flowers[a][0])], None, a, s.tmp, max_mb=0.001),
        "no photos given for class": lambda: gather([], "", a, s.tmp),
        "give a class name": lambda: gather([str(flowers[a][0])], None, " ", s.tmp),
        "does not exist on this computer": lambda: gather(None, str(tmp_path / "nope"), a, s.tmp),
        "broken.jpg is not an image or is damaged": lambda: add_photos(s, cache, {a: [fake]}),
        "drop the photos to classify": lambda: classify(s, cache, []),
        "add at least 2 classes": lambda: classify(PhotoSession(MODEL, tmp=s.tmp), cache,
                                                   [str(flowers[a][0])]),
        "cannot load model 'no-such-model'": lambda: ModelCache().base("no-such-model"),
    }
    for says, call in cases.items():
        with pytest.raises(AppError) as e:
            call()
        assert says in str(e.value) and "\n" not in str(e.value), str(e.value)
    assert s.summary() == [[a, 3], [list(flowers)[1], 3]]  # nothing half-added
    assert len(classify(s, cache, [str(flowers[a][5])])) == 1


def test_save_zip_then_load_gives_the_same_predictions(cache, flowers, tmp_path):
    s = _session(cache, flowers, tmp_path)
    queries = [str(p) for c in list(flowers)[:2] for p in flowers[c][4:6]]
    before = classify(s, cache, queries)
    zipped = save_zip(s, cache, copy_photos=True)
    with zipfile.ZipFile(zipped) as z:
        names = z.namelist()
    assert "my-classifier/classifier.json" in names and sum(n.endswith(".jpg") for n in names) == 6
    again = load_saved(cache, zipped, str(tmp_path))
    assert again.model == MODEL and again.summary() == s.summary()
    a = list(flowers)[0]
    assert Path(again.files[a][0]).name.endswith(flowers[a][0].name)  # the copied photos come back
    after = classify(again, cache, queries)
    assert [(r["file"], r["label"]) for r in after] == [(r["file"], r["label"]) for r in before]
    assert np.allclose([r["confidence"] for r in after], [r["confidence"] for r in before], atol=1e-5)
    notes = tmp_path / "x.zip"
    notes.write_text("nope")
    with pytest.raises(AppError, match="not a readable zip"):
        load_saved(cache, str(notes), str(tmp_path))
