"""`metashot fit`, `metashot info` and `metashot predict SAVED --query` without --support (issue 28 item 1).

Fast: the bundled protonet-omniglot model on tiny drawings made here (a bar, a column, a box)."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from metashot.cli import main

SHAPES = ("bar", "box", "col")


def _drawing(shape: str, shift: int) -> np.ndarray:
    a = np.full((28, 28), 255, np.uint8)
    if shape == "bar":
        a[12 + shift : 16 + shift, 2:26] = 0
    elif shape == "col":
        a[2:26, 12 + shift : 16 + shift] = 0
    else:
        a[6:22, 6 + shift : 22 + shift] = 0
        a[9:19, 9 + shift : 19 + shift] = 255
    return a


def _folders(tmp_path: Path, shapes: tuple[str, ...] = SHAPES) -> tuple[Path, Path]:
    support, query = tmp_path / "support", tmp_path / "query"
    query.mkdir(exist_ok=True)
    for s in shapes:
        (support / s).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(_drawing(s, i)).save(support / s / f"{s}{i}.png")
        Image.fromarray(_drawing(s, 2)).save(query / f"{s}.png")
    return support, query


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_fit_info_predict_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    support, query = _folders(tmp_path)
    out = tmp_path / "my-classifier"
    rc, text, err = _run(capsys, "fit", "protonet-omniglot", "--support", str(support), "--out", str(out),
                         "--quiet")
    assert rc == 0, err
    assert "protonet-omniglot fitted on 3 classes, 6 photos" in text
    assert (out / "classifier.json").is_file() and (out / "support.safetensors").is_file()

    rc, text, err = _run(capsys, "info", str(out))
    assert rc == 0, err
    assert "saved classifier" in text and "model:         protonet-omniglot (protonet), digest " in text
    assert "size=28" in text and "classes:       3, 6 support examples" in text
    assert all(f"    {s}: 2" in text for s in SHAPES) and "fitted:        20" in text
    assert "predicts:      through torch (the lite path does not apply: " in text
    assert "no runtime record" in text  # protonet-omniglot is not an ONNX photo model
    rc, text, _ = _run(capsys, "info", str(out), "--json")
    d = json.loads(text)
    assert d["per_class"] == {s: 2 for s in SHAPES} and len(d["model_digest"]) == 64

    rc, text, err = _run(capsys, "predict", str(out), "--query", str(query), "--quiet")
    assert rc == 0, err
    rows = [line.split(",") for line in text.strip().splitlines()[1:]]
    assert [(Path(r[0]).stem, r[1]) for r in rows] == [(s, s) for s in SHAPES]


def test_fit_refuses_existing_out_unless_overwrite(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    support, _ = _folders(tmp_path)
    out = tmp_path / "clf"
    args = ["fit", "protonet-omniglot", "--support", str(support), "--out", str(out), "--quiet"]
    assert _run(capsys, *args)[0] == 0
    before = json.loads((out / "classifier.json").read_text())["saved_at"]
    rc, _, err = _run(capsys, *args)
    assert rc == 2 and err.count("\n") == 1
    assert f"--out {out} holds a saved classifier; pass --overwrite" in err
    assert _run(capsys, *args, "--overwrite")[0] == 0
    assert json.loads((out / "classifier.json").read_text())["saved_at"] >= before

    other = tmp_path / "photos-of-mine"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    rc, _, err = _run(capsys, "fit", "protonet-omniglot", "--support", str(support), "--out", str(other),
                      "--overwrite")
    assert rc == 2 and "is a folder that holds other files, not a saved classifier" in err
    assert (other / "keep.txt").read_text() == "mine"  # --overwrite never deletes other files


def test_fit_support_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    support, _ = _folders(tmp_path, ("bar",))
    out = tmp_path / "clf"
    rc, _, err = _run(capsys, "fit", "protonet-omniglot", "--support", str(support), "--out", str(out))
    assert rc == 2 and err.count("\n") == 1
    assert f"--support {support} holds 1 class subfolder (bar); a classifier needs at least 2" in err
    assert not out.exists()
    rc, _, err = _run(capsys, "fit", "protonet-omniglot", "--support", str(tmp_path / "nowhere"), "--out",
                      str(out))
    assert rc == 2 and "nowhere does not exist" in err and err.count("\n") == 1


def test_predict_without_support_needs_a_saved_classifier(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    _, query = _folders(tmp_path)
    rc, _, err = _run(capsys, "predict", "protonet-omniglot", "--query", str(query))
    assert rc == 2 and err.count("\n") == 1
    assert "protonet-omniglot is a model, not a saved classifier: give --support DIR" in err
    assert "metashot fit protonet-omniglot --support DIR --out FOLDER" in err


def test_info_of_bundled_model_and_unknown_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, text, err = _run(capsys, "info", "protonet-omniglot")
    assert rc == 0, err
    assert "bundled model" in text and "algorithm:     protonet" in text
    assert "domain:        handwritten characters" in text and "measured:      Omniglot test" in text
    rc, _, err = _run(capsys, "info", str(tmp_path / "nowhere"))
    assert rc == 2 and err.count("\n") == 1
    assert "is neither a saved classifier" in err and "protonet-omniglot" in err


@pytest.mark.slow
def test_fit_photos_on_flowers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The photos model on a few Flowers-102 images: fit, info, predict without --support."""
    data = os.environ.get("METASHOT_DATA")
    zpath = Path(data or "(METASHOT_DATA unset)") / "flowers102" / "flowers102_odd.zip"
    assert zpath.is_file(), f"{zpath} is missing: set METASHOT_DATA to the shared data folder"
    with zipfile.ZipFile(zpath) as z:
        names = sorted(n for n in z.namelist() if n.lower().endswith((".jpg", ".jpeg", ".png")))
        by_class: dict[str, list[str]] = {}
        for n in names:
            by_class.setdefault(Path(n).parent.name, []).append(n)
        chosen = sorted(c for c, files in by_class.items() if len(files) >= 3)[:3]
        assert len(chosen) == 3, f"{zpath}: fewer than 3 class folders with 3 images"
        for c in chosen:
            for i, n in enumerate(by_class[c][:3]):
                dest = (tmp_path / "support" / c if i < 2 else tmp_path / "query")
                dest.mkdir(parents=True, exist_ok=True)
                (dest / f"{c}_{Path(n).name}").write_bytes(z.read(n))
    out = tmp_path / "flowers-clf"
    rc, _, err = _run(capsys, "fit", "photos", "--support", str(tmp_path / "support"), "--out", str(out),
                      "--quiet")
    assert rc == 0, err
    rc, text, err = _run(capsys, "info", str(out))
    assert rc == 0 and "model:         photos" in text and "6 support examples" in text, err
    assert "predicts:      without torch (ONNX Runtime + NumPy, metashot.lite)" in text
    rc, text, err = _run(capsys, "predict", str(out), "--query", str(tmp_path / "query"), "--quiet")
    assert rc == 0, err
    labels = {r.split(",")[1] for r in text.strip().splitlines()[1:]}
    assert labels <= set(chosen) and len(text.strip().splitlines()) == 4
