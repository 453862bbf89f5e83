"""`metashot predict` on folders of any size (metashot.predict_folder): every unreadable file named at once
before anything is embedded, --skip-unreadable rows, streaming in bounded chunks with the rows complete and in
order, --resume (skipped rows, a cut last line repaired), an existing output refused without it."""

from __future__ import annotations

import csv
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import metashot
import metashot.predict_folder as pf
from metashot.cli import main


def _drawings(folder: Path, names: list[str], seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for n in names:
        a = np.full((28, 28), 255, np.uint8)
        a[rng.integers(2, 20):, rng.integers(2, 20)] = 0  # a dark stroke on white paper
        a[rng.integers(2, 20), rng.integers(2, 20):] = 0
        Image.fromarray(a).save(folder / n)
        out.append(folder / n)
    return out


def _setup(tmp_path: Path, n_query: int = 10) -> tuple[Path, Path, list[str]]:
    sup, qry = tmp_path / "support", tmp_path / "query"
    for i, c in enumerate(("a", "b", "c")):
        _drawings(sup / c, ["1.png", "2.png"], seed=i)
    _drawings(qry, [f"q{i:02d}.png" for i in range(n_query)], seed=7)
    args = ["predict", "protonet-omniglot", "--support", str(sup), "--query", str(qry), "--quiet"]
    return sup, qry, args


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _corrupt_idat(src: Path, dst: Path) -> None:
    """A PNG whose header and chunk checksums are right but whose pixel data does not inflate."""
    data = bytearray(src.read_bytes())
    i = data.index(b"IDAT")
    n = struct.unpack(">I", data[i - 4 : i])[0]
    data[i + 4 : i + 4 + n] = bytes([0x78, 0x9C]) + b"\xff" * (n - 2)  # zlib header, then garbage
    data[i + 4 + n : i + 8 + n] = struct.pack(">I", zlib.crc32(bytes(data[i : i + 4 + n])) & 0xFFFFFFFF)
    dst.write_bytes(bytes(data))


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size of every chunk classified (the real classification runs)."""
    sizes: list[int] = []
    real = pf.classify_chunk

    def record(clf, x, transductive, unknown):  # type: ignore[no-untyped-def]
        sizes.append(int(x.shape[0]))
        return real(clf, x, transductive, unknown)

    monkeypatch.setattr(pf, "classify_chunk", record)
    return sizes


def test_rows_complete_in_order_in_bounded_chunks(tmp_path, spy):
    sup, qry, args = _setup(tmp_path, n_query=10)
    out = tmp_path / "pred.csv"
    assert main([*args, "--output", str(out), "--batch-size", "3"]) == 0
    rows = _rows(out)
    assert list(rows[0]) == ["file", "label", "confidence", "note"]
    assert [Path(r["file"]).name for r in rows] == [f"q{i:02d}.png" for i in range(10)]
    assert spy == [3, 3, 3, 1]
    # chunking changes nothing: the same labels and confidences as one call on every photo
    clf = metashot.load("protonet-omniglot").fit_folder(sup)
    proba = clf.predict_proba(sorted(qry.iterdir()))
    assert [r["label"] for r in rows] == list(clf.classes_[proba.argmax(1)])
    assert np.allclose([float(r["confidence"]) for r in rows], proba.max(1), atol=2e-4)
    assert all(r["note"] == "" for r in rows)


def test_every_unreadable_file_is_named_at_once_before_any_embedding(tmp_path, capsys, monkeypatch):
    sup, qry, args = _setup(tmp_path, n_query=4)
    (qry / "empty.jpg").write_bytes(b"")
    (qry / "text.png").write_text("not a picture")
    good = (qry / "q00.png").read_bytes()
    (qry / "cut.png").write_bytes(good[: len(good) // 2])
    jpg = tmp_path / "full.jpg"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(jpg)
    (qry / "cut.jpg").write_bytes(jpg.read_bytes()[:300])
    (qry / "gone.png").symlink_to(tmp_path / "nowhere.png")
    (sup / "a" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    fitted = []
    monkeypatch.setattr(metashot.FewShotClassifier, "fit", lambda *a, **k: fitted.append(1))
    out = tmp_path / "pred.csv"
    assert main([*args, "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "6 of 16 image file(s) cannot be read" in err, err
    assert "--skip-unreadable" in err and "and 1 more" in err
    assert sum(n in err for n in ("empty.jpg", "text.png", "cut.png", "cut.jpg", "gone.png", "bad.png")) == 5
    assert not fitted and not out.exists()


def test_skip_unreadable_goes_on_and_notes_them_in_the_csv(tmp_path):
    sup, qry, args = _setup(tmp_path, n_query=4)
    (qry / "q01.png").write_bytes(b"garbage")
    (qry / "q03.jpg").symlink_to(tmp_path / "nowhere.jpg")
    (sup / "b" / "0.png").write_bytes(b"garbage")  # a support image left out too; b keeps two others
    out = tmp_path / "pred.csv"
    with pytest.warns(UserWarning, match=r"3 of 12 image file\(s\) cannot be read.*going on without them"):
        assert main([*args, "--output", str(out), "--skip-unreadable", "--batch-size", "2"]) == 0
    rows = _rows(out)
    assert [Path(r["file"]).name for r in rows] == ["q00.png", "q01.png", "q02.png", "q03.jpg", "q03.png"]
    bad = {Path(r["file"]).name: r for r in rows if r["note"]}
    assert sorted(bad) == ["q01.png", "q03.jpg"]
    assert all(r["label"] == "" and r["confidence"] == "" and r["note"].startswith("unreadable") for r in
               bad.values())
    assert all(r["label"] in {"a", "b", "c"} for r in rows if not r["note"])


def test_a_photo_that_fails_only_when_decoded_stops_with_its_rows_kept(tmp_path, capsys):
    sup, qry, args = _setup(tmp_path, n_query=6)
    _corrupt_idat(qry / "q04.png", qry / "q04.png")
    assert pf.header_problem(qry / "q04.png") is None  # passes the cheap check
    out = tmp_path / "pred.csv"
    assert main([*args, "--output", str(out), "--batch-size", "2"]) == 2
    err = capsys.readouterr().err
    assert "q04.png cannot be decoded" in err and "--resume" in err
    assert [Path(r["file"]).name for r in _rows(out)] == ["q00.png", "q01.png", "q02.png", "q03.png"]
    assert main([*args, "--output", str(out), "--batch-size", "2", "--resume", "--skip-unreadable"]) == 0
    rows = _rows(out)
    assert [Path(r["file"]).name for r in rows] == [f"q{i:02d}.png" for i in range(6)]
    assert rows[4]["note"].startswith("unreadable") and not rows[5]["note"]


def test_an_existing_output_is_refused_without_resume(tmp_path, capsys):
    sup, qry, args = _setup(tmp_path, n_query=2)
    out = tmp_path / "pred.csv"
    out.write_text("my notes\n")
    assert main([*args, "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"output {out} exists" in err and "--resume" in err and len(err.strip().splitlines()) == 1
    assert out.read_text() == "my notes\n"
    assert main([*args, "--output", str(out), "--resume"]) == 2  # not a metashot predict CSV
    assert "choose another --output" in capsys.readouterr().err and out.read_text() == "my notes\n"
    empty = tmp_path / "empty.csv"
    empty.write_text("")  # nothing to lose: written without --resume
    assert main([*args, "--output", str(empty)]) == 0 and len(_rows(empty)) == 2


def test_resume_skips_written_rows_and_rewrites_a_cut_last_line(tmp_path, spy):
    sup, qry, args = _setup(tmp_path, n_query=10)
    out = tmp_path / "pred.csv"
    assert main([*args, "--output", str(out)]) == 0
    full = out.read_bytes()
    lines = full.split(b"\r\n")
    cut = b"\r\n".join(lines[:5]) + b"\r\n" + lines[5][:7]  # header, 4 rows, then half of the 5th
    out.write_bytes(cut)
    spy.clear()
    assert main([*args, "--output", str(out), "--resume", "--batch-size", "4"]) == 0
    assert sum(spy) == 6 and max(spy) <= 4  # only the 6 rows not written before
    assert out.read_bytes() == full  # no row lost, none twice, the same figures, in order
    spy.clear()
    assert main([*args, "--output", str(out), "--resume"]) == 0 and spy == []  # nothing left to do
    assert out.read_bytes() == full


def test_interrupted_run_keeps_its_rows_and_resumes(tmp_path, monkeypatch, capsys):
    sup, qry, args = _setup(tmp_path, n_query=9)
    out = tmp_path / "pred.csv"
    real, calls = pf.classify_chunk, []

    def interrupt_third(*a):  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a)

    monkeypatch.setattr(pf, "classify_chunk", interrupt_third)
    assert main([*args, "--output", str(out), "--batch-size", "3"]) == 130
    assert "interrupted after 6 new row(s)" in capsys.readouterr().err and len(_rows(out)) == 6
    monkeypatch.setattr(pf, "classify_chunk", real)
    assert main([*args, "--output", str(out), "--batch-size", "3", "--resume"]) == 0
    assert [Path(r["file"]).name for r in _rows(out)] == [f"q{i:02d}.png" for i in range(9)]


def test_resume_of_a_file_written_for_another_query_is_refused(tmp_path, capsys):
    sup, qry, args = _setup(tmp_path, n_query=2)
    out = tmp_path / "pred.csv"
    out.write_text("file,label,confidence,note\r\nelsewhere/x.png,a,0.9000,\r\n")
    assert main([*args, "--output", str(out), "--resume"]) == 2
    assert "none of the 1 rows" in capsys.readouterr().err


def test_standard_output_and_image_only_flags(tmp_path, capsys):
    sup, qry, args = _setup(tmp_path, n_query=3)
    assert main(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "file,label,confidence,note" and len(lines) == 4
    assert main([*args, "--resume"]) == 2
    assert "give --output" in capsys.readouterr().err


def test_classify_is_used_when_the_classifier_has_it() -> None:
    import torch

    class Fake:
        classes_ = np.array(["x", "y"], dtype=object)

        def classify(self, images, *, transductive=None, unknown=False):  # type: ignore[no-untyped-def]
            self.got = (images.shape, transductive, unknown)
            return np.array(["unknown", "y"], dtype=object), np.array([[0.6, 0.4], [0.3, 0.7]])

    fake = Fake()
    labels, proba = pf.classify_chunk(fake, torch.zeros(2, 1, 4, 4), False, True)  # type: ignore[arg-type]
    assert fake.got == ((2, 1, 4, 4), False, True) and list(labels) == ["unknown", "y"]


@pytest.mark.slow
def test_photos_in_chunks_match_one_call(tmp_path, data_root, spy):
    """The bundled `photos` model: with --inductive, chunks of 4 give the labels and confidences of one
    predict_proba call; with its transductive head, each chunk is one batch (predict_proba on the chunk)."""
    import io
    import zipfile

    zpath = data_root / "flowers102" / "flowers102_odd.zip"
    if not zpath.is_file():
        pytest.fail(f"test data missing: {zpath}", pytrace=False)
    z = zipfile.ZipFile(zpath)
    names = sorted(n for n in z.namelist() if n.endswith(".jpg") and int(n.split("/")[1][:3]) % 4 == 3)
    sup, qry = tmp_path / "support", tmp_path / "query"
    qry.mkdir()
    for c in sorted({n.split("/")[1] for n in names})[:3]:
        mine = [n for n in names if n.split("/")[1] == c]
        (sup / c).mkdir(parents=True)
        for i, n in enumerate(mine[:8]):
            im = Image.open(io.BytesIO(z.read(n))).convert("RGB")
            im.save((sup / c if i < 3 else qry) / f"{c}_{i}.jpg", quality=92)
    out = tmp_path / "pred.csv"
    assert main(["predict", "photos", "--support", str(sup), "--query", str(qry), "--output", str(out),
                 "--batch-size", "4", "--quiet", "--inductive"]) == 0
    assert spy == [4, 4, 4, 3]
    rows = _rows(out)
    clf = metashot.load("photos").fit_folder(sup)
    files = sorted(qry.iterdir())
    proba = clf.predict_proba(files, transductive=False)
    assert [Path(r["file"]).name for r in rows] == [f.name for f in files]
    assert [r["label"] for r in rows] == list(clf.classes_[proba.argmax(1)])
    assert np.allclose([float(r["confidence"]) for r in rows], proba.max(1), atol=2e-3)
    out2 = tmp_path / "pred2.csv"
    assert main(["predict", "photos", "--support", str(sup), "--query", str(qry), "--output", str(out2),
                 "--batch-size", "4", "--quiet"]) == 0
    chunked = np.concatenate([clf.predict_proba(files[i : i + 4]) for i in range(0, len(files), 4)])
    rows2 = _rows(out2)
    assert [r["label"] for r in rows2] == list(clf.classes_[chunked.argmax(1)])
    assert np.allclose([float(r["confidence"]) for r in rows2], chunked.max(1), atol=2e-3)
    assert sum(r["label"] == Path(r["file"]).name.rsplit("_", 1)[0] for r in rows) >= 12
